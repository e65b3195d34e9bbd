"""Issue 13's crash proof with real processes: `rotator rewrap` against `rotator sandbox` (moto's
S3 and DynamoDB over HTTP) is SIGKILLed twice, once right after a write came back (the record
written, its checkpoint line not yet), once from outside at whatever moment the checkpoint
reached some lines; `--resume` then finishes. Nothing is written twice (one write per record,
counted at the wire, and exactly one new S3 version per object), nothing is lost (every value of
the old key is under the current key and decrypts to its original), the rest is untouched byte
for byte, and no output holds a plaintext.

The killed process runs the rotator's own CLI entry point through a wrapper (WRITES) that hooks
botocore's call events: the product has no test hooks.
"""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import boto3

from lambda_decrypt.decrypt import Decryptor
from lambda_decrypt.keys import ConnectKey, StaticKeys
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.keys import KeyMaterial, self_signed_material
from rotator.domain.lifecycle import KeyRecord, KeyState
from rotator.domain.stored_ciphertext import connect_key_id
from tests.test_cli_e2e import (
    CLI_TIMEOUT,
    SandboxProcess,
    sandbox_process,  # noqa: F401 - the module's `rotator sandbox` process, a fixture
)
from tests.world import KeyPool

OLD, OTHER, CURRENT = (
    "7c1d2e3f-1111-4aaa-8bbb-00000000000a",
    "7c1d2e3f-2222-4aaa-8bbb-00000000000b",
    "7c1d2e3f-3333-4aaa-8bbb-00000000000c",
)
KEYS = (OLD, OTHER, CURRENT)
INSTANCE = "22222222-3333-4444-8555-666666666666"
PREFIX = "/rewrap-crash"
BUCKET, TABLE = "crash-contact-records", "crash-payments"
STORES = f"s3://{BUCKET}/ctr/ dynamodb://{TABLE}"
OBJECTS, LINES, ITEMS = 20, 10, 100  # 300 values; objects from CLEAN_FROM on hold no OLD value
CLEAN_FROM = 16
KILL_AFTER_WRITE = 9  # the first run dies right after its 9th write came back
KILL_AT_CHECKPOINT = 25  # the second, from outside, once the checkpoint holds 25 lines
LONG_AGO = datetime(2025, 1, 1, tzinfo=UTC)

# `rotator ARGV...` that logs each write as it is sent and again once AWS answered with success
# (process, operation, record), and with a positive N SIGKILLs itself right after the Nth write
# returned: written, not yet checkpointed. A process killed from outside may die between the
# two lines of a write that AWS carried out: "sending" without "written".
WRITES = """
import json, os, signal, sys
import boto3
from rotator.entrypoints.cli import main

kill_after, write_log = int(sys.argv[1]), sys.argv[2]
written = 0

def log(phase, model, context):
    with open(write_log, "a") as file:
        line = [phase, os.getpid(), model.name, context["record"]]
        file.write(json.dumps(line, sort_keys=True) + "\\n")
        file.flush()

def remember(params, model, context, **_):
    context["record"] = params.get("Key")
    log("sending", model, context)

def after(http_response, model, context, **_):
    global written
    if http_response.status_code != 200 or "record" not in context:
        return
    log("written", model, context)
    written += 1
    if written == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

boto3.setup_default_session()  # every client the CLI makes comes from this session
events = boto3.DEFAULT_SESSION.events
for name in ("s3.PutObject", "dynamodb.UpdateItem"):
    events.register(f"before-parameter-build.{name}", remember)
    events.register(f"after-call.{name}", after)
sys.exit(main(sys.argv[3:]))
"""


@dataclass
class Dataset:
    materials: dict[str, KeyMaterial]
    plaintext: dict[str, bytes] = field(default_factory=dict)  # record id -> its card
    key: dict[str, str] = field(default_factory=dict)  # record id -> key its card was made with


