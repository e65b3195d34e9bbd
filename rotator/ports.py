"""The ports: what services need from the outside world, as Protocols the adapters implement."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

# Publishing


@dataclass(frozen=True)
class Metric:
    """One data point of a job's metrics (CloudWatch's shape: a name, a value, a unit and
    dimensions as (name, value) pairs)."""

    name: str
    value: float
    unit: str = "Count"
    dimensions: tuple[tuple[str, str], ...] = ()


class Publisher(Protocol):
    """Where a job's results go: metrics, notices on the alert topic, and the report's delivery.

    Every method raises a ConnectKeyRotatorError (an AwsCallError for AWS, a ConfigError for an
    unwritable file) when what it publishes does not arrive. Nothing secret is ever passed in:
    callers publish counts, key IDs, findings and rendered reports only."""

    def put_metrics(self, metrics: Sequence[Metric], at: datetime) -> None:
        """Record `metrics` with the timestamp `at` (the job's time, which may be simulated)."""
        ...

    def notify(self, subject: str, message: str) -> bool:
        """Send a notice to the alert topic; False when none is configured (nothing was sent)."""
        ...

    def store_report(self, location: str, body: bytes, content_type: str) -> None:
        """Store a rendered report at `location`: `s3://bucket/key`, or a local file path."""
        ...

    def post_summary(self, topic_arn: str, subject: str, message: str) -> None:
        """Post a report's summary on `topic_arn` (the report topic, or the alert topic)."""
        ...
