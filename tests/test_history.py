"""The append-only history (issue 9.5): one SSM parameter per event, never overwritten, so the
rotation history, each key's transitions and the runbook audit outlive SSM's 100 versions."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest

from lambda_decrypt.keyring import KeyringLayout
from rotator.adapters.history import SsmHistory
from rotator.adapters.runbook_audit import SsmRunbookAudit
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.history import (
    ClockKind,
    EventKind,
    HistoryEvent,
    key_history,
    key_transition_events,
    rotation_runs,
    rotation_step_event,
    transitions_by_key,
)
from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import KeyState, Transition
from rotator.domain.rotation import RotationState, RotationStep
from rotator.entrypoints.cli import main
from rotator.errors import KeyringConflict, KeyringError
from rotator.sandbox.sample_flows import card_blocks
from rotator.services.report import ReportOptions, make_report
from rotator.services.report_render import ReportFormat, render
from rotator.services.rotation import Outcome
from rotator.services.runbook_runner import RunOutcome, RunRecord, StepResult
from tests.conftest import NOW, keep_rotation, make_record
from tests.test_report import report_schema
from tests.world import World

PREFIX = "/connect-keys"
KEY_A = "11111111-1111-4111-8111-111111111111"
INSTANCE = "instance-1"
DAY = timedelta(days=1)
STAMP_LEAF = r"\d{8}T\d{12}Z-[0-9a-f]{8}"


def event(at: datetime = NOW, **changes: Any) -> HistoryEvent:
    base = HistoryEvent(EventKind.KEY_TRANSITION, at, "test", INSTANCE, KEY_A, reason="r")
    return replace(base, **changes)


def run_record(number: int, at: datetime) -> RunRecord:
    return RunRecord(
        run_id=f"run-{number:04d}",
        runbook="routine-rotation",
        procedure="main",
        actor="ann@host (runbook)",
        parameters={"INSTANCE_ID": [INSTANCE]},
        planned=("rotator status",),
        started_at=at,
    )


def finished(record: RunRecord) -> RunRecord:
    step = StepResult(1, "rotator status", False, record.started_at, 0, 0.01)
    return replace(
        record,
        outcome=RunOutcome.SUCCEEDED,
        steps=(step,),
        finished_at=record.started_at + timedelta(seconds=1),
        message="all 1 steps succeeded",
    )


class LostAnswer:
    """An SSM client whose first PutParameter answer is lost: botocore sends it again, and the
    caller sees only the retry's answer. `first_value` makes the lost request a different one."""

    def __init__(self, ssm: Any, first_value: str | None = None) -> None:
        self.ssm = ssm
        self.first_value = first_value
        self.puts: list[dict[str, Any]] = []

    def put_parameter(self, **request: Any) -> Any:
        self.puts.append(request)
        if len(self.puts) == 1:
            self.ssm.put_parameter(**{**request, "Value": self.first_value or request["Value"]})
        return self.ssm.put_parameter(**request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ssm, name)


# -- the event, pure -----------------------------------------------------------------------------


def test_an_event_round_trips_and_knows_its_scope() -> None:
    original = event(rotation_id="r-1", details={"state": "active", "from": "pending"})
    assert HistoryEvent.from_json(original.to_json()) == original
    assert original.clock == ClockKind.REAL and original.scope == INSTANCE
    assert event(instance_id=None).scope == "keyring"
    assert event(kind=EventKind.RUNBOOK_RUN).scope == "runbooks"
    later = HistoryEvent.from_json(event(kind="abandon_key", clock=ClockKind.SIMULATED).to_json())
    assert (later.kind, later.clock) == ("abandon_key", "simulated")
    for broken in ("{", "[]", '{"kind": "k"}', json.dumps({**event().to_dict(), "details": 1})):
        with pytest.raises(KeyringError, match="history event is not readable"):
            HistoryEvent.from_json(broken)


def test_key_transition_events_are_the_transitions_the_stored_record_lacks(
    material_a: KeyMaterial,
) -> None:
    pending = make_record(KEY_A, material_a, state=KeyState.PENDING)
    (first,) = key_transition_events((), pending, ClockKind.SIMULATED)
    assert first.details == {
        "state": "pending",
        "from": None,
        "public_key_sha256": material_a.public_key_sha256,
        "key_size": material_a.key_size,
        "source": "test",
    }
    assert (first.key_id, first.instance_id, first.clock) == (KEY_A, INSTANCE, "simulated")
    active = pending.transition(KeyState.ACTIVE, at=NOW + DAY, actor="rot", reason="current")
    retired = active.transition(KeyState.RETIRED, at=NOW + 2 * DAY, actor="ops", reason="gone")
    assert key_transition_events(active.history, active, ClockKind.REAL) == []
    new = key_transition_events(pending.history, retired, ClockKind.REAL)
    assert [(e.details, e.at, e.actor, e.reason) for e in new] == [
        ({"state": "active", "from": "pending"}, NOW + DAY, "rot", "current"),
        ({"state": "retired", "from": "active"}, NOW + 2 * DAY, "ops", "gone"),
    ]
    recorded = transitions_by_key([first, *new])[KEY_A]
    assert recorded == list(retired.history)
    # Transitions only the metadata caches (made before the history existed) are kept too.
    assert key_history(recorded[1:], retired.history) == retired.history


