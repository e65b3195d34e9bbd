"""Custodians (PCI DSS 3.7.8): the principal in the audit trail, acknowledging the shipped
responsibilities, and the report's section and finding."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timedelta
from typing import Any

import boto3
import pytest

from rotator.adapters.identity import StsIdentity
from rotator.domain.checks import ReportOptions, findings
from rotator.domain.custodians import acknowledgement_event, custodians
from rotator.domain.findings import RULES, FindingCode, Severity
from rotator.domain.history import (
    CUSTODIANS_SCOPE,
    EventKind,
    HistoryEvent,
    key_transition_events,
    transitions_by_key,
)
from rotator.domain.lifecycle import KeyRecord, KeyState, Transition
from rotator.domain.rotation import RotationState, RotationStep
from rotator.domain.state import KeyringState
from rotator.entrypoints.cli import main
from rotator.ports import ProtectionSweep
from rotator.services.custodians import RESPONSIBILITIES, responsibilities
from rotator.services.runbooks import runbooks_dir
from tests.conftest import NOW
from tests.world import World

DAY = timedelta(days=1)
ALICE = "arn:aws:iam::123456789012:user/alice"
ROLE = "arn:aws:sts::123456789012:assumed-role/rotator/fn"
CURRENT = "a" * 64


# -- the principal in the history ----------------------------------------------------------------


def test_a_history_event_round_trips_with_and_without_its_principal() -> None:
    event = HistoryEvent(
        EventKind.KEY_TRANSITION, NOW, "me@host (cli)", "i-1", "k", principal=ALICE
    )
    again = HistoryEvent.from_json(event.to_json())
    assert again == event and again.principal == ALICE
    assert event.to_dict()["principal"] == ALICE
    # An event written before principals were recorded still loads, with none.
    old = json.loads(event.to_json())
    del old["principal"]
    loaded = HistoryEvent.from_json(json.dumps(old))
    assert loaded.principal == "" and loaded == HistoryEvent(
        EventKind.KEY_TRANSITION, NOW, "me@host (cli)", "i-1", "k"
    )


def test_transitions_and_rotation_records_carry_it_and_old_ones_stay_as_they_were() -> None:
    first = Transition(KeyState.ACTIVE, NOW, "me", "first key", ALICE)
    assert Transition.from_dict(first.to_dict()) == first
    legacy = Transition(KeyState.ACTIVE, NOW, "me", "first key")
    assert "principal" not in legacy.to_dict()  # the metadata stays byte for byte
    assert Transition.from_dict(legacy.to_dict()) == legacy
    state = RotationState("r", "i-1", RotationStep.STARTED, NOW, "me", None, principal=ALICE)
    assert RotationState.from_json(state.to_json()) == state
    unattributed = RotationState("r", "i-1", RotationStep.STARTED, NOW, "me", None)
    assert "principal" not in json.loads(unattributed.to_json())
    assert RotationState.from_json(unattributed.to_json()) == unattributed


def test_each_transition_event_names_its_principal_and_reads_back_as_the_same_transition() -> None:
    record = KeyRecord.for_public_key(
        "k",
        "f" * 64,
        2048,
        instance_id="i-1",
        state=KeyState.PENDING,
        at=NOW,
        actor="me",
        reason="new",
        source="rotation",
        kms_key_id=None,
        principal=ALICE,
    ).transition(KeyState.ACTIVE, at=NOW + DAY, actor="job", reason="current", principal=ROLE)
    events = key_transition_events((), record, "real")
    assert [e.principal for e in events] == [ALICE, ROLE]
    # The events and the metadata agree: the report merges them without doubling any.
    assert tuple(transitions_by_key(events)["k"]) == record.history


# -- against moto, through the CLI ---------------------------------------------------------------


def cli(*argv: str, stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", io.StringIO(stdin))
        code = main(list(argv), out)
    return code, out.getvalue()


def moto_principal() -> str:
    return str(boto3.client("sts").get_caller_identity()["Arn"])


@pytest.fixture
def sts_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every GetCallerIdentity the rotator's StsIdentity makes (the answer is still moto's)."""
    calls: list[str] = []
    real = StsIdentity.caller_arn

    def counted(self: StsIdentity) -> str:
        if self._arn is None:
            calls.append("sts:GetCallerIdentity")
        return real(self)

    monkeypatch.setattr(StsIdentity, "caller_arn", counted)
    return calls


