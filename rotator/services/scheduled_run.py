"""One scheduled run: rotate what is due, publish metrics, notify on failure or a key left due."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lambda_decrypt.logs import get_logger
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.adapters.telemetry import Metric, Telemetry
from rotator.domain.lifecycle import KeyState
from rotator.domain.policy import RotationPolicy, rotation_due
from rotator.errors import ConnectKeyRotatorError
from rotator.services.rotation import InstanceResult, Outcome, RotationService

log = get_logger("rotator.scheduled")


@dataclass(frozen=True)
class RunSummary:
    now: datetime
    results: list[InstanceResult]
    still_due: list[str] = field(default_factory=list)
    notified: bool = False
    telemetry_error: str | None = None
    what_if: bool = False

    @property
    def ok(self) -> bool:
        failed = any(r.outcome is Outcome.FAILED for r in self.results)
        # A what-if rotates nothing, so a key it finds due is its answer, not a failure.
        left_due = bool(self.still_due) and not self.what_if
        return not failed and not left_due and self.telemetry_error is None

    def to_dict(self) -> dict[str, Any]:
        counts = {o.value: sum(r.outcome is o for r in self.results) for o in Outcome}
        return {
            "ok": self.ok,
            "now": self.now.isoformat(),
            "what_if": self.what_if,
            "counts": counts,
            "results": [vars(r) | {"outcome": r.outcome.value} for r in self.results],
            "still_due": self.still_due,
            "notified": self.notified,
            "telemetry_error": self.telemetry_error,
        }


def scheduled_run(
    rotation: RotationService,
    keyring: SsmKeyring,
    telemetry: Telemetry,
    policy: RotationPolicy,
    now: datetime,
    *,
    what_if: bool = False,
) -> RunSummary:
    """Safe under at-least-once delivery: the lock and "not due" make a repeat a no-op.

    A what-if evaluates at `now` (a dry run) and publishes no metric and no notice."""
    try:
        results = rotation.rotate(None, now, dry_run=what_if)
    except ConnectKeyRotatorError as error:  # the instance list itself could not be read
        results = [InstanceResult("*", Outcome.FAILED, str(error))]
    still_due: list[str] = []
    metrics: list[Metric] = []
    # Skipped: another run holds the instance's lock and is rotating it right now.
    busy = {r.instance_id for r in results if r.outcome is Outcome.SKIPPED}
    try:
        metrics, still_due = _key_metrics(keyring, policy, now, busy)
    except ConnectKeyRotatorError as error:
        results.append(InstanceResult("*", Outcome.FAILED, f"reading the keyring: {error}"))
    metrics += [
        Metric("RotationSuccess", sum(r.outcome is Outcome.ROTATED for r in results)),
        Metric("RotationFailure", sum(r.outcome is Outcome.FAILED for r in results)),
        Metric("KeysDueNotRotated", len(still_due)),
    ]
    summary = RunSummary(now, results, still_due, what_if=what_if)
    if what_if:
        log.info("scheduled_run", **{k: v for k, v in summary.to_dict().items() if k != "results"})
        return summary
    telemetry_error = None
    notified = False
    try:
        telemetry.put_metrics(metrics, now)
        if not summary.ok:
            notified = telemetry.notify(_subject(summary), _message(summary))
    except ConnectKeyRotatorError as error:
        telemetry_error = str(error)
    summary = RunSummary(now, results, still_due, notified, telemetry_error)
    log.info("scheduled_run", **{k: v for k, v in summary.to_dict().items() if k != "results"})
    return summary


def _key_metrics(
    keyring: SsmKeyring, policy: RotationPolicy, now: datetime, busy: set[str]
) -> tuple[list[Metric], list[str]]:
    metrics: list[Metric] = []
    still_due: list[str] = []
    active_days: list[float] = []
    for record in keyring.records():
        days = record.days_to_expiry(now)
        if record.state not in (KeyState.ACTIVE, KeyState.PREVIOUS) or days is None:
            if record.state is KeyState.ACTIVE:  # adopted without a certificate: always due
                still_due.append(f"{record.instance_id}/{record.key_id}: expiry unknown")
            continue
        dimensions = (("InstanceId", record.instance_id or "-"), ("KeyId", record.key_id))
        metrics.append(Metric("DaysToExpiry", days, "None", dimensions))
        if record.state is KeyState.ACTIVE:
            active_days.append(days)
            due = rotation_due(record, policy, now)
            if due.due and record.instance_id not in busy:
                still_due.append(f"{record.instance_id}/{record.key_id}: {due.reason}")
    if active_days:
        # Dimensionless minimum: the one series the days-to-expiry alarm watches.
        metrics.append(Metric("DaysToExpiry", min(active_days), "None"))
    return metrics, still_due


def _subject(summary: RunSummary) -> str:
    failed = sum(r.outcome is Outcome.FAILED for r in summary.results)
    if failed:
        return f"connect-key-rotator: {failed} rotation(s) failed"
    return f"connect-key-rotator: {len(summary.still_due)} key(s) due and not rotated"


def _message(summary: RunSummary) -> str:
    lines = [f"Scheduled run at {summary.now.isoformat()}"]
    lines += [f"- {r.instance_id}: {r.outcome.value}: {r.detail}" for r in summary.results]
    if summary.still_due:
        lines.append("Keys inside their renew window or cryptoperiod that did not rotate:")
        lines += [f"- {entry}" for entry in summary.still_due]
    lines.append("Runbook: runbooks/ (rotator verify shows every invariant).")
    return "\n".join(lines)