def test_rotation_runs_are_each_rotation_as_of_its_last_step() -> None:
    state = RotationState("r-1", INSTANCE, RotationStep.STARTED, NOW, "rot", "old", reason="forced")
    steps = [
        state,
        state.advance(RotationStep.STAGED),
        state.advance(RotationStep.ASSOCIATED, new_key_id="new"),
    ]
    events = [
        rotation_step_event(s, NOW + i * timedelta(seconds=1), ClockKind.REAL)
        for i, s in enumerate(steps)
    ]
    second = replace(state, rotation_id="r-0", started_at=NOW - DAY, step=RotationStep.DONE)
    events.append(rotation_step_event(second, NOW - DAY, ClockKind.REAL))
    first_run, latest = rotation_runs(events)
    assert (first_run.rotation_id, first_run.finished) == ("r-0", True)
    assert (latest.rotation_id, latest.step, latest.new_key_id) == ("r-1", "associated", "new")
    assert latest.updated_at == NOW + 2 * timedelta(seconds=1) and not latest.finished
    assert latest.to_dict()["old_key_id"] == "old"


# -- the adapter, on moto --------------------------------------------------------------------------


def test_events_are_created_once_under_the_layout_and_read_back_in_order(ssm: Any) -> None:
    history = SsmHistory(ssm, PREFIX)
    later, earlier = event(NOW + DAY, reason="later"), event(NOW, reason="earlier")
    names = [history.append(e) for e in (later, earlier, event(NOW - DAY, instance_id=None))]
    layout = KeyringLayout(PREFIX)
    assert layout.history_root() == f"{PREFIX}/history"
    assert names[0].startswith(f"{PREFIX}/history/{INSTANCE}/20261124T120000000000Z-")
    assert names[2].startswith(f"{PREFIX}/history/keyring/20261122T120000000000Z-")
    for name in names:
        scope, leaf = name.rsplit("/", 2)[1:]
        assert re.fullmatch(STAMP_LEAF, leaf)
        assert layout.history_event(scope, *leaf.split("-")) == name
        assert json.loads(ssm.get_parameter(Name=name)["Parameter"]["Value"])["schema"] == 1
    assert [e.reason for e in history.events(INSTANCE)] == ["earlier", "later"]
    assert [e.scope for e in history.events()] == ["keyring", INSTANCE, INSTANCE]
    assert history.events("another-instance") == []


def test_events_of_one_instant_keep_the_order_they_were_appended_in(ssm: Any) -> None:
    history = SsmHistory(ssm, PREFIX)
    steps = [f"step {n:02d}" for n in range(12)]  # more than a page of 10
    for reason in steps:
        history.append(event(NOW, reason=reason))
    read = history.events(INSTANCE)
    assert [e.reason for e in read] == steps
    assert {e.at for e in read} == {NOW}  # the name moves on a microsecond; the event does not


def test_a_lost_answer_retried_is_one_event_and_never_an_overwrite(ssm: Any) -> None:
    client = LostAnswer(ssm)
    name = SsmHistory(client, PREFIX).append(event())
    assert [p["Name"] for p in client.puts] == [name]
    assert all(p["Overwrite"] is False and p["Type"] == "String" for p in client.puts)
    assert [e.reason for e in SsmHistory(ssm, PREFIX).events()] == ["r"]

    clash = LostAnswer(ssm, first_value=event(reason="someone else's").to_json())
    with pytest.raises(KeyringConflict, match="already holds another event"):
        SsmHistory(clash, PREFIX).append(event(NOW + DAY))
    assert [e.reason for e in SsmHistory(ssm, PREFIX).events()] == ["r", "someone else's"]


