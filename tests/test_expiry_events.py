"""Expiry events, like ACM's: the thresholds a key crosses (pure), the rotation job sending one
event per key and threshold on the fakes, and the proof on the sandbox: a key crossing 45, 30
and 14 days under the simulated clock puts exactly three events, which a rule's SQS target
receives."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import boto3
import pytest

from rotator.config import Settings
from rotator.domain.expiry import (
    DEFAULT_EXPIRY_EVENT_DAYS,
    EXPIRY_EVENT_DETAIL_TYPE,
    EXPIRY_EVENT_SOURCE,
    Crossing,
    newly_crossed,
    parse_thresholds,
    recorded_thresholds,
)
from rotator.domain.history import ClockKind, EventKind
from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import KeyState
from rotator.entrypoints.scheduled import handler
from rotator.errors import ConfigError
from rotator.services.jobs import RotationJobRun, rotation_job
from rotator.services.rotation import RotationService
from tests.conftest import NOW, make_record
from tests.fakes import FakeClock, FakeConnect, FakeKeyring, FakeLock, FakePublisher
from tests.world import World

DAY = timedelta(days=1)
KEY, INSTANCE = "key-1", "instance-1"

# -- which thresholds are crossed (pure) --------------------------------------------------------


@pytest.mark.parametrize(
    ("days", "recorded", "expected"),
    [
        (50, set(), None),
        (45.5, set(), None),
        (45, set(), Crossing(45, (45,))),  # at the threshold is crossing it
        (44, set(), Crossing(45, (45,))),
        (40, {45}, None),
        (29, {45}, Crossing(30, (30,))),
        (13, {45, 30}, Crossing(14, (14,))),
        (13, set(), Crossing(14, (45, 30, 14))),  # first seen late: one event, the tightest
        (13, {45}, Crossing(14, (30, 14))),  # a run missed: one event, not two
        (0.5, {45, 30, 14, 7, 3}, Crossing(1, (1,))),
        (-2, {45, 30, 14, 7, 3}, Crossing(1, (1,))),  # expired before the last was sent
        (-2, {45, 30, 14, 7, 3, 1}, None),
        (13, {14}, None),  # 30 added to the setting after 14 was sent: never owed
    ],
)
def test_the_tightest_threshold_not_yet_sent_is_owed(
    days: float, recorded: set[int], expected: Crossing | None
) -> None:
    assert newly_crossed(days, DEFAULT_EXPIRY_EVENT_DAYS, recorded) == expected


def test_no_thresholds_owe_nothing() -> None:
    assert newly_crossed(-5, (), set()) is None


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("45,30,14,7,3,1", (45, 30, 14, 7, 3, 1)),
        (" 7, 30 ,7", (30, 7)),  # any order, duplicates once: widest first
        ("", ()),
        ("  ", ()),
    ],
)
def test_thresholds_parse_widest_first(text: str, days: tuple[int, ...]) -> None:
    assert parse_thresholds(text) == days


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "30,", "thirty", "30;14"])
def test_a_bad_threshold_list_names_the_setting(text: str) -> None:
    assert Settings().expiry_thresholds == DEFAULT_EXPIRY_EVENT_DAYS
    with pytest.raises(ConfigError, match="ROTATOR_EXPIRY_EVENT_DAYS: .*positive whole number"):
        Settings.load({"ROTATOR_EXPIRY_EVENT_DAYS": text})


# -- the rotation job on the fakes --------------------------------------------------------------


class Job:
    """The rotation job on the fakes, with one active key whose certificate is `material`'s."""

    def __init__(self, material: KeyMaterial, **settings: Any) -> None:
        self.keyring = FakeKeyring(clock=ClockKind.SIMULATED)
        self.publisher = FakePublisher()
        self.record = make_record(KEY, material, instance_id=INSTANCE)
        self.keyring.store_key(KEY, material, self.record)
        assert self.record.not_after is not None
        self.not_after = self.record.not_after
        # Neither the renew window nor the cryptoperiod makes the key due: it is not rotated.
        values = {"renew_before_days": 1, "cryptoperiod_days": 1000, **settings}
        self.service = RotationService(
            self.keyring,
            FakeConnect(),
            FakeLock(FakeClock(NOW).now),
            Settings(keyring_prefix="/fakes", **values),
            actor="scheduler",
        )

    def at(self, days_before: float, *, what_if: bool = False) -> RotationJobRun:
        now = self.not_after - days_before * DAY
        return rotation_job(
            self.service,
            self.keyring,
            self.publisher,
            self.service.settings.policy,
            now,
            what_if=what_if,
        )

    def sent(self) -> list[int]:
        return [int(event.detail["threshold"]) for _, event in self.publisher.events]

    def recorded(self) -> list[dict[str, Any]]:
        return [
            dict(e.details)
            for e in self.keyring.history_events()
            if e.kind == EventKind.EXPIRY_EVENT_SENT
        ]


