"""The proof on moto S3 and DynamoDB through `rotator`: 2,000 contact records in 40 objects
(JSON Lines, some gzipped) and 500 items under two old keys and the current one. Inventory counts
exactly; destroy is refused before the rewrap; a concurrent change fails one object's write,
which --resume retries; the old key's values, and only those, are rewrapped and decrypt to the
originals; destroy is allowed after; no plaintext reaches the output or the logs."""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer

from lambda_decrypt.decrypt import Decryptor
from lambda_decrypt.keys import ConnectKey, StaticKeys
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.adapters.stores import S3CiphertextStore
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.history import EventKind
from rotator.domain.keys import KeyMaterial, self_signed_material
from rotator.domain.lifecycle import KeyRecord, KeyState
from rotator.domain.stored_ciphertext import StoredRecord, connect_key_id
from rotator.entrypoints.cli import main
from tests.conftest import REGION
from tests.fakes import HeldKeys
from tests.world import KeyPool

OLD1, OLD2, CURRENT = (
    "0f6a1c2e-1111-4aaa-8bbb-000000000001",
    "0f6a1c2e-2222-4aaa-8bbb-000000000002",
    "0f6a1c2e-3333-4aaa-8bbb-000000000003",
)
KEYS = (OLD1, OLD2, CURRENT)
INSTANCE = "11111111-2222-4333-8444-555555555555"
PREFIX = "/rewrap-proof"
BUCKET, TABLE = "contact-records", "payments"
STORES = f"s3://{BUCKET}/ctr/ dynamodb://{TABLE}"
LONG_AGO = datetime(2025, 1, 1, tzinfo=UTC)  # retired then: retention long over
PLAINTEXT_DIGITS = 16
WINDOWS = re.compile(rf"(?=(\d{{{PLAINTEXT_DIGITS}}}))")  # every 16-digit window, overlapping


@dataclass
class Dataset:
    materials: dict[str, KeyMaterial]
    plaintext: dict[str, bytes] = field(default_factory=dict)  # record id -> its card
    key: dict[str, str] = field(default_factory=dict)  # record id -> key its card was made with


def _store_keys(ssm: Any, key_pool: KeyPool) -> dict[str, KeyMaterial]:
    keyring = SsmKeyring(ssm, PREFIX)
    materials = {}
    for key_id, private_key in zip(KEYS, key_pool.private_keys, strict=False):
        material = self_signed_material(private_key, now=LONG_AGO, subject=f"CN={key_id[-1]}")
        state = KeyState.ACTIVE if key_id == CURRENT else KeyState.RETIRED
        keyring.store_key(
            key_id,
            material,
            KeyRecord.for_material(
                key_id,
                material,
                instance_id=INSTANCE,
                state=state,
                at=LONG_AGO,
                actor="test",
                reason="fixture",
                source="test",
                kms_key_id=None,
            ),
        )
        materials[key_id] = material
    keyring.set_current(INSTANCE, CURRENT)
    return materials


def _fill(data: Dataset) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=BUCKET, Key="other/ignored.json", Body=b"{}")  # outside the prefix
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    index = 0

    def card(record_id: str) -> str:
        nonlocal index
        key_id = KEYS[index % 3]
        index += 1
        plaintext = f"49{index:014d}".encode()
        data.plaintext[record_id], data.key[record_id] = plaintext, key_id
        return encrypt_like_connect(
            plaintext, key_id=key_id, certificate_pem=data.materials[key_id].certificate_pem
        )

    for number in range(40):
        lines = []
        for line in range(50):
            record_id = f"c{number:02d}-{line:02d}"
            lines.append(
                json.dumps(
                    {
                        "ContactId": record_id,
                        "Attributes": {"Card": card(record_id), "Queue": "payments"},
                        "Agent": None,
                    }
                )
            )
        body = ("\n".join(lines) + "\n").encode()
        gzipped = number % 4 == 0
        s3.put_object(
            Bucket=BUCKET,
            Key=f"ctr/2026/11/{number:02d}.json" + (".gz" if gzipped else ""),
            Body=gzip.compress(body) if gzipped else body,
        )
    for number in range(500):
        record_id = f"p{number:03d}"
        dynamodb.put_item(
            TableName=TABLE,
            Item={
                "pk": {"S": record_id},
                "Payment": {"M": {"Card": {"S": card(record_id)}, "Amount": {"N": "12"}}},
                "Tags": {"L": [{"S": "ivr"}]},
            },
        )


def _cards() -> dict[str, str]:
    """Record id -> the card ciphertext stored now, from both stores."""
    s3 = boto3.client("s3", region_name=REGION)
    found: dict[str, str] = {}
    for entry in s3.list_objects_v2(Bucket=BUCKET, Prefix="ctr/")["Contents"]:
        body = s3.get_object(Bucket=BUCKET, Key=entry["Key"])["Body"].read()
        text = (gzip.decompress(body) if entry["Key"].endswith(".gz") else body).decode()
        for line in text.splitlines():
            record = json.loads(line)
            if "ContactId" in record:
                found[record["ContactId"]] = record["Attributes"]["Card"]
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    deserialize = TypeDeserializer().deserialize
    for page in dynamodb.get_paginator("scan").paginate(TableName=TABLE):
        for item in page["Items"]:
            found[str(deserialize(item["pk"]))] = item["Payment"]["M"]["Card"]["S"]
    return found


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out)
    return code, out.getvalue()