def test_keyring_writes_append_an_event_per_new_transition_and_rotation_step(
    ssm: Any, material_a: KeyMaterial
) -> None:
    keyring = SsmKeyring(ssm, PREFIX, clock=ClockKind.SIMULATED)
    pending = make_record(KEY_A, material_a, state=KeyState.PENDING)
    keyring.store_key(KEY_A, material_a, pending)
    keyring.store_key(KEY_A, material_a, pending)  # a re-run: no change, no event
    active = pending.transition(KeyState.ACTIVE, at=NOW + DAY, actor="rot", reason="current")
    keyring.write_record(active)  # one transition, written without a read
    twice = active.transition(KeyState.RETIRED, at=NOW + 2 * DAY, actor="ops", reason="a")
    twice = twice.transition(KeyState.DESTROYED, at=NOW + 3 * DAY, actor="o", reason="b")
    keyring.put_record(twice)  # compared with the stored record: both transitions are new
    state = RotationState(
        "r-1", INSTANCE, RotationStep.STARTED, NOW, "rot", None, reason="first key"
    )
    keep_rotation(keyring, state, at=NOW + 4 * DAY)
    events = keyring.history.events(INSTANCE)
    assert [(e.kind, e.details.get("state") or e.details.get("step")) for e in events] == [
        ("key_transition", "pending"),
        ("key_transition", "active"),
        ("key_transition", "retired"),
        ("key_transition", "destroyed"),
        ("rotation_step", "started"),
    ]
    assert {e.clock for e in events} == {"simulated"}
    assert keyring.get_rotation(INSTANCE) == state  # the latest state is still cached


# -- proof: past SSM's 100 versions ---------------------------------------------------------------


def test_thirty_rotations_all_appear_in_the_report(world: World) -> None:
    service, instance = world.service, world.instance_id
    now = NOW
    # The flow alone is managed: the module's reads and updates would only slow the test down.
    first = service.init(
        instance, [world.flow_id], [], now, encrypt_blocks=card_blocks(world.flow_id)
    )
    keys = [first.new_key_id]
    for _ in range(30):
        now += 8 * DAY  # past the 7-day grace: the rotation retires the previous key itself
        (result,) = service.rotate(instance, now, force=True)
        assert result.outcome is Outcome.ROTATED, result.detail
        keys.append(result.new_key_id)

    a = world.adapters
    # The rotation record keeps a version per write: two a rotation here (an older release wrote
    # one a step). Written 100 times more, as a long-lived record is, SSM keeps none of these
    # rotations' versions (it keeps the last 100); the report reads the history, which has all.
    pointer = a.keyring.layout.rotation(instance)
    kept = world.ssm.get_parameter(Name=pointer)["Parameter"]["Value"]
    for _ in range(100):
        world.ssm.put_parameter(Name=pointer, Value=kept, Type="String", Overwrite=True)
    versions = world.ssm.get_parameter_history(Name=pointer, MaxResults=50)
    assert versions["Parameters"][0]["Version"] > 2 * 31
    report = make_report(a.keyring, a.connect, a.lock, ReportOptions(), now)
    document = json.loads(render(report, ReportFormat.JSON))
    jsonschema.validate(document, report_schema(), format_checker=jsonschema.FormatChecker())
    (facts,) = document["instances"]
    rotations = facts["rotations"]
    assert len(rotations) == 31  # init and 30 rotations
    assert [r["new_key_id"] for r in rotations] == keys
    assert [r["old_key_id"] for r in rotations] == [None, *keys[:-1]]
    assert all(r["finished"] and r["step"] == "done" for r in rotations)
    assert [r["reason"] for r in rotations] == ["first key"] + ["forced"] * 30
    # 7 steps a rotation; the new key pending and active, the old one previous, and from the
    # second rotation on the key before it retired: 11 events a rotation in steady state.
    kinds = Counter(e["kind"] for e in facts["history"])
    assert kinds == {"rotation_step": 31 * len(RotationStep), "key_transition": 2 + 30 * 3 + 29}
    rows = {k["key_id"]: k for k in document["keys"]}
    assert [t["state"] for t in rows[keys[0]]["history"]] == [
        "pending",
        "active",
        "previous",
        "retired",
    ]
    assert [t["state"] for t in rows[keys[-1]]["history"]] == ["pending", "active"]
    markdown = render(report, ReportFormat.MD)
    assert all(f"`{r['rotation_id']}`" in markdown for r in rotations)