class Box:
    """The sandbox seen through boto3, and `rotator` run in it as a child process."""

    def __init__(self, sandbox: SandboxProcess, tmp_path: Path) -> None:
        self.sandbox = sandbox
        self.checkpoint = tmp_path / "rewrap.checkpoint"
        self.write_log = tmp_path / "writes.jsonl"
        self.outputs: list[str] = []
        options = {"endpoint_url": sandbox.url, "region_name": "us-east-1"}
        credentials = {
            "aws_access_key_id": sandbox.exports["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": sandbox.exports["AWS_SECRET_ACCESS_KEY"],
        }
        self.s3 = boto3.client("s3", **options, **credentials)
        self.dynamodb = boto3.client("dynamodb", **options, **credentials)
        self.ssm = boto3.client("ssm", **options, **credentials)

    def environment(self) -> dict[str, str]:
        return {
            **self.sandbox.base_environment,
            **self.sandbox.exports,
            "KEYRING_PREFIX": PREFIX,
            "ROTATOR_CIPHERTEXT_STORES": STORES,
        }

    def rewrap(self, *extra: str, kill_after: int = 0) -> subprocess.Popen[str]:
        argv = ["rewrap", "--from", OLD, "--checkpoint", str(self.checkpoint), *extra]
        return subprocess.Popen(
            [sys.executable, "-c", WRITES, str(kill_after), str(self.write_log), *argv],
            cwd=self.sandbox.workdir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self, process: subprocess.Popen[str]) -> int:
        out, err = process.communicate(timeout=CLI_TIMEOUT)
        self.outputs += [out, err]
        return process.returncode

    def checkpoint_lines(self) -> int:
        if not self.checkpoint.exists():
            return 0
        return sum(1 for line in self.checkpoint.read_text().splitlines() if line.strip())

    def writes(self) -> dict[str, list[tuple[str, int]]]:
        """Record -> its writes over every run: (phase, process), in order."""
        found: dict[str, list[tuple[str, int]]] = {}
        for line in self.write_log.read_text().splitlines():
            phase, pid, operation, record = json.loads(line)
            ref = record if operation == "PutObject" else record["pk"]["S"]
            found.setdefault(ref, []).append((phase, pid))
        return found

    def confirmed(self) -> int:
        return sum(phase == "written" for w in self.writes().values() for phase, _ in w)


def store_keys(box: Box, key_pool: KeyPool) -> dict[str, KeyMaterial]:
    keyring = SsmKeyring(box.ssm, PREFIX)
    materials = {}
    for key_id, private_key in zip(KEYS, key_pool.private_keys, strict=False):
        material = self_signed_material(private_key, now=LONG_AGO, subject="CN=crash")
        keyring.store_key(
            key_id,
            material,
            KeyRecord.for_material(
                key_id,
                material,
                instance_id=INSTANCE,
                state=KeyState.ACTIVE if key_id == CURRENT else KeyState.RETIRED,
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


def fill(box: Box, data: Dataset) -> None:
    box.s3.create_bucket(Bucket=BUCKET)
    box.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    box.dynamodb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )

    def card(record_id: str, keys: tuple[str, ...]) -> str:
        key_id = keys[len(data.key) % len(keys)]
        plaintext = f"5{len(data.key):015d}".encode()
        data.plaintext[record_id], data.key[record_id] = plaintext, key_id
        return encrypt_like_connect(
            plaintext, key_id=key_id, certificate_pem=data.materials[key_id].certificate_pem
        )

    for number in range(OBJECTS):
        keys = KEYS if number < CLEAN_FROM else (OTHER, CURRENT)
        lines = [
            json.dumps(
                {"ContactId": f"c{number:02d}-{line}", "Card": card(f"c{number:02d}-{line}", keys)}
            )
            for line in range(LINES)
        ]
        body = ("\n".join(lines) + "\n").encode()
        gzipped = number % 3 == 0
        box.s3.put_object(
            Bucket=BUCKET,
            Key=object_key(number),
            Body=gzip.compress(body, mtime=0) if gzipped else body,
        )
    for number in range(ITEMS):
        record_id = f"p{number:03d}"
        box.dynamodb.put_item(
            TableName=TABLE,
            Item={"pk": {"S": record_id}, "Payment": {"M": {"Card": {"S": card(record_id, KEYS)}}}},
        )


def object_key(number: int) -> str:
    return f"ctr/2026/12/{number:02d}.json" + (".gz" if number % 3 == 0 else "")


def cards(box: Box) -> dict[str, str]:
    """Record id -> the card ciphertext stored now, from both stores."""
    found: dict[str, str] = {}
    for number in range(OBJECTS):
        body = box.s3.get_object(Bucket=BUCKET, Key=object_key(number))["Body"].read()
        text = (gzip.decompress(body) if number % 3 == 0 else body).decode()
        for line in text.splitlines():
            record = json.loads(line)
            found[record["ContactId"]] = record["Card"]
    for page in box.dynamodb.get_paginator("scan").paginate(TableName=TABLE):
        for item in page["Items"]:
            found[item["pk"]["S"]] = item["Payment"]["M"]["Card"]["S"]
    return found


def test_a_rewrap_killed_twice_resumes_with_nothing_written_twice_and_nothing_lost(
    sandbox_process: SandboxProcess,  # noqa: F811 - the fixture imported above
    key_pool: KeyPool,
    tmp_path: Path,
) -> None:
    box = Box(sandbox_process, tmp_path)
    data = Dataset(store_keys(box, key_pool))
    fill(box, data)
    before = cards(box)
    assert len(before) == OBJECTS * LINES + ITEMS
    old_records = {
        record_id if record_id.startswith("p") else object_key(int(record_id[1:3]))
        for record_id, key_id in data.key.items()
        if key_id == OLD
    }
    assert len(old_records) == CLEAN_FROM + sum(
        1 for r, k in data.key.items() if k == OLD and r[0] == "p"
    )

    # 1. Killed by itself right after a write came back, before its checkpoint line.
    first = box.rewrap("--concurrency", "2", kill_after=KILL_AFTER_WRITE)
    assert box.finish(first) == -signal.SIGKILL, box.outputs[-1][-3000:]
    killed = {first.pid}
    assert box.confirmed() == KILL_AFTER_WRITE
    assert box.checkpoint_lines() < box.confirmed()  # the last write unrecorded

    # 2. Resumed, and killed again from outside at a moment of its own.
    second = box.rewrap("--resume", "--concurrency", "2")
    deadline = time.monotonic() + CLI_TIMEOUT
    while box.checkpoint_lines() < KILL_AT_CHECKPOINT and second.poll() is None:
        assert time.monotonic() < deadline, "the resumed rewrap made no progress"
        time.sleep(0.005)
    second.send_signal(signal.SIGKILL)
    second_code = box.finish(second)
    assert second_code == -signal.SIGKILL, "it finished before the kill: raise the dataset"
    killed.add(second.pid)

    # 3. Resumed to the end.
    third = box.rewrap("--resume", "--json")
    assert box.finish(third) == 0, box.outputs[-1][-2000:]
    result = json.loads(box.outputs[-2])
    assert result["conflicts"] == [] and result["failures"] == []
    assert result["skipped_done"] >= KILL_AT_CHECKPOINT

    # Nothing written twice: one write per record holding the old key, none elsewhere. A write
    # sent but not confirmed can only be the one a killed process died in (one per kill); if
    # the record was written again later, that conditional write succeeding proves the first
    # one never landed (the stored value was still the old one).
    writes = box.writes()
    assert set(writes) == old_records
    unconfirmed = 0
    for ref, events in writes.items():
        confirmed = [pid for phase, pid in events if phase == "written"]
        sent = [pid for phase, pid in events if phase == "sending"]
        assert len(confirmed) <= 1, (ref, events)
        lost = [pid for pid in sent if pid not in confirmed]
        assert all(pid in killed for pid in lost), (ref, events)  # the last run lost none
        assert len(sent) == len(confirmed) + len(lost) <= 2, (ref, events)
        unconfirmed += len(lost)
    assert unconfirmed <= 2 * len(killed)  # at most the writes in flight at each kill
    # ... and S3 kept exactly one old version of each rewritten object, none of the others.
    for number in range(OBJECTS):
        versions = box.s3.list_object_versions(Bucket=BUCKET, Prefix=object_key(number))
        assert len(versions["Versions"]) == (2 if number < CLEAN_FROM else 1), number

    # Nothing lost: every old value decrypts to its original under the current key; the rest
    # is untouched byte for byte.
    keys = StaticKeys()
    for key_id, material in data.materials.items():
        keys.add(ConnectKey.from_pem(key_id, material.private_key_pem, trusted=True))
    decryptor = Decryptor(keys)
    after = cards(box)
    assert after.keys() == before.keys()
    for record_id, key_id in data.key.items():
        if key_id == OLD:
            assert connect_key_id(after[record_id]) == CURRENT
            assert decryptor.decrypt(after[record_id]).plaintext == data.plaintext[record_id]
        else:
            assert after[record_id] == before[record_id]

    everything = "\n".join(box.outputs)
    assert [p for p in data.plaintext.values() if p.decode() in everything] == []
