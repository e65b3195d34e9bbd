"""Stored Connect ciphertexts: which values are ones, under which key ID, and where they sit.

Pure: a value counts as a Connect ciphertext when the decrypt path's own header check
(`lambda_decrypt.message.read_header`) accepts it, and its key ID is read from that header
without decrypting. Object bodies (JSON, JSON Lines, Firehose's concatenated JSON, gzip of any)
are walked for string values; a rewrite replaces exact values in the text, so every other byte
of the object stays as it was.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from lambda_decrypt.config import DEFAULT_MAX_MESSAGE_BYTES
from lambda_decrypt.errors import ConnectKeyRotatorError, DecryptError
from lambda_decrypt.message import decode_base64, looks_like_sdk_message, read_header
from rotator.domain.history import EventKind, HistoryEvent

GZIP_MAGIC = b"\x1f\x8b"
SAMPLE_SIZE = 5

# A value's place in a record: keys and list indexes from the top (S3: the JSON document's
# index in the object first).
ValuePath = tuple[str | int, ...]


class StoreFormatError(ConnectKeyRotatorError):
    """A stored object is not JSON, JSON Lines or gzip of either (its name, never its bytes)."""


class UnrewritableValue(ConnectKeyRotatorError):
    """A ciphertext the store cannot rewrite in place (a DynamoDB key attribute or string set
    member): counted, never rewritten, so the key it is under cannot be destroyed."""


class ConcurrentChange(ConnectKeyRotatorError):
    """A stored value changed since it was read: the conditional write was refused."""


def connect_key_id(value: object) -> str | None:
    """The key ID in the header of a Connect ciphertext (base64 text), None for anything else.

    Nothing is decrypted; the cheap prefix test spares the header check for ordinary strings.
    """
    if not looks_like_sdk_message(value):
        return None
    assert isinstance(value, str)
    try:
        message = decode_base64(value, DEFAULT_MAX_MESSAGE_BYTES)
        return read_header(message, DEFAULT_MAX_MESSAGE_BYTES).key_id
    except DecryptError:
        return None


@dataclass(frozen=True)
class StoredValue:
    """A string value inside a stored record, and where in the record it is."""

    path: ValuePath
    text: str = field(repr=False)


@dataclass(frozen=True)
class StoredRecord:
    """One unit of conditional write: an S3 object or a DynamoDB item.

    `ref` names it (the object key, or the item's key attributes as JSON); `version` is what a
    conditional write compares (the ETag; DynamoDB compares the old values themselves)."""

    store: str
    ref: str
    version: str
    values: tuple[StoredValue, ...] = field(repr=False)
    problem: str = ""  # why its values could not be read (not JSON), never its bytes

    def ciphertexts(self, key_id: str | None = None) -> list[tuple[StoredValue, str]]:
        """(value, its key ID) of each Connect ciphertext in it, only `key_id`'s if given."""
        found = []
        for value in self.values:
            header_key = connect_key_id(value.text)
            if header_key is not None and key_id in (None, header_key):
                found.append((value, header_key))
        return found


def strings_in(document: object, path: ValuePath = ()) -> Iterator[StoredValue]:
    """Every string value anywhere in a JSON document (object keys are not values)."""
    if isinstance(document, str):
        yield StoredValue(path, document)
    elif isinstance(document, Mapping):
        for key, item in document.items():
            yield from strings_in(item, (*path, str(key)))
    elif isinstance(document, list):
        for index, item in enumerate(document):
            yield from strings_in(item, (*path, index))


def is_gzip(body: bytes) -> bool:
    return body[:2] == GZIP_MAGIC


def object_text(name: str, body: bytes) -> str:
    """The JSON text of an object, gunzipped when it is gzip."""
    try:
        raw = gzip.decompress(body) if is_gzip(body) else body
        return raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError):
        raise StoreFormatError(f"{name} is neither UTF-8 JSON nor gzip of it") from None


def json_documents(name: str, text: str) -> list[object]:
    """One JSON document, JSON Lines, or documents written back to back (Firehose)."""
    decoder = json.JSONDecoder()
    documents: list[object] = []
    position = 0
    length = len(text)
    while True:
        while position < length and text[position].isspace():
            position += 1
        if position >= length:
            return documents
        try:
            document, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            raise StoreFormatError(
                f"{name} is not JSON or JSON Lines (at character {position})"
            ) from None
        documents.append(document)


def object_values(name: str, body: bytes) -> tuple[StoredValue, ...]:
    """The string values of every JSON document in an object's body."""
    documents = json_documents(name, object_text(name, body))
    return tuple(
        value
        for index, document in enumerate(documents)
        for value in strings_in(document, (index,))
    )


