"""The Publisher port on AWS: CloudWatch metrics, SNS notices, reports in S3 or a directory,
EventBridge events."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rotator.adapters.aws import aws_call
from rotator.errors import AwsCallError, ConfigError
from rotator.ports import BusEvent, Metric

SNS_SUBJECT_LIMIT = 100
# PutMetricData takes up to 1000 values per call.
METRICS_PER_CALL = 1000
# PutEvents takes up to 10 entries per call.
EVENTS_PER_CALL = 10

__all__ = [
    "EVENTS_PER_CALL",
    "METRICS_PER_CALL",
    "SNS_SUBJECT_LIMIT",
    "AwsPublisher",
    "Metric",
    "split_s3_location",
]


class AwsPublisher:
    """Implements `rotator.ports.Publisher`. `client(service)` makes a boto3 client; each is
    made on first use, so a job that publishes nothing (a what-if) makes none. Safe to call
    from several threads (the fleet's aggregation puts each partition's expiry events from
    its own): boto3's clients are, and each is made once, under a lock, since boto3's default
    session, which makes them, is not."""

    def __init__(
        self,
        client: Callable[[str], Any],
        *,
        namespace: str,
        alert_topic_arn: str | None = None,
    ) -> None:
        self._make_client = client
        self._clients: dict[str, Any] = {}
        self._making = threading.Lock()
        self.namespace = namespace
        self.alert_topic_arn = alert_topic_arn

    def _client(self, service: str) -> Any:
        with self._making:
            if service not in self._clients:
                self._clients[service] = self._make_client(service)
            return self._clients[service]

    def put_metrics(self, metrics: Sequence[Metric], at: datetime) -> None:
        data: list[Any] = [
            {
                "MetricName": m.name,
                "Value": m.value,
                "Unit": m.unit,
                "Timestamp": at,
                "Dimensions": [{"Name": k, "Value": v} for k, v in m.dimensions],
            }
            for m in metrics
        ]
        for start in range(0, len(data), METRICS_PER_CALL):
            with aws_call("cloudwatch:PutMetricData", self.namespace):
                self._client("cloudwatch").put_metric_data(
                    Namespace=self.namespace, MetricData=data[start : start + METRICS_PER_CALL]
                )

    def notify(self, subject: str, message: str) -> bool:
        if not self.alert_topic_arn:
            return False
        self.post_summary(self.alert_topic_arn, subject, message)
        return True

    def store_report(self, location: str, body: bytes, content_type: str) -> None:
        if not location.startswith("s3://"):
            path = Path(location)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(body)
            except OSError as error:
                raise ConfigError(
                    "report directory", f"cannot write {path}: {error.strerror}"
                ) from None
            return
        bucket, key = split_s3_location(location)
        with aws_call("s3:PutObject", location):
            self._client("s3").put_object(
                Bucket=bucket, Key=key, Body=body, ContentType=content_type
            )

    def post_summary(self, topic_arn: str, subject: str, message: str) -> None:
        with aws_call("sns:Publish", topic_arn):
            self._client("sns").publish(
                TopicArn=topic_arn, Subject=subject[:SNS_SUBJECT_LIMIT], Message=message
            )

    def put_events(self, event_bus: str, events: Sequence[BusEvent]) -> None:
        entries: list[Any] = [
            {
                "Source": event.source,
                "DetailType": event.detail_type,
                "Detail": json.dumps(event.detail, sort_keys=True),
                "Time": event.time,
                "EventBusName": event_bus,
            }
            for event in events
        ]
        for start in range(0, len(entries), EVENTS_PER_CALL):
            with aws_call("events:PutEvents", event_bus):
                answer = self._client("events").put_events(
                    Entries=entries[start : start + EVENTS_PER_CALL]
                )
            # PutEvents answers 200 with the entries it refused counted, not an error.
            if answer.get("FailedEntryCount", 0):
                codes = sorted(
                    {e["ErrorCode"] for e in answer.get("Entries", []) if e.get("ErrorCode")}
                )
                raise AwsCallError(
                    "events:PutEvents",
                    event_bus,
                    f"{answer['FailedEntryCount']} event(s) refused ({', '.join(codes) or '?'})",
                )


def split_s3_location(location: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key)."""
    bucket, _, key = location.removeprefix("s3://").partition("/")
    return bucket, key
