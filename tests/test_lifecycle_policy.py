"""Key lifecycle (states, transitions, the stored record) and the rotation policy."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import (
    ALLOWED_TRANSITIONS,
    DECRYPTING_STATES,
    KeyRecord,
    KeyState,
    Transition,
)
from rotator.domain.policy import Due, RotationPolicy, rotation_due, should_rotate
from rotator.errors import InvalidTransition, KeyringError
from tests.conftest import NOW, make_record

KEY_ID = "0b7e4a3c-5d1f-4c2a-9e8b-7f6a5d4c3b2a"
NOT_BEFORE = datetime(2026, 1, 1, tzinfo=UTC)
NOT_AFTER = NOT_BEFORE + timedelta(days=730)
DEFAULT = RotationPolicy()
EXPECTED_ALLOWED = {
    (KeyState.PENDING, KeyState.ACTIVE),
    (KeyState.PENDING, KeyState.RETIRED),
    (KeyState.PENDING, KeyState.DESTROYED),
    (KeyState.ACTIVE, KeyState.PREVIOUS),
    (KeyState.ACTIVE, KeyState.RETIRED),
    (KeyState.PREVIOUS, KeyState.ACTIVE),
    (KeyState.PREVIOUS, KeyState.RETIRED),
    (KeyState.RETIRED, KeyState.DESTROYED),
}
ALL_PAIRS = [(a, b) for a in KeyState for b in KeyState]


def record(
    state: KeyState = KeyState.ACTIVE,
    *,
    not_before: datetime | None = NOT_BEFORE,
    not_after: datetime | None = NOT_AFTER,
) -> KeyRecord:
    return KeyRecord(
        key_id=KEY_ID,
        instance_id="instance-1",
        state=state,
        key_size=4096,
        public_key_sha256="ab" * 32,
        certificate_sha256="cd" * 32,
        subject="CN=connect-key-rotator",
        not_before=not_before,
        not_after=not_after,
        created_at=NOT_BEFORE,
        source="generated",
        kms_key_id="alias/connect-keys",
        history=(Transition(state, NOT_BEFORE, "rotator", "created"),),
    )


# -- states and transitions --------------------------------------------------------------------


def test_allowed_transitions_table_is_the_designed_one() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(KeyState)
    table = {(a, b) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets}
    assert table == EXPECTED_ALLOWED


@pytest.mark.parametrize(("start", "to"), sorted(EXPECTED_ALLOWED))
def test_allowed_transition_appends_history(start: KeyState, to: KeyState) -> None:
    before = record(start)
    at = NOT_BEFORE + timedelta(days=3, hours=4)
    after = before.transition(to, at=at, actor="runbook:ops@example.com", reason="because")
    assert after.state == to
    assert after.history[:-1] == before.history
    assert after.history[-1] == Transition(to, at, "runbook:ops@example.com", "because")
    assert len(after.history) == len(before.history) + 1
    # the original is untouched (frozen records)
    assert before.state == start
    assert len(before.history) == 1
    # nothing else changed
    assert replace(after, state=start, history=before.history) == before


@pytest.mark.parametrize(
    ("start", "to"), [pair for pair in ALL_PAIRS if pair not in EXPECTED_ALLOWED]
)
def test_disallowed_transition_raises(start: KeyState, to: KeyState) -> None:
    before = record(start)
    with pytest.raises(InvalidTransition) as caught:
        before.transition(to, at=NOW, actor="rotator", reason="try")
    message = str(caught.value)
    assert KEY_ID in message
    assert str(start) in message
    assert str(to) in message


def test_self_transitions_are_not_allowed() -> None:
    for state in KeyState:
        with pytest.raises(InvalidTransition):
            record(state).transition(state, at=NOW, actor="a", reason="r")


def test_destroyed_is_terminal() -> None:
    assert ALLOWED_TRANSITIONS[KeyState.DESTROYED] == frozenset()
    destroyed = record(KeyState.DESTROYED)
    for state in KeyState:
        with pytest.raises(InvalidTransition):
            destroyed.transition(state, at=NOW, actor="a", reason="r")
    assert destroyed.decrypts is False


def test_full_life_records_every_step_in_order() -> None:
    key = record(KeyState.PENDING)
    steps = [KeyState.ACTIVE, KeyState.PREVIOUS, KeyState.RETIRED, KeyState.DESTROYED]
    for day, state in enumerate(steps, start=1):
        key = key.transition(state, at=NOW + timedelta(days=day), actor="rotator", reason=state)
    assert [t.state for t in key.history] == [KeyState.PENDING, *steps]
    assert [t.at for t in key.history[1:]] == [NOW + timedelta(days=d) for d in range(1, 5)]


def test_every_state_but_destroyed_decrypts() -> None:
    assert frozenset(KeyState) - {KeyState.DESTROYED} == DECRYPTING_STATES
    for state in KeyState:
        assert record(state).decrypts is (state != KeyState.DESTROYED)


def test_days_to_expiry() -> None:
    assert record().days_to_expiry(NOT_AFTER - timedelta(days=10, hours=12)) == 10.5
    assert record().days_to_expiry(NOT_AFTER + timedelta(days=1)) == -1
    assert record(not_after=None).days_to_expiry(NOW) is None


# -- KeyRecord JSON ----------------------------------------------------------------------------


def test_json_round_trip_full_record(material_a: KeyMaterial) -> None:
    original = make_record(KEY_ID, material_a).transition(
        KeyState.PREVIOUS, at=NOW + timedelta(days=1), actor="rotator", reason="rotated"
    )
    original = replace(original, kms_key_id="alias/connect-keys")
    raw = original.to_json()
    assert KeyRecord.from_json(raw) == original
    data = json.loads(raw)
    assert data["schema"] == 1
    assert data["state"] == "previous"
    assert data["not_after"] == material_a.not_after.isoformat()
    assert [t["state"] for t in data["history"]] == ["active", "previous"]
    # the private key never goes into metadata
    assert "PRIVATE" not in raw
    # deterministic serialisation: same record, same bytes (so "unchanged" is detectable)
    assert KeyRecord.from_json(raw).to_json() == raw


def test_json_round_trip_with_optional_fields_none() -> None:
    original = replace(
        record(KeyState.RETIRED, not_before=None, not_after=None),
        instance_id=None,
        certificate_sha256=None,
        subject=None,
        kms_key_id=None,
        history=(),
    )
    restored = KeyRecord.from_json(original.to_json())
    assert restored == original
    assert restored.not_before is None
    assert restored.history == ()


def test_json_round_trip_keeps_timezone_offsets() -> None:
    plus_two = timezone(timedelta(hours=2))
    at = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=plus_two)
    original = record().transition(KeyState.PREVIOUS, at=at, actor="a", reason="r")
    restored = KeyRecord.from_json(original.to_json())
    assert restored.history[-1].at == at
    assert restored.history[-1].at.utcoffset() == timedelta(hours=2)


def test_from_json_defaults_for_missing_optional_fields() -> None:
    data = json.loads(record().to_json())
    for optional in (
        "instance_id",
        "certificate_sha256",
        "subject",
        "not_before",
        "not_after",
        "kms_key_id",
        "source",
        "history",
    ):
        del data[optional]
    restored = KeyRecord.from_json(json.dumps(data))
    assert restored.source == "unknown"
    assert restored.history == ()
    assert restored.instance_id is None
    assert restored.not_after is None
    assert restored.key_id == KEY_ID


def _mutated(**changes: object) -> str:
    data = json.loads(record().to_json())
    for name, value in changes.items():
        if value is KeyError:
            del data[name]
        else:
            data[name] = value
    return json.dumps(data)


GARBAGE = {
    "not json": "this is not json",
    "empty": "",
    "json null": "null",
    "json list": "[1, 2, 3]",
    "json string": '"key"',
    "json number": "42",
    "missing key_id": _mutated(key_id=KeyError),
    "missing state": _mutated(state=KeyError),
    "missing key_size": _mutated(key_size=KeyError),
    "missing public_key_sha256": _mutated(public_key_sha256=KeyError),
    "missing created_at": _mutated(created_at=KeyError),
    "unknown state": _mutated(state="compromised"),
    "key_size not a number": _mutated(key_size="big"),
    "key_size null": _mutated(key_size=None),
    "bad date": _mutated(not_after="next tuesday"),
    "date not a string": _mutated(created_at=12345),
    "history not a list": _mutated(history=5),
    "history item not an object": _mutated(history=[1]),
    "history item incomplete": _mutated(history=[{"state": "active", "at": "2026-01-01"}]),
    "history item bad state": _mutated(
        history=[{"state": "zombie", "at": "2026-01-01", "actor": "a", "reason": "r"}]
    ),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_from_json_on_garbage_raises_keyring_error(case: str) -> None:
    with pytest.raises(KeyringError, match="key metadata is not readable"):
        KeyRecord.from_json(GARBAGE[case])


# -- rotation policy ---------------------------------------------------------------------------


def test_not_due_mid_life() -> None:
    due = rotation_due(record(), DEFAULT, NOT_BEFORE + timedelta(days=100))
    assert due.due is False
    assert due.due_at == NOT_BEFORE + timedelta(days=365)  # cryptoperiod comes first
    assert "2027-01-01" in due.reason
    assert should_rotate(record(), DEFAULT, NOT_BEFORE + timedelta(days=100)) is False


def test_due_inside_the_renew_window_including_the_boundary() -> None:
    # a one-year certificate: the renew window (30 d) comes before the cryptoperiod (365 d)
    not_after = NOT_BEFORE + timedelta(days=365)
    key = record(not_after=not_after)
    renew_at = not_after - timedelta(days=30)
    assert rotation_due(key, DEFAULT, renew_at - timedelta(seconds=1)).due is False
    at_boundary = rotation_due(key, DEFAULT, renew_at)
    assert at_boundary.due is True
    assert "renew window" in at_boundary.reason
    assert at_boundary.due_at == renew_at
    inside = rotation_due(key, DEFAULT, renew_at + timedelta(days=10))
    assert inside.due is True
    assert "renew window" in inside.reason


@pytest.mark.parametrize(
    "after", [timedelta(0), timedelta(seconds=1), timedelta(days=400)], ids=str
)
def test_due_when_expired(after: timedelta) -> None:
    due = rotation_due(record(), DEFAULT, NOT_AFTER + after)
    assert due.due is True
    assert "expired" in due.reason
    assert NOT_AFTER.strftime("%Y-%m-%d") in due.reason


def test_due_when_cryptoperiod_exceeded_though_certificate_far_from_expiry() -> None:
    key = record(not_after=NOT_BEFORE + timedelta(days=3650))
    end = NOT_BEFORE + timedelta(days=365)
    assert rotation_due(key, DEFAULT, end - timedelta(seconds=1)).due is False
    due = rotation_due(key, DEFAULT, end)
    assert due.due is True
    assert "cryptoperiod" in due.reason
    assert due.due_at == end
    assert key.days_to_expiry(end) == 3650 - 365  # far from expiry


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [(None, None), (NOT_BEFORE, None), (None, NOT_AFTER)],
)
def test_due_without_certificate_dates(
    not_before: datetime | None, not_after: datetime | None
) -> None:
    due = rotation_due(record(not_before=not_before, not_after=not_after), DEFAULT, NOW)
    assert due == Due(True, due.reason, None)
    assert "certificate unknown" in due.reason


def test_custom_policy_values() -> None:
    key = record()  # 730-day certificate from NOT_BEFORE
    long_window = RotationPolicy(renew_before=timedelta(days=400), cryptoperiod=timedelta(days=700))
    at = NOT_BEFORE + timedelta(days=331)
    assert rotation_due(key, long_window, at).due is True  # 730 - 400 = 330
    assert rotation_due(key, DEFAULT, at).due is False
    short_period = RotationPolicy(renew_before=timedelta(days=1), cryptoperiod=timedelta(days=90))
    assert rotation_due(key, short_period, NOT_BEFORE + timedelta(days=89)).due is False
    due = rotation_due(key, short_period, NOT_BEFORE + timedelta(days=90))
    assert due.due is True
    assert "cryptoperiod" in due.reason
    assert due.due_at == NOT_BEFORE + timedelta(days=90)
    generous = RotationPolicy(renew_before=timedelta(days=7), cryptoperiod=timedelta(days=3650))
    assert rotation_due(key, generous, NOT_AFTER - timedelta(days=8)).due is False
    assert rotation_due(key, generous, NOT_AFTER - timedelta(days=7)).due is True


def test_policy_defaults() -> None:
    assert DEFAULT.renew_before == timedelta(days=30)
    assert DEFAULT.cryptoperiod == timedelta(days=365)


def test_rotation_due_is_pure_and_reads_no_clock() -> None:
    # dates far in the past and far in the future: a function that read the real clock would
    # call the first expired and the second not yet valid / not due for the wrong reason
    past = record(
        not_before=datetime(1990, 1, 1, tzinfo=UTC), not_after=datetime(1992, 1, 1, tzinfo=UTC)
    )
    future = record(
        not_before=datetime(2200, 1, 1, tzinfo=UTC), not_after=datetime(2202, 1, 1, tzinfo=UTC)
    )
    past_now = datetime(1990, 6, 1, tzinfo=UTC)
    future_now = datetime(2201, 6, 1, tzinfo=UTC)
    assert rotation_due(past, DEFAULT, past_now).due is False
    assert rotation_due(future, DEFAULT, future_now).due is True
    assert rotation_due(future, DEFAULT, datetime(2200, 6, 1, tzinfo=UTC)).due is False
    first = [rotation_due(past, DEFAULT, past_now), rotation_due(future, DEFAULT, future_now)]
    second = [rotation_due(past, DEFAULT, past_now), rotation_due(future, DEFAULT, future_now)]
    assert first == second
    assert past == record(
        not_before=datetime(1990, 1, 1, tzinfo=UTC), not_after=datetime(1992, 1, 1, tzinfo=UTC)
    )


@settings(max_examples=300, deadline=None)
@given(
    offset_seconds=st.integers(
        min_value=-10 * 86400, max_value=int((NOT_AFTER - NOT_BEFORE).total_seconds()) + 10 * 86400
    ),
    renew_days=st.integers(min_value=1, max_value=800),
    cryptoperiod_days=st.integers(min_value=1, max_value=1000),
)
def test_due_iff_now_reaches_the_earlier_deadline(
    offset_seconds: int, renew_days: int, cryptoperiod_days: int
) -> None:
    policy = RotationPolicy(
        renew_before=timedelta(days=renew_days), cryptoperiod=timedelta(days=cryptoperiod_days)
    )
    now = NOT_BEFORE + timedelta(seconds=offset_seconds)
    deadline = min(NOT_AFTER - policy.renew_before, NOT_BEFORE + policy.cryptoperiod)
    due = rotation_due(record(), policy, now)
    assert due.due is (now >= deadline)
    assert due.due_at == deadline
    assert should_rotate(record(), policy, now) is due.due
