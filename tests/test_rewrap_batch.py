"""The rewrap Lambda as S3 Batch Operations invokes it (invocation schema 2.0), on moto: the
tasks come from `rotator rewrap --plan`'s manifest; each answers Succeeded, TemporaryFailure or
PermanentFailure; rewrapped values decrypt to the originals; nothing says a plaintext."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from lambda_decrypt.decrypt import Decryptor
from lambda_decrypt.keys import ConnectKey, StaticKeys
from rotator.adapters.stores import S3CiphertextStore
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.stored_ciphertext import ConcurrentChange, StoredRecord, connect_key_id
from rotator.entrypoints import batch_rewrap
from rotator.entrypoints.cli import main
from tests.conftest import REGION
from tests.test_rewrap_stores import CURRENT, OLD1, OLD2, PREFIX, _store_keys
from tests.world import KeyPool

BUCKET, OTHER_BUCKET = "batch-records", "not-registered"
OBJECTS = {"ctr/a.json": (OLD1, OLD1), "ctr/b.json": (CURRENT, OLD2), "ctr/c d+e.json": (OLD1,)}


@pytest.fixture
def bucket(aws: None, key_pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("KEYRING_PREFIX", PREFIX)
    monkeypatch.setenv("ROTATOR_CIPHERTEXT_STORES", f"s3://{BUCKET}/ctr/")
    batch_rewrap.reset_container()
    materials = _store_keys(boto3.client("ssm", region_name=REGION), key_pool)
    s3 = boto3.client("s3", region_name=REGION)
    for name in (BUCKET, OTHER_BUCKET):
        s3.create_bucket(Bucket=name)
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    s3.plaintexts, s3.materials = {}, materials
    for number, (key, keys) in enumerate(OBJECTS.items()):
        lines = []
        for index, key_id in enumerate(keys):
            plaintext = f"4{number:07d}{index:08d}".encode()
            text = encrypt_like_connect(
                plaintext, key_id=key_id, certificate_pem=materials[key_id].certificate_pem
            )
            s3.plaintexts[text] = plaintext
            lines.append(json.dumps({"Card": text}))
        s3.put_object(Bucket=BUCKET, Key=key, Body="\n".join(lines).encode())
    s3.put_object(Bucket=OTHER_BUCKET, Key="ctr/a.json", Body=b"{}")
    yield s3
    batch_rewrap.reset_container()


def invoke(tasks: list[dict[str, Any]], from_key: str = OLD1) -> dict[str, dict[str, str]]:
    event = {
        "invocationSchemaVersion": "2.0",
        "invocationId": "YXNkbGZqYWRmaiBhc2RmdW9hZHNmZGpmaGFzbGtkaGZza2RmaAo",
        "job": {"id": "job-1", "userArguments": {"FromKey": from_key}},
        "tasks": tasks,
    }
    answer = batch_rewrap.handler(event, None)
    assert answer["invocationSchemaVersion"] == "2.0"
    assert answer["invocationId"] == event["invocationId"]
    assert answer["treatMissingKeysAs"] == "PermanentFailure"
    return {r["taskId"]: r for r in answer["results"]}


def manifest_tasks(tmp_path: Any) -> list[dict[str, Any]]:
    """The tasks Batch makes of `rotator rewrap --plan`'s manifest: one per CSV line."""
    code = main(
        ["rewrap", "--from", OLD1, "--plan", f"s3://{OTHER_BUCKET}/manifests/rewrap.csv"],
        io.StringIO(),
    )
    assert code == 0
    s3 = boto3.client("s3", region_name=REGION)
    body = s3.get_object(Bucket=OTHER_BUCKET, Key="manifests/rewrap.csv")["Body"].read()
    rows = [line.split(",") for line in body.decode().splitlines()]
    assert all(len(row) == 2 for row in rows)  # bucket,key: the CSV Batch expects
    return [
        {"taskId": f"t{i}", "s3BucketName": bucket, "s3Key": key, "s3VersionId": None}
        for i, (bucket, key) in enumerate(rows)
    ]


def decryptor(s3: Any) -> Decryptor:
    keys = StaticKeys()
    for key_id, material in s3.materials.items():
        keys.add(ConnectKey.from_pem(key_id, material.private_key_pem, trusted=True))
    return Decryptor(keys)


def cards(s3: Any, key: str) -> list[str]:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    return [json.loads(line)["Card"] for line in body.splitlines()]


