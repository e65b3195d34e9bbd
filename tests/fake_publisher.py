"""A fake of the Publisher port: what a job published, kept in lists instead of sent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from rotator.ports import Metric


@dataclass(frozen=True)
class Notice:
    subject: str
    message: str


@dataclass(frozen=True)
class StoredReport:
    location: str
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Summary:
    topic_arn: str
    subject: str
    message: str


@dataclass
class FakePublisher:
    """Implements `rotator.ports.Publisher`. `alert_topic_arn` None: `notify` sends nothing
    and answers False, as the AWS publisher does without a topic."""

    alert_topic_arn: str | None = "arn:aws:sns:us-east-1:123456789012:alerts"
    metrics: list[tuple[Metric, datetime]] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    reports: list[StoredReport] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)

    def put_metrics(self, metrics: Sequence[Metric], at: datetime) -> None:
        self.metrics += [(metric, at) for metric in metrics]

    def notify(self, subject: str, message: str) -> bool:
        if not self.alert_topic_arn:
            return False
        self.notices.append(Notice(subject, message))
        return True

    def store_report(self, location: str, body: bytes, content_type: str) -> None:
        self.reports.append(StoredReport(location, body, content_type))

    def post_summary(self, topic_arn: str, subject: str, message: str) -> None:
        self.summaries.append(Summary(topic_arn, subject, message))

    def value(self, name: str) -> float:
        """The value of the one metric `name` published (it must be the only one of that name)."""
        (value,) = [m.value for m, _ in self.metrics if m.name == name]
        return value
