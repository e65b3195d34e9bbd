"""Rewrap on the fakes: exactly the old key's values, each decrypting to its plaintext; a crash
at the store port resumes with nothing done twice and nothing lost; errors hold no plaintext."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from lambda_decrypt.decrypt import Decryptor
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.history import EventKind
from rotator.domain.keys import KeyMaterial, self_signed_material
from rotator.domain.lifecycle import KeyRecord, KeyState
from rotator.domain.stored_ciphertext import (
    StoredRecord,
    connect_key_id,
    object_values,
    rewrite_object,
)
from rotator.services.inventory import (
    StoredCiphertextsRemain,
    check_destroy,
    last_inventories,
    take_inventory,
)
from rotator.services.rewrap import (
    RewrapFailed,
    Rewrapper,
    RewrapProgress,
    RewrapRefused,
    batch_manifest,
    progress_printer,
)
from tests.fakes import FakeCheckpoint, FakeCiphertextStore, FakeKeyring
from tests.world import KeyPool

OLD, OTHER, CURRENT = "old-key", "other-key", "current-key"
INSTANCE = "instance-1"
AT = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


class Crash(BaseException):
    """The process dies (not an error anything catches)."""


@dataclass
class Setup:
    keyring: FakeKeyring
    materials: dict[str, KeyMaterial]
    plaintexts: dict[str, bytes]  # record name -> its card's plaintext
    keys: dict[str, str]  # record name -> the key its card was made with

    def ciphertext(self, key_id: str, plaintext: bytes) -> str:
        return encrypt_like_connect(
            plaintext, key_id=key_id, certificate_pem=self.materials[key_id].certificate_pem
        )


@pytest.fixture
def setup(key_pool: KeyPool) -> Setup:
    keyring = FakeKeyring()
    materials = {}
    for key_id, private_key in zip((OLD, OTHER, CURRENT), key_pool.private_keys, strict=False):
        material = self_signed_material(private_key, now=AT, subject=f"CN={key_id}")
        state = KeyState.ACTIVE if key_id == CURRENT else KeyState.RETIRED
        record = KeyRecord.for_material(
            key_id,
            material,
            instance_id=INSTANCE,
            state=state,
            at=AT,
            actor="test",
            reason="fixture",
            source="test",
            kms_key_id=None,
        )
        keyring.store_key(key_id, material, record)
        materials[key_id] = material
    keyring.set_current(INSTANCE, CURRENT)
    return Setup(keyring, materials, {}, {})


def fill(setup: Setup, store: FakeCiphertextStore, count: int) -> None:
    """`count` records, cards under OLD, OTHER and CURRENT in turn, one nested twice."""
    for index in range(count):
        key_id = (OLD, OTHER, CURRENT)[index % 3]
        name = f"r{index:03d}"
        plaintext = f"4000{index:012d}".encode()
        text = setup.ciphertext(key_id, plaintext)
        store.put(name, {"Attributes": {"Card": text}, "Copies": [{"Card": text}], "n": name})
        setup.plaintexts[name] = plaintext
        setup.keys[name] = key_id


def card(store: FakeCiphertextStore, name: str) -> str:
    document = store.documents[name]
    assert isinstance(document, dict)
    value = document["Attributes"]["Card"]
    assert document["Copies"][0]["Card"] == value
    return str(value)


def assert_rewrapped(setup: Setup, before: dict[str, str], store: FakeCiphertextStore) -> None:
    decryptor = Decryptor(setup.keyring.decrypt_keys())
    for name, key_id in setup.keys.items():
        now = card(store, name)
        if key_id == OLD:
            assert connect_key_id(now) == CURRENT
            assert decryptor.decrypt(now).plaintext == setup.plaintexts[name]
        else:
            assert now == before[name]  # byte for byte


def test_rewrap_rewrites_exactly_the_old_key_s_values(setup: Setup) -> None:
    store = FakeCiphertextStore()
    fill(setup, store, 12)
    before = {name: card(store, name) for name in setup.keys}
    checkpoint = FakeCheckpoint()
    result = Rewrapper(setup.keyring, OLD).run([store], checkpoint, concurrency=3)
    assert result.ok and result.to_key == CURRENT
    assert result.progress.values_rewrapped == result.values_found == 8  # 4 records, 2 each
    assert sorted(store.writes) == sorted(n for n, k in setup.keys.items() if k == OLD)
    assert_rewrapped(setup, before, store)
    assert take_inventory([store]).counts() == {CURRENT: 16, OTHER: 8}
    assert {ref for _, ref in checkpoint.entries} == set(store.writes)


def test_a_dry_run_counts_and_changes_nothing(setup: Setup) -> None:
    store = FakeCiphertextStore()
    fill(setup, store, 6)
    versions = dict(store.versions)
    result = Rewrapper(setup.keyring, OLD).run([store], FakeCheckpoint(), dry_run=True)
    assert (result.records_found, result.values_found) == (2, 4)
    assert store.writes == [] and store.versions == versions


def test_a_crash_after_a_write_resumes_with_nothing_done_twice_or_lost(setup: Setup) -> None:
    store = FakeCiphertextStore()
    fill(setup, store, 30)  # 10 records under OLD
    before = {name: card(store, name) for name in setup.keys}
    checkpoint = FakeCheckpoint()
    real_replace = store.replace
    writes = [0]

    def dies_after_the_fourth_write(record: StoredRecord, changes: Mapping[str, str]) -> None:
        if writes[0] >= 4:  # the process is dead: its other threads write nothing more
            raise Crash
        real_replace(record, changes)
        writes[0] += 1
        if writes[0] == 4:  # written, not yet in the checkpoint
            raise Crash

    store.replace = dies_after_the_fourth_write  # type: ignore[method-assign]
    with pytest.raises(Crash):
        Rewrapper(setup.keyring, OLD).run([store], checkpoint, concurrency=1)
    assert len(store.writes) == 4 and len(checkpoint.entries) == 3
    store.replace = real_replace  # type: ignore[method-assign]
    with pytest.raises(RewrapRefused, match="--resume"):
        Rewrapper(setup.keyring, OLD).run([store], checkpoint)
    result = Rewrapper(setup.keyring, OLD).run([store], checkpoint, resume=True, concurrency=4)
    assert result.ok and result.progress.skipped_done == 3
    assert sorted(store.writes) == sorted(n for n, k in setup.keys.items() if k == OLD)
    assert len(store.writes) == len(set(store.writes)) == 10  # nothing twice, nothing lost
    assert_rewrapped(setup, before, store)


def test_a_concurrent_change_is_reported_left_and_retried_on_resume(setup: Setup) -> None:
    store = FakeCiphertextStore()
    fill(setup, store, 6)
    before = {name: card(store, name) for name in setup.keys}
    changed = "r000"

    def outside_writer(ref: str) -> None:
        if ref == changed and store.before_write is not None:
            store.before_write = None
            document = dict(store.documents[ref])  # type: ignore[call-overload]
            store.put(ref, {**document, "Late": "field"})

    store.before_write = outside_writer
    checkpoint = FakeCheckpoint()
    first = Rewrapper(setup.keyring, OLD).run([store], checkpoint)
    assert not first.ok and first.conflicts == [(store.uri, changed)]
    assert first.values_left == 2 and store.writes == ["r003"]
    assert card(store, changed) == before[changed]
    second = Rewrapper(setup.keyring, OLD).run([store], checkpoint, resume=True)
    assert second.ok and store.writes == ["r003", changed]
    assert_rewrapped(setup, before, store)
    assert store.documents[changed]["Late"] == "field"  # type: ignore[index]


def test_a_value_that_does_not_decrypt_fails_without_its_plaintext(setup: Setup) -> None:
    store = FakeCiphertextStore()
    fill(setup, store, 3)
    del setup.keyring.private_keys[OLD]  # the old key is lost: nothing to decrypt with
    result = Rewrapper(setup.keyring, OLD).run([store], FakeCheckpoint())
    assert not result.ok and store.writes == []
    ((_, ref, why),) = result.failures
    assert ref == "r000" and "decrypt failed" in why
    assert setup.plaintexts[ref].decode() not in json.dumps(result.to_dict())


def test_a_failure_inside_the_crypto_names_only_its_type(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rotator.services.rewrap as rewrap

    def leaks(plaintext: bytes, **_: str) -> str:
        raise ValueError(f"bad input {plaintext!r}")

    monkeypatch.setattr(rewrap, "encrypt_like_connect", leaks)
    text = setup.ciphertext(OLD, b"4111111111111111")
    with pytest.raises(RewrapFailed) as failed:
        Rewrapper(setup.keyring, OLD).rewrap_value(text)
    assert "4111111111111111" not in str(failed.value)
    assert failed.value.__cause__ is None and failed.value.__suppress_context__


def test_the_current_key_is_not_rewrapped(setup: Setup) -> None:
    with pytest.raises(RewrapRefused, match="current key"):
        Rewrapper(setup.keyring, CURRENT)


def test_destroy_is_refused_while_a_store_holds_the_key_and_recorded(setup: Setup) -> None:
    store = FakeCiphertextStore()
    fill(setup, store, 3)
    with pytest.raises(StoredCiphertextsRemain, match=f"rotator rewrap --from {OLD}"):
        check_destroy([store], setup.keyring, OLD, AT, "test")
    assert check_destroy([store], setup.keyring, OLD, AT, "test", ignore_reason="audited") == 2
    events = [e for e in setup.keyring.history_events() if e.kind == EventKind.STORED_CIPHERTEXTS]
    assert [e.details["counts"] for e in events] == [{OLD: 2}, {OLD: 2}]
    assert events[-1].reason == "audited" and events[-1].details["ignored"] is True
    assert last_inventories(events)[OLD] == (AT, 2)
    Rewrapper(setup.keyring, OLD).run([store], FakeCheckpoint())
    assert check_destroy([store], setup.keyring, OLD, AT, "test") == 0


def test_object_bodies_keep_every_other_byte(setup: Setup) -> None:
    text = setup.ciphertext(OLD, b"1234")
    body = f'{{"a": "{text}", "b":1}}{{"c" :"{text}"}}\n{{"d": [ "x" ]}}'.encode()
    values = object_values("o", body)
    assert [(v.path, connect_key_id(v.text)) for v in values] == [
        ((0, "a"), OLD),
        ((1, "c"), OLD),
        ((2, "d", 0), None),
    ]
    assert rewrite_object("o", body, {text: "NEW"}) == body.replace(text.encode(), b"NEW")


def test_progress_is_json_lines_off_a_terminal_with_counts_only() -> None:
    stream = io.StringIO()
    show = progress_printer(stream, every=0)
    show(RewrapProgress(records_read=2, records_written=1, values_rewrapped=2))
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["progress"]["values_rewrapped"] == 2


def test_a_plan_lists_the_objects_holding_the_key(setup: Setup) -> None:
    store = FakeCiphertextStore("s3://contact-records/ctr/")
    fill(setup, store, 6)
    store.put("ctr/a b.json", {"Card": setup.ciphertext(OLD, b"1")})
    assert batch_manifest([store], OLD).splitlines() == [
        "contact-records,ctr%2Fa%20b.json",
        "contact-records,r000",
        "contact-records,r003",
    ]
