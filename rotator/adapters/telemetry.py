"""What a scheduled run tells the world: CloudWatch metrics and SNS notices (never a secret)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rotator.adapters.aws import aws_call

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_sns import SNSClient

SNS_SUBJECT_LIMIT = 100


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    unit: str = "Count"
    dimensions: tuple[tuple[str, str], ...] = ()


class Telemetry:
    def __init__(
        self,
        cloudwatch: CloudWatchClient,
        sns: SNSClient,
        *,
        namespace: str,
        topic_arn: str | None = None,
    ) -> None:
        self.cloudwatch = cloudwatch
        self.sns = sns
        self.namespace = namespace
        self.topic_arn = topic_arn

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
        for start in range(0, len(data), 1000):  # PutMetricData takes up to 1000 values
            with aws_call("cloudwatch:PutMetricData", self.namespace):
                self.cloudwatch.put_metric_data(
                    Namespace=self.namespace, MetricData=data[start : start + 1000]
                )

    def notify(self, subject: str, message: str) -> bool:
        """Publish to the topic if one is configured; True if something was sent."""
        if not self.topic_arn:
            return False
        with aws_call("sns:Publish", self.topic_arn):
            self.sns.publish(
                TopicArn=self.topic_arn, Subject=subject[:SNS_SUBJECT_LIMIT], Message=message
            )
        return True
