"""One contract per port, run against the fake and the real adapter (moto, the Connect emulator):
the same assertions hold for both, so a fake cannot drift from what it stands in for."""

from __future__ import annotations

import gzip
import io
import json
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeSerializer
from botocore.config import Config
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from lambda_decrypt import Decryptor
from rotator.adapters.connect import ConnectGateway
from rotator.adapters.evidence_reads import KmsKeyEncryptionKeys, LambdaFunctionEnvironments
from rotator.adapters.identity import StsIdentity
from rotator.adapters.lock import SsmLock
from rotator.adapters.publishing import AwsPublisher, split_s3_location
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.adapters.stores import DynamoDbCiphertextStore, FileCheckpoint, S3CiphertextStore
from rotator.clock import SystemClock
from rotator.config import Settings
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.flows import FlowKind, FlowRef, encrypting_blocks, point_blocks_at_key
from rotator.domain.history import ClockKind, EventKind, HistoryEvent
from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import KeyState
from rotator.domain.rotation import ManagedInstance, RotationState, RotationStep, StepDone
from rotator.domain.stored_ciphertext import ConcurrentChange, UnrewritableValue
from rotator.errors import (
    AwsCallError,
    ConfigError,
    KeyringConflict,
    KeyringError,
    LockHeld,
    LockLost,
    NotFound,
)
from rotator.ports import (
    BusEvent,
    Clock,
    Connect,
    FunctionEnvironments,
    Identity,
    KeyEncryptionKeys,
    KeyPart,
    Keyring,
    Lock,
    Metric,
    Publisher,
)
from rotator.sandbox.sample_flows import (
    CARD_INPUT_ACTION,
    payment_flow_content,
    payment_module_content,
)
from rotator.sandbox.server import Sandbox
from rotator.services.canary import VerificationFailed, prove_key_decrypts, prove_stored_key
from rotator.services.rotation import Outcome, RotationService
from tests.conftest import NOW, REGION, keep_rotation, make_record
from tests.fakes import (
    FakeCheckpoint,
    FakeCiphertextStore,
    FakeClock,
    FakeConnect,
    FakeFunctionEnvironments,
    FakeIdentity,
    FakeKeyEncryptionKeys,
    FakeKeyring,
    FakeLock,
    FakePublisher,
    init_payment_instance,
)
from tests.world import KeyPool

KEY_A, KEY_B = "key-a", "key-b"
INSTANCE = "instance-1"
_prefixes = iter(range(1, 10_000))

# -- Keyring ------------------------------------------------------------------------------------


@dataclass
class KeyringBackend:
    keyring: Any  # FakeKeyring or SsmKeyring: the port, and history.events() to observe
    put_outside: Callable[[str, str], None]  # a parameter outside the keyring (the blog's)
    delete_outside: Callable[[str], None]


@pytest.fixture(params=["fake", "ssm"])
def backend(request: pytest.FixtureRequest) -> KeyringBackend:
    if request.param == "fake":
        fake = FakeKeyring()
        return KeyringBackend(fake, fake.outside.__setitem__, fake.outside.__delitem__)
    ssm = request.getfixturevalue("ssm")

    def put_outside(name: str, value: str) -> None:
        ssm.put_parameter(Name=name, Value=value, Type="SecureString")

    def delete_outside(name: str) -> None:
        ssm.delete_parameter(Name=name)

    return KeyringBackend(
        SsmKeyring(ssm, f"/contract-{next(_prefixes)}"), put_outside, delete_outside
    )


@pytest.fixture
def keyring(backend: KeyringBackend) -> Keyring:
    port: Keyring = backend.keyring
    return port


def test_a_stored_key_reads_back_whole(keyring: Keyring, material_a: KeyMaterial) -> None:
    record = make_record(KEY_A, material_a)
    keyring.store_key(KEY_A, material_a, record)
    assert keyring.read_material(KEY_A).public_key_sha256 == material_a.public_key_sha256
    assert keyring.read_certificate(KEY_A) == material_a.certificate_pem
    assert keyring.read_private_key_pem(KEY_A) == material_a.private_key_pem
    assert keyring.find_private_key(KEY_A) == material_a.private_key_pem
    assert keyring.stored_parts(KEY_A) == {KeyPart.PRIVATE_KEY, KeyPart.CERTIFICATE}
    assert keyring.get_record(KEY_A) == record == keyring.find_record(KEY_A)
    assert keyring.records() == [record]
    keyring.store_key(KEY_A, material_a, record)  # a re-run is a no-op
    assert keyring.records() == [record]


