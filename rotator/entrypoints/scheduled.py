"""The rotator's Lambda: an EventBridge Scheduler event in, a run summary out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import boto3

from lambda_decrypt.logs import configure_logging
from rotator.adapters.telemetry import Telemetry
from rotator.config import Settings
from rotator.entrypoints.bootstrap import RETRY_CONFIG, build_adapters
from rotator.errors import ConfigError
from rotator.services.scheduled_run import scheduled_run


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The schedule's input may carry {"now": ISO 8601} for a what-if run; otherwise the clock."""
    try:
        now = _now(event)
        settings = Settings.load()
    except ConfigError as error:
        return {"ok": False, "error": str(error)}
    configure_logging(settings.log_level)
    adapters = build_adapters(settings)
    telemetry = Telemetry(
        boto3.client("cloudwatch", config=RETRY_CONFIG),
        boto3.client("sns", config=RETRY_CONFIG),
        namespace=settings.metrics_namespace,
        topic_arn=settings.sns_topic_arn,
    )
    function = getattr(context, "function_name", None) or "rotator"
    rotation = adapters.rotation(f"eventbridge-scheduler ({function})")
    summary = scheduled_run(rotation, adapters.keyring, telemetry, settings.policy, now)
    return summary.to_dict()


def _now(event: Any) -> datetime:
    raw = event.get("now") if isinstance(event, dict) else None
    if raw is None:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(str(raw))
    except ValueError:
        raise ConfigError("event.now", f"{raw!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
