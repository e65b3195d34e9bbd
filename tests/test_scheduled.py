"""The rotator's scheduled Lambda on the sandbox: due by expiry or cryptoperiod, nothing due,
failure metrics and notices, a duplicate delivery that rotates once; and the report job (S3,
SNS, ReportFindings metrics) with its failure answers."""

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
        self.world = world
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

    def run(self, at: datetime, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """A scheduled invocation at the sandbox's simulated time `at` (real, not a what-if)."""
        self.world.sandbox.clock.stand_at(at)
        return handler(event or {}, None)

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


@pytest.fixture
def observer(world: World, monkeypatch: pytest.MonkeyPatch) -> Observer:
    world.init(NOW)
    return Observer(world, monkeypatch)


def test_nothing_due_publishes_days_to_expiry_and_no_notice(
    world: World, observer: Observer
) -> None:
    at = NOW + 10 * DAY
    summary = observer.run(at)
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
    summary = observer.run(at)
    assert summary["ok"] is True, summary
    (result,) = summary["results"]
    assert result["outcome"] == "rotated" and "renew window" in result["detail"]
    assert world.flow_key_id() == result["new_key_id"]
    assert observer.metric("RotationSuccess", at) == 1


def test_due_by_cryptoperiod(world: World, observer: Observer) -> None:
    at = NOW + 366 * DAY
    (result,) = observer.run(at)["results"]
    assert result["outcome"] == "rotated" and "cryptoperiod" in result["detail"]


def test_a_duplicate_delivery_rotates_once(world: World, observer: Observer) -> None:
    at = NOW + 366 * DAY
    first, second = observer.run(at), observer.run(at)
    assert (first["counts"]["rotated"], second["counts"]["rotated"]) == (1, 0)
    assert second["counts"]["not_due"] == 1
    assert len(world.adapters.keyring.records()) == 2


def test_a_failed_rotation_publishes_a_failure_metric_and_a_notice(
    world: World, observer: Observer, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.service.rotate(None, NOW + DAY, force=True)  # the old key is now in its grace period
    monkeypatch.setenv("ROTATOR_CRYPTOPERIOD_DAYS", "1")  # the new key is due at once
    at = NOW + 3 * DAY
    summary = observer.run(at)
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


@pytest.fixture
def report_bucket(observer: Observer, monkeypatch: pytest.MonkeyPatch) -> str:
    bucket = f"reports-{observer.namespace.lower()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    monkeypatch.setenv("ROTATOR_REPORT_S3_URI", f"s3://{bucket}/reports/")
    return bucket


def test_the_report_job_stores_html_notifies_and_publishes_findings(
    world: World, observer: Observer, report_bucket: str
) -> None:
    at = NOW + 731 * DAY  # the certificate has expired while active: a critical finding
    (key_id,) = [r.key_id for r in world.adapters.keyring.records()]
    summary = observer.run(at, {"job": "report"})
    key = f"reports/report-{at:%Y-%m-%d}.html"
    assert summary["ok"] is True, summary
    assert (summary["job"], summary["location"]) == ("report", f"s3://{report_bucket}/{key}")
    assert summary["counts"]["critical"] >= 1
    assert set(summary["counts"]) == {"critical", "warning", "info"}
    assert json.loads(json.dumps(summary)) == summary
    stored = boto3.client("s3").get_object(Bucket=report_bucket, Key=key)
    html = stored["Body"].read().decode()
    assert "<svg" in html and key_id in html
    (notice,) = observer.notices()
    assert notice["Subject"].startswith(f"connect-key-rotator report {at:%Y-%m-%d}: ")
    assert f"Full report: s3://{report_bucket}/{key}" in notice["Message"]
    assert "PRIVATE KEY" not in notice["Message"]
    for severity, count in summary["counts"].items():
        points = observer.cloudwatch.get_metric_statistics(
            Namespace=observer.namespace,
            MetricName="ReportFindings",
            Dimensions=[{"Name": "Severity", "Value": severity}],
            StartTime=at - timedelta(hours=1),
            EndTime=at + timedelta(hours=1),
            Period=3600,
            Statistics=["Maximum"],
        )["Datapoints"]
        assert [p["Maximum"] for p in points] == [count], severity
    assert observer.metric("RotationSuccess", at) is None  # the report rotates nothing
    assert len(world.adapters.keyring.records()) == 1


def test_the_report_summary_goes_to_its_own_topic_when_set(
    world: World, observer: Observer, report_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name=f"report{observer.namespace}")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"report{observer.namespace}")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=attributes["Attributes"]["QueueArn"])
    monkeypatch.setenv("ROTATOR_REPORT_SNS_TOPIC_ARN", topic)
    summary = observer.run(NOW, {"job": "report"})
    assert (summary["ok"], summary["notified"]) == (True, True)
    (message,) = sqs.receive_message(QueueUrl=queue)["Messages"]
    assert json.loads(message["Body"])["Subject"].endswith(": 0 critical, 0 warning")
    assert observer.notices() == []  # not on the alert topic