def test_one_event_per_threshold_however_often_the_job_runs(material_a: KeyMaterial) -> None:
    job = Job(material_a)
    runs = [job.at(days) for days in (50, 44, 44, 40, 29.5, 29, 13.25, 13)]
    assert all(run.ok for run in runs), [run.failures() for run in runs]
    assert job.sent() == [45, 30, 14]
    assert [len(run.expiry_events) for run in runs] == [0, 1, 0, 0, 1, 0, 1, 0]
    (bus, event), *_ = job.publisher.events
    assert (bus, event.source, event.detail_type) == (
        "default",
        EXPIRY_EVENT_SOURCE,
        EXPIRY_EVENT_DETAIL_TYPE,
    )
    assert event.time == job.not_after - 44 * DAY  # the job's time
    assert dict(event.detail) == {
        "keyId": KEY,
        "instanceId": INSTANCE,
        "state": "active",
        "notAfter": job.not_after.isoformat(),
        "daysToExpiry": 44,
        "threshold": 45,
    }
    assert job.publisher.events[2][1].detail["daysToExpiry"] == 13  # 13.25 days: 13 whole days
    recorded = job.keyring.history_events()[-3:]
    assert [(e.kind, e.scope, e.key_id, e.actor, e.clock) for e in recorded] == [
        (EventKind.EXPIRY_EVENT_SENT, INSTANCE, KEY, "scheduler", ClockKind.SIMULATED)
    ] * 3
    assert recorded_thresholds(recorded) == {KEY: {45, 30, 14}}
    assert runs[1].to_dict()["expiry_events"] == [dict(event.detail)]


def test_a_key_first_seen_past_several_thresholds_gets_one_event(
    material_a: KeyMaterial,
) -> None:
    job = Job(material_a)
    job.at(13)
    assert job.sent() == [14]
    assert job.recorded() == [
        {"threshold": 14, "covered": [45, 30, 14], "days_to_expiry": 13, "not_after": ANY_TIME}
    ]
    job.at(10)
    assert job.sent() == [14]  # 30 and 45 were covered: never sent later
    job.at(6.5)
    assert job.sent() == [14, 7]


class _AnyTime:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and datetime.fromisoformat(other).tzinfo is not None


ANY_TIME: Any = _AnyTime()


def test_a_what_if_sends_and_records_nothing_but_says_what_it_would_send(
    material_a: KeyMaterial,
) -> None:
    job = Job(material_a)
    run = job.at(29, what_if=True)
    assert [d["threshold"] for d in run.to_dict()["expiry_events"]] == [30]
    assert job.publisher.events == [] and job.recorded() == []
    assert job.publisher.metrics == []  # publishes nothing at all
    job.at(29)
    assert job.sent() == [30]


def test_a_refused_event_is_not_recorded_fails_the_run_and_is_sent_next_time(
    material_a: KeyMaterial,
) -> None:
    job = Job(material_a, event_bus="arn:aws:events:us-east-1:123456789012:event-bus/audit")
    run = job.at(29)
    assert not run.ok and run.expiry_events == ()
    assert run.telemetry_error is not None and "events:PutEvents" in run.telemetry_error
    (notice,) = job.publisher.notices
    assert notice.subject == "connect-key-rotator: publishing failed"
    assert "Publishing failed: expiry events: events:PutEvents" in notice.message
    assert job.recorded() == []
    job.publisher.event_buses.add("audit")  # the bus now exists
    assert job.at(28).ok
    assert [(bus, e.detail["threshold"]) for bus, e in job.publisher.events] == [("audit", 30)]


