"""The report jobs: `rotator report` (file or stdout, exit code) and publishing to S3 and SNS."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from rotator.adapters.aws import aws_call
from rotator.adapters.connect import ConnectGateway
from rotator.adapters.lock import SsmLock
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.adapters.telemetry import SNS_SUBJECT_LIMIT
from rotator.domain.findings import Severity
from rotator.errors import ConfigError
from rotator.services.report import Report, ReportOptions, make_report
from rotator.services.report_render import ReportFormat, render, render_summary

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient

EXIT_OK, EXIT_FINDINGS = 0, 1


@dataclass(frozen=True)
class Published:
    location: str | None  # s3://bucket/key of the stored report
    notified: bool


def delivered_nowhere(settings_to_set: str) -> str:
    """The warning of a report job that has no destination: the report was built, its metrics
    published, and nobody will read it. `settings_to_set` names where a destination goes."""
    return f"the report was delivered nowhere: no destination is configured (set {settings_to_set})"


def run_report(
    keyring: SsmKeyring,
    connect: ConnectGateway,
    lock: SsmLock,
    options: ReportOptions,
    now: datetime,
    *,
    fmt: ReportFormat,
    output: Path | None,
    fail_on: Severity | None,
    out: TextIO,
) -> int:
    """Write the report to `output` (a summary line goes to `out`) or to `out` itself.

    Exit 1 if a finding is at or above `fail_on` (None: 0 whenever a report was produced).
    """
    report = make_report(keyring, connect, lock, options, now)
    rendered = render(report, fmt)
    if output is None:
        out.write(rendered)
    else:
        try:
            output.write_text(rendered, encoding="utf-8")
        except OSError as error:
            raise ConfigError("--output", f"cannot write {output}: {error.strerror}") from None
        out.write(f"{render_summary(report, limit=5)}\nreport written to {output}\n")
    return EXIT_FINDINGS if report.fails(fail_on) else EXIT_OK


def publish_report(
    report: Report,
    *,
    fmt: ReportFormat = ReportFormat.HTML,
    s3_uri: str | None,
    s3_client: S3Client | None,
    sns_client: SNSClient | None,
    topic_arn: str | None,
) -> Published:
    """Store the report as `{s3_uri}/report-<YYYY-MM-DD>.<fmt>` (a rerun the same day replaces
    it) and post the summary to the topic; either is skipped when not configured."""
    location = None
    if s3_uri is not None and s3_client is not None:
        bucket, key = report_object(s3_uri, report.generated_at, fmt)
        location = f"s3://{bucket}/{key}"
        with aws_call("s3:PutObject", location):
            s3_client.put_object(
                Bucket=bucket,
                Key=key,
                Body=render(report, fmt).encode("utf-8"),
                ContentType=fmt.content_type,
            )
    if not topic_arn or sns_client is None:
        return Published(location, notified=False)
    message = render_summary(report)
    if location is not None:
        message += f"\nFull report: {location}"
    counts = report.counts()
    subject = (
        f"connect-key-rotator report {report.generated_at:%Y-%m-%d}: "
        f"{counts[Severity.CRITICAL]} critical, {counts[Severity.WARNING]} warning"
    )
    with aws_call("sns:Publish", topic_arn):
        sns_client.publish(TopicArn=topic_arn, Subject=subject[:SNS_SUBJECT_LIMIT], Message=message)
    return Published(location, notified=True)


def report_object(s3_uri: str, generated_at: datetime, fmt: ReportFormat) -> tuple[str, str]:
    """Bucket and key for a report under `s3://bucket[/prefix]`."""
    if not s3_uri.startswith("s3://"):
        raise ConfigError("report S3 URI", f"{s3_uri!r} is not an s3://bucket/prefix URI")
    bucket, _, prefix = s3_uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ConfigError("report S3 URI", f"{s3_uri!r} names no bucket")
    name = f"report-{generated_at:%Y-%m-%d}.{fmt.value}"
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/{name}" if prefix else name