def test_a_failed_delivery_is_answered_with_a_notice_on_the_alert_topic(
    world: World, observer: Observer, report_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROTATOR_REPORT_S3_URI", f"s3://{report_bucket}-missing/reports/")
    summary = observer.run(NOW, {"job": "report"})
    assert (summary["ok"], summary["location"]) == (False, None)
    assert summary["error"].startswith("delivery: ") and "s3:PutObject" in summary["error"]
    assert summary["counts"] == {"critical": 0, "warning": 0, "info": 0}
    (notice,) = observer.notices()
    assert notice["Subject"] == "connect-key-rotator: compliance report failed"
    assert "s3:PutObject" in notice["Message"]


def test_no_job_or_the_rotation_job_rotates(world: World, observer: Observer) -> None:
    at = NOW + 366 * DAY
    first = observer.run(at, {"job": "rotation"})
    assert first["counts"]["rotated"] == 1 and "job" not in first  # the summary as before
    assert observer.run(at)["counts"]["not_due"] == 1


@pytest.mark.parametrize("job", ["reports", "", 7, ["report"]])
def test_a_bad_job_in_the_event_is_answered_not_raised(world: World, job: object) -> None:
    answer = handler({"job": job}, None)
    assert answer == {
        "ok": False,
        "error": f"configuration: event.job: {job!r} is not one of rotation, report, verify, "
        "evaluate, rotate-target, aggregate",
    }


def test_a_bad_report_s3_uri_is_answered_not_raised(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROTATOR_REPORT_S3_URI", "https://bucket/reports/")
    answer = handler({"job": "report"}, None)
    assert answer["ok"] is False and "ROTATOR_REPORT_S3_URI" in answer["error"]


def snapshot(world: World, observer: Observer) -> tuple[Any, ...]:
    """Every parameter of the keyring (and its version), Connect's keys and flows, the notices."""
    paginator = world.ssm.get_paginator("get_parameters_by_path")
    versions = {
        p["Name"]: p["Version"]
        for page in paginator.paginate(Path=world.prefix, Recursive=True)
        for p in page["Parameters"]
    }
    return versions, world.associations(), world.flow_content(), world.module_content()


@pytest.mark.parametrize("job", ["rotation", "report"])
def test_now_in_the_event_is_a_what_if_that_changes_publishes_and_delivers_nothing(
    world: World, observer: Observer, report_bucket: str, job: str
) -> None:
    at = NOW + 731 * DAY  # due, and expired: a real run would rotate, alarm and deliver
    before = snapshot(world, observer)
    summary = handler({"job": job, "now": at.isoformat()}, None)
    assert summary["ok"] is True and summary["what_if"] is True, summary
    if job == "rotation":
        assert summary["counts"]["would_rotate"] == 1 and summary["counts"]["rotated"] == 0
    else:
        assert summary["counts"]["critical"] >= 1 and summary["location"] is None
    assert snapshot(world, observer) == before
    assert observer.notices() == []
    for name in ("DaysToExpiry", "RotationSuccess", "ReportFindings"):
        assert observer.metric(name, at) is None, name
    assert boto3.client("s3").list_objects_v2(Bucket=report_bucket).get("KeyCount", 0) == 0