def test_a_batch_job_rewraps_the_manifest_s_objects(
    bucket: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    before = {key: cards(bucket, key) for key in OBJECTS}
    tasks = manifest_tasks(tmp_path)
    assert [t["s3Key"] for t in tasks] == ["ctr%2Fa.json", "ctr%2Fc%20d%2Be.json"]
    results = invoke(tasks)
    assert {r["resultCode"] for r in results.values()} == {"Succeeded"}
    assert results["t0"]["resultString"] == f"rewrapped 2 values from key {OLD1} to key {CURRENT}"
    check = decryptor(bucket)
    for key, keys in OBJECTS.items():
        after = cards(bucket, key)
        for old, new, key_id in zip(before[key], after, keys, strict=True):
            if key_id == OLD1:
                assert connect_key_id(new) == CURRENT
                assert check.decrypt(new).plaintext == bucket.plaintexts[old]
            else:
                assert new == old  # byte for byte
    versions = bucket.list_object_versions(Bucket=BUCKET, Prefix="ctr/b.json")["Versions"]
    assert len(versions) == 1  # not in the manifest, not written

    # Batch retries a task (at least once delivery): nothing left to do, nothing written.
    again = invoke(tasks[:1])
    assert again["t0"]["resultCode"] == "Succeeded"
    assert "no value under key" in again["t0"]["resultString"]
    versions = bucket.list_object_versions(Bucket=BUCKET, Prefix="ctr/a.json")["Versions"]
    assert len(versions) == 2

    said = json.dumps([results, again]) + caplog.text
    assert [p for p in bucket.plaintexts.values() if p.decode() in said] == []


def test_each_task_answers_for_itself(bucket: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = S3CiphertextStore.replace

    def changed_meanwhile(self: S3CiphertextStore, record: StoredRecord, changes: Any) -> None:
        if record.ref == "ctr/c d+e.json":
            raise ConcurrentChange("changed")
        real_replace(self, record, changes)

    monkeypatch.setattr(S3CiphertextStore, "replace", changed_meanwhile)
    results = invoke(
        [
            # schema 1.0's form of the bucket, also accepted
            {"taskId": "arn", "s3BucketArn": f"arn:aws:s3:::{BUCKET}", "s3Key": "ctr/a.json"},
            {"taskId": "changed", "s3BucketName": BUCKET, "s3Key": "ctr/c+d%2Be.json"},
            {"taskId": "gone", "s3BucketName": BUCKET, "s3Key": "ctr/gone.json"},
            {"taskId": "elsewhere", "s3BucketName": OTHER_BUCKET, "s3Key": "ctr/a.json"},
            {"taskId": "prefix", "s3BucketName": BUCKET, "s3Key": "other/a.json"},
        ]
    )
    codes = {task: r["resultCode"] for task, r in results.items()}
    assert codes == {
        "arn": "Succeeded",
        "changed": "TemporaryFailure",
        "gone": "PermanentFailure",
        "elsewhere": "PermanentFailure",
        "prefix": "PermanentFailure",
    }
    assert "no registered store" in results["elsewhere"]["resultString"]
    assert connect_key_id(cards(bucket, "ctr/c d+e.json")[0]) == OLD1  # left for the retry
    assert (
        invoke([{"taskId": "x", "s3BucketName": BUCKET, "s3Key": "ctr/a.json"}], "")["x"][
            "resultCode"
        ]
        == "PermanentFailure"
    )
    refused = invoke([{"taskId": "cur", "s3BucketName": BUCKET, "s3Key": "ctr/b.json"}], CURRENT)
    assert refused["cur"]["resultCode"] == "PermanentFailure"
    assert "current key" in refused["cur"]["resultString"]


@pytest.mark.parametrize(
    "event",
    [
        None,
        "tasks",
        [],
        {},
        {"invocationSchemaVersion": "1.0", "tasks": []},
        {"invocationSchemaVersion": "2.0", "tasks": "nope", "job": {}},
        {"invocationSchemaVersion": "2.0", "tasks": [], "job": {"userArguments": "x"}},
    ],
)
def test_an_event_that_is_no_batch_invocation_is_a_clear_error(event: Any) -> None:
    from rotator.errors import ConfigError

    with pytest.raises(ConfigError, match="schema 2.0"):
        batch_rewrap.handler(event, None)


def test_a_task_that_is_no_object_fails_alone(bucket: Any) -> None:
    event = {
        "invocationSchemaVersion": "2.0",
        "invocationId": "id",
        "job": {"id": "job-1", "userArguments": {"FromKey": OLD1}},
        "tasks": ["ctr/a.json", {"taskId": "a", "s3BucketName": BUCKET, "s3Key": "ctr/a.json"}],
    }
    results = batch_rewrap.handler(event, None)["results"]
    assert [(r["taskId"], r["resultCode"]) for r in results] == [
        (None, "PermanentFailure"),
        ("a", "Succeeded"),
    ]
    assert results[0]["resultString"] == "a task that is not a JSON object"
