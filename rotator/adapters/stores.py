"""The CiphertextStore port on S3 and DynamoDB, and the Checkpoint port as a local file."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from rotator.adapters.aws import aws_call
from rotator.domain.stored_ciphertext import (
    ConcurrentChange,
    StoredRecord,
    StoredValue,
    StoreFormatError,
    UnrewritableValue,
    ValuePath,
    object_values,
    parse_store_uri,
    rewrite_object,
)
from rotator.errors import ConfigError

# S3 answers a failed If-Match with 412, and a write racing another conditional write with 409.
S3_CHANGED = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3CiphertextStore:
    """Implements `rotator.ports.CiphertextStore` over the objects under `s3://bucket/prefix`.

    A rewrite is a PutObject with If-Match on the ETag read, so a changed object is never
    overwritten; the bucket must have versioning enabled, so the old object stays a version."""

    def __init__(self, s3: Any, uri: str) -> None:
        _, self.bucket, self.prefix = parse_store_uri(uri)
        self._s3 = s3
        self._uri = uri
        self._versioned: bool | None = None

    @property
    def uri(self) -> str:
        return self._uri

    def records(self, *, after: str | None = None) -> Iterator[StoredRecord]:
        paginator = self._s3.get_paginator("list_objects_v2")
        options: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        if after:
            options["StartAfter"] = after
        with aws_call("ListObjectsV2", self._uri):
            pages = list(paginator.paginate(**options))
        for page in pages:
            for entry in page.get("Contents", []):
                record = self.read(entry["Key"])
                if record is not None:
                    yield record

    def read(self, ref: str) -> StoredRecord | None:
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=ref)
            body = response["Body"].read()
        except ClientError as error:
            if _error_code(error) in ("NoSuchKey", "404"):
                return None
            with aws_call("GetObject", f"s3://{self.bucket}/{ref}"):
                raise
        try:
            values = object_values(ref, body)
            problem = ""
        except StoreFormatError as error:
            values, problem = (), str(error)
        return StoredRecord(self._uri, ref, response["ETag"], values, problem)

    def replace(self, record: StoredRecord, changes: Mapping[str, str]) -> None:
        self._require_versioning()
        location = f"s3://{self.bucket}/{record.ref}"
        try:
            response = self._s3.get_object(
                Bucket=self.bucket, Key=record.ref, IfMatch=record.version
            )
            body = response["Body"].read()
            extra = {
                name: response[name]
                for name in ("ContentType", "ContentEncoding")
                if response.get(name)
            }
            self._s3.put_object(
                Bucket=self.bucket,
                Key=record.ref,
                Body=rewrite_object(record.ref, body, changes),
                IfMatch=record.version,
                **extra,
            )
        except ClientError as error:
            if _error_code(error) in S3_CHANGED or _error_code(error) in ("NoSuchKey", "404"):
                raise ConcurrentChange(f"{location} changed since it was read") from None
            with aws_call("PutObject", location):
                raise

    def _require_versioning(self) -> None:
        if self._versioned is None:
            with aws_call("GetBucketVersioning", f"s3://{self.bucket}"):
                status = self._s3.get_bucket_versioning(Bucket=self.bucket).get("Status")
            self._versioned = status == "Enabled"
        if not self._versioned:
            raise ConfigError(
                self._uri,
                "bucket versioning is not enabled: a rewrap keeps every old object as a version "
                f"(aws s3api put-bucket-versioning --bucket {self.bucket} "
                "--versioning-configuration Status=Enabled)",
            )


# The last step of a string set member's path: a set's members have no index UpdateItem can
# name (a list's are 0 and up), so a member is counted, conditioned on with contains(), and
# never rewritten in place.
SET_MEMBER = -1


def dynamodb_strings(value: Mapping[str, Any], path: ValuePath = ()) -> Iterator[StoredValue]:
    """Every string in an attribute value (DynamoDB's wire form), in maps, lists and string
    sets too."""
    if "S" in value:
        yield StoredValue(path, value["S"])
    elif "SS" in value:
        for member in value["SS"]:
            yield StoredValue((*path, SET_MEMBER), member)
    elif "M" in value:
        for name, item in value["M"].items():
            yield from dynamodb_strings(item, (*path, name))
    elif "L" in value:
        for index, item in enumerate(value["L"]):
            yield from dynamodb_strings(item, (*path, index))


class DynamoDbCiphertextStore:
    """Implements `rotator.ports.CiphertextStore` over the items of `dynamodb://table`.

    A rewrite is one UpdateItem that sets each changed attribute path, on the condition that
    every string value read still holds it. A ref is the item's key attributes as JSON.

    Key attributes and string set members are counted like any string; a ciphertext in either
    is not rewritten (an item's key cannot change in place, a set member has no path): the
    rewrite of that item fails, naming where, so that its ciphertexts stay counted and
    `destroy` keeps refusing."""

    def __init__(self, dynamodb: Any, uri: str) -> None:
        _, self.table, _ = parse_store_uri(uri)
        self._dynamodb = dynamodb
        self._uri = uri
        self._key_names: list[str] | None = None

    @property
    def uri(self) -> str:
        return self._uri

    def _keys(self) -> list[str]:
        if self._key_names is None:
            with aws_call("DescribeTable", self._uri):
                table = self._dynamodb.describe_table(TableName=self.table)["Table"]
            self._key_names = sorted(k["AttributeName"] for k in table["KeySchema"])
        return self._key_names

    def _record(self, item: Mapping[str, Any]) -> StoredRecord:
        keys = self._keys()
        ref = json.dumps({k: item[k] for k in keys}, sort_keys=True, separators=(",", ":"))
        values = tuple(
            value
            for name, attribute in sorted(item.items())
            for value in dynamodb_strings(attribute, (name,))
        )
        return StoredRecord(self._uri, ref, "", values)

    def records(self, *, after: str | None = None) -> Iterator[StoredRecord]:
        paginator = self._dynamodb.get_paginator("scan")
        with aws_call("Scan", self._uri):
            for page in paginator.paginate(TableName=self.table, ConsistentRead=True):
                for item in page.get("Items", []):
                    yield self._record(item)

    def read(self, ref: str) -> StoredRecord | None:
        with aws_call("GetItem", self._uri):
            item = self._dynamodb.get_item(
                TableName=self.table, Key=json.loads(ref), ConsistentRead=True
            ).get("Item")
        return None if item is None else self._record(item)

    def replace(self, record: StoredRecord, changes: Mapping[str, str]) -> None:
        # The condition covers every string value the record was read with, not only the
        # changed ones: a record changed anywhere since its read is refused, as S3's ETag does.
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        sets: list[str] = []
        conditions: list[str] = []
        keys = self._keys()
        for index, value in enumerate(record.values):
            member = value.path[-1] == SET_MEMBER
            key = len(value.path) == 1 and value.path[0] in keys
            if value.text in changes and (member or key):
                where = "a key attribute" if key else "a string set"
                raise UnrewritableValue(
                    f"{self._uri} item {record.ref}: a ciphertext in {where} "
                    f"({value.path[0]}) is not rewritten in place; re-encrypt that item by hand"
                )
            if key:
                continue  # the Key of the UpdateItem itself
            expression = ""
            for step in value.path[:-1] if member else value.path:
                if isinstance(step, int):
                    expression += f"[{step}]"
                    continue
                placeholder = names.setdefault(step, f"#n{len(names)}")
                expression += ("." if expression else "") + placeholder
            values[f":old{index}"] = {"S": value.text}
            if member:
                conditions.append(f"contains({expression}, :old{index})")
                continue
            conditions.append(f"{expression} = :old{index}")
            if value.text in changes:
                values[f":new{index}"] = {"S": changes[value.text]}
                sets.append(f"{expression} = :new{index}")
        if not sets:
            current = self.read(record.ref)
            if current is None or current.values != record.values:
                raise ConcurrentChange(f"{self._uri} item {record.ref} changed since read")
            return
        try:
            self._dynamodb.update_item(
                TableName=self.table,
                Key=json.loads(record.ref),
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression=" AND ".join(conditions),
                ExpressionAttributeNames={p: n for n, p in names.items()},
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            if _error_code(error) == "ConditionalCheckFailedException":
                raise ConcurrentChange(
                    f"{self._uri} item {record.ref} changed since read"
                ) from None
            with aws_call("UpdateItem", self._uri):
                raise


def store_for(uri: str, client: Any) -> S3CiphertextStore | DynamoDbCiphertextStore:
    """The store a URI names; `client(service)` makes its boto3 client."""
    scheme, _, _ = parse_store_uri(uri)
    if scheme == "s3":
        return S3CiphertextStore(client("s3"), uri)
    return DynamoDbCiphertextStore(client("dynamodb"), uri)


class FileCheckpoint:
    """Implements `rotator.ports.Checkpoint` as a JSON Lines file, each line fsynced: a line
    torn by a crash is ignored (its record is read again and found done, or redone)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def done(self) -> set[tuple[str, str]]:
        if not self.path.exists():
            return set()
        found = set()
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                found.add((str(entry["store"]), str(entry["ref"])))
            except (ValueError, KeyError, TypeError):
                continue
        return found

    def record(self, store: str, ref: str) -> None:
        # Each line starts a new line, so a line a crash tore never swallows the next one.
        line = "\n" + json.dumps({"store": store, "ref": ref}, separators=(",", ":"))
        with self._lock, self.path.open("a", encoding="utf-8") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())

    def exists(self) -> bool:
        return self.path.exists()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
