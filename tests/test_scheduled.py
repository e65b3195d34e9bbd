"""The rotator's scheduled Lambda on the sandbox: due by expiry or cryptoperiod, nothing due,
failure metrics and notices, and a duplicate delivery that rotates once."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import boto3
import pytest

from rotator.entrypoints.scheduled import handler
from tests.conftest import NOW
from tests.world import World

DAY = timedelta(days=1)


class Observer:
    """Reads what a run published: CloudWatch metrics and the SNS topic (via an SQS queue)."""

    def __init__(self, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
        self.namespace = f"Test{world.prefix.replace('/', '').replace('-', '')}"
        self.cloudwatch = boto3.client("cloudwatch")
        sns, sqs = boto3.client("sns"), boto3.client("sqs")
        topic = sns.create_topic(Name=f"rotator{self.namespace}")["TopicArn"]
        self.queue = sqs.create_queue(QueueName=f"q{self.namespace}")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        self.sqs = sqs
        monkeypatch.setenv("ROTATOR_SNS_TOPIC_ARN", topic)
        monkeypatch.setenv("ROTATOR_METRICS_NAMESPACE", self.namespace)
        monkeypatch.setenv("ROTATOR_KEY_SIZE", "2048")  # real generation, kept quick

    def notices(self) -> list[dict[str, str]]:
        messages = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10)
        return [json.loads(m["Body"]) for m in messages.get("Messages", [])]

    def metric(self, name: str, at: datetime, statistic: str = "Sum") -> float | None:
        points = self.cloudwatch.get_metric_statistics(
            Namespace=self.namespace,
            MetricName=name,
            StartTime=at - timedelta(hours=1),
            EndTime=at + timedelta(hours=1),
            Period=3600,
            Statistics=[statistic],
        )["Datapoints"]
        return float(points[0][statistic]) if points else None


def run(at: datetime) -> dict[str, Any]:
    return handler({"now": at.isoformat()}, None)


@pytest.fixture
def observer(world: World, monkeypatch: pytest.MonkeyPatch) -> Observer:
    world.service.init(world.instance_id, [world.flow_id], [world.module_id], NOW)
    return Observer(world, monkeypatch)


def test_nothing_due_publishes_days_to_expiry_and_no_notice(
    world: World, observer: Observer
) -> None:
    at = NOW + 10 * DAY
    summary = run(at)
    assert summary["ok"] is True
    assert summary["counts"]["not_due"] == 1 and summary["counts"]["rotated"] == 0
    assert observer.metric("DaysToExpiry", at, "Minimum") == pytest.approx(720, abs=0.01)
    assert observer.metric("RotationFailure", at) == 0
    assert observer.notices() == []


def test_due_by_certificate_expiry(
    world: World, observer: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROTATOR_CRYPTOPERIOD_DAYS", "1000")  # so expiry comes first
    at = NOW + 710 * DAY  # 20 days before NotAfter: inside the 30-day renew window
    summary = run(at)
    assert summary["ok"] is True, summary
    (result,) = summary["results"]
    assert result["outcome"] == "rotated" and "renew window" in result["detail"]
    assert world.flow_key_id() == result["new_key_id"]
    assert observer.metric("RotationSuccess", at) == 1


def test_due_by_cryptoperiod(world: World, observer: Observer) -> None:
    at = NOW + 366 * DAY
    (result,) = run(at)["results"]
    assert result["outcome"] == "rotated" and "cryptoperiod" in result["detail"]


def test_a_duplicate_delivery_rotates_once(world: World, observer: Observer) -> None:
    at = NOW + 366 * DAY
    first, second = run(at), run(at)
    assert (first["counts"]["rotated"], second["counts"]["rotated"]) == (1, 0)
    assert second["counts"]["not_due"] == 1
    assert len(world.adapters.keyring.records()) == 2


def test_a_failed_rotation_publishes_a_failure_metric_and_a_notice(
    world: World, observer: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.service.rotate(None, NOW + DAY, force=True)  # the old key is now in its grace period
    monkeypatch.setenv("ROTATOR_CRYPTOPERIOD_DAYS", "1")  # the new key is due at once
    at = NOW + 3 * DAY
    summary = run(at)
    assert summary["ok"] is False
    (result,) = summary["results"]
    assert result["outcome"] == "failed" and "grace period" in result["detail"]
    assert len(summary["still_due"]) == 1
    assert observer.metric("RotationFailure", at) == 1
    assert observer.metric("KeysDueNotRotated", at) == 1
    (notice,) = observer.notices()
    assert notice["Subject"] == "connect-key-rotator: 1 rotation(s) failed"
    assert "grace period" in notice["Message"] and "PRIVATE KEY" not in notice["Message"]


def test_a_bad_now_in_the_event_is_answered_not_raised(world: World) -> None:
    assert handler({"now": "tomorrow"}, None) == {
        "ok": False,
        "error": "configuration: event.now: 'tomorrow' is not an ISO 8601 time",
    }