def test_the_runbook_audit_outlives_the_hundred_versions_of_its_old_parameter(
    ssm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    audit = SsmRunbookAudit(ssm, PREFIX)
    # The old trail: one parameter, a version per record. SSM keeps the last 100.
    for number in range(55):
        record = run_record(number, NOW + number * DAY)
        for version in (record, finished(record)):
            ssm.put_parameter(
                Name=audit.legacy_name,
                Value=json.dumps(version.to_dict()),
                Type="String",
                Overwrite=True,
            )
    legacy = audit.records()
    assert len(legacy) == 100 and legacy[0]["run_id"] == "run-0005"
    runs = range(1000, 1120)  # 120 runs more, 240 records, each an event of its own
    for number in runs:
        record = run_record(number, NOW + number * DAY)
        audit.write(record.event())
        audit.write(finished(record).event())
    records = audit.records()
    assert records[:100] == legacy
    new = records[100:]
    assert [r["run_id"] for r in new[::2]] == [f"run-{n:04d}" for n in runs]
    assert [r["outcome"] for r in new[:4]] == ["running", "succeeded"] * 2

    out = io.StringIO()
    assert main(["--prefix", PREFIX, "runbook", "audit"], out) == 0
    lines = out.getvalue().splitlines()
    assert lines[-1] == f"{50 + len(runs)} run(s)"  # runs 5 to 54, then the new ones
    assert "succeeded" in lines[-2] and "1/1 steps run" in lines[-2] and "run-1119" in lines[-2]
    out = io.StringIO()
    assert main(["--prefix", PREFIX, "runbook", "audit", "--json"], out) == 0
    assert json.loads(out.getvalue())["records"] == records
    capsys.readouterr()


def test_runbook_events_are_timed_by_the_run() -> None:
    record = run_record(1, datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC))
    start, end = record.event(), finished(record).event()
    assert (start.at, end.at) == (record.started_at, finished(record).finished_at)
    assert start.reason == "routine-rotation (main) running"
    assert end.reason == "all 1 steps succeeded"


def test_the_report_still_shows_what_was_recorded_before_the_history_existed(
    world: World,
) -> None:
    """Older versions kept a key's transitions only in its metadata and the latest rotation
    only in the rotation record: the report merges them with the events."""
    a, instance = world.adapters, world.instance_id
    named = card_blocks(world.flow_id)
    key_id = world.service.init(instance, [world.flow_id], [], NOW, encrypt_blocks=named).new_key_id
    assert key_id is not None
    record = a.keyring.get_record(key_id)
    old = Transition(KeyState.PENDING, NOW - DAY, "old-rotator", "before the history")
    written_by_hand = replace(record, history=(old, *record.history))
    legacy = RotationState("legacy-1", instance, RotationStep.DONE, NOW - DAY, "old-rotator", None)
    for name, value in (
        (a.keyring.layout.metadata(key_id), written_by_hand.to_json()),
        (a.keyring.layout.rotation(instance), legacy.to_json()),
    ):
        world.ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=True)
    report = make_report(a.keyring, a.connect, a.lock, ReportOptions(), NOW)
    (facts,) = report.instances
    assert [(r.rotation_id, r.updated_at) for r in facts.rotations][0] == ("legacy-1", None)
    assert len(facts.rotations) == 2 and facts.rotations[1].updated_at == NOW
    (row,) = report.keys
    assert row.history == (old, *record.history)
    assert "`legacy-1`" in render(report, ReportFormat.MD)


# -- one write a step ----------------------------------------------------------------------------


def test_a_steps_events_are_one_parameter_read_in_order_beside_single_event_ones(
    ssm: Any,
) -> None:
    history = SsmHistory(ssm, PREFIX)
    history.append(event(reason="old, alone"))  # the one-event form, as every release wrote it
    step = [event(reason="first"), event(reason="second"), event(reason="third")]
    (name,) = history.append_all(step)
    history.append(event(NOW + DAY, reason="later"))
    value = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    assert [item["reason"] for item in json.loads(value)] == [
        "first",
        "second",
        "third",
    ]
    reasons = [e.reason for e in SsmHistory(ssm, PREFIX).events(INSTANCE)]
    assert reasons == ["old, alone", "first", "second", "third", "later"]


def test_a_steps_events_past_a_standard_parameter_go_on_in_the_next_and_scopes_apart(
    ssm: Any,
) -> None:
    long = "x" * 1500  # three such events do not fit in 4 KB together
    step = [event(reason=f"{n}-{long}") for n in range(3)] + [
        event(reason="keyring's", instance_id=None),
        event(reason="instance's again"),
    ]
    names = SsmHistory(ssm, PREFIX).append_all(step)
    assert len(names) == 4  # two + one of the instance, one of the keyring, one more
    for name in names:
        parameter = ssm.get_parameter(Name=name)["Parameter"]
        assert len(parameter["Value"]) <= 4096
    read = SsmHistory(ssm, PREFIX).events()
    assert [e.reason[:2] for e in read] == ["0-", "1-", "2-", "ke", "in"]


def test_an_unreadable_list_of_events_is_a_keyring_error(ssm: Any) -> None:
    name = KeyringLayout(PREFIX).history_event(INSTANCE, "20261130T000000000000Z", "bad")
    ssm.put_parameter(Name=name, Value="[not json", Type="String")
    with pytest.raises(KeyringError, match="history event is not readable"):
        SsmHistory(ssm, PREFIX).events()