def test_a_private_key_is_created_once_and_never_replaced(
    keyring: Keyring, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    keyring.create_private_key(KEY_A, material_a.private_key_pem)
    keyring.create_private_key(KEY_A, material_a.private_key_pem)  # a retry: fine
    with pytest.raises(KeyringConflict, match="never replaced"):
        keyring.create_private_key(KEY_A, material_b.private_key_pem)
    with pytest.raises(KeyringConflict):
        keyring.store_key(KEY_A, material_b, make_record(KEY_A, material_b))
    assert keyring.read_private_key_pem(KEY_A) == material_a.private_key_pem


def test_what_is_missing_reads_as_missing(keyring: Keyring, material_a: KeyMaterial) -> None:
    for read in (keyring.read_material, keyring.read_certificate, keyring.read_private_key_pem):
        with pytest.raises(NotFound, match=KEY_A):
            read(KEY_A)
    with pytest.raises(NotFound, match=f"no key {KEY_A}"):
        keyring.get_record(KEY_A)
    assert keyring.find_record(KEY_A) is None
    assert keyring.find_private_key(KEY_A) is None
    assert keyring.stored_parts(KEY_A) == frozenset()
    keyring.create_private_key(KEY_B, material_a.private_key_pem)
    assert keyring.stored_private_keys([KEY_A, KEY_B]) == {KEY_B}
    assert keyring.stored_parts(KEY_B) == {KeyPart.PRIVATE_KEY}
    with pytest.raises(NotFound, match="certificate"):
        keyring.read_material(KEY_B)


def test_a_deleted_private_key_is_gone_and_deleting_again_is_fine(
    keyring: Keyring, material_a: KeyMaterial
) -> None:
    keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    keyring.delete_private_key(KEY_A)
    keyring.delete_private_key(KEY_A)
    assert keyring.stored_parts(KEY_A) == {KeyPart.CERTIFICATE}
    assert keyring.stored_private_keys([KEY_A]) == set()
    assert keyring.find_record(KEY_A) is not None  # metadata stays
    keyring.store_certificate(KEY_A, material_a.certificate_pem)
    keyring.create_private_key(KEY_A, material_a.private_key_pem)  # a restore
    assert keyring.read_material(KEY_A).public_key_sha256 == material_a.public_key_sha256


def test_a_staged_key_reads_back_and_is_created_once(
    keyring: Keyring, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    assert keyring.read_staged("r1") is None
    keyring.stage_key("r1", material_a)
    keyring.stage_key("r1", material_a)  # a redone step
    staged = keyring.read_staged("r1", validated=True)
    assert staged is not None and staged.public_key_sha256 == material_a.public_key_sha256
    with pytest.raises(KeyringConflict):
        keyring.stage_key("r1", material_b)
    assert keyring.stored_parts("r1") == frozenset()  # staging is not a stored key
    keyring.delete_staging("r1")
    keyring.delete_staging("r1")
    assert keyring.read_staged("r1") is None


def test_staging_no_unfinished_rotation_owns_is_orphaned(
    keyring: Keyring, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    assert keyring.orphaned_staging() == set()
    running = RotationState("r-running", INSTANCE, RotationStep.STARTED, NOW, "test", None)
    keep_rotation(keyring, running, at=NOW)
    keyring.stage_key("r-running", material_a)
    keyring.stage_key("r-lost", material_b)
    assert keyring.orphaned_staging() == {"r-lost"}
    keep_rotation(keyring, running.advance(RotationStep.DONE), at=NOW)
    assert keyring.orphaned_staging() == {"r-lost", "r-running"}


def test_instances_current_keys_and_rotations(keyring: Keyring) -> None:
    assert keyring.get_instance(INSTANCE) is None
    assert keyring.get_current(INSTANCE) is None
    assert keyring.get_rotation(INSTANCE) is None
    second = ManagedInstance("instance-0", ("flow-2",), ())
    first = ManagedInstance(INSTANCE, ("flow-1",), ("module-1",))
    keyring.put_instance(first)
    keyring.put_instance(second)
    assert keyring.get_instance(INSTANCE) == first
    assert keyring.managed_instances() == [second, first]
    keyring.set_current(INSTANCE, KEY_A)
    keyring.set_current(INSTANCE, KEY_B)
    assert keyring.get_current(INSTANCE) == KEY_B
    state = RotationState("r1", INSTANCE, RotationStep.STARTED, NOW, "test", None, reason="first")
    keep_rotation(keyring, state, at=NOW)
    assert keyring.get_rotation(INSTANCE) == state


def test_changes_are_recorded_in_the_history(
    backend: KeyringBackend, material_a: KeyMaterial
) -> None:
    keyring = backend.keyring
    pending = make_record(KEY_A, material_a, state=KeyState.PENDING)
    keyring.store_key(KEY_A, material_a, pending)
    keyring.put_record(pending)  # unchanged: no new event
    active = pending.transition(KeyState.ACTIVE, at=NOW, actor="test", reason="promoted")
    keyring.write_record(active)
    state = RotationState("r1", INSTANCE, RotationStep.STARTED, NOW, "test", None)
    keep_rotation(keyring, state, at=NOW)
    kinds = [(e.kind, e.scope) for e in keyring.history.events()]
    assert kinds.count((EventKind.KEY_TRANSITION, INSTANCE)) == 2
    assert kinds.count((EventKind.ROTATION_STEP, INSTANCE)) == 1
    assert keyring.get_record(KEY_A) == active


def test_steps_written_together_keep_their_order_and_move_the_record_only_when_asked(
    backend: KeyringBackend, material_a: KeyMaterial
) -> None:
    keyring = backend.keyring
    started = RotationState("r1", INSTANCE, RotationStep.STARTED, NOW, "test", None)
    keep_rotation(keyring, started, at=NOW)
    stored = started.advance(RotationStep.STORED, new_key_id=KEY_A)
    pending = make_record(KEY_A, material_a, state=KeyState.PENDING)
    keyring.create_private_key(KEY_A, material_a.private_key_pem)
    keyring.put_rotation(
        [
            StepDone(started.advance(RotationStep.STAGED)),
            StepDone(started.advance(RotationStep.ASSOCIATED, new_key_id=KEY_A)),
            StepDone(stored, (pending,)),
        ],
        at=NOW,
    )
    assert keyring.get_rotation(INSTANCE) == started  # no checkpoint: the redo starts there
    assert keyring.get_record(KEY_A) == pending
    active = pending.transition(KeyState.ACTIVE, at=NOW, actor="test", reason="current key")
    retired = active.transition(KeyState.RETIRED, at=NOW, actor="test", reason="emergency")
    done = stored.advance(RotationStep.DONE)
    keyring.put_rotation(
        [
            StepDone(stored.advance(RotationStep.PROMOTED), (active,)),
            StepDone(done, (retired,)),
        ],
        at=NOW,
        current=KEY_A,
        checkpoint=done,
    )
    assert keyring.get_rotation(INSTANCE) == done
    assert keyring.get_current(INSTANCE) == KEY_A
    assert keyring.get_record(KEY_A) == retired  # each key's latest record
    recorded = [
        e.details.get("step") or e.details.get("state") for e in keyring.history.events(INSTANCE)
    ]
    assert recorded == [
        *("started", "staged", "associated", "pending", "stored"),
        *("active", "promoted", "retired", "done"),
    ]


def test_an_appended_event_is_kept_with_the_keyring_s_clock(backend: KeyringBackend) -> None:
    keyring: Keyring = backend.keyring
    event = HistoryEvent(
        kind=EventKind.EXPIRY_EVENT_SENT,
        at=NOW,
        actor="test",
        instance_id=INSTANCE,
        key_id=KEY_A,
        reason="crossed 30 days",
        details={"threshold": 30, "covered": [45, 30]},
        clock=ClockKind.SIMULATED,
    )
    keyring.append_event(event)
    (kept,) = keyring.history_events()
    assert kept == replace(event, clock=ClockKind.REAL)  # the keyring's clock, not the caller's
    assert kept.scope == INSTANCE


def test_the_canary_decrypts_with_stored_keys_only(
    keyring: Keyring, material_a: KeyMaterial
) -> None:
    keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    prove_key_decrypts(keyring, KEY_A, material_a.certificate_pem)
    message = encrypt_like_connect(b"4111", key_id=KEY_A, certificate_pem=material_a.public_key_pem)
    assert Decryptor(keyring.decrypt_keys()).decrypt(message).plaintext == b"4111"
    with pytest.raises(VerificationFailed, match="unknown_key"):
        prove_key_decrypts(keyring, KEY_B, material_a.certificate_pem)
    record = keyring.get_record(KEY_A)
    for state in (KeyState.RETIRED, KeyState.DESTROYED):
        record = record.transition(state, at=NOW, actor="test", reason="test")
        keyring.write_record(record)
    with pytest.raises(VerificationFailed, match="key_destroyed"):
        prove_key_decrypts(keyring, KEY_A, material_a.certificate_pem)
    keyring.delete_private_key(KEY_A)
    with pytest.raises(VerificationFailed, match="key_destroyed"):
        prove_key_decrypts(keyring, KEY_A, material_a.certificate_pem)


def test_a_stored_key_reads_back_the_way_the_lambda_loads_it(
    keyring: Keyring, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    """One read by the decrypt Lambda's reader: the bytes it loaded are the ones validated, and
    they decrypt; the same key in other bytes is refused although it decrypts."""
    keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    prove_stored_key(keyring, KEY_A, material_a.private_key_pem, material_a.certificate_pem)
    loaded = load_pem_private_key(material_a.private_key_pem.encode(), password=None)
    others = [
        loaded.private_bytes(Encoding.PEM, form, NoEncryption()).decode()
        for form in (PrivateFormat.PKCS8, PrivateFormat.TraditionalOpenSSL)
    ]
    [reencoded] = [pem for pem in others if pem != material_a.private_key_pem]
    keyring.create_private_key(KEY_B, reencoded)
    prove_key_decrypts(keyring, KEY_B, material_a.certificate_pem)  # the same key: it decrypts
    with pytest.raises(KeyringError, match=f"key {KEY_B} did not read back as stored"):
        prove_stored_key(keyring, KEY_B, material_a.private_key_pem, material_a.certificate_pem)
    with pytest.raises(VerificationFailed, match="failed its canary"):
        prove_stored_key(keyring, KEY_A, material_a.private_key_pem, material_b.certificate_pem)
    with pytest.raises(KeyringError, match=r"key no-such-key did not read back \(unknown_key\)"):
        prove_stored_key(keyring, "no-such-key", material_a.private_key_pem, "unused")


def test_private_key_protection_names_each_private_key_and_its_kms_key(
    keyring: Keyring, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    assert keyring.private_key_protection() == {}
    keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    keyring.stage_key("r1", material_b)
    protection = keyring.private_key_protection()
    assert list(protection) == [KEY_A]
    assert protection[KEY_A].kms_key_id == "alias/aws/ssm"
    assert KEY_A in protection[KEY_A].location
    sweep = keyring.protection_sweep()
    assert sweep.keys == protection
    assert list(sweep.staged) == ["r1"] and sweep.staged["r1"].kms_key_id == "alias/aws/ssm"
    keyring.delete_staging("r1")
    keyring.delete_private_key(KEY_A)
    assert keyring.protection_sweep().keys == keyring.protection_sweep().staged == {}


@pytest.mark.parametrize("kind", ["fake", "ssm"])
def test_private_keys_are_protected_by_the_configured_kms_key(
    request: pytest.FixtureRequest, kind: str, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    ssm = request.getfixturevalue("ssm")  # moto's KMS makes the key for both
    kms_key = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    keyring: Keyring = (
        FakeKeyring(kms_key_id=kms_key)
        if kind == "fake"
        else SsmKeyring(ssm, f"/contract-{next(_prefixes)}", kms_key_id=kms_key)
    )
    assert keyring.kms_key_id == kms_key
    keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    keyring.stage_key("r1", material_b)
    sweep = keyring.protection_sweep()
    assert sweep.keys[KEY_A].kms_key_id == sweep.staged["r1"].kms_key_id == kms_key


def test_the_blog_key_is_read_from_its_two_parameters(
    backend: KeyringBackend, material_a: KeyMaterial
) -> None:
    keyring: Keyring = backend.keyring
    with pytest.raises(NotFound, match="/blog/key, /blog/key-id"):
        keyring.read_blog_key("/blog/key", "/blog/key-id")
    backend.put_outside("/blog/key", material_a.private_key_pem)
    with pytest.raises(NotFound, match="not found: /blog/key-id$"):
        keyring.read_blog_key("/blog/key", "/blog/key-id")
    backend.put_outside("/blog/key-id", f" {KEY_A}\n")
    assert keyring.read_blog_key("/blog/key", "/blog/key-id") == (
        KEY_A,
        material_a.private_key_pem,
    )


def test_parameters_outside_the_keyring_are_found_by_name_without_their_values(
    backend: KeyringBackend, material_a: KeyMaterial
) -> None:
    keyring: Keyring = backend.keyring
    names = ["CONNECT_INPUT_DECRYPTION_KEY", "/blog/key", "/blog/never-created"]
    assert keyring.existing_outside(names) == set()
    backend.put_outside("CONNECT_INPUT_DECRYPTION_KEY", material_a.private_key_pem)
    backend.put_outside("/blog/key", material_a.private_key_pem)
    backend.put_outside("/blog/key-2", material_a.private_key_pem)  # not asked for
    assert keyring.existing_outside(names) == {"CONNECT_INPUT_DECRYPTION_KEY", "/blog/key"}
    backend.delete_outside("/blog/key")
    assert keyring.existing_outside(names) == {"CONNECT_INPUT_DECRYPTION_KEY"}
    assert keyring.existing_outside([]) == set()


# -- Connect ------------------------------------------------------------------------------------


@dataclass
class ConnectBackend:
    connect: Connect
    new_instance: Callable[[], str]
    new_flow: Callable[[str, str, FlowKind], FlowRef]


def _emulator_client(sandbox: Sandbox) -> Any:
    return boto3.client(
        "connect",
        endpoint_url=sandbox.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}),
    )


@pytest.fixture(params=["fake", "emulator"])
def connect_backend(request: pytest.FixtureRequest) -> ConnectBackend:
    if request.param == "fake":
        fake = FakeConnect()
        return ConnectBackend(fake, fake.create_instance, fake.create_flow)
    sandbox: Sandbox = request.getfixturevalue("sandbox")
    client = _emulator_client(sandbox)
    names = iter(range(1, 1000))

    def new_instance() -> str:
        return str(
            client.create_instance(
                IdentityManagementType="CONNECT_MANAGED",
                InboundCallsEnabled=True,
                OutboundCallsEnabled=False,
            )["Id"]
        )

    def new_flow(instance_id: str, content: str, kind: FlowKind) -> FlowRef:
        name = f"flow-{next(names)}"
        if kind is FlowKind.FLOW:
            flow_id = client.create_contact_flow(
                InstanceId=instance_id, Name=name, Type="CONTACT_FLOW", Content=content
            )["ContactFlowId"]
        else:
            flow_id = client.create_contact_flow_module(
                InstanceId=instance_id, Name=name, Content=content
            )["Id"]
        return FlowRef(kind, str(flow_id))

    return ConnectBackend(ConnectGateway(client), new_instance, new_flow)


def _reason(error: pytest.ExceptionInfo[AwsCallError]) -> str:
    return error.value.reason


def test_connect_holds_two_keys_and_each_public_key_once(
    connect_backend: ConnectBackend,
    material_a: KeyMaterial,
    material_b: KeyMaterial,
    material_2048: KeyMaterial,
) -> None:
    connect = connect_backend.connect
    instance = connect_backend.new_instance()
    assert connect.list_security_keys(instance) == []
    first = connect.associate_security_key(instance, material_a.public_key_pem, "token-1")
    assert connect.associate_security_key(instance, material_a.public_key_pem, "token-1") == first
    with pytest.raises(AwsCallError) as same_key:
        connect.associate_security_key(instance, material_a.public_key_pem, "token-2")
    assert _reason(same_key) == "ResourceConflictException"
    with pytest.raises(AwsCallError) as token_reused:
        connect.associate_security_key(instance, material_b.public_key_pem, "token-1")
    assert _reason(token_reused) == "ResourceConflictException"
    second = connect.associate_security_key(instance, material_b.public_key_pem, "token-3")
    with pytest.raises(AwsCallError) as third:
        connect.associate_security_key(instance, material_2048.public_key_pem, "token-4")
    assert _reason(third) == "ServiceQuotaExceededException"
    listed = connect.list_security_keys(instance)
    assert [(k.key_id, k.public_key_pem) for k in listed] == [
        (first, material_a.public_key_pem),
        (second, material_b.public_key_pem),
    ]


def test_connect_refuses_what_is_not_a_short_rsa_public_key(
    connect_backend: ConnectBackend, material_a: KeyMaterial
) -> None:
    connect = connect_backend.connect
    instance = connect_backend.new_instance()
    for pem in ("not a key", material_a.certificate_pem, "x" * 1025):
        with pytest.raises(AwsCallError) as refused:
            connect.associate_security_key(instance, pem, "token")
        assert _reason(refused) == "InvalidParameterException"
    assert connect.list_security_keys(instance) == []


def test_a_disassociated_key_is_gone_and_unknown_ids_are_not_found(
    connect_backend: ConnectBackend, material_a: KeyMaterial
) -> None:
    connect = connect_backend.connect
    instance = connect_backend.new_instance()
    key_id = connect.associate_security_key(instance, material_a.public_key_pem, "token")
    connect.disassociate_security_key(instance, key_id)
    assert connect.list_security_keys(instance) == []
    with pytest.raises(NotFound):
        connect.disassociate_security_key(instance, key_id)
    with pytest.raises(NotFound):
        connect.list_security_keys("00000000-0000-4000-8000-000000000000")
    with pytest.raises(NotFound):
        connect.flow_content(instance, FlowRef(FlowKind.FLOW, "no-such-flow"))


@pytest.mark.parametrize("kind", [FlowKind.FLOW, FlowKind.MODULE])
def test_flow_content_names_only_keys_of_the_instance(
    connect_backend: ConnectBackend,
    material_a: KeyMaterial,
    material_b: KeyMaterial,
    kind: FlowKind,
) -> None:
    connect = connect_backend.connect
    instance = connect_backend.new_instance()
    make = payment_flow_content if kind is FlowKind.FLOW else payment_module_content
    ref = connect_backend.new_flow(instance, make(None, None), kind)
    content = connect.flow_content(instance, ref)
    key_id = connect.associate_security_key(instance, material_a.public_key_pem, "token")
    pointed = point_blocks_at_key(content, [CARD_INPUT_ACTION], key_id, material_a.certificate_pem)
    assert pointed is not None
    wrong_certificate = point_blocks_at_key(
        content, [CARD_INPUT_ACTION], key_id, material_b.certificate_pem
    )
    unknown_key = point_blocks_at_key(
        content, [CARD_INPUT_ACTION], "not-associated", material_a.certificate_pem
    )
    for refused in (wrong_certificate, unknown_key, "{}"):
        assert refused is not None
        with pytest.raises(AwsCallError) as invalid:
            connect.update_flow_content(instance, ref, refused)
        assert _reason(invalid).startswith("InvalidContactFlow")
    assert connect.flow_content(instance, ref) == content
    connect.update_flow_content(instance, ref, pointed)
    assert connect.flow_content(instance, ref) == pointed
    assert encrypting_blocks(pointed)[0].key_id == key_id


# -- Lock ---------------------------------------------------------------------------------------


@dataclass
class LockBackend:
    make: Callable[[timedelta], Lock]  # a lock with this lease
    wait: Callable[[float], None]  # let this many seconds pass
    made: list[Lock] = field(default_factory=list)


@pytest.fixture(params=["fake", "ssm"])
def lock_backend(request: pytest.FixtureRequest) -> LockBackend:
    if request.param == "fake":
        clock = FakeClock()
        return LockBackend(
            lambda lease: FakeLock(clock.now, lease),
            lambda seconds: None if clock.advance(timedelta(seconds=seconds)) else None,
        )
    ssm = request.getfixturevalue("ssm")
    prefix = f"/contract-{next(_prefixes)}"
    return LockBackend(lambda lease: SsmLock(ssm, prefix, lease), time.sleep)


def test_one_holder_at_a_time(lock_backend: LockBackend) -> None:
    lock = lock_backend.make(timedelta(minutes=15))
    lease = lock.acquire(INSTANCE, "r1")
    lease.check()
    with pytest.raises(LockHeld):
        lock.acquire(INSTANCE, "r2")
    other = lock.acquire("instance-2", "r3")  # another instance: its own lock
    assert lock.clear_if_stale(INSTANCE) is None  # alive: not stale
    lease.release()
    lease.release()  # released already: fine
    again = lock.acquire(INSTANCE, "r2")
    with pytest.raises(LockLost):
        lease.check()  # the lock is the new holder's now
    lease.release()  # leaves the new holder's lock alone
    with pytest.raises(LockHeld):
        lock.acquire(INSTANCE, "r4")
    again.release()
    other.release()


def test_a_lease_that_ran_out_is_broken_and_its_holder_stops(lock_backend: LockBackend) -> None:
    lock = lock_backend.make(timedelta(seconds=1))
    lease = lock.acquire(INSTANCE, "r1")
    lock_backend.wait(2.5)
    with pytest.raises(LockLost):
        lease.check()  # its lease ran out: it stops before writing
    cleared = lock.clear_if_stale(INSTANCE)
    assert cleared is not None and "expired" in cleared
    assert lock.clear_if_stale(INSTANCE) is None
    taker = lock.acquire(INSTANCE, "r2")
    taker.check()
    with pytest.raises(LockLost):
        lease.check()
    taker.release()


def test_a_checked_lease_is_renewed(lock_backend: LockBackend) -> None:
    lock = lock_backend.make(timedelta(seconds=4))
    lease = lock.acquire(INSTANCE, "r1")
    # SSM's clock is read from its answers' Date header, cut to the second: 3.2 s is past half
    # the lease by any reading.
    lock_backend.wait(3.2)
    lease.check()  # past half its lease: renewed
    lock_backend.wait(2.6)  # past the first lease's end, inside the renewed one
    lease.check()
    with pytest.raises(LockHeld):
        lock.acquire(INSTANCE, "r2")
    lease.release()


# -- Clock --------------------------------------------------------------------------------------


@pytest.mark.parametrize("clock", [FakeClock(), SystemClock()], ids=["fake", "system"])
def test_a_clock_tells_aware_utc_time_and_whether_it_is_simulated(clock: Clock) -> None:
    first = clock.now()
    assert first.tzinfo is not None and first.utcoffset() == timedelta(0)
    assert clock.now() >= first
    assert clock.simulated is isinstance(clock, FakeClock)


# -- Identity -----------------------------------------------------------------------------------

ROLE_TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


def _identities(kind: str) -> tuple[Identity, Identity]:
    """Two principals: a user, and a role that user assumed."""
    if kind == "fake":
        return (
            FakeIdentity("arn:aws:iam::123456789012:user/moto"),
            FakeIdentity("arn:aws:sts::123456789012:assumed-role/approver/bob"),
        )
    iam = boto3.client("iam", region_name=REGION)
    role = iam.create_role(RoleName="approver", AssumeRolePolicyDocument=ROLE_TRUST)["Role"]
    sts = boto3.client("sts", region_name=REGION)
    credentials = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="bob")["Credentials"]
    assumed = boto3.client(
        "sts",
        region_name=REGION,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
    )
    return StsIdentity(sts), StsIdentity(assumed)


@pytest.mark.parametrize("kind", ["fake", "sts"])
def test_an_identity_names_its_principal_and_an_assumed_role_is_another(
    kind: str, aws: None
) -> None:
    user, role = _identities(kind)
    assert user.caller_arn().startswith("arn:aws:")
    assert role.caller_arn() == "arn:aws:sts::123456789012:assumed-role/approver/bob"
    assert user.caller_arn() != role.caller_arn()
    assert user.caller_arn() == user.caller_arn()


def test_the_sts_identity_asks_once_per_run(aws: None) -> None:
    sts = boto3.client("sts", region_name=REGION)
    calls: list[str] = []
    sts.meta.events.register("before-call.sts.*", lambda model, **_: calls.append(model.name))
    identity = StsIdentity(sts)
    assert identity.caller_arn() == identity.caller_arn()
    assert calls == ["GetCallerIdentity"]


# -- a service on the fakes ---------------------------------------------------------------------


@pytest.fixture
def on_fakes(key_pool: KeyPool) -> Iterator[tuple[RotationService, FakeKeyring, FakeConnect]]:
    keyring, connect, clock = FakeKeyring(), FakeConnect(), FakeClock(NOW)
    service = RotationService(
        keyring,
        connect,
        FakeLock(clock.now),
        Settings(keyring_prefix="/fakes", key_size=2048),
        actor="test",
        generate=key_pool.generator(),
    )
    yield service, keyring, connect


def test_a_rotation_runs_entirely_on_the_fakes(
    on_fakes: tuple[RotationService, FakeKeyring, FakeConnect],
) -> None:
    service, keyring, connect = on_fakes
    made = init_payment_instance(service, connect, NOW)
    instance, flow, module = made.instance_id, made.flow, made.module
    assert keyring.get_current(instance) == made.first_key_id
    rotated = service.rotate(instance, NOW + timedelta(days=1), force=True)
    [result] = rotated
    assert result.outcome is Outcome.ROTATED, result
    assert result.old_key_id == made.first_key_id != result.new_key_id
    new_key = result.new_key_id
    assert new_key is not None

    # Connect holds both keys; the flows point at the new one; the canary decrypts.
    assert {k.key_id for k in connect.list_security_keys(instance)} == {made.first_key_id, new_key}
    for ref in (flow, module):
        [block] = encrypting_blocks(connect.flow_content(instance, ref))
        assert block.key_id == new_key and block.certificate_pem is not None
    prove_key_decrypts(keyring, new_key, keyring.read_certificate(new_key))
    [block] = encrypting_blocks(connect.flow_content(instance, flow))
    assert block.key_id is not None and block.certificate_pem is not None
    message = encrypt_like_connect(
        b"4111111111111111", key_id=block.key_id, certificate_pem=block.certificate_pem
    )
    assert Decryptor(keyring.decrypt_keys()).decrypt(message).plaintext == b"4111111111111111"

    assert keyring.get_record(new_key).state is KeyState.ACTIVE
    assert keyring.get_record(made.first_key_id).state is KeyState.PREVIOUS
    assert keyring.staged == {} and keyring.orphaned_staging() == set()
    rotation = keyring.get_rotation(instance)
    assert rotation is not None and rotation.step is RotationStep.DONE

    # After the grace period the old key retires: Connect lets it go, it still decrypts.
    assert made.first_key_id in service.retire(made.first_key_id, NOW + timedelta(days=9))
    assert [k.key_id for k in connect.list_security_keys(instance)] == [new_key]
    prove_key_decrypts(keyring, made.first_key_id, keyring.read_certificate(made.first_key_id))


def test_the_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    assert clock.now() == clock.now() == datetime(2030, 1, 1, tzinfo=UTC)
    assert clock.advance(timedelta(days=1)) == datetime(2030, 1, 2, tzinfo=UTC)


# -- Publisher ----------------------------------------------------------------------------------


@dataclass
class PublisherBackend:
    """A publisher, and how to read back what it sent: CloudWatch, an SQS queue subscribed to
    each topic, and S3 on moto for the real one; the lists it keeps for the fake."""

    publisher: Publisher
    metric: Callable[[str, tuple[tuple[str, str], ...], datetime], float | None]
    messages: Callable[[str], list[tuple[str, str]]]  # topic -> (subject, message)
    report: Callable[[str], tuple[bytes, str]]  # S3 location -> (body, content type)
    # The events on the default bus whose source is EVENT_SOURCE: (source, detail type, detail)
    events: Callable[[], list[tuple[str, str, dict[str, Any]]]]


PUBLISHED_AT = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
NAMESPACE = "ContractTest"
EVENT_SOURCE = "connect-key-rotator"


def _aws_publisher(alert_topic: str | None) -> PublisherBackend:
    s3, sns, sqs = boto3.client("s3"), boto3.client("sns"), boto3.client("sqs")
    cloudwatch = boto3.client("cloudwatch")
    s3.create_bucket(Bucket="evidence")
    queues: dict[str, str] = {}
    for topic_name in ("alerts", "reports"):
        topic = sns.create_topic(Name=topic_name)["TopicArn"]
        url = sqs.create_queue(QueueName=f"q-{topic_name}")["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["Attributes"]["QueueArn"])
        queues[topic] = url

    def metric(name: str, dimensions: tuple[tuple[str, str], ...], at: datetime) -> float | None:
        points = cloudwatch.get_metric_statistics(
            Namespace=NAMESPACE,
            MetricName=name,
            Dimensions=[{"Name": k, "Value": v} for k, v in dimensions],
            StartTime=at - timedelta(minutes=5),
            EndTime=at + timedelta(minutes=5),
            Period=600,
            Statistics=["Sum"],
        )["Datapoints"]
        return float(points[0]["Sum"]) if points else None

    def messages(topic: str) -> list[tuple[str, str]]:
        received = sqs.receive_message(QueueUrl=queues[topic], MaxNumberOfMessages=10)
        bodies = [json.loads(m["Body"]) for m in received.get("Messages", [])]
        return [(b["Subject"], b["Message"]) for b in bodies]

    def report(location: str) -> tuple[bytes, str]:
        bucket, key = split_s3_location(location)
        stored = s3.get_object(Bucket=bucket, Key=key)
        return stored["Body"].read(), stored["ContentType"]

    # Events are read as a deployment reads them: a rule on the default bus, an SQS target.
    events_client: Any = boto3.client("events")
    event_queue = sqs.create_queue(QueueName="q-events")["QueueUrl"]
    event_queue_arn = sqs.get_queue_attributes(QueueUrl=event_queue, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    events_client.put_rule(
        Name="rotator-events", EventPattern=json.dumps({"source": [EVENT_SOURCE]})
    )
    events_client.put_targets(Rule="rotator-events", Targets=[{"Id": "q", "Arn": event_queue_arn}])

    def events() -> list[tuple[str, str, dict[str, Any]]]:
        found = []
        while received := sqs.receive_message(QueueUrl=event_queue, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            for message in received:
                body = json.loads(message["Body"])
                found.append((body["source"], body["detail-type"], body["detail"]))
                sqs.delete_message(QueueUrl=event_queue, ReceiptHandle=message["ReceiptHandle"])
        return found

    publisher = AwsPublisher(
        lambda service: boto3.client(service),
        namespace=NAMESPACE,
        alert_topic_arn=alert_topic,
    )
    return PublisherBackend(publisher, metric, messages, report, events)


def _fake_publisher(alert_topic: str | None) -> PublisherBackend:
    fake = FakePublisher(alert_topic_arn=alert_topic)

    def metric(name: str, dimensions: tuple[tuple[str, str], ...], at: datetime) -> float | None:
        values = [
            m.value
            for m, when in fake.metrics
            if m.name == name and m.dimensions == dimensions and when == at
        ]
        return sum(values) if values else None

    def messages(topic: str) -> list[tuple[str, str]]:
        sent = [(n.subject, n.message) for n in fake.notices] if topic == alert_topic else []
        return sent + [(s.subject, s.message) for s in fake.summaries if s.topic_arn == topic]

    def report(location: str) -> tuple[bytes, str]:
        (stored,) = [r for r in fake.reports if r.location == location]
        return stored.body, stored.content_type

    def events() -> list[tuple[str, str, dict[str, Any]]]:
        on_the_bus = [
            (e.source, e.detail_type, dict(e.detail))
            for bus, e in fake.events
            if bus == "default" and e.source == EVENT_SOURCE
        ]
        fake.events.clear()  # read once, as a queue's messages are
        return on_the_bus

    return PublisherBackend(fake, metric, messages, report, events)


# moto's default account; the topics are created there in the same region as every client.
ALERTS = f"arn:aws:sns:{REGION}:123456789012:alerts"
REPORTS = f"arn:aws:sns:{REGION}:123456789012:reports"


@pytest.fixture(params=["fake", "aws"])
def publishing(request: pytest.FixtureRequest) -> Callable[[str | None], PublisherBackend]:
    if request.param == "fake":
        return _fake_publisher
    request.getfixturevalue("aws")  # moto for CloudWatch, SNS, SQS and S3
    return _aws_publisher


def test_metrics_arrive_by_name_and_dimensions(
    publishing: Callable[[str | None], PublisherBackend],
) -> None:
    backend = publishing(ALERTS)
    backend.publisher.put_metrics(
        [
            Metric("RotationSuccess", 2),
            Metric("ReportFindings", 3, dimensions=(("Severity", "critical"),)),
            Metric("ReportFindings", 0, dimensions=(("Severity", "info"),)),
        ],
        PUBLISHED_AT,
    )
    assert backend.metric("RotationSuccess", (), PUBLISHED_AT) == 2
    assert backend.metric("ReportFindings", (("Severity", "critical"),), PUBLISHED_AT) == 3
    assert backend.metric("ReportFindings", (("Severity", "info"),), PUBLISHED_AT) == 0
    assert backend.metric("RotationFailure", (), PUBLISHED_AT) is None


def test_a_notice_goes_to_the_alert_topic_with_sns_s_subject_limit(
    publishing: Callable[[str | None], PublisherBackend],
) -> None:
    backend = publishing(ALERTS)
    subject = "connect-key-rotator: " + "x" * 200
    assert backend.publisher.notify(subject, "instance i-1: rotation failed") is True
    assert backend.messages(ALERTS) == [(subject[:100], "instance i-1: rotation failed")]
    assert backend.messages(REPORTS) == []


def test_without_an_alert_topic_a_notice_is_not_sent(
    publishing: Callable[[str | None], PublisherBackend],
) -> None:
    backend = publishing(None)
    assert backend.publisher.notify("subject", "message") is False
    assert backend.messages(ALERTS) == []


def test_a_summary_goes_to_the_topic_named(
    publishing: Callable[[str | None], PublisherBackend],
) -> None:
    backend = publishing(ALERTS)
    backend.publisher.post_summary(REPORTS, "weekly report", "2 critical findings")
    assert backend.messages(REPORTS) == [("weekly report", "2 critical findings")]
    assert backend.messages(ALERTS) == []


def test_a_report_is_stored_whole_in_s3_or_a_directory(
    publishing: Callable[[str | None], PublisherBackend], tmp_path: Path
) -> None:
    backend = publishing(ALERTS)
    body = b"<!doctype html><p>keys</p>"
    backend.publisher.store_report("s3://evidence/reports/r.html", body, "text/html")
    assert backend.report("s3://evidence/reports/r.html") == (body, "text/html")
    local = tmp_path / "reports" / "r.json"
    backend.publisher.store_report(str(local), b"{}", "application/json")
    assert local.read_bytes() == b"{}"
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(ConfigError, match="report directory"):
        backend.publisher.store_report(str(blocked / "r.json"), b"{}", "application/json")


def test_events_arrive_on_the_bus_in_batches_with_their_detail(
    publishing: Callable[[str | None], PublisherBackend],
) -> None:
    backend = publishing(ALERTS)
    details = [
        {"keyId": f"key-{n}", "threshold": 30, "notAfter": "2027-01-01T00:00:00+00:00"}
        for n in range(12)
    ]  # more than one PutEvents call holds
    events = [
        BusEvent(EVENT_SOURCE, "Connect Key Approaching Expiration", d, PUBLISHED_AT)
        for d in details
    ]
    backend.publisher.put_events("default", events)
    received = backend.events()
    assert sorted(received, key=lambda e: str(e[2]["keyId"])) == sorted(
        ((EVENT_SOURCE, "Connect Key Approaching Expiration", d) for d in details),
        key=lambda e: str(e[2]["keyId"]),
    )
    backend.publisher.put_events("default", [])  # nothing to put: no call, no event
    other = BusEvent("someone-else", "Other", {"a": 1}, PUBLISHED_AT)
    backend.publisher.put_events(f"arn:aws:events:{REGION}:123456789012:event-bus/default", [other])
    assert backend.events() == []  # on the bus, but not the rule's source


def test_an_event_the_bus_refuses_or_a_missing_bus_raises(
    publishing: Callable[[str | None], PublisherBackend],
) -> None:
    backend = publishing(ALERTS)
    refused = BusEvent(EVENT_SOURCE, "", {"keyId": "k"}, PUBLISHED_AT)  # no detail type
    with pytest.raises(AwsCallError, match="events:PutEvents failed for default: 1 event"):
        backend.publisher.put_events("default", [refused])
    fine = BusEvent(EVENT_SOURCE, "Connect Key Approaching Expiration", {"k": 1}, PUBLISHED_AT)
    with pytest.raises(AwsCallError, match="events:PutEvents failed for no-such-bus"):
        backend.publisher.put_events("no-such-bus", [fine])
    assert backend.events() == []


# -- CiphertextStore and Checkpoint (rewrap) ----------------------------------------------------


@dataclass
class StoreBackend:
    store: Any  # FakeCiphertextStore, S3CiphertextStore or DynamoDbCiphertextStore
    put: Callable[[str, dict[str, Any]], None]  # an outside writer stores a record by name
    ref: Callable[[str], str]  # a record's name -> its ref


def _s3_store() -> StoreBackend:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="contact-records")
    s3.put_bucket_versioning(
        Bucket="contact-records", VersioningConfiguration={"Status": "Enabled"}
    )

    def put(name: str, document: dict[str, Any]) -> None:
        s3.put_object(Bucket="contact-records", Key=f"records/{name}", Body=json.dumps(document))

    return StoreBackend(
        S3CiphertextStore(s3, "s3://contact-records/records/"), put, lambda n: f"records/{n}"
    )


def _dynamodb_store() -> StoreBackend:
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.create_table(
        TableName="payments",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    serializer = TypeSerializer()

    def put(name: str, document: dict[str, Any]) -> None:
        item = {k: serializer.serialize(v) for k, v in {"id": name, **document}.items()}
        dynamodb.put_item(TableName="payments", Item=item)

    return StoreBackend(
        DynamoDbCiphertextStore(dynamodb, "dynamodb://payments"),
        put,
        lambda n: json.dumps({"id": {"S": n}}, sort_keys=True, separators=(",", ":")),
    )


@pytest.fixture(params=["fake", "s3", "dynamodb"])
def store_backend(request: pytest.FixtureRequest) -> StoreBackend:
    if request.param == "fake":
        fake = FakeCiphertextStore()
        return StoreBackend(fake, fake.put, lambda n: n)
    request.getfixturevalue("aws")
    return _s3_store() if request.param == "s3" else _dynamodb_store()


@pytest.fixture(scope="module")
def stored_values(material_a: KeyMaterial, material_b: KeyMaterial) -> dict[str, str]:
    """Two ciphertexts under KEY_A, one under KEY_B (made once)."""
    return {
        "a1": encrypt_like_connect(
            b"4111", key_id=KEY_A, certificate_pem=material_a.certificate_pem
        ),
        "a2": encrypt_like_connect(
            b"5500", key_id=KEY_A, certificate_pem=material_a.certificate_pem
        ),
        "b1": encrypt_like_connect(
            b"3782", key_id=KEY_B, certificate_pem=material_b.certificate_pem
        ),
    }


def _texts(store: Any, ref: str) -> list[str]:
    """The record's strings but a DynamoDB item's own key (`id`, counted like any string)."""
    record = store.read(ref)
    assert record is not None
    return sorted(v.text for v in record.values if v.path != ("id",))


def test_a_store_lists_every_string_value_nested_ones_included(
    store_backend: StoreBackend, stored_values: dict[str, str]
) -> None:
    v = stored_values
    store_backend.put("c1", {"Attributes": {"Card": v["a1"], "Note": "plain"}, "n": 3})
    store_backend.put("c2", {"List": [{"Deep": [v["b1"], v["a2"]]}], "Queue": "sales"})
    store = store_backend.store
    records = {r.ref: r for r in store.records()}
    assert set(records) == {store_backend.ref("c1"), store_backend.ref("c2")}
    assert all(r.store == store.uri for r in records.values())
    by_key = sorted((k, v.text) for r in records.values() for v, k in r.ciphertexts())
    assert by_key == sorted([(KEY_A, v["a1"]), (KEY_A, v["a2"]), (KEY_B, v["b1"])])
    assert [k for _, k in records[store_backend.ref("c2")].ciphertexts(KEY_B)] == [KEY_B]
    assert _texts(store, store_backend.ref("c1")) == sorted([v["a1"], "plain"])
    assert store.read(store_backend.ref("missing")) is None


def test_a_replace_changes_only_the_values_named(
    store_backend: StoreBackend, stored_values: dict[str, str]
) -> None:
    v = stored_values
    store_backend.put("c1", {"A": v["a1"], "B": v["b1"], "Deep": {"L": [v["a2"], "x"]}})
    store = store_backend.store
    ref = store_backend.ref("c1")
    record = store.read(ref)
    store.replace(record, {v["a1"]: "new-1", v["a2"]: "new-2"})
    assert _texts(store, ref) == sorted(["new-1", "new-2", v["b1"], "x"])


def test_a_replace_after_an_outside_change_is_refused_and_keeps_the_change(
    store_backend: StoreBackend, stored_values: dict[str, str]
) -> None:
    v = stored_values
    store_backend.put("c1", {"A": v["a1"]})
    store = store_backend.store
    ref = store_backend.ref("c1")
    stale = store.read(ref)
    store_backend.put("c1", {"A": v["a2"]})  # the record changed after it was read
    with pytest.raises(ConcurrentChange):
        store.replace(stale, {v["a1"]: "new-1"})
    assert _texts(store, ref) == [v["a2"]]
    fresh = store.read(ref)
    store.replace(fresh, {v["a2"]: "new-2"})
    with pytest.raises(ConcurrentChange):  # a record read before a write is stale after it
        store.replace(fresh, {"new-2": "new-3"})
    assert _texts(store, ref) == ["new-2"]


def test_dynamodb_key_attributes_and_string_sets_are_counted_and_never_rewritten_in_place(
    aws: None, stored_values: dict[str, str]
) -> None:
    """ "String attributes anywhere in an item": a ciphertext as the item's key, or in a string
    set, counts under its key ID; its rewrite fails naming where (so destroy keeps refusing),
    and an item whose set holds only other values is rewritten on a contains() condition."""
    v = stored_values
    backend = _dynamodb_store()
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    dynamodb.put_item(TableName="payments", Item={"id": {"S": v["a1"]}, "note": {"S": "x"}})
    dynamodb.put_item(
        TableName="payments",
        Item={"id": {"S": "s1"}, "Cards": {"SS": [v["a2"], "other"]}, "B": {"S": v["b1"]}},
    )
    store = backend.store
    records = {r.ref: r for r in store.records()}
    counted = sorted((k, value.text) for r in records.values() for value, k in r.ciphertexts())
    assert counted == sorted([(KEY_A, v["a1"]), (KEY_A, v["a2"]), (KEY_B, v["b1"])])
    keyed, setted = backend.ref(v["a1"]), backend.ref("s1")
    with pytest.raises(UnrewritableValue, match="a key attribute"):
        store.replace(records[keyed], {v["a1"]: "new"})
    with pytest.raises(UnrewritableValue, match=r"a string set \(Cards\)"):
        store.replace(records[setted], {v["a2"]: "new"})
    store.replace(records[setted], {v["b1"]: "new-b"})  # the set is only conditioned on
    assert _texts(store, setted) == sorted(["new-b", "other", v["a2"]])
    fresh = store.read(setted)
    assert fresh is not None
    dynamodb.update_item(
        TableName="payments",
        Key={"id": {"S": "s1"}},
        UpdateExpression="DELETE Cards :gone",
        ExpressionAttributeValues={":gone": {"SS": ["other"]}},
    )
    with pytest.raises(ConcurrentChange):  # only the set changed since the read: contains()
        store.replace(fresh, {"new-b": "newer"})
    assert _texts(store, setted) == sorted(["new-b", v["a2"]])


def test_s3_objects_of_json_lines_and_gzip_are_rewritten_in_place_old_kept_as_version(
    aws: None, stored_values: dict[str, str]
) -> None:
    v = stored_values
    backend = _s3_store()
    s3 = boto3.client("s3", region_name=REGION)
    lines = f'{{"Card":"{v["a1"]}","n":1}}\n{{"Card": "{v["b1"]}",  "n":2}}\n'
    s3.put_object(Bucket="contact-records", Key="records/x.gz", Body=gzip.compress(lines.encode()))
    s3.put_object(Bucket="contact-records", Key="records/y.json", Body=b"not json")
    records = {r.ref: r for r in backend.store.records()}
    assert sorted(k for _, k in records["records/x.gz"].ciphertexts()) == [KEY_A, KEY_B]
    assert records["records/y.json"].problem and not records["records/y.json"].values
    backend.store.replace(records["records/x.gz"], {v["a1"]: "NEW"})
    body = s3.get_object(Bucket="contact-records", Key="records/x.gz")["Body"].read()
    assert gzip.decompress(body).decode() == lines.replace(v["a1"], "NEW")
    versions = s3.list_object_versions(Bucket="contact-records", Prefix="records/x.gz")
    assert len(versions["Versions"]) == 2


def test_s3_refuses_to_rewrite_in_an_unversioned_bucket(
    aws: None, stored_values: dict[str, str]
) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="unversioned")
    s3.put_object(Bucket="unversioned", Key="r", Body=json.dumps({"A": stored_values["a1"]}))
    store = S3CiphertextStore(s3, "s3://unversioned")
    (record,) = store.records()
    with pytest.raises(ConfigError, match="versioning"):
        store.replace(record, {stored_values["a1"]: "NEW"})
    assert json.loads(s3.get_object(Bucket="unversioned", Key="r")["Body"].read()) == {
        "A": stored_values["a1"]
    }


@pytest.fixture(params=["fake", "file"])
def checkpoint(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return FakeCheckpoint() if request.param == "fake" else FileCheckpoint(tmp_path / "cp")


def test_a_checkpoint_keeps_what_was_recorded_until_cleared(checkpoint: Any) -> None:
    assert not checkpoint.exists() and checkpoint.done() == set()
    checkpoint.record("s3://b/p", "k1")
    checkpoint.record("dynamodb://t", '{"id":{"S":"1"}}')
    assert checkpoint.exists()
    assert checkpoint.done() == {("s3://b/p", "k1"), ("dynamodb://t", '{"id":{"S":"1"}}')}
    checkpoint.clear()
    assert not checkpoint.exists() and checkpoint.done() == set()


def test_a_file_checkpoint_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "cp"
    FileCheckpoint(path).record("s3://b", "k1")
    with path.open("a") as file:
        file.write('\n{"store":"s3://b","re')  # the crash cut this line short
    FileCheckpoint(path).record("s3://b", "k2")
    assert FileCheckpoint(path).done() == {("s3://b", "k1"), ("s3://b", "k2")}


# -- Approvals (dual control) -------------------------------------------------------------------


def _approvals(kind: str) -> Any:
    from rotator.adapters.approvals import SsmApprovals
    from tests.fakes import FakeApprovals

    if kind == "fake":
        return FakeApprovals()
    return SsmApprovals(boto3.client("ssm", region_name=REGION), "/connect-keys")


@pytest.mark.parametrize("kind", ["fake", "ssm"])
def test_approval_events_read_back_in_order_and_a_request_is_claimed_once(
    aws: None, kind: str
) -> None:
    from rotator.domain.approval import decision_event, request_event

    approvals = _approvals(kind)
    asked = request_event(
        "req-0123456789ab", ["rollback", "--instance-id", "i-1"], "bad key", "arn:a",
        "test", NOW, timedelta(hours=24), ClockKind.REAL,
    )  # fmt: skip
    granted = decision_event(
        EventKind.APPROVAL_GRANTED, "req-0123456789ab", "arn:b", "test",
        NOW + timedelta(minutes=1), ClockKind.REAL,
    )  # fmt: skip
    approvals.record(asked)
    assert approvals.claim("req-0123456789ab", granted) is True
    approvals.record(granted)
    assert approvals.claim("req-0123456789ab", granted) is False  # a second approver, a cancel
    assert approvals.claim("req-ba9876543210", granted) is True  # another request's own claim
    assert approvals.events() == [asked, granted]


# -- Key-encrypting keys and the decrypt function's environment (evidence) ---------------------

PEM_VALUE = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
)


@dataclass
class EvidenceBackend:
    keks: KeyEncryptionKeys
    functions: FunctionEnvironments
    add_kek: Callable[[str, str], str]  # (key spec, alias) -> the key's ARN
    add_function: Callable[[str, dict[str, str]], None]


def _moto_lambda_role() -> str:
    iam = boto3.client("iam", region_name=REGION)
    return iam.create_role(RoleName="decrypt", AssumeRolePolicyDocument="{}")["Role"]["Arn"]


@pytest.fixture(params=["fake", "aws"])
def evidence_backend(request: pytest.FixtureRequest) -> EvidenceBackend:
    if request.param == "fake":
        keks, functions = FakeKeyEncryptionKeys(), FakeFunctionEnvironments()
        return EvidenceBackend(
            keks,
            functions,
            lambda spec, alias: keks.add(str(uuid.uuid4()), spec, alias).arn,
            functions.functions.__setitem__,
        )
    request.getfixturevalue("aws")
    kms = boto3.client("kms", region_name=REGION)
    client = boto3.client("lambda", region_name=REGION)
    role = _moto_lambda_role()

    def add_kek(spec: str, alias: str) -> str:
        arn = kms.create_key(KeySpec=spec, KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
        kms.create_alias(AliasName=alias, TargetKeyId=arn.rsplit("/", 1)[1])
        return str(arn)

    def add_function(name: str, variables: dict[str, str]) -> None:
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("handler.py", "def handler(event, context):\n    return {}\n")
        client.create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=role,
            Handler="handler.handler",
            Code={"ZipFile": code.getvalue()},
            Environment={"Variables": variables},
        )

    return EvidenceBackend(
        KmsKeyEncryptionKeys(kms), LambdaFunctionEnvironments(client), add_kek, add_function
    )


def test_a_kms_key_is_described_by_arn_id_or_alias_and_unknown_is_not_found(
    evidence_backend: EvidenceBackend,
) -> None:
    arn = evidence_backend.add_kek("SYMMETRIC_DEFAULT", "alias/keyring")
    key_id = arn.rsplit("/", 1)[1]
    for reference in (arn, key_id, "alias/keyring"):
        described = evidence_backend.keks.describe(reference)
        assert (described.reference, described.arn, described.key_id) == (reference, arn, key_id)
        assert (described.key_spec, described.strength) == ("SYMMETRIC_DEFAULT", 256)
    weak = evidence_backend.keks.describe(evidence_backend.add_kek("RSA_2048", "alias/weak"))
    assert (weak.key_spec, weak.strength) == ("RSA_2048", 112)
    with pytest.raises(NotFound, match="KMS key alias/none does not exist"):
        evidence_backend.keks.describe("alias/none")


def test_a_functions_private_key_variables_are_named_and_their_values_never_answered(
    evidence_backend: EvidenceBackend,
) -> None:
    evidence_backend.add_function(
        "decrypt", {"KEY": PEM_VALUE, "KEYRING_PREFIX": "/connect-keys", "LOG_LEVEL": "INFO"}
    )
    evidence_backend.add_function("clean", {"KEYRING_PREFIX": "/connect-keys"})
    found = evidence_backend.functions.private_key_variables("decrypt")
    assert (found.function, found.private_key_variables) == ("decrypt", ("KEY",))
    assert found.arn.endswith(":function:decrypt")
    assert "PRIVATE" not in repr(found) and "MIIE" not in repr(found)
    assert evidence_backend.functions.private_key_variables("clean").private_key_variables == ()
    with pytest.raises(NotFound, match="Lambda function nowhere does not exist"):
        evidence_backend.functions.private_key_variables("nowhere")
