"""Fleet mode's Lambda jobs (the state machine's steps): `evaluate` reads each member account's
keyring through its assumed role (moto), `rotate-target` is one instance's rotation, and
`aggregate` publishes the metrics and one notice; without accounts they refuse clearly."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from rotator.config import Settings
from rotator.domain.fleet import Account, Target
from rotator.domain.rotation import ManagedInstance
from rotator.entrypoints import scheduled
from rotator.entrypoints.bootstrap import build_account_adapters
from rotator.services.jobs import aggregate_job, rotate_target_job
from rotator.services.rotation import InstanceResult, Outcome
from tests.conftest import NOW, REGION
from tests.fakes import FakePublisher

FLOW = "bbbbbbbb-1111-4222-8333-444444444444"
INSTANCE = "aaaaaaaa-1111-4222-8333-444444444444"
ACCOUNTS = [
    Account("prod", "arn:aws:iam::111111111111:role/member", "ext-prod", (REGION,)),
    Account("test", "arn:aws:iam::222222222222:role/member", "ext-test", (REGION, "eu-west-2")),
]


@pytest.fixture
def fleet_env(monkeypatch: pytest.MonkeyPatch, aws: None) -> Settings:
    text = json.dumps([account.to_dict() for account in ACCOUNTS])
    monkeypatch.setenv("ROTATOR_ACCOUNTS", text)
    return Settings.load()


def test_evaluate_finds_each_member_accounts_instances(fleet_env: Settings) -> None:
    # `rotator init` recorded one instance in prod and one in test's second region.
    for account, region, instance in (
        (ACCOUNTS[0], REGION, INSTANCE),
        (ACCOUNTS[1], "eu-west-2", "i-2"),
    ):
        adapters = build_account_adapters(fleet_env, account, region)
        adapters.keyring.put_instance(ManagedInstance(instance, (FLOW,), ()))
    summary = scheduled.handler({"job": "evaluate"}, None)
    assert summary["ok"] and summary["counts"]["due"] == 2 and summary["counts"]["partitions"] == 3
    targets = [t for p in summary["partitions"] for t in p["targets"]]
    assert targets == [
        {"account": "prod", "region": REGION, "instance_id": INSTANCE},
        {"account": "test", "region": "eu-west-2", "instance_id": "i-2"},
    ]
    assert [p["reasons"] for p in summary["partitions"] if p["targets"]] == [["first key"]] * 2


def test_fleet_jobs_need_accounts(aws: None) -> None:
    for job in ("evaluate", "rotate-target", "aggregate"):
        summary = scheduled.handler({"job": job}, None)
        assert summary["ok"] is False and "ROTATOR_ACCOUNTS" in summary["error"]


def test_rotate_target_refuses_a_target_outside_the_fleet(fleet_env: Settings) -> None:
    summary = scheduled.handler(
        {
            "job": "rotate-target",
            "target": {"account": "dev", "region": REGION, "instance_id": "i"},
        },
        None,
    )
    assert summary["ok"] is False and "no account named 'dev'" in summary["error"]
    summary = scheduled.handler({"job": "rotate-target", "target": "prod"}, None)
    assert summary["ok"] is False and "event.target" in summary["error"]


class _Rotation:
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.calls: list[tuple[str | None, datetime, dict[str, Any]]] = []

    def rotate(
        self, instance_id: str | None, now: datetime, **options: Any
    ) -> list[InstanceResult]:
        self.calls.append((instance_id, now, options))
        return [InstanceResult(instance_id or "", self.outcome, "done", "k-old", "k-new")]


def test_rotate_target_is_one_instances_rotation() -> None:
    rotation = _Rotation(Outcome.ROTATED)
    target = Target("prod", REGION, INSTANCE)
    summary = rotate_target_job(rotation, target, NOW)  # type: ignore[arg-type]
    assert rotation.calls == [(INSTANCE, NOW, {"dry_run": False})]
    assert summary == {
        "ok": True,
        "job": "rotate-target",
        "now": NOW.isoformat(),
        "account": "prod",
        "region": REGION,
        "instance_id": INSTANCE,
        "outcome": "rotated",
        "detail": "done",
        "old_key_id": "k-old",
        "new_key_id": "k-new",
        "failure": None,
    }
    failed = rotate_target_job(_Rotation(Outcome.FAILED), target, NOW, what_if=True)  # type: ignore[arg-type]
    assert failed["ok"] is False


def test_aggregate_publishes_the_fleets_metrics_and_one_notice() -> None:
    publisher = FakePublisher()
    evaluation = {
        "errors": ["test/eu-west-2: AssumeRole failed for member: AccessDenied"],
        "min_days_to_expiry": 12.5,
    }
    results = [
        {"account": "prod", "region": REGION, "instance_id": "i-1", "outcome": "rotated"},
        {
            "account": "prod",
            "region": REGION,
            "instance_id": "i-2",
            "outcome": "failed",
            "failure": "Throttling",
        },
        {"account": "test", "region": REGION, "instance_id": "i-3", "outcome": "not_due"},
        {"Error": "Lambda.Unknown", "Cause": "timed out"},  # a Map's caught invocation error
    ]
    run = aggregate_job(evaluation, results, publisher, NOW)
    assert not run.ok and run.notified
    assert publisher.value("RotationSuccess") == 1
    assert publisher.value("RotationFailure") == 2
    assert publisher.value("FleetPartitionErrors") == 1
    assert publisher.value("DaysToExpiry") == 12.5
    (notice,) = publisher.notices
    assert "prod/us-east-1/i-2: Throttling" in notice.message
    assert "not evaluated: test/eu-west-2" in notice.message
    quiet = FakePublisher()
    what_if = aggregate_job(evaluation, results, quiet, NOW, what_if=True)
    assert what_if.counts["failed"] == 2 and quiet.metrics == [] and quiet.notices == []


def test_the_lambda_takes_the_aggregate_step(
    monkeypatch: pytest.MonkeyPatch, fleet_env: Settings
) -> None:
    publisher = FakePublisher()
    monkeypatch.setattr(scheduled, "build_publisher", lambda settings: publisher)
    # The state machine's Map gives one list of results per partition.
    event = {
        "job": "aggregate",
        "evaluation": {"errors": [], "min_days_to_expiry": None},
        "results": [[{"outcome": "rotated"}, {"outcome": "failed", "error": "States.Timeout"}], []],
    }
    summary = scheduled.handler(event, None)
    assert summary["counts"]["rotated"] == 1 and summary["counts"]["failed"] == 1
    assert summary["failures"] == ["?/?/?: States.Timeout"] and not summary["ok"]
    # The fleet's total (the series the alarms watch), and one series per partition: the
    # aggregation checked each member account's keyring through its role (moto).
    assert series(publisher, "RotationSuccess") == {
        (): 1,
        (("Account", "prod"), ("Region", REGION)): 0,
        (("Account", "test"), ("Region", REGION)): 0,
        (("Account", "test"), ("Region", "eu-west-2")): 0,
    }
    assert series(publisher, "RotationFailure")[()] == 1
    assert [p["account"] for p in summary["partitions"]] == ["prod", "test", "test"]


def test_the_aggregate_step_and_the_report_job_deliver_one_fleet_report(
    monkeypatch: pytest.MonkeyPatch, fleet_env: Settings
) -> None:
    """The aggregation publishes the report (issue 12): one document, a section per account
    and region, in the report bucket; the weekly report job in fleet mode does the same."""
    monkeypatch.setenv("ROTATOR_REPORT_S3_URI", "s3://evidence/fleet")
    for event in (
        {"job": "aggregate", "evaluation": {"errors": []}, "results": []},
        {"job": "report"},
    ):
        publisher = FakePublisher()
        monkeypatch.setattr(scheduled, "build_publisher", lambda settings, p=publisher: p)
        summary = scheduled.handler(event, None)
        report = summary if event["job"] == "report" else summary["report"]
        assert report is not None and report["ok"], summary
        (stored,) = publisher.reports
        assert stored.location.startswith("s3://evidence/fleet/report-")
        assert stored.content_type.startswith("text/html")
        html = stored.body.decode()
        for account, region in (("prod", REGION), ("test", REGION), ("test", "eu-west-2")):
            assert account in html and region in html


def series(publisher: FakePublisher, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Each series of `name` published: its dimensions -> its value (each published once)."""
    found = [(m.dimensions, m.value) for m, _ in publisher.metrics if m.name == name]
    assert len({d for d, _ in found}) == len(found), found
    return dict(found)