def test_inventory_rewrap_and_destroy_on_s3_and_dynamodb(
    aws: None,
    key_pool: KeyPool,
    connect_holds: HeldKeys,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("KEYRING_PREFIX", PREFIX)
    monkeypatch.setenv("ROTATOR_CIPHERTEXT_STORES", STORES)
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    ssm = boto3.client("ssm", region_name=REGION)
    data = Dataset(_store_keys(ssm, key_pool))
    _fill(data)
    before = _cards()
    assert len(before) == 2500
    expected = {k: sum(1 for v in data.key.values() if v == k) for k in KEYS}
    outputs: list[str] = []

    # Inventory counts exactly, headers only, and is recorded in the history.
    code, out = _run("inventory", "--json")
    outputs.append(out)
    assert code == 0
    inventory = json.loads(out)
    assert {k: v["count"] for k, v in inventory["keys"].items()} == expected
    assert inventory["records_read"] == 540 and inventory["unreadable"] == []
    assert len(inventory["keys"][OLD1]["sample"]) == 5

    # destroy is refused while OLD1's ciphertexts remain, naming the rewrap.
    code, out = _run("destroy", OLD1, "--yes")
    outputs.append(out)
    assert code == 1
    assert f"rotator rewrap --from {OLD1}" in capsys.readouterr().err

    # A concurrent change to one object fails its write; the others are rewrapped.
    changed = "ctr/2026/11/00.json.gz"
    real_replace = S3CiphertextStore.replace

    def outside_writer_first(self: S3CiphertextStore, record: StoredRecord, changes: Any) -> None:
        if record.ref == changed:
            s3 = boto3.client("s3", region_name=REGION)
            body = gzip.decompress(s3.get_object(Bucket=BUCKET, Key=changed)["Body"].read())
            late = body + b'{"Late": "a record Firehose added"}\n'
            s3.put_object(Bucket=BUCKET, Key=changed, Body=gzip.compress(late))
        real_replace(self, record, changes)

    monkeypatch.setattr(S3CiphertextStore, "replace", outside_writer_first)
    checkpoint = tmp_path / "rewrap.checkpoint"
    code, out = _run(
        "rewrap", "--from", OLD1, "--checkpoint", str(checkpoint), "--concurrency", "3"
    )
    outputs.append(out)
    assert code == 1
    assert f"changed while rewrapping, left for --resume: s3://{BUCKET}/ctr/ {changed}" in out
    monkeypatch.setattr(S3CiphertextStore, "replace", real_replace)
    s3 = boto3.client("s3", region_name=REGION)
    body = gzip.decompress(s3.get_object(Bucket=BUCKET, Key=changed)["Body"].read())
    first = json.loads(body.decode().splitlines()[0])
    assert first["ContactId"] == "c00-00" and data.key["c00-00"] == OLD1
    assert first["Attributes"]["Card"] == before["c00-00"]  # untouched, still the old key's

    code, out = _run("rewrap", "--from", OLD1, "--checkpoint", str(checkpoint))
    assert code == 1 and "--resume" in capsys.readouterr().err

    code, out = _run(
        "rewrap", "--from", OLD1, "--checkpoint", str(checkpoint), "--resume", "--json"
    )
    outputs.append(out)
    assert code == 0
    resumed = json.loads(out)
    in_changed = sum(1 for r, k in data.key.items() if k == OLD1 and r.startswith("c00-"))
    assert resumed["values_rewrapped"] == in_changed and resumed["conflicts"] == []

    # Exactly OLD1's values were rewrapped, each decrypts to its original; the rest untouched.
    after = _cards()
    keys = StaticKeys()
    for key_id, material in data.materials.items():
        keys.add(ConnectKey.from_pem(key_id, material.private_key_pem, trusted=True))
    decryptor = Decryptor(keys)
    for record_id, key_id in data.key.items():
        if key_id == OLD1:
            assert connect_key_id(after[record_id]) == CURRENT
            assert decryptor.decrypt(after[record_id]).plaintext == data.plaintext[record_id]
        else:
            assert after[record_id] == before[record_id]
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix="ctr/2026/11/01.json")
    assert len(versions["Versions"]) == 2  # the old object kept as a version

    code, out = _run("inventory", "--json")
    outputs.append(out)
    counts = {k: v["count"] for k, v in json.loads(out)["keys"].items()}
    assert counts == {OLD2: expected[OLD2], CURRENT: expected[CURRENT] + expected[OLD1]}

    # destroy is allowed now; OLD2 is still refused.
    code, out = _run("destroy", OLD1, "--yes")
    outputs.append(out)
    assert code == 0 and "destroyed" in out
    assert _run("destroy", OLD2, "--yes")[0] == 1
    events = [
        e
        for e in SsmKeyring(ssm, PREFIX).history_events()
        if e.kind == EventKind.STORED_CIPHERTEXTS
    ]
    assert len(events) >= 5

    # Nothing printed or logged holds a plaintext.
    captured = capsys.readouterr()
    everything = "\n".join([*outputs, captured.out, captured.err, caplog.text])
    assert leaked_plaintexts(data, everything) == set()


def leaked_plaintexts(data: Dataset, text: str) -> set[bytes]:
    """The plaintexts found anywhere in `text`. Every plaintext is 16 digits, so each one in
    `text` is one of its 16-digit windows: one pass over the text, not one per plaintext."""
    assert {len(p) for p in data.plaintext.values()} == {PLAINTEXT_DIGITS}
    assert all(p.isdigit() for p in data.plaintext.values())
    windows = {match.group(1) for match in WINDOWS.finditer(text)}
    return {p for p in data.plaintext.values() if p.decode() in windows}