@pytest.mark.parametrize("state", [KeyState.PREVIOUS, KeyState.RETIRED, KeyState.PENDING])
def test_only_active_keys_get_events(material_a: KeyMaterial, state: KeyState) -> None:
    job = Job(material_a)
    job.keyring.metadata[KEY] = replace(job.record, state=state)
    job.at(13)
    assert job.sent() == []


def test_no_thresholds_no_events(material_a: KeyMaterial) -> None:
    job = Job(material_a, expiry_event_days="")
    assert job.at(2).ok  # past 45, 30, 14, 7 and 3 days
    assert job.sent() == [] and job.recorded() == []


# -- the proof, on the sandbox ------------------------------------------------------------------


def test_a_key_crossing_45_30_14_days_puts_exactly_three_events(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduled Lambda at the sandbox's simulated time, five runs from 50 days before
    NotAfter to 13; a rule on the default bus (the template's pattern) with an SQS target."""
    first = world.init(NOW)
    assert first.new_key_id is not None
    record = world.adapters.keyring.get_record(first.new_key_id)
    assert record.not_after is not None
    not_after = record.not_after
    monkeypatch.setenv("ROTATOR_RENEW_BEFORE_DAYS", "7")  # not due at 13 days: not rotated
    monkeypatch.setenv("ROTATOR_CRYPTOPERIOD_DAYS", "1000")
    events, sqs = boto3.client("events"), boto3.client("sqs")
    suffix = world.prefix.strip("/")
    queue = sqs.create_queue(QueueName=f"expiry-{suffix}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    rule = f"expiry-{suffix}"
    events.put_rule(
        Name=rule,
        EventPattern=json.dumps(
            {"source": [EXPIRY_EVENT_SOURCE], "detail-type": [EXPIRY_EVENT_DETAIL_TYPE]}
        ),
    )
    events.put_targets(Rule=rule, Targets=[{"Id": "q", "Arn": queue_arn["Attributes"]["QueueArn"]}])

    def run(days_before: int) -> dict[str, Any]:
        world.sandbox.clock.stand_at(not_after - days_before * DAY)
        summary = handler({}, None)
        assert summary["ok"] is True, summary
        assert summary["counts"]["rotated"] == 0
        return summary

    def received() -> list[dict[str, Any]]:
        found = []
        while messages := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            for message in messages:
                found.append(json.loads(message["Body"]))
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
        return found

    for days_before in (50, 44, 40, 29, 13):
        run(days_before)
    bodies = sorted(received(), key=lambda body: -body["detail"]["threshold"])
    assert [b["detail"]["threshold"] for b in bodies] == [45, 30, 14]
    assert [b["detail"]["daysToExpiry"] for b in bodies] == [44, 29, 13]
    for body in bodies:
        assert (body["source"], body["detail-type"]) == (
            EXPIRY_EVENT_SOURCE,
            EXPIRY_EVENT_DETAIL_TYPE,
        )
        assert {
            k: v for k, v in body["detail"].items() if k not in ("threshold", "daysToExpiry")
        } == {
            "keyId": first.new_key_id,
            "instanceId": world.instance_id,
            "state": "active",
            "notAfter": not_after.isoformat(),
        }
    again = run(13)  # the same time again: nothing new
    assert again["expiry_events"] == [] and received() == []
    sent = [
        e for e in world.adapters.keyring.history_events() if e.kind == EventKind.EXPIRY_EVENT_SENT
    ]
    assert [(e.details["threshold"], e.clock) for e in sent] == [
        (45, ClockKind.SIMULATED),
        (30, ClockKind.SIMULATED),
        (14, ClockKind.SIMULATED),
    ]
