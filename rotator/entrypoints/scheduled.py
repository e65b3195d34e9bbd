"""The rotator's Lambda: an EventBridge Scheduler event in, a run summary out.

Two jobs share the function: the rotation (the default) and the weekly compliance report
(`{"job": "report"}`), the Lambda counterpart of `rotator serve`'s report job.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import boto3

from lambda_decrypt.logs import configure_logging, get_logger
from rotator.adapters.telemetry import Metric, Telemetry
from rotator.clock import clock_from_environment
from rotator.config import RotatorEnv, Settings
from rotator.entrypoints.bootstrap import RETRY_CONFIG, Adapters, build_adapters
from rotator.errors import ConfigError, ConnectKeyRotatorError
from rotator.services.report import ReportOptions, make_report
from rotator.services.report_delivery import delivered_nowhere, publish_report
from rotator.services.report_render import ReportFormat
from rotator.services.scheduled_run import scheduled_run

# One series per severity (dimension Severity); the template alarms on Severity=critical > 0.
REPORT_FINDINGS_METRIC = "ReportFindings"
REPORT_DESTINATIONS = (
    f"{RotatorEnv.REPORT_S3_URI}, {RotatorEnv.REPORT_SNS_TOPIC_ARN} or {RotatorEnv.SNS_TOPIC_ARN}"
)
log = get_logger("rotator.scheduled")


class Job(StrEnum):
    ROTATION = "rotation"
    REPORT = "report"


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The schedule's input may carry {"job": "rotation" | "report"} (no job: the rotation) and
    {"now": ISO 8601} for a what-if run that evaluates at that time and changes, publishes and
    delivers nothing; otherwise the clock. Never raises for a bad input or a failure of AWS
    calls: the summary's "ok" and "error", the metrics and the notices carry it."""
    try:
        job = _job(event)
        requested = _requested_now(event)
        settings = Settings.load()
    except ConfigError as error:
        return {"ok": False, "error": str(error)}
    configure_logging(settings.log_level)
    clock = clock_from_environment()
    adapters = build_adapters(settings, simulated_clock=clock.simulated)
    telemetry = Telemetry(
        boto3.client("cloudwatch", config=RETRY_CONFIG),
        boto3.client("sns", config=RETRY_CONFIG),
        namespace=settings.metrics_namespace,
        topic_arn=settings.sns_topic_arn,
    )
    what_if = requested is not None
    now = requested if requested is not None else clock.now()
    if job is Job.REPORT:
        return report_run(adapters, telemetry, now, what_if=what_if)
    function = getattr(context, "function_name", None) or "rotator"
    actor = f"eventbridge-scheduler ({function})"
    rotation = adapters.rotation(f"{actor} [simulated clock]" if clock.simulated else actor)
    summary = scheduled_run(
        rotation, adapters.keyring, telemetry, settings.policy, now, what_if=what_if
    )
    return summary.to_dict()


def report_run(
    adapters: Adapters, telemetry: Telemetry, now: datetime, *, what_if: bool = False
) -> dict[str, Any]:
    """The compliance report at `now`: a ReportFindings metric per severity, the HTML in
    ROTATOR_REPORT_S3_URI, the summary on the report topic. Findings are the report's content,
    not a failure; a report that cannot be built or delivered is (ok false, a notice).
    A what-if builds the report and answers its counts; it publishes and delivers nothing."""
    settings = adapters.settings
    summary: dict[str, Any] = {
        "ok": False,
        "job": Job.REPORT.value,
        "now": now.isoformat(),
        "what_if": what_if,
        "location": None,
        "notified": False,
        "counts": None,
        "warnings": [],
    }
    options = ReportOptions.from_settings(settings)
    try:
        report = make_report(adapters.keyring, adapters.connect, adapters.lock, options, now)
    except ConnectKeyRotatorError as error:
        return _report_failed(summary, telemetry, [f"building the report: {error}"])
    counts = report.counts()
    summary["counts"] = {severity.value: n for severity, n in counts.items()}
    if what_if:
        summary["ok"] = True
        log.info("scheduled_report", **summary)
        return summary
    errors: list[str] = []
    metrics = [
        Metric(REPORT_FINDINGS_METRIC, n, dimensions=(("Severity", severity.value),))
        for severity, n in counts.items()
    ]
    try:  # first: the critical-findings alarm does not depend on the delivery
        telemetry.put_metrics(metrics, now)
    except ConnectKeyRotatorError as error:
        errors.append(f"metrics: {error}")
    topic = settings.report_topic_arn
    try:
        published = publish_report(
            report,
            fmt=ReportFormat.HTML,
            s3_uri=settings.report_s3_uri,
            s3_client=adapters.s3() if settings.report_s3_uri else None,
            sns_client=adapters.sns() if topic else None,
            topic_arn=topic,
        )
    except ConnectKeyRotatorError as error:
        errors.append(f"delivery: {error}")
    else:
        summary.update(location=published.location, notified=published.notified)
    if errors:
        return _report_failed(summary, telemetry, errors)
    summary["ok"] = True
    if summary["location"] is None and not summary["notified"]:
        summary["warnings"].append(delivered_nowhere(REPORT_DESTINATIONS))
    (log.warning if summary["warnings"] else log.info)("scheduled_report", **summary)
    return summary


def _report_failed(
    summary: dict[str, Any], telemetry: Telemetry, errors: list[str]
) -> dict[str, Any]:
    summary["error"] = "; ".join(errors)
    log.error("scheduled_report", **summary)
    lines = [f"Compliance report at {summary['now']} failed:", *(f"- {e}" for e in errors)]
    try:
        telemetry.notify("connect-key-rotator: compliance report failed", "\n".join(lines))
    except ConnectKeyRotatorError as error:  # SNS itself may be what failed
        summary["error"] += f"; notice: {error}"
    return summary


def _job(event: Any) -> Job:
    raw = event.get("job") if isinstance(event, dict) else None
    if raw is None:
        return Job.ROTATION
    expected = [job.value for job in Job]
    if isinstance(raw, str) and raw in expected:
        return Job(raw)
    raise ConfigError("event.job", f"{raw!r} is not one of {', '.join(expected)}")


def _requested_now(event: Any) -> datetime | None:
    """The what-if time the event asks for (None: a real run at the clock's time)."""
    raw = event.get("now") if isinstance(event, dict) else None
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(str(raw))
    except ValueError:
        raise ConfigError("event.now", f"{raw!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