@pytest.fixture
def at_now(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("ROTATOR_KEY_SIZE", "2048")
    world.sandbox.clock.stand_at(NOW)
    return world


def test_a_cli_key_operation_records_the_sts_principal_and_a_what_if_asks_sts_nothing(
    at_now: World, sts_calls: list[str]
) -> None:
    world = at_now
    code, out = cli(*world.init_argv())
    assert code == 0, out
    assert sts_calls == ["sts:GetCallerIdentity"]  # once for the run, however much it wrote
    principal = moto_principal()
    assert principal.startswith("arn:aws:")
    keyring = world.adapters.keyring
    written = [e for e in keyring.history_events() if e.kind != EventKind.RUNBOOK_RUN]
    assert written and {e.principal for e in written} == {principal}
    (record,) = keyring.records()
    assert [t.principal for t in record.history] == [principal, principal]
    # What-ifs and dry runs record nothing, so they ask STS nothing.
    for argv in (
        ["rotate", "--dry-run", "--force"],
        ["rotate", "--force", "--now", (NOW + DAY).isoformat()],
        ["retire", record.key_id, "--now", (NOW + DAY).isoformat()],
    ):
        code, out = cli(*argv)
        assert code in (0, 1), out
    assert sts_calls == ["sts:GetCallerIdentity"]
    world.sandbox.clock.stand_at(NOW + DAY)
    code, out = cli("rotate", "--force")
    assert code == 0 and "rotated" in out, out
    assert len(sts_calls) == 2
    steps = [e for e in keyring.history_events() if e.kind == EventKind.ROTATION_STEP]
    assert steps and {e.principal for e in steps} == {principal}


def test_acknowledge_records_the_principal_time_and_the_shipped_texts_hash(
    at_now: World, sts_calls: list[str]
) -> None:
    path = runbooks_dir() / RESPONSIBILITIES
    shipped = hashlib.sha256(path.read_bytes()).hexdigest()
    assert responsibilities().sha256 == shipped
    # Declined: nothing recorded.
    code, out = cli("custodian", "acknowledge", stdin="n\n")
    assert code == 1 and "nothing was recorded" in out
    assert shipped in out and "Report a suspected compromise" in out  # the text, printed first
    keyring = at_now.adapters.keyring
    assert [e for e in keyring.history_events() if e.kind == EventKind.CUSTODIAN_ACKNOWLEDGED] == []
    code, out = cli("custodian", "acknowledge", stdin="y\n")
    assert code == 0, out
    (event,) = [e for e in keyring.history_events() if e.kind == EventKind.CUSTODIAN_ACKNOWLEDGED]
    assert event.principal == moto_principal() and event.scope == CUSTODIANS_SCOPE
    assert event.details["text_sha256"] == shipped
    assert event.details["text"] == "runbooks/custodian/responsibilities.md"
    assert event.at == NOW and event.clock == "simulated"  # the clock's time (the sandbox's)
    # No what-if acknowledgement: --now is refused by the parser.
    with pytest.raises(SystemExit) as refused:
        cli("custodian", "acknowledge", "--yes", "--now", NOW.isoformat())
    assert refused.value.code == 2


def report_json(at: datetime, world: World) -> dict[str, Any]:
    world.sandbox.clock.stand_at(at)
    code, out = cli("report", "--format", "json")
    assert code == 0, out
    document: dict[str, Any] = json.loads(out)
    return document


def custodian_findings(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in document["findings"] if f["code"] == "custodian-unacknowledged"]


def test_the_report_names_a_principal_that_rotated_unacknowledged_until_it_acknowledges(
    at_now: World,
) -> None:
    world = at_now
    principal = moto_principal()
    assert cli(*world.init_argv())[0] == 0
    before = report_json(NOW + DAY, world)
    (row,) = before["custodians"]["principals"]
    assert row["principal"] == principal and row["acknowledged_at"] is None
    assert row["key_operations"] > 0 and not row["automation"]
    (finding,) = custodian_findings(before)
    assert principal in finding["message"] and finding["severity"] == "warning"
    assert finding["runbook"] == "quarterly-evidence"

    world.sandbox.clock.stand_at(NOW + 2 * DAY)
    assert cli("custodian", "acknowledge", "--yes")[0] == 0
    after = report_json(NOW + 3 * DAY, world)
    assert custodian_findings(after) == []
    (row,) = after["custodians"]["principals"]
    assert row["acknowledged_at"] == (NOW + 2 * DAY).isoformat()
    assert row["text_sha256"] == after["custodians"]["responsibilities_sha256"]
    assert row["current_text"] is True and row["acknowledged_in_time"] is True
    code, listed = cli("custodian", "list")
    assert code == 0 and principal in listed and "UNACKNOWLEDGED" not in listed
    # The Markdown and HTML reports show the section.
    world.sandbox.clock.stand_at(NOW + 3 * DAY)
    for fmt in ("md", "html"):
        code, rendered = cli("report", "--format", fmt)
        assert code == 0 and "Key custodians" in rendered and principal in rendered


# -- the rule, pure ------------------------------------------------------------------------------


def state(*events: HistoryEvent) -> KeyringState:
    return KeyringState("/p", (), {}, (), ProtectionSweep.unread(), events=events)


def operation(
    at: datetime, principal: str = ALICE, actor: str = "alice@host (cli)"
) -> HistoryEvent:
    return HistoryEvent(EventKind.KEY_TRANSITION, at, actor, "i-1", "k", principal=principal)


def codes(keyring: KeyringState, now: datetime) -> list[FindingCode]:
    return [f.code for f in findings(keyring, ReportOptions(), now)]


def test_an_acknowledgement_13_months_old_raises_the_finding_again() -> None:
    acknowledged = acknowledgement_event(ALICE, NOW, "alice@host (cli)", CURRENT, "text")
    later = NOW + timedelta(days=380)  # 12.5 months
    keyring = state(acknowledged, operation(NOW + DAY), operation(later))
    assert codes(keyring, NOW + 11 * 30 * DAY) == []
    assert codes(keyring, NOW + 395 * DAY) == [FindingCode.CUSTODIAN_UNACKNOWLEDGED]
    (custodian,) = custodians(keyring.events, NOW + 395 * DAY, CURRENT)
    assert not custodian.acknowledged_in_time and custodian.acknowledged_at == NOW
    assert "more than 12 months ago" in custodian.describe()
    # Acknowledged again: no finding.
    again = acknowledgement_event(ALICE, later, "alice@host (cli)", CURRENT, "text")
    assert codes(state(*keyring.events, again), NOW + 395 * DAY) == []


def test_who_counts_operations_in_the_period_people_not_the_scheduled_role() -> None:
    scheduled = operation(NOW, ROLE, actor="eventbridge-scheduler (rotator-fn)")
    old = operation(NOW - 400 * DAY, "arn:aws:iam::123456789012:user/bob")
    unknown = operation(NOW, principal="")  # recorded before principals were
    future = operation(NOW + DAY, "arn:aws:iam::123456789012:user/carol")
    keyring = state(scheduled, old, unknown, future, operation(NOW))
    (finding,) = findings(keyring, ReportOptions(), NOW)
    assert finding.code is FindingCode.CUSTODIAN_UNACKNOWLEDGED and ALICE in finding.message
    listed = {c.principal: c for c in custodians(keyring.events, NOW, with_acknowledgers=False)}
    assert set(listed) == {ALICE, ROLE}
    assert listed[ROLE].automation and not listed[ROLE].unacknowledged
    # An acknowledgement of an earlier text counts for the 12 months, and says it is earlier.
    earlier = acknowledgement_event(ALICE, NOW - DAY, "alice", "b" * 64, "text")
    (alice,) = [
        c for c in custodians((*keyring.events, earlier), NOW, CURRENT) if c.principal == ALICE
    ]
    assert alice.current_text is False and not alice.unacknowledged
    assert "an earlier text" in alice.describe()


def test_the_finding_is_a_warning_resolved_by_the_quarterly_evidence_runbook() -> None:
    rule = RULES[FindingCode.CUSTODIAN_UNACKNOWLEDGED]
    assert rule.severity is Severity.WARNING and rule.runbook.value == "quarterly-evidence"


def test_the_responsibilities_ship_beside_the_runbooks_and_are_no_runbook() -> None:
    from rotator.services.runbooks import list_runbooks

    assert (runbooks_dir() / RESPONSIBILITIES).is_file()
    assert "responsibilities" not in {r.name for r in list_runbooks()}
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    data_files = pyproject["tool"]["setuptools"]["data-files"]
    assert data_files["share/connect-key-rotator/runbooks/custodian"] == ["runbooks/custodian/*.md"]