def rewrite_object(name: str, body: bytes, changes: Mapping[str, str]) -> bytes:
    """The body with each old value replaced by its new one as JSON text, everything else kept
    byte for byte; gzip stays gzip. A value not found verbatim (escaped differently) raises,
    so nothing is ever half rewritten."""
    text = object_text(name, body)
    for old, new in changes.items():
        old_json, new_json = json.dumps(old), json.dumps(new)
        if old_json not in text:
            raise StoreFormatError(f"{name}: a value to rewrap is not stored verbatim")
        text = text.replace(old_json, new_json)
    raw = text.encode("utf-8")
    return gzip.compress(raw, mtime=0) if is_gzip(body) else raw


@dataclass
class KeyCount:
    """Stored ciphertexts under one key ID: how many, and a few places they are."""

    count: int = 0
    samples: list[tuple[str, str]] = field(default_factory=list)  # (store, ref)


@dataclass
class Inventory:
    """Stored ciphertexts per key ID across stores; counted from headers only."""

    stores: list[str]
    keys: dict[str, KeyCount] = field(default_factory=dict)
    records_read: int = 0
    values_read: int = 0
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)  # store, ref, why

    def add(self, record: StoredRecord, *, only_key: str | None = None) -> None:
        self.records_read += 1
        self.values_read += len(record.values)
        if record.problem:
            self.unreadable.append((record.store, record.ref, record.problem))
        per_key: Counter[str] = Counter(k for _, k in record.ciphertexts(only_key))
        for key_id, count in per_key.items():
            entry = self.keys.setdefault(key_id, KeyCount())
            entry.count += count
            if len(entry.samples) < SAMPLE_SIZE:
                entry.samples.append((record.store, record.ref))

    def count(self, key_id: str) -> int:
        entry = self.keys.get(key_id)
        return entry.count if entry else 0

    def counts(self) -> dict[str, int]:
        return {key_id: entry.count for key_id, entry in sorted(self.keys.items())}

    def to_dict(self) -> dict[str, object]:
        return {
            "stores": list(self.stores),
            "records_read": self.records_read,
            "unreadable": [{"store": s, "ref": r, "problem": p} for s, r, p in self.unreadable],
            "keys": {
                key_id: {
                    "count": entry.count,
                    "sample": [{"store": s, "ref": r} for s, r in entry.samples],
                }
                for key_id, entry in sorted(self.keys.items())
            },
        }


def parse_store_uri(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket or table, prefix) of `s3://bucket/prefix` or `dynamodb://table`."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in ("s3", "dynamodb") or not rest.split("/", 1)[0]:
        raise ValueError(f"{uri!r} is not s3://bucket[/prefix] or dynamodb://table")
    name, _, prefix = rest.partition("/")
    if scheme == "dynamodb" and prefix:
        raise ValueError(f"{uri!r}: a DynamoDB store is a whole table, dynamodb://table")
    return scheme, name, prefix


def stores_from_text(text: str) -> tuple[str, ...]:
    """Store URIs from a setting: separated by commas or whitespace, each checked."""
    uris = tuple(part for part in text.replace(",", " ").split() if part)
    for uri in uris:
        parse_store_uri(uri)
    return uris


@dataclass(frozen=True)
class LastInventory:
    """A key's stored ciphertexts as the newest inventory counted them, and when."""

    at: datetime
    count: int


def last_inventories(
    events: Sequence[HistoryEvent], stores: Collection[str] | None = None
) -> dict[str, LastInventory]:
    """Key ID -> the newest inventory that counted it (a full inventory counts every key; one
    limited to a key counts only that key, zero included). With `stores`, only inventories of
    exactly those stores count: one of other stores, or of some of them, says nothing about
    what the registered stores hold."""
    wanted = None if stores is None else frozenset(stores)
    latest: dict[str, LastInventory] = {}
    for event in events:
        if event.kind != EventKind.STORED_CIPHERTEXTS:
            continue
        counts = event.details.get("counts", {})
        if not isinstance(counts, dict):
            continue
        read = event.details.get("stores", [])
        if wanted is not None and (not isinstance(read, list) or frozenset(read) != wanted):
            continue
        only = event.details.get("only_key")
        named = {str(only): int(counts.get(only, 0))} if only else {}
        for key, count in {**{str(k): int(v) for k, v in counts.items()}, **named}.items():
            if key not in latest or latest[key].at <= event.at:
                latest[key] = LastInventory(event.at, count)
    return latest
