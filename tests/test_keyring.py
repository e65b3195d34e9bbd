"""The SSM keyring: the rotator's writer (SsmKeyring) and the decrypt path's reader."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import boto3
import pytest
from botocore.config import Config

from lambda_decrypt.errors import KeyDestroyed, KeyringAccessDenied, KeyringUnavailable, UnknownKey
from lambda_decrypt.keyring import (
    LISTING_REFRESH_SECONDS,
    KeyringLayout,
    KeyringReader,
    ssm_time_limit,
)
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import KeyRecord, KeyState
from rotator.errors import AwsCallError, KeyringConflict, NotFound
from tests.conftest import NOW, REGION, make_record

PREFIX = "/connect-keys"
KEY_A = "11111111-1111-4111-8111-111111111111"
KEY_B = "22222222-2222-4222-8222-222222222222"
UNKNOWN = "99999999-9999-4999-8999-999999999999"


def pem_body_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def assert_no_pem(text: str, pem: str) -> None:
    assert "PRIVATE KEY" not in text
    for line in pem_body_lines(pem):
        assert line not in text


def version(ssm: Any, name: str) -> int:
    return int(ssm.get_parameter(Name=name)["Parameter"]["Version"])


def described(ssm: Any, name: str) -> dict[str, Any]:
    response = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}])
    (parameter,) = response["Parameters"]
    return dict(parameter)


@pytest.fixture
def kms_key_id(aws: None) -> str:
    kms = boto3.client("kms", region_name=REGION)
    return str(kms.create_key(Description="connect-keys")["KeyMetadata"]["KeyId"])


@pytest.fixture
def keyring(ssm: Any, kms_key_id: str) -> SsmKeyring:
    return SsmKeyring(ssm, PREFIX, kms_key_id=kms_key_id)


# -- layout ------------------------------------------------------------------------------------


def test_layout_names_follow_the_design() -> None:
    layout = KeyringLayout("/connect-keys")
    assert layout.keys_root() == "/connect-keys/keys"
    assert layout.key_root(KEY_A) == f"/connect-keys/keys/{KEY_A}"
    assert layout.private_key(KEY_A) == f"/connect-keys/keys/{KEY_A}/private-key"
    assert layout.certificate(KEY_A) == f"/connect-keys/keys/{KEY_A}/certificate"
    assert layout.metadata(KEY_A) == f"/connect-keys/keys/{KEY_A}/metadata"
    assert layout.instances_root() == "/connect-keys/instances"
    assert layout.current("inst-1") == "/connect-keys/instances/inst-1/current"
    other = KeyringLayout("/org/payments/keys-v2")
    assert other.private_key(KEY_B) == f"/org/payments/keys-v2/keys/{KEY_B}/private-key"


def test_key_id_of_parses_layout_names() -> None:
    layout = KeyringLayout("/connect-keys")
    for name in (layout.private_key(KEY_A), layout.certificate(KEY_A), layout.metadata(KEY_A)):
        assert layout.key_id_of(name) == KEY_A
    assert layout.key_id_of(layout.key_root(KEY_B)) == KEY_B
    assert layout.key_id_of(layout.current("inst-1")) is None
    assert layout.key_id_of("/connect-keys/keys/") is None
    assert layout.key_id_of("/connect-keys/keys") is None
    assert layout.key_id_of(f"/other/keys/{KEY_A}/metadata") is None
    assert layout.key_id_of(f"/connect-keys-old/keys/{KEY_A}/metadata") is None
    assert layout.key_id_of(f"connect-keys/keys/{KEY_A}/metadata") is None


# -- SsmKeyring: storing keys ------------------------------------------------------------------


def test_store_key_creates_three_parameters(
    keyring: SsmKeyring, ssm: Any, material_a: KeyMaterial, kms_key_id: str
) -> None:
    record = make_record(KEY_A, material_a, state=KeyState.PENDING)
    keyring.store_key(KEY_A, material_a, record)
    layout = KeyringLayout(PREFIX)

    private = described(ssm, layout.private_key(KEY_A))
    assert private["Type"] == "SecureString"
    assert private["KeyId"] == kms_key_id
    stored = ssm.get_parameter(Name=layout.private_key(KEY_A), WithDecryption=True)
    assert stored["Parameter"]["Value"] == material_a.private_key_pem

    certificate = described(ssm, layout.certificate(KEY_A))
    assert certificate["Type"] == "String"
    assert ssm.get_parameter(Name=layout.certificate(KEY_A))["Parameter"]["Value"] == (
        material_a.certificate_pem
    )

    metadata = described(ssm, layout.metadata(KEY_A))
    assert metadata["Type"] == "String"
    raw = ssm.get_parameter(Name=layout.metadata(KEY_A))["Parameter"]["Value"]
    assert KeyRecord.from_json(raw) == record
    assert_no_pem(raw, material_a.private_key_pem)
    assert keyring.get_record(KEY_A) == record


def test_store_key_without_kms_key_uses_the_default_key(ssm: Any, material_a: KeyMaterial) -> None:
    keyring = SsmKeyring(ssm, PREFIX)
    keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    private = described(ssm, KeyringLayout(PREFIX).private_key(KEY_A))
    assert private["Type"] == "SecureString"
    assert private.get("KeyId", "alias/aws/ssm") == "alias/aws/ssm"


def test_storing_the_same_material_again_is_a_no_op(
    keyring: SsmKeyring, ssm: Any, material_a: KeyMaterial
) -> None:
    record = make_record(KEY_A, material_a, state=KeyState.PENDING)
    keyring.store_key(KEY_A, material_a, record)
    layout = KeyringLayout(PREFIX)
    names = [layout.private_key(KEY_A), layout.certificate(KEY_A), layout.metadata(KEY_A)]
    before = {name: version(ssm, name) for name in names}
    keyring.store_key(KEY_A, material_a, record)
    after = {name: version(ssm, name) for name in names}
    assert after == before


def test_different_material_under_the_same_key_id_is_refused(
    keyring: SsmKeyring, ssm: Any, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    record_a = make_record(KEY_A, material_a, state=KeyState.PENDING)
    keyring.store_key(KEY_A, material_a, record_a)
    layout = KeyringLayout(PREFIX)
    names = [layout.private_key(KEY_A), layout.certificate(KEY_A), layout.metadata(KEY_A)]
    before = {name: version(ssm, name) for name in names}

    with pytest.raises(KeyringConflict, match=KEY_A) as caught:
        keyring.store_key(KEY_A, material_b, make_record(KEY_A, material_b))
    assert_no_pem(str(caught.value), material_a.private_key_pem)
    assert_no_pem(str(caught.value), material_b.private_key_pem)

    assert {name: version(ssm, name) for name in names} == before
    stored = ssm.get_parameter(Name=layout.private_key(KEY_A), WithDecryption=True)
    assert stored["Parameter"]["Value"] == material_a.private_key_pem
    assert keyring.get_record(KEY_A) == record_a
    assert keyring.read_material(KEY_A).public_key_sha256 == material_a.public_key_sha256


def test_create_private_key_alone_refuses_a_different_key(
    keyring: SsmKeyring, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    keyring.create_private_key(KEY_A, material_a.private_key_pem)
    keyring.create_private_key(KEY_A, material_a.private_key_pem)  # same again: fine
    with pytest.raises(KeyringConflict):
        keyring.create_private_key(KEY_A, material_b.private_key_pem)
    assert keyring.read_private_key_pem(KEY_A) == material_a.private_key_pem


def test_read_material_returns_the_same_key(keyring: SsmKeyring, material_a: KeyMaterial) -> None:
    keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    material = keyring.read_material(KEY_A)
    assert material.public_key_sha256 == material_a.public_key_sha256
    assert material.certificate_sha256 == material_a.certificate_sha256
    assert material.private_key_pem == material_a.private_key_pem
    assert keyring.read_private_key_pem(KEY_A) == material_a.private_key_pem


def test_reading_a_missing_key_raises_not_found(
    keyring: SsmKeyring, material_a: KeyMaterial
) -> None:
    with pytest.raises(NotFound, match=KEY_B):
        keyring.read_material(KEY_B)
    with pytest.raises(NotFound, match=KEY_B):
        keyring.get_record(KEY_B)
    with pytest.raises(NotFound, match=KEY_B):
        keyring.read_private_key_pem(KEY_B)
    with pytest.raises(NotFound, match=KEY_B):
        keyring.metadata_versions(KEY_B)
    assert keyring.find_record(KEY_B) is None
    # a private key without certificate: the certificate is what is missing
    keyring.create_private_key(KEY_A, material_a.private_key_pem)
    with pytest.raises(NotFound, match="certificate"):
        keyring.read_material(KEY_A)


# -- SsmKeyring: metadata history --------------------------------------------------------------


def test_put_record_versions_only_changes_and_history_is_the_audit_trail(
    keyring: SsmKeyring, ssm: Any, material_a: KeyMaterial
) -> None:
    pending = make_record(KEY_A, material_a, state=KeyState.PENDING)
    keyring.store_key(KEY_A, material_a, pending)
    name = KeyringLayout(PREFIX).metadata(KEY_A)
    assert version(ssm, name) == 1

    active = pending.transition(
        KeyState.ACTIVE, at=NOW + timedelta(minutes=5), actor="rotator", reason="verified"
    )
    keyring.put_record(active)
    assert version(ssm, name) == 2
    keyring.put_record(active)  # unchanged: no new version
    keyring.put_record(KeyRecord.from_json(active.to_json()))
    assert version(ssm, name) == 2

    previous = active.transition(
        KeyState.PREVIOUS, at=NOW + timedelta(days=300), actor="rotator", reason="next key"
    )
    keyring.put_record(previous)
    assert version(ssm, name) == 3

    history = keyring.metadata_versions(KEY_A)
    assert history == [pending, active, previous]
    assert [r.state for r in history] == [KeyState.PENDING, KeyState.ACTIVE, KeyState.PREVIOUS]
    assert [t.reason for t in history[-1].history] == ["fixture", "verified", "next key"]
    assert keyring.get_record(KEY_A) == previous


def test_records_lists_more_than_one_page(
    keyring: SsmKeyring, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    stored: list[KeyRecord] = []
    for index in range(13):
        key_id = f"{index:08d}-0000-4000-8000-000000000000"
        material = material_a if index % 2 else material_b
        record = make_record(key_id, material, instance_id=f"instance-{index % 3}")
        record = replace(record, created_at=NOW + timedelta(days=index))
        keyring.store_key(key_id, material, record)
        stored.append(record)
    records = keyring.records()
    assert len(records) == 13  # 39 parameters: GetParametersByPath pages at 10
    assert {r.key_id for r in records} == {r.key_id for r in stored}
    assert records == sorted(stored, key=lambda r: (r.instance_id or "", r.created_at, r.key_id))


def test_records_of_an_empty_keyring(keyring: SsmKeyring) -> None:
    assert keyring.records() == []
    assert keyring.current_pointers() == {}


# -- SsmKeyring: instance pointers -------------------------------------------------------------


def test_current_pointers_for_several_instances(keyring: SsmKeyring, ssm: Any) -> None:
    assert keyring.get_current("inst-1") is None
    for index in range(12):
        keyring.set_current(f"inst-{index}", KEY_A)
    keyring.set_current("inst-1", KEY_B)
    assert keyring.get_current("inst-1") == KEY_B
    assert keyring.get_current("inst-0") == KEY_A
    pointers = keyring.current_pointers()
    assert pointers == {f"inst-{i}": (KEY_B if i == 1 else KEY_A) for i in range(12)}

    name = KeyringLayout(PREFIX).current("inst-1")
    assert version(ssm, name) == 2
    keyring.set_current("inst-1", KEY_B)  # unchanged: no new version
    assert version(ssm, name) == 2
    history = ssm.get_parameter_history(Name=name)["Parameters"]
    assert [p["Value"] for p in history] == [KEY_A, KEY_B]


def test_current_pointers_ignore_other_instance_parameters(keyring: SsmKeyring, ssm: Any) -> None:
    keyring.set_current("inst-1", KEY_A)
    ssm.put_parameter(Name=f"{PREFIX}/instances/inst-1/notes", Value="x", Type="String")
    assert keyring.current_pointers() == {"inst-1": KEY_A}


# -- SsmKeyring: AWS errors --------------------------------------------------------------------

BAD_KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/00000000-dead-beef-0000-000000000000"


class _Response:
    status_code = 400
    headers: dict[str, str] = {}
    content = b""


def refuse_unknown_kms_key(params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]] | None:
    """What SSM answers for a SecureString with a KMS key that does not exist (moto accepts it)."""
    body = params.get("body") or b"{}"
    request = json.loads(body.decode() if isinstance(body, bytes) else body)
    if request.get("KeyId") != BAD_KMS_KEY:
        return None
    return _Response(), {
        "Error": {"Code": "InvalidKeyId", "Message": "The key id is not valid."},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }


def test_unknown_kms_key_becomes_an_aws_call_error(ssm: Any, material_a: KeyMaterial) -> None:
    ssm.meta.events.register("before-call.ssm.PutParameter", refuse_unknown_kms_key)
    keyring = SsmKeyring(ssm, PREFIX, kms_key_id=BAD_KMS_KEY)
    name = KeyringLayout(PREFIX).private_key(KEY_A)
    with pytest.raises(AwsCallError) as caught:
        keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    error = caught.value
    assert error.call == "ssm:PutParameter"
    assert error.resource == name
    assert error.reason == "InvalidKeyId"
    message = str(error)
    assert "ssm:PutParameter" in message
    assert name in message
    assert_no_pem(message, material_a.private_key_pem)
    assert_no_pem(repr(error), material_a.private_key_pem)
    # nothing was written after the failure
    assert keyring.find_record(KEY_A) is None


def test_ssm_validation_error_becomes_an_aws_call_error(ssm: Any, material_a: KeyMaterial) -> None:
    keyring = SsmKeyring(ssm, "/ssm-reserved")  # SSM refuses names starting with "ssm"
    with pytest.raises(AwsCallError) as caught:
        keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    message = str(caught.value)
    assert "ssm:PutParameter" in message
    assert f"/ssm-reserved/keys/{KEY_A}/private-key" in message
    assert "ValidationException" in message
    assert_no_pem(message, material_a.private_key_pem)


def test_unreachable_ssm_becomes_an_aws_call_error(unreachable_ssm: Any) -> None:
    keyring = SsmKeyring(unreachable_ssm, PREFIX)
    with pytest.raises(AwsCallError, match="ssm:GetParameters") as caught:
        keyring.get_record(KEY_A)
    assert KeyringLayout(PREFIX).metadata(KEY_A) in str(caught.value)
    with pytest.raises(AwsCallError, match="ssm:GetParametersByPath"):
        keyring.records()
    with pytest.raises(AwsCallError, match="ssm:GetParameterHistory"):
        keyring.metadata_versions(KEY_A)


# -- KeyringReader -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingFactory:
    """Builds one SSM client (moto) and counts every call made through it."""

    def __init__(self, client_builder: Callable[[], Any]) -> None:
        self._build = client_builder
        self.calls: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.clients = 0

    def __call__(self) -> Any:
        client = self._build()
        client.meta.events.register("before-parameter-build.ssm.*", self._count)
        self.clients += 1
        return client

    def _count(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.calls.append(model.name)
        self.requests.append(dict(params))

    def take(self) -> int:
        count = len(self.calls)
        self.calls.clear()
        self.requests.clear()
        return count


@pytest.fixture
def unreachable_ssm() -> Any:
    return boto3.client(
        "ssm",
        region_name=REGION,
        endpoint_url="http://127.0.0.1:9",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=0.2, read_timeout=0.2),
    )


@pytest.fixture
def counting(aws: None) -> CountingFactory:
    return CountingFactory(lambda: boto3.client("ssm", region_name=REGION))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def reader(factory: Callable[[], Any], clock: FakeClock, **options: Any) -> KeyringReader:
    settings: dict[str, Any] = {
        "ttl_seconds": 900.0,
        "negative_ttl_seconds": 60.0,
        "max_lookups_per_minute": 30,
    }
    settings.update(options)
    return KeyringReader(PREFIX, ssm_client_factory=factory, clock=clock, **settings)


def test_reader_caches_a_loaded_key_until_the_ttl(
    ssm: Any, counting: CountingFactory, clock: FakeClock, material_a: KeyMaterial
) -> None:
    SsmKeyring(ssm, PREFIX).store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    keys = reader(counting, clock, ttl_seconds=900.0, check_seconds=900.0)
    assert counting.clients == 0  # lazy: no client before the first lookup

    key = keys.get(KEY_A)
    assert key.key_id == KEY_A
    assert key.key_size == 4096
    assert counting.calls == ["GetParameters"]
    counting.take()

    assert keys.get(KEY_A) is key
    clock.advance(899.9)
    assert keys.get(KEY_A) is key
    assert counting.take() == 0

    clock.advance(0.1)  # ttl reached
    reloaded = keys.get(KEY_A)
    assert reloaded.key_id == KEY_A
    assert counting.take() == 1
    assert keys.get(KEY_A) is reloaded
    assert counting.take() == 0
    assert counting.clients == 1  # one client for the container


def test_reader_negative_cache(
    ssm: Any, counting: CountingFactory, clock: FakeClock, material_a: KeyMaterial
) -> None:
    keys = reader(counting, clock, negative_ttl_seconds=60.0)
    with pytest.raises(UnknownKey, match=UNKNOWN) as first:
        keys.get(UNKNOWN)
    assert first.value.code == "unknown_key"
    assert counting.take() == 1

    clock.advance(59.9)
    with pytest.raises(UnknownKey):
        keys.get(UNKNOWN)
    assert counting.take() == 0

    # the key appears; after the negative TTL it is found
    SsmKeyring(ssm, PREFIX).store_key(UNKNOWN, material_a, make_record(UNKNOWN, material_a))
    clock.advance(0.1)
    assert keys.get(UNKNOWN).key_id == UNKNOWN
    assert counting.take() == 1


def test_reader_negative_cache_expires_into_another_lookup(
    counting: CountingFactory, clock: FakeClock
) -> None:
    keys = reader(counting, clock, negative_ttl_seconds=5.0)
    with pytest.raises(UnknownKey):
        keys.get(UNKNOWN)
    clock.advance(5.0)
    with pytest.raises(UnknownKey):
        keys.get(UNKNOWN)
    assert counting.take() == 2


def test_reader_lookup_budget(counting: CountingFactory, clock: FakeClock) -> None:
    keys = reader(counting, clock, max_lookups_per_minute=3, negative_ttl_seconds=3600.0)
    unknown = [f"{i:08d}-aaaa-4aaa-8aaa-aaaaaaaaaaaa" for i in range(6)]
    for key_id in unknown[:3]:
        with pytest.raises(UnknownKey):
            keys.get(key_id)
        clock.advance(1.0)
    assert counting.take() == 3

    with pytest.raises(UnknownKey, match="budget") as exhausted:
        keys.get(unknown[3])
    assert exhausted.value.code == "unknown_key"
    assert counting.calls == ["GetParametersByPath"]  # the keyring holds none of them
    counting.take()

    clock.advance(LISTING_REFRESH_SECONDS - 1.0)  # the listing is fresh: no call at all
    with pytest.raises(UnknownKey, match="budget"):
        keys.get(unknown[4])
    assert counting.take() == 0

    clock.advance(57.0 - LISTING_REFRESH_SECONDS)  # 59 s after the first lookup
    with pytest.raises(UnknownKey, match="budget"):
        keys.get(unknown[5])
    assert counting.calls == ["GetParametersByPath"]  # a stale listing is read again, once
    counting.take()

    clock.advance(1.0)  # 60 s after the first lookup: one slot frees up
    with pytest.raises(UnknownKey) as resumed:
        keys.get(unknown[3])
    assert "budget" not in str(resumed.value)
    assert counting.take() == 1


def test_reader_budget_does_not_touch_cached_keys(
    ssm: Any, counting: CountingFactory, clock: FakeClock, material_a: KeyMaterial
) -> None:
    SsmKeyring(ssm, PREFIX).store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    keys = reader(counting, clock, max_lookups_per_minute=2)
    keys.get(KEY_A)
    with pytest.raises(UnknownKey):
        keys.get(UNKNOWN)
    with pytest.raises(UnknownKey, match="budget"):
        keys.get(KEY_B)
    assert keys.get(KEY_A).key_id == KEY_A  # cached: served despite the exhausted budget
    assert counting.calls == ["GetParameters", "GetParameters", "GetParametersByPath"]


def test_reader_destroyed_key(
    ssm: Any, counting: CountingFactory, clock: FakeClock, material_a: KeyMaterial
) -> None:
    keyring = SsmKeyring(ssm, PREFIX)
    record = make_record(KEY_A, material_a, state=KeyState.RETIRED)
    keyring.store_key(KEY_A, material_a, record)
    keyring.put_record(
        record.transition(KeyState.DESTROYED, at=NOW, actor="runbook", reason="retention over")
    )
    ssm.delete_parameter(Name=KeyringLayout(PREFIX).private_key(KEY_A))

    keys = reader(counting, clock)
    with pytest.raises(KeyDestroyed, match=KEY_A) as caught:
        keys.get(KEY_A)
    assert caught.value.code == "key_destroyed"
    with pytest.raises(KeyDestroyed):  # remembered like an unknown key
        keys.get(KEY_A)
    assert counting.take() == 1


def test_reader_destroyed_state_wins_even_if_the_private_key_remains(
    ssm: Any, counting: CountingFactory, clock: FakeClock, material_a: KeyMaterial
) -> None:
    keyring = SsmKeyring(ssm, PREFIX)
    keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a, state=KeyState.DESTROYED))
    with pytest.raises(KeyDestroyed):
        reader(counting, clock).get(KEY_A)


def test_reader_private_key_missing_while_metadata_active(
    ssm: Any, counting: CountingFactory, clock: FakeClock, material_a: KeyMaterial
) -> None:
    keyring = SsmKeyring(ssm, PREFIX)
    keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a, state=KeyState.ACTIVE))
    ssm.delete_parameter(Name=KeyringLayout(PREFIX).private_key(KEY_A))
    with pytest.raises(UnknownKey, match=KEY_A) as caught:
        reader(counting, clock).get(KEY_A)
    assert caught.value.code == "unknown_key"


@pytest.mark.parametrize("metadata", ["not json", "[]", json.dumps({"state": 7})])
def test_reader_tolerates_unreadable_metadata(
    ssm: Any,
    counting: CountingFactory,
    clock: FakeClock,
    material_a: KeyMaterial,
    metadata: str,
) -> None:
    keyring = SsmKeyring(ssm, PREFIX)
    keyring.create_private_key(KEY_A, material_a.private_key_pem)
    ssm.put_parameter(Name=KeyringLayout(PREFIX).metadata(KEY_A), Value=metadata, Type="String")
    assert reader(counting, clock).get(KEY_A).key_id == KEY_A


def test_reader_ssm_failure_is_keyring_unavailable(unreachable_ssm: Any, clock: FakeClock) -> None:
    calls: list[str] = []
    unreachable_ssm.meta.events.register(
        "before-call.ssm.*", lambda model, **_: calls.append(model.name)
    )
    keys = reader(lambda: unreachable_ssm, clock)
    with pytest.raises(KeyringUnavailable) as caught:
        keys.get(KEY_A)
    error = caught.value
    assert error.code == "internal"
    message = str(error)
    assert "ssm:GetParameters" in message
    assert KeyringLayout(PREFIX).private_key(KEY_A) in message
    assert "EndpointConnectionError after 3 attempt(s)" in message
    # an outage is not remembered as "unknown key": the next call tries again
    with pytest.raises(KeyringUnavailable):
        keys.get(KEY_A)
    assert calls == ["GetParameters"] * 6  # a refused connection is retried twice


def test_reader_forget(
    ssm: Any, counting: CountingFactory, clock: FakeClock, material_a: KeyMaterial
) -> None:
    SsmKeyring(ssm, PREFIX).store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    keys = reader(counting, clock)
    keys.get(KEY_A)
    with pytest.raises(UnknownKey):
        keys.get(UNKNOWN)
    counting.take()
    keys.forget(KEY_A)
    keys.get(KEY_A)
    assert counting.take() == 1
    keys.forget()
    keys.get(KEY_A)
    with pytest.raises(UnknownKey):
        keys.get(UNKNOWN)
    assert counting.take() == 2


# -- KeyringReader: a keyring larger than the lookup budget ------------------------------------


def store_many(ssm: Any, material: KeyMaterial, count: int) -> list[str]:
    """`count` key IDs sharing one session key: the reader only cares about the IDs."""
    keyring = SsmKeyring(ssm, PREFIX)
    key_ids = [f"{index:08d}-1111-4111-8111-111111111111" for index in range(count)]
    for key_id in key_ids:
        keyring.store_key(key_id, material, make_record(key_id, material))
    return key_ids


def test_reader_past_the_budget_looks_up_every_key_the_keyring_holds(
    ssm: Any, counting: CountingFactory, clock: FakeClock, material_a: KeyMaterial
) -> None:
    key_ids = store_many(ssm, material_a, 12)
    keys = reader(counting, clock, max_lookups_per_minute=2)
    assert [keys.get(key_id).key_id for key_id in key_ids] == key_ids
    # two lookups on the budget, then one listing (two pages of private keys), then the rest
    assert (
        counting.calls
        == ["GetParameters"] * 2 + ["GetParametersByPath"] * 2 + ["GetParameters"] * 10
    )
    listing = [r for r in counting.requests if "Path" in r]
    assert listing[0] == {
        "Path": f"{PREFIX}/keys",
        "Recursive": True,
        "WithDecryption": False,  # no KMS call: names only matter
        "MaxResults": 10,
        "ParameterFilters": [{"Key": "Type", "Option": "Equals", "Values": ["SecureString"]}],
    }
    counting.take()

    # an invented key ID is still refused without a lookup: the listing is fresh
    with pytest.raises(UnknownKey, match="budget"):
        keys.get(UNKNOWN)
    assert counting.take() == 0


def test_reader_reads_the_listing_again_for_a_key_created_after_it(
    ssm: Any, counting: CountingFactory, clock: FakeClock, material_a: KeyMaterial
) -> None:
    keys = reader(counting, clock, max_lookups_per_minute=1)
    with pytest.raises(UnknownKey):
        keys.get(UNKNOWN)  # spends the budget
    with pytest.raises(UnknownKey, match="budget"):
        keys.get(KEY_B)  # lists the keyring: empty
    SsmKeyring(ssm, PREFIX).store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    counting.take()

    clock.advance(LISTING_REFRESH_SECONDS - 0.1)
    with pytest.raises(UnknownKey, match="budget"):
        keys.get(KEY_A)  # not in the listing, which is too fresh to read again
    assert counting.take() == 0

    clock.advance(0.1)
    assert keys.get(KEY_A).key_id == KEY_A  # not remembered as unknown: found at once
    assert counting.calls == ["GetParametersByPath", "GetParameters"]


def test_reader_listing_failure_is_keyring_unavailable(
    unreachable_ssm: Any, clock: FakeClock
) -> None:
    keys = reader(lambda: unreachable_ssm, clock, max_lookups_per_minute=1)
    with pytest.raises(KeyringUnavailable):
        keys.get(UNKNOWN)
    with pytest.raises(KeyringUnavailable, match="ssm:GetParametersByPath") as caught:
        keys.get(KEY_A)
    assert f"{PREFIX}/keys" in str(caught.value)
    # a failed listing is not read again before the interval: the budget answers meanwhile
    with pytest.raises(UnknownKey, match="budget"):
        keys.get(KEY_B)


# -- KeyringReader: a destroyed key stops decrypting within check_seconds ---------------------


def destroy(ssm: Any, material: KeyMaterial, key_id: str) -> None:
    """What `rotator destroy` leaves: metadata state destroyed, the private key deleted."""
    record = make_record(key_id, material, state=KeyState.RETIRED)
    SsmKeyring(ssm, PREFIX).put_record(
        record.transition(KeyState.DESTROYED, at=NOW, actor="runbook", reason="retention over")
    )
    ssm.delete_parameter(Name=KeyringLayout(PREFIX).private_key(key_id))


def test_a_cached_key_is_rechecked_and_stops_when_destroyed(
    ssm: Any, counting: CountingFactory, clock: FakeClock, material_a: KeyMaterial
) -> None:
    SsmKeyring(ssm, PREFIX).store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    keys = reader(counting, clock, ttl_seconds=900.0, check_seconds=60.0)
    key = keys.get(KEY_A)
    clock.advance(60.0)
    assert keys.get(KEY_A) is key  # checked and still there: the same key object
    assert counting.calls == ["GetParameters", "GetParameters"]
    assert [r["WithDecryption"] for r in counting.requests] == [True, False]  # no KMS to check
    counting.take()

    destroy(ssm, material_a, KEY_A)
    clock.advance(59.9)
    assert keys.get(KEY_A) is key  # inside the interval: served from memory, no call
    assert counting.take() == 0

    clock.advance(0.1)  # 60 s after the last check
    with pytest.raises(KeyDestroyed, match=KEY_A):
        keys.get(KEY_A)
    with pytest.raises(KeyDestroyed):  # remembered: no more calls
        keys.get(KEY_A)
    assert counting.take() == 1


@pytest.mark.parametrize("how", ["metadata only", "private key deleted"])
def test_a_cached_key_stops_when_either_sign_of_destruction_appears(
    ssm: Any, counting: CountingFactory, clock: FakeClock, material_a: KeyMaterial, how: str
) -> None:
    keyring = SsmKeyring(ssm, PREFIX)
    record = make_record(KEY_A, material_a, state=KeyState.RETIRED)
    keyring.store_key(KEY_A, material_a, record)
    keys = reader(counting, clock, check_seconds=10.0)
    keys.get(KEY_A)
    if how == "metadata only":
        keyring.put_record(
            record.transition(KeyState.DESTROYED, at=NOW, actor="runbook", reason="retention")
        )
        expected: type[Exception] = KeyDestroyed
    else:
        ssm.delete_parameter(Name=KeyringLayout(PREFIX).private_key(KEY_A))
        expected = UnknownKey
    clock.advance(10.0)
    with pytest.raises(expected):
        keys.get(KEY_A)


def test_a_failed_check_serves_the_key_until_its_ttl_and_no_longer(
    ssm: Any, counting: CountingFactory, clock: FakeClock, material_a: KeyMaterial
) -> None:
    from botocore.exceptions import EndpointConnectionError

    SsmKeyring(ssm, PREFIX).store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    keys = reader(counting, clock, ttl_seconds=300.0, check_seconds=60.0)
    key = keys.get(KEY_A)
    outage = {"on": True}

    def unreachable(**_: Any) -> None:
        if outage["on"]:
            raise EndpointConnectionError(endpoint_url="https://ssm.us-east-1.amazonaws.com")

    keys._ssm().meta.events.register("before-call.ssm.GetParameters", unreachable)
    counting.take()

    clock.advance(60.0)
    assert keys.get(KEY_A) is key  # the check failed: served on (an outage is not a destruction)
    assert counting.take() == 3  # one check, three attempts
    clock.advance(59.9)
    assert keys.get(KEY_A) is key  # and not checked again on every call
    assert counting.take() == 0

    clock.advance(300.0 - 119.9)  # the TTL: the key must be read again, and SSM is down
    with pytest.raises(KeyringUnavailable):
        keys.get(KEY_A)
    outage["on"] = False
    assert keys.get(KEY_A).key_id == KEY_A


# -- KeyringReader: every SSM call ends before the invocation's deadline -----------------------


def test_no_attempt_starts_that_could_end_after_the_deadline(
    counting: CountingFactory, clock: FakeClock
) -> None:
    keys = reader(counting, clock, ssm_timeout_seconds=0.5)  # an attempt may take 1 s
    with ssm_time_limit(0.9), pytest.raises(KeyringUnavailable, match="not attempted"):
        keys.get(KEY_A)
    assert counting.take() == 0
    with ssm_time_limit(1.1), pytest.raises(UnknownKey):
        keys.get(KEY_A)
    assert counting.take() == 1
    with pytest.raises(UnknownKey):  # no limit outside the block
        keys.get(KEY_B)


def test_access_denied_is_its_own_error_and_not_retried(
    counting: CountingFactory, clock: FakeClock
) -> None:
    keys = reader(counting, clock)
    keys._ssm().meta.events.register("before-call.ssm.GetParameters", deny_access)
    with pytest.raises(KeyringAccessDenied, match="AccessDeniedException after 1 attempt"):
        keys.get(KEY_A)
    assert counting.take() == 1


def deny_access(**_: Any) -> tuple[Any, dict[str, Any]]:
    """What SSM answers a role without permission on the parameter."""
    return _Response(), {
        "Error": {"Code": "AccessDeniedException", "Message": "not authorized"},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }
