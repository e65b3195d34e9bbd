"""The one job layer: the rotation job and the report job that the scheduled Lambda and `rotator
serve` both run, and `rotator report`'s local run.

A job is given its time (`now`) and whether it is a what-if by its caller; it publishes only
through the `Publisher` port, and answers a result that carries its exit status. It never
raises for a failed rotation or delivery: the result, the metrics and the notices carry it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from lambda_decrypt.logs import get_logger
from rotator.domain.checks import drift_findings
from rotator.domain.expiry import (
    EXPIRY_EVENT_DETAIL_TYPE,
    EXPIRY_EVENT_SOURCE,
    EXPIRY_EVENT_STATES,
    Crossing,
    KeyExpiry,
    event_detail,
    newly_crossed,
    recorded_thresholds,
    sent_event,
)
from rotator.domain.findings import Finding, Severity
from rotator.domain.fleet import Partition, Target
from rotator.domain.lifecycle import KeyState
from rotator.domain.policy import RotationPolicy, rotation_due
from rotator.domain.window import window_decision
from rotator.errors import ConfigError, ConnectKeyRotatorError
from rotator.exit_codes import ExitCode
from rotator.ports import BusEvent, Connect, ConnectReader, Keyring, Lock, Metric, Publisher
from rotator.services.fleet import (
    PARTITION_WORKERS,
    TargetResult,
    evaluate,
    on_partitions,
    rotate_target,
)
from rotator.services.fleet_report import FleetReport
from rotator.services.fleet_report_render import render_fleet, render_fleet_summary
from rotator.services.report import EvidenceSources, Report, ReportOptions, make_report
from rotator.services.report_render import ReportFormat, render, render_summary
from rotator.services.rotation import InstanceResult, Outcome, RotationRefused
from rotator.services.state import read_state
from rotator.services.verify import Check, InvariantChecker

if TYPE_CHECKING:
    from rotator.domain.lifecycle import KeyRecord
    from rotator.domain.rotation import ManagedInstance
    from rotator.domain.state import KeyringState
    from rotator.domain.window import RotationSchedule
    from rotator.services.rotation import RotationService

# One series per severity (dimension Severity); the template alarms on Severity=critical > 0.
REPORT_FINDINGS_METRIC = "ReportFindings"
REPORT_FAILED_SUBJECT = "connect-key-rotator: compliance report failed"
# The rotation job's drift check: its findings per severity (dimension Severity).
DRIFT_FINDINGS_METRIC = "DriftFindings"
# The verify job: how many of `rotator verify`'s checks failed.
VERIFY_FAILURES_METRIC = "VerifyFailures"
# A destination directory keeps the JSON evidence next to the HTML (S3 gets the HTML).
DIRECTORY_FORMATS = (ReportFormat.HTML, ReportFormat.JSON)

log = get_logger("rotator.scheduled")


# -- the rotation job ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RotationJobRun:
    """One run of the rotation job: a result per instance (certbot renew's per-item loop), the
    keys left due, whether a notice went out, and what could not be published."""

    now: datetime
    results: list[InstanceResult]
    still_due: list[str] = field(default_factory=list)
    notified: bool = False
    telemetry_error: str | None = None
    what_if: bool = False
    # The expiry events' details: those put on the bus (a what-if: those it would put).
    expiry_events: tuple[dict[str, Any], ...] = ()
    # The drift check's findings: what Connect holds that the rotator did not make (3.7.7).
    drift: tuple[Finding, ...] = ()
    # Each active or previous key's days to expiry, as published (None: the keyring was not read).
    expiries: tuple[KeyExpiry, ...] | None = None

    @property
    def failed(self) -> list[InstanceResult]:
        return [r for r in self.results if r.outcome is Outcome.FAILED]

    @property
    def critical_drift(self) -> list[Finding]:
        return [f for f in self.drift if f.severity is Severity.CRITICAL]

    @property
    def ok(self) -> bool:
        # A what-if rotates nothing, so a key it finds due is its answer, not a failure; so is
        # the drift it finds.
        left_due = bool(self.still_due) and not self.what_if
        drifted = bool(self.critical_drift) and not self.what_if
        return not self.failed and not left_due and not drifted and self.telemetry_error is None

    def exit_status(self) -> int:
        return ExitCode.OK if self.ok else ExitCode.FAILURE

    def counts(self) -> dict[str, int]:
        """Every outcome, zeros included."""
        return {o.value: sum(r.outcome is o for r in self.results) for o in Outcome}

    def failures(self) -> list[str]:
        """One line per thing that makes the run not ok."""
        lines = [f"{r.instance_id}: {r.detail}" for r in self.failed]
        if not self.what_if:
            lines += [f"due and not rotated: {entry}" for entry in self.still_due]
            lines += [f"drift: {_drift_line(f)}" for f in self.critical_drift]
        if self.telemetry_error is not None:
            lines.append(f"publishing: {self.telemetry_error}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "now": self.now.isoformat(),
            "what_if": self.what_if,
            "counts": self.counts(),
            "results": [vars(r) | {"outcome": r.outcome.value} for r in self.results],
            "still_due": self.still_due,
            "notified": self.notified,
            "telemetry_error": self.telemetry_error,
            "expiry_events": list(self.expiry_events),
            "drift": [f.to_dict() for f in self.drift],
        }


def rotation_job(
    rotation: RotationService,
    keyring: Keyring,
    publisher: Publisher,
    policy: RotationPolicy,
    now: datetime,
    *,
    what_if: bool = False,
    initialise: Sequence[ManagedInstance] = (),
    on_initialised: Callable[[InstanceResult], None] | None = None,
    describe: Callable[[ConnectKeyRotatorError], str] = str,
) -> RotationJobRun:
    """Bring `initialise`'s instances under management (those not yet managed), rotate every
    managed instance that is due, publish the metrics, and notify on a failure or a key left
    due. Safe under at-least-once delivery: the lock and "not due" make a repeat a no-op.

    A what-if evaluates at `now` (a dry run, no initialisation) and publishes nothing.
    `describe` words an error that stopped the whole run (a caller can name what to set)."""
    results: list[InstanceResult] = []
    for instance in () if what_if else initialise:
        initialised = _initialise(rotation, keyring, instance, now)
        if initialised is not None:
            results.append(initialised)
            if on_initialised is not None:
                on_initialised(initialised)
    done = {r.instance_id for r in results}
    try:
        rotated = rotation.rotate(None, now, dry_run=what_if)
    except ConnectKeyRotatorError as error:  # the instance list itself could not be read
        rotated = [InstanceResult("*", Outcome.FAILED, describe(error))]
    results += [r for r in rotated if r.instance_id not in done]
    # Skipped: another run holds the instance's lock and is rotating it right now. Waiting: due,
    # but held back by the rotation window or a freeze, as configured (not "left due").
    busy = {r.instance_id for r in results if r.outcome in (Outcome.SKIPPED, Outcome.WAITING)}
    checks = after_rotations(rotation, keyring, publisher, results, busy, now, what_if, describe)
    results = checks.results
    still_due, metrics, expiries = checks.still_due, checks.metrics, checks.expiries
    expiry, drift = checks.expiry, checks.drift
    run = RotationJobRun(
        now,
        results,
        still_due,
        telemetry_error=expiry.error,
        what_if=what_if,
        expiry_events=expiry.details,
        drift=drift.findings,
        expiries=expiries,
    )
    if not what_if:
        errors = [expiry.error] if expiry.error else []
        notified = False
        try:
            publisher.put_metrics(metrics, now)
            if not run.ok:
                notified = publisher.notify(_subject(run), _message(run))
        except ConnectKeyRotatorError as error:
            errors.append(describe(error))
        run = replace(run, notified=notified, telemetry_error="; ".join(errors) or None)
    log.info("scheduled_run", **{k: v for k, v in run.to_dict().items() if k != "results"})
    return run


@dataclass(frozen=True)
class RunChecks:
    """What a rotation run does for one keyring once its rotations are done: the key metrics
    (DaysToExpiry, KeysDueNotRotated), the drift check (DriftFindings), the rotation counters
    and the expiry events. The single-account job and each partition of fleet mode's
    aggregation run this one function, so the two cannot publish differently."""

    results: list[InstanceResult]  # the run's results, and a "*" line for a read that failed
    still_due: list[str]
    metrics: list[Metric]
    expiries: tuple[KeyExpiry, ...] | None
    drift: DriftCheck
    expiry: ExpiryEvents


def after_rotations(
    rotation: RotationService,
    keyring: Keyring,
    publisher: Publisher,
    results: Sequence[InstanceResult],
    busy: set[str],
    now: datetime,
    what_if: bool,
    describe: Callable[[ConnectKeyRotatorError], str] = str,
    *,
    drift: DriftCheck | None = None,
    extra_detail: Mapping[str, str] | None = None,
) -> RunChecks:
    """The keyring read once (metrics, keys left due, expiry events), the drift check (`drift`
    if the caller has already read it), and the counters over `results`. `busy`: instances
    whose due key is not "left due" (another run holds them, or a window holds them back).
    `extra_detail`: fields added to each expiry event's detail (fleet mode: the partition)."""
    results = list(results)
    still_due: list[str] = []
    metrics: list[Metric] = []
    expiries: tuple[KeyExpiry, ...] | None = None
    records: list[KeyRecord] | None = None  # read once: the metrics and the expiry events
    try:
        records = keyring.records()
        metrics, still_due, expiries = _key_metrics(records, rotation.settings.policy, now, busy)
    except ConnectKeyRotatorError as error:
        results.append(
            InstanceResult("*", Outcome.FAILED, f"reading the keyring: {describe(error)}")
        )
    if drift is None:
        drift = drift_check(keyring, rotation.connect, rotation.lock, now, describe)
    if drift.error is not None:
        results.append(InstanceResult("*", Outcome.FAILED, drift.error))
    else:
        metrics += drift.metrics()
    metrics += [
        Metric("RotationSuccess", sum(r.outcome is Outcome.ROTATED for r in results)),
        Metric("RotationFailure", sum(r.outcome is Outcome.FAILED for r in results)),
        Metric("KeysDueNotRotated", len(still_due)),
    ]
    expiry = expiry_events_job(
        rotation, keyring, records, publisher, now, what_if, describe, extra_detail=extra_detail
    )
    return RunChecks(results, still_due, metrics, expiries, drift, expiry)


def _initialise(
    service: RotationService, keyring: Keyring, instance: ManagedInstance, now: datetime
) -> InstanceResult | None:
    """`init` for a configured instance not yet managed; None when it already is."""
    try:
        managed = keyring.get_instance(instance.instance_id)
        if managed is None:
            named: dict[str, set[str]] = {}
            for block in instance.blocks or ():
                named.setdefault(block.ref.flow_id, set()).add(block.identifier)
            return service.init(
                instance.instance_id,
                list(instance.flows),
                list(instance.modules),
                now,
                encrypt_blocks=named,
            )
    except ConnectKeyRotatorError as error:
        log.error("init_failed", instance_id=instance.instance_id, error=str(error))
        return InstanceResult(instance.instance_id, Outcome.FAILED, str(error))
    if set(managed.refs) != set(instance.refs):
        log.warning(
            "instance_config_differs",
            instance_id=instance.instance_id,
            configured=sorted(str(ref) for ref in instance.refs),
            managed=sorted(str(ref) for ref in managed.refs),
        )
    return None


def _key_metrics(
    records: Sequence[KeyRecord], policy: RotationPolicy, now: datetime, busy: set[str]
) -> tuple[list[Metric], list[str], tuple[KeyExpiry, ...]]:
    metrics: list[Metric] = []
    still_due: list[str] = []
    active_days: list[float] = []
    expiries: list[KeyExpiry] = []
    for record in records:
        days = record.days_to_expiry(now)
        if record.state not in (KeyState.ACTIVE, KeyState.PREVIOUS) or days is None:
            if record.state is KeyState.ACTIVE:  # adopted without a certificate: always due
                still_due.append(f"{record.instance_id}/{record.key_id}: expiry unknown")
            continue
        dimensions = (("InstanceId", record.instance_id or "-"), ("KeyId", record.key_id))
        metrics.append(Metric("DaysToExpiry", days, "None", dimensions))
        expiries.append(
            KeyExpiry(record.instance_id or "-", record.key_id, str(record.state), days)
        )
        if record.state is KeyState.ACTIVE:
            active_days.append(days)
            due = rotation_due(record, policy, now)
            if due.due and record.instance_id not in busy:
                still_due.append(f"{record.instance_id}/{record.key_id}: {due.reason}")
    if active_days:
        # Dimensionless minimum: the one series the days-to-expiry alarm watches.
        metrics.append(Metric("DaysToExpiry", min(active_days), "None"))
    return metrics, still_due, tuple(expiries)


def _subject(run: RotationJobRun) -> str:
    if run.failed:
        return f"connect-key-rotator: {len(run.failed)} rotation(s) failed"
    if run.still_due:
        return f"connect-key-rotator: {len(run.still_due)} key(s) due and not rotated"
    if run.critical_drift:
        return (
            f"connect-key-rotator: {len(run.critical_drift)} critical drift finding(s): "
            "a change the rotator did not make"
        )
    return "connect-key-rotator: publishing failed"


def _message(run: RotationJobRun) -> str:
    lines = [f"Scheduled run at {run.now.isoformat()}"]
    lines += [f"- {r.instance_id}: {r.outcome.value}: {r.detail}" for r in run.results]
    if run.still_due:
        lines.append("Keys inside their renew window or cryptoperiod that did not rotate:")
        lines += [f"- {entry}" for entry in run.still_due]
    if run.critical_drift:
        lines.append("Changes the rotator did not make (critical drift findings):")
        lines += [f"- {_drift_line(f)}" for f in run.critical_drift]
    if run.telemetry_error is not None:
        lines.append(f"Publishing failed: {run.telemetry_error}")
    lines.append("Runbook: runbooks/ (rotator verify shows every invariant).")
    return "\n".join(lines)


# -- the drift check (PCI DSS 3.7.7): every rotation run compares Connect with the records ------


@dataclass(frozen=True)
class DriftCheck:
    """What one read after the rotations found: the drift findings, or why it could not read."""

    findings: tuple[Finding, ...] = ()
    error: str | None = None

    def metrics(self) -> list[Metric]:
        """DriftFindings per severity, zeros included: the alarm's series always has data."""
        return [
            Metric(
                DRIFT_FINDINGS_METRIC,
                sum(f.severity is severity for f in self.findings),
                dimensions=(("Severity", severity.value),),
            )
            for severity in Severity
        ]


def drift_check(
    keyring: Keyring,
    connect: ConnectReader,
    lock: Lock,
    now: datetime,
    describe: Callable[[ConnectKeyRotatorError], str] = str,
) -> DriftCheck:
    """One read of the state (the read model: keys, locks, one ListSecurityKeys per managed
    instance, one read per managed flow, the SecureString sweep; no history, no canary), judged
    by the same rules as `rotator verify`: Connect's associations and the managed blocks' key
    IDs and certificates against what the rotator recorded. An instance Connect does not answer
    for is a finding (instance-unreadable), not an error."""
    try:
        state = read_state(keyring, lock, connect=connect, protection=True)
    except ConnectKeyRotatorError as error:
        return DriftCheck(error=f"drift check: reading the keyring: {describe(error)}")
    return DriftCheck(tuple(drift_findings(state, now)))


def _drift_line(finding: Finding) -> str:
    where = " ".join(x for x in (finding.instance_id, finding.key_id) if x)
    return (
        f"[{finding.severity}] {finding.code} {where}: {finding.message} "
        f"(runbook: {finding.rule.runbook.path})"
    )


# -- the verify job: `rotator verify`'s checks on a schedule, or at once on a CloudTrail alert --

VERIFY_FAILED_SUBJECT = "connect-key-rotator: verify failed"


@dataclass(frozen=True)
class VerifyJobRun:
    """One run of the verify job: every check `rotator verify` makes, or why none could run."""

    now: datetime
    what_if: bool
    checks: tuple[Check, ...] = ()
    error: str | None = None  # the keyring could not be read
    notified: bool = False
    telemetry_error: str | None = None

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed and self.telemetry_error is None

    def exit_status(self) -> int:
        return ExitCode.OK if self.ok else ExitCode.FAILURE

    def failures(self) -> list[str]:
        """One line per thing that makes the run not ok."""
        lines = [f"{c.check} ({c.instance_id or '-'}): {c.message}" for c in self.failed]
        for problem in (self.error, self.telemetry_error):
            if problem is not None:
                lines.append(problem)
        return lines

    def to_dict(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "ok": self.ok,
            "job": "verify",
            "now": self.now.isoformat(),
            "what_if": self.what_if,
            "counts": {"passed": len(self.checks) - len(self.failed), "failed": len(self.failed)},
            "failures": [f"{c.check} ({c.instance_id or '-'}): {c.message}" for c in self.failed],
            "notified": self.notified,
            "telemetry_error": self.telemetry_error,
        }
        if self.error is not None:
            summary["error"] = self.error
        return summary


def verify_job(
    checker: InvariantChecker,
    publisher: Publisher,
    now: datetime,
    *,
    what_if: bool = False,
    describe: Callable[[ConnectKeyRotatorError], str] = str,
) -> VerifyJobRun:
    """Every invariant of every managed instance at `now` (with the live canaries, as `rotator
    verify`): a VerifyFailures metric, and a notice listing each failed check (or saying the
    checks could not run). A what-if checks and publishes nothing."""
    try:
        verification = checker.verify(None, now)
        run = VerifyJobRun(now, what_if, verification.checks)
    except ConnectKeyRotatorError as error:
        run = VerifyJobRun(now, what_if, error=f"reading the keyring: {describe(error)}")
    if what_if:
        log.info("scheduled_verify", **run.to_dict())
        return run
    notified = False
    errors: list[str] = []
    try:
        if run.error is None:  # a count of failed checks means nothing when none ran
            publisher.put_metrics([Metric(VERIFY_FAILURES_METRIC, len(run.failed))], now)
        if not run.ok:
            notified = publisher.notify(*_verify_notice(run))
    except ConnectKeyRotatorError as error:
        errors.append(describe(error))
    run = replace(run, notified=notified, telemetry_error="; ".join(errors) or None)
    (log.info if run.ok else log.error)("scheduled_verify", **run.to_dict())
    return run


def _verify_notice(run: VerifyJobRun) -> tuple[str, str]:
    if run.error is not None:
        return f"{VERIFY_FAILED_SUBJECT}: it could not run", (
            f"Verify at {run.now.isoformat()} could not run: {run.error}"
        )
    lines = [f"Verify at {run.now.isoformat()}: {len(run.failed)} check(s) failed"]
    lines += [f"- {line}" for line in run.failures()]
    lines.append("Each line names its finding and runbook (runbooks/).")
    return f"{VERIFY_FAILED_SUBJECT}: {len(run.failed)} check(s)", "\n".join(lines)


# -- expiry events (ACM's "approaching expiration") ----------------------------------------------


@dataclass(frozen=True)
class ExpiryEvents:
    """One run's expiry events: the details of those put on the bus (a what-if: of those it
    would put), and what stopped them."""

    details: tuple[dict[str, Any], ...] = ()
    error: str | None = None


def expiry_events_job(
    rotation: RotationService,
    keyring: Keyring,
    records: Sequence[KeyRecord] | None,
    publisher: Publisher,
    now: datetime,
    what_if: bool,
    describe: Callable[[ConnectKeyRotatorError], str] = str,
    *,
    extra_detail: Mapping[str, str] | None = None,
) -> ExpiryEvents:
    """Put an event on the bus for each active key that has crossed a threshold of the
    `expiry_event_days` setting since its last one, then record it in the history: one event
    per key and threshold however often the job runs. Sent first, recorded after: a crash in
    between sends it again on the next run (at least once, as EventBridge delivers). Nothing
    recorded, nothing sent: the next run sends it. A what-if sends and records nothing.
    `records`: the job's read of the keyring (None: it failed, and the run already says so).
    `extra_detail`: fields added to each event's detail (fleet mode: the account and region, as
    the events of every member account go on the central bus); the history records the same
    crossing either way."""
    settings = rotation.settings
    if records is None:
        return ExpiryEvents()
    try:
        owed = _owed_expiry_events(records, keyring, settings.expiry_thresholds, now)
    except ConnectKeyRotatorError as error:
        return ExpiryEvents(error=f"expiry events: reading the keyring: {describe(error)}")
    extra = dict(extra_detail or {})
    details = tuple(
        event_detail(record, now, crossing.threshold) | extra for record, crossing in owed
    )
    if what_if or not owed:
        return ExpiryEvents(details)
    events = [
        BusEvent(EXPIRY_EVENT_SOURCE, EXPIRY_EVENT_DETAIL_TYPE, detail, now) for detail in details
    ]
    try:
        publisher.put_events(settings.event_bus, events)
    except ConnectKeyRotatorError as error:
        return ExpiryEvents(error=f"expiry events: {describe(error)}")
    try:
        for record, crossing in owed:
            keyring.append_event(sent_event(record, crossing, now, rotation.actor))
    except ConnectKeyRotatorError as error:  # sent, not recorded: the next run sends them again
        return ExpiryEvents(details, f"expiry events: recording them: {describe(error)}")
    # Fleet mode: the partition too, as partitions' lines interleave (checked on a pool).
    log.info("expiry_events", events=[(d["keyId"], d["threshold"]) for d in details], **extra)
    return ExpiryEvents(details)


def _owed_expiry_events(
    records: Sequence[KeyRecord], keyring: Keyring, thresholds: Sequence[int], now: datetime
) -> list[tuple[KeyRecord, Crossing]]:
    """Each key that is owed an event, and the crossing it is owed for. The history is read
    only when a key is inside the widest threshold (most days, none is)."""
    if not thresholds:
        return []
    widest = max(thresholds)
    near: list[tuple[KeyRecord, float]] = []
    for record in records:
        days = record.days_to_expiry(now)
        if record.state in EXPIRY_EVENT_STATES and days is not None and days <= widest:
            near.append((record, days))
    if not near:
        return []
    recorded = recorded_thresholds(keyring.history_events())
    owed = []
    for record, days in near:
        crossing = newly_crossed(days, thresholds, recorded.get(record.key_id, ()))
        if crossing is not None:
            owed.append((record, crossing))
    return owed


# -- the report job ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportDestinations:
    """Where the report job delivers (any combination; none: the report is only counted).
    `where_to_set` names the settings that add one, for the delivered-nowhere warning."""

    where_to_set: str
    s3_uri: str | None = None
    topic_arn: str | None = None
    directory: Path | None = None


@dataclass(frozen=True)
class ReportJobRun:
    """One run of the report job: the findings' counts, where the report went, what failed."""

    now: datetime
    what_if: bool
    report: Report | FleetReport | None = None  # None: it could not be built
    location: str | None = None  # s3://bucket/key of the stored report
    files: tuple[str, ...] = ()  # the files written to the destination directory
    notified: bool = False  # the summary was posted on the report topic
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Findings are the report's content, not a failure; a report that cannot be built or
        delivered is."""
        return not self.errors

    def counts(self) -> dict[Severity, int] | None:
        return None if self.report is None else self.report.counts()

    @property
    def delivered(self) -> int:
        """How many places the report reached."""
        return len(self.files) + (self.location is not None) + self.notified

    def exit_status(self, fail_on: Severity | None = None) -> int:
        """1 if the run failed, or a finding is at or above `fail_on` (None: findings pass)."""
        if not self.ok or (self.report is not None and self.report.fails(fail_on)):
            return ExitCode.FAILURE
        return ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        counts = self.counts()
        summary: dict[str, Any] = {
            "ok": self.ok,
            "job": "report",
            "now": self.now.isoformat(),
            "what_if": self.what_if,
            "location": self.location,
            "notified": self.notified,
            "counts": None if counts is None else {s.value: n for s, n in counts.items()},
            "warnings": list(self.warnings),
        }
        if self.errors:
            summary["error"] = "; ".join(self.errors)
        return summary


def delivered_nowhere(settings_to_set: str) -> str:
    """The warning of a report job that has no destination: the report was built, its metrics
    published, and nobody will read it. `settings_to_set` names where a destination goes."""
    return f"the report was delivered nowhere: no destination is configured (set {settings_to_set})"


def report_maker(
    keyring: Keyring,
    connect: Connect,
    lock: Lock,
    options: ReportOptions,
    *,
    evidence: EvidenceSources | None = None,
) -> Callable[[datetime], Report]:
    """The report at a given time, from the keyring, Connect and the locks (and `evidence`:
    the KMS keys and the decrypt function, for the cryptographic architecture)."""
    return lambda now: make_report(keyring, connect, lock, options, now, evidence=evidence)


def report_job(
    make: Callable[[datetime], Report | FleetReport],
    publisher: Publisher,
    destinations: ReportDestinations,
    now: datetime,
    *,
    what_if: bool = False,
) -> ReportJobRun:
    """The compliance report at `now`: a ReportFindings metric per severity, then the report in
    every destination (HTML and JSON files in the directory, the HTML in S3, the summary on the
    topic). A report that cannot be built or delivered fails the run and sends a notice on the
    alert topic. A what-if builds the report and answers its counts; it publishes and delivers
    nothing."""
    try:
        report = make(now)
    except ConnectKeyRotatorError as error:
        return _report_failed(
            ReportJobRun(now, what_if), publisher, [f"building the report: {error}"]
        )
    if what_if:
        run = ReportJobRun(now, what_if, report)
        log.info("scheduled_report", **run.to_dict())
        return run
    errors: list[str] = []
    metrics = [
        Metric(REPORT_FINDINGS_METRIC, n, dimensions=(("Severity", severity.value),))
        for severity, n in report.counts().items()
    ]
    try:  # first: the critical-findings alarm does not depend on the delivery
        publisher.put_metrics(metrics, now)
    except ConnectKeyRotatorError as error:
        errors.append(f"metrics: {error}")
    files: list[str] = []
    published = Published(None, notified=False)
    try:
        if destinations.directory is not None:
            for fmt in DIRECTORY_FORMATS:
                path = str(destinations.directory / report_name(report.generated_at, fmt))
                publisher.store_report(
                    path, render_any(report, fmt).encode("utf-8"), fmt.content_type
                )
                files.append(path)
        published = publish_report(
            report, publisher, s3_uri=destinations.s3_uri, topic_arn=destinations.topic_arn
        )
    except ConnectKeyRotatorError as error:
        errors.append(f"delivery: {error}")
    run = ReportJobRun(now, what_if, report, published.location, tuple(files), published.notified)
    if errors:
        return _report_failed(run, publisher, errors)
    if not run.delivered:
        run = replace(run, warnings=(delivered_nowhere(destinations.where_to_set),))
    (log.warning if run.warnings else log.info)("scheduled_report", **run.to_dict())
    return run


def _report_failed(run: ReportJobRun, publisher: Publisher, errors: list[str]) -> ReportJobRun:
    lines = [f"Compliance report at {run.now.isoformat()} failed:", *(f"- {e}" for e in errors)]
    try:
        publisher.notify(REPORT_FAILED_SUBJECT, "\n".join(lines))
    except ConnectKeyRotatorError as error:  # the topic itself may be what failed
        errors = [*errors[:-1], f"{errors[-1]}; notice: {error}"]
    failed = replace(run, errors=tuple(errors))
    log.error("scheduled_report", **failed.to_dict())
    return failed


def render_any(report: Report | FleetReport, fmt: ReportFormat) -> str:
    """A keyring's report, or the fleet's (one report, a section per account and region)."""
    return render_fleet(report, fmt) if isinstance(report, FleetReport) else render(report, fmt)


def summary_notice(report: Report | FleetReport, location: str | None) -> tuple[str, str]:
    """The subject and message of the report's summary on its topic."""
    message = (
        render_fleet_summary(report) if isinstance(report, FleetReport) else render_summary(report)
    )
    if location is not None:
        message += f"\nFull report: {location}"
    counts = report.counts()
    subject = (
        f"connect-key-rotator report {report.generated_at:%Y-%m-%d}: "
        f"{counts[Severity.CRITICAL]} critical, {counts[Severity.WARNING]} warning"
    )
    return subject, message


def report_name(generated_at: datetime, fmt: ReportFormat) -> str:
    """`report-<YYYY-MM-DD>.<fmt>`: a rerun the same day replaces it."""
    return f"report-{generated_at:%Y-%m-%d}.{fmt.value}"


def report_object(s3_uri: str, generated_at: datetime, fmt: ReportFormat) -> tuple[str, str]:
    """Bucket and key for a report under `s3://bucket[/prefix]`."""
    if not s3_uri.startswith("s3://"):
        raise ConfigError("report S3 URI", f"{s3_uri!r} is not an s3://bucket/prefix URI")
    bucket, _, prefix = s3_uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ConfigError("report S3 URI", f"{s3_uri!r} names no bucket")
    name = report_name(generated_at, fmt)
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/{name}" if prefix else name


@dataclass(frozen=True)
class Published:
    location: str | None  # s3://bucket/key of the stored report
    notified: bool


def publish_report(
    report: Report | FleetReport,
    publisher: Publisher,
    *,
    s3_uri: str | None,
    topic_arn: str | None,
    fmt: ReportFormat = ReportFormat.HTML,
) -> Published:
    """Store `report` as `{s3_uri}/report-<YYYY-MM-DD>.<fmt>` and post its summary on the topic;
    either is skipped when not configured. Raises what the publisher raises."""
    location = None
    if s3_uri is not None:
        bucket, key = report_object(s3_uri, report.generated_at, fmt)
        location = f"s3://{bucket}/{key}"
        publisher.store_report(location, render_any(report, fmt).encode("utf-8"), fmt.content_type)
    if not topic_arn:
        return Published(location, notified=False)
    publisher.post_summary(topic_arn, *summary_notice(report, location))
    return Published(location, notified=True)


# -- `rotator report` ----------------------------------------------------------------------------


def run_report(
    keyring: Keyring,
    connect: Connect,
    lock: Lock,
    options: ReportOptions,
    now: datetime,
    *,
    fmt: ReportFormat,
    output: Path | None,
    fail_on: Severity | None,
    out: TextIO,
    evidence: EvidenceSources | None = None,
) -> int:
    """Write the report to `output` (a summary line goes to `out`) or to `out` itself.

    Exit 1 if a finding is at or above `fail_on` (None: 0 whenever a report was produced).
    """
    report = make_report(keyring, connect, lock, options, now, evidence=evidence)
    rendered = render(report, fmt)
    if output is None:
        out.write(rendered)
    else:
        try:
            output.write_text(rendered, encoding="utf-8")
        except OSError as error:
            raise ConfigError("--output", f"cannot write {output}: {error.strerror}") from None
        out.write(f"{render_summary(report, limit=5)}\nreport written to {output}\n")
    # `--fail-on`: a finding at or above the threshold fails the command.
    return ExitCode.FAILURE if report.fails(fail_on) else ExitCode.OK


# -- fleet mode (issue 12): the state machine's evaluate, rotate-target and aggregate steps -----

FLEET_FAILED_SUBJECT = "connect-key-rotator: fleet rotation"
# Published by the aggregation: the fleet's partitions the evaluation could not read.
FLEET_PARTITION_ERRORS_METRIC = "FleetPartitionErrors"


def evaluate_job(
    keyrings: Mapping[Partition, Keyring],
    policy: RotationPolicy,
    now: datetime,
    *,
    schedule: RotationSchedule | None = None,
    what_if: bool = False,
    describe: Callable[[ConnectKeyRotatorError], str] = str,
) -> dict[str, Any]:
    """The due (account, region, instance) targets, grouped by partition for the state
    machine's Map. Reads only; a what-if evaluates at `now` and says so."""
    evaluation = evaluate(keyrings, policy, now, schedule=schedule, describe=describe)
    summary = evaluation.to_dict() | {"what_if": what_if}
    (log.info if evaluation.ok else log.error)(
        "fleet_evaluation", counts=summary["counts"], errors=summary["errors"]
    )
    return summary


def rotate_target_job(
    rotation: RotationService,
    target: Target,
    now: datetime,
    *,
    what_if: bool = False,
    describe: Callable[[ConnectKeyRotatorError], str] = str,
) -> dict[str, Any]:
    """One unit: the target's rotation, decided again under its lock (a what-if: a dry run).
    Never raises for a failed rotation: the result says it, and the aggregation counts it."""
    try:
        result = rotate_target(rotation.rotate, target, now, dry_run=what_if)
    except ConnectKeyRotatorError as error:
        result = InstanceResult(target.instance_id, Outcome.FAILED, describe(error))
    unit = TargetResult(target, result)
    (log.error if unit.failed else log.info)("fleet_unit", **unit.to_dict())
    return {"ok": not unit.failed, "job": "rotate-target", "now": now.isoformat()} | unit.to_dict()


# At most this many lines of each kind in the aggregation's summary (the execution's output is a
# state too: 256 KB at most); the notice and the log carry every line.
SUMMARY_LINES = 50


@dataclass(frozen=True)
class PartitionCheck:
    """The aggregation's work in one (account, region), after the Map's rotations: what the
    single-account job does after its own (`after_rotations`), plus the convergence that its
    loop over every instance gives it: orphaned staging removed, retires cut short finished,
    stale locks cleared."""

    partition: Partition
    run: RotationJobRun  # this partition's units, keys left due, drift and expiry events
    metrics: tuple[Metric, ...] = ()  # with the Account and Region dimensions
    repaired: tuple[str, ...] = ()
    units_failed: int = 0  # the first failures of `run` are the Map's units'

    @property
    def own_failures(self) -> list[InstanceResult]:
        """What failed in the aggregation's own work here (a read, a repair): the units' failures
        are the Map's, counted once."""
        return self.run.failed[self.units_failed :]

    def lines(self) -> list[str]:
        """This partition's lines of the single-account job's `failures()`, each naming the
        partition (publishing errors are the aggregation's own)."""
        lines = [f"failed: {self.partition}/{r.instance_id}: {r.detail}" for r in self.own_failures]
        if not self.run.what_if:
            lines += [f"due and not rotated: {self.partition}/{e}" for e in self.run.still_due]
            lines += [f"drift: {self.partition}: {_drift_line(f)}" for f in self.run.critical_drift]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.partition.account,
            "region": self.partition.region,
            "still_due": len(self.run.still_due),
            "drift": {s.value: sum(f.severity is s for f in self.run.drift) for s in Severity},
            "expiry_events": len(self.run.expiry_events),
            "repaired": list(self.repaired[:SUMMARY_LINES]),
        }


@dataclass(frozen=True)
class AggregateRun:
    """The state machine's last step: the units' outcomes, the evaluation's unreadable
    partitions, each partition's checks, the report, and what was published."""

    now: datetime
    what_if: bool
    counts: dict[str, int]
    failures: tuple[str, ...]
    partition_errors: tuple[str, ...]
    min_days_to_expiry: float | None
    checks: tuple[PartitionCheck, ...] = ()
    notified: bool = False
    telemetry_error: str | None = None
    report: ReportJobRun | None = None

    @property
    def problems(self) -> list[str]:
        """Every line that makes the run not ok: the failed units, the unreadable partitions,
        and each partition's keys left due, critical drift and failed reads."""
        lines = [f"failed: {line}" for line in self.failures]
        lines += [f"not evaluated: {line}" for line in self.partition_errors]
        for check in self.checks:
            lines += check.lines()
        return lines

    @property
    def ok(self) -> bool:
        return (
            not self.problems
            and self.telemetry_error is None
            and (self.report is None or self.report.ok)
        )

    def to_dict(self) -> dict[str, Any]:
        problems = self.problems
        return {
            "ok": self.ok,
            "job": "aggregate",
            "now": self.now.isoformat(),
            "what_if": self.what_if,
            "counts": self.counts,
            "failures": list(self.failures[:SUMMARY_LINES]),
            "partition_errors": list(self.partition_errors[:SUMMARY_LINES]),
            "problems": problems[:SUMMARY_LINES],
            "more_problems": max(0, len(problems) - SUMMARY_LINES),
            "partitions": [check.to_dict() for check in self.checks],
            "min_days_to_expiry": self.min_days_to_expiry,
            "notified": self.notified,
            "telemetry_error": self.telemetry_error,
            "report": None if self.report is None else self.report.to_dict(),
        }


def aggregate_job(
    evaluation: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    publisher: Publisher,
    now: datetime,
    *,
    partitions: Mapping[Partition, RotationService] | None = None,
    report: Callable[[datetime], Report | FleetReport] | None = None,
    destinations: ReportDestinations | None = None,
    what_if: bool = False,
    describe: Callable[[ConnectKeyRotatorError], str] = str,
    workers: int = PARTITION_WORKERS,
) -> AggregateRun:
    """After the Map's rotations, per partition (`partitions`: each one's rotation service, on
    its own adapters; at most `workers` partitions at once, each one's work serial), what the
    single-account rotation job does after its rotations: remove orphaned staging, finish
    retires cut short and clear stale locks, then `after_rotations` (the key metrics, the drift
    check, the expiry events on the bus, recorded in that account's history). Then the metrics
    (each partition's with Account and Region dimensions; the fleet's totals without, which the
    template's alarms watch), one notice naming every failed unit, unreadable partition, key
    left due and critical drift finding, and the report (`report`: the fleet report's maker,
    delivered as the report job delivers).

    `evaluation`: the evaluation's `errors` and `min_days_to_expiry` (the fleet's nearest
    expiry when no partition could be read); `results`: the Map's items, each a rotate-target
    summary (or a Lambda error the Map caught: a failure too). A what-if checks, changes and
    publishes nothing. The partitions' checks are kept in `partitions`' order, so the metrics,
    the notice and the summary are the serial run's."""
    outcomes = [str(r.get("outcome", Outcome.FAILED.value)) for r in results]
    counts = {o.value: outcomes.count(o.value) for o in Outcome}
    failures = tuple(
        f"{r.get('account', '?')}/{r.get('region', '?')}/{r.get('instance_id', '?')}: "
        f"{r.get('failure') or r.get('detail') or r.get('error') or 'failed'}"
        for r, outcome in zip(results, outcomes, strict=True)
        if outcome == Outcome.FAILED.value
    )
    errors = tuple(str(e) for e in evaluation.get("errors", []))

    def check(partition: Partition, rotation: RotationService) -> PartitionCheck:
        return _check_partition(partition, rotation, results, now, what_if, publisher, describe)

    checks = tuple(on_partitions(check, partitions or {}, workers=workers))
    for done in checks:  # in the partitions' order, whichever finished first
        log.info(
            "fleet_partition_checked", partition=str(done.partition), repaired=list(done.repaired)
        )
    days = [d for c in checks if (d := _fleet_value(c.metrics, "DaysToExpiry")) is not None]
    evaluated = evaluation.get("min_days_to_expiry")
    if not days and evaluated is not None:  # no partition was read: the evaluation's
        days = [float(evaluated)]
    run = AggregateRun(now, what_if, counts, failures, errors, min(days) if days else None, checks)
    report_run = None
    if report is not None:
        where = destinations if destinations is not None else ReportDestinations("-")
        report_run = report_job(report, publisher, where, now, what_if=what_if)
    run = replace(run, report=report_run)
    if what_if:
        log.info("fleet_aggregate", **run.to_dict())
        return run
    problems = [e for c in checks if (e := c.run.telemetry_error) is not None]
    notified = False
    try:
        publisher.put_metrics(_fleet_metrics(run, checks), now)
        if run.problems:
            notified = publisher.notify(_fleet_subject(run), _fleet_message(run))
    except ConnectKeyRotatorError as error:
        problems.append(describe(error))
    run = replace(run, notified=notified, telemetry_error="; ".join(problems) or None)
    (log.info if run.ok else log.error)("fleet_aggregate", **run.to_dict())
    return run


def _check_partition(
    partition: Partition,
    rotation: RotationService,
    results: Sequence[Mapping[str, Any]],
    now: datetime,
    what_if: bool,
    publisher: Publisher,
    describe: Callable[[ConnectKeyRotatorError], str],
) -> PartitionCheck:
    """One partition's check, on a thread of the aggregation's pool: its failures are its own
    (a read refused is a failed line of this partition; an unexpected exception, this partition
    not checked), so the other partitions' checks stand."""
    units = _partition_units(partition, results)
    try:
        return _check_one(partition, rotation, units, now, what_if, publisher, describe)
    except Exception as error:  # noqa: BLE001 - one partition's bug must not lose the others'
        # Its type only: an unexpected exception's text is not known to be free of secrets.
        log.error("fleet_partition_crashed", partition=str(partition), error=type(error).__name__)
        crashed = InstanceResult(
            "*", Outcome.FAILED, f"checking the partition: unexpected {type(error).__name__}"
        )
        # Not read (`expiries` None): FleetPartitionErrors counts it, as an unreadable one.
        run = RotationJobRun(now, [*units, crashed], what_if=what_if)
        return PartitionCheck(partition, run, units_failed=_failed(units))


def _partition_units(
    partition: Partition, results: Sequence[Mapping[str, Any]]
) -> list[InstanceResult]:
    """The Map's units of `partition`, as the rotation job's results."""
    return [
        InstanceResult(
            str(r.get("instance_id", "?")),
            _outcome(r.get("outcome")),
            str(r.get("failure") or r.get("detail") or r.get("error") or ""),
        )
        for r in results
        if (r.get("account"), r.get("region")) == (partition.account, partition.region)
    ]


def _failed(results: Sequence[InstanceResult]) -> int:
    return sum(r.outcome is Outcome.FAILED for r in results)


def _check_one(
    partition: Partition,
    rotation: RotationService,
    units: list[InstanceResult],
    now: datetime,
    what_if: bool,
    publisher: Publisher,
    describe: Callable[[ConnectKeyRotatorError], str],
) -> PartitionCheck:
    units = list(units)  # the repairs' failures are added
    units_failed = _failed(units)
    keyring = rotation.keyring
    repaired: list[str] = []
    drift: DriftCheck | None = None
    busy = {u.instance_id for u in units if u.outcome in (Outcome.SKIPPED, Outcome.WAITING)}
    try:
        if not what_if:
            rotation.remove_orphaned_staging()
        state = read_state(keyring, rotation.lock, connect=rotation.connect, protection=True)
        if not what_if:
            repaired, failed = _finish_interrupted(rotation, state, now, describe)
            units += failed
            if repaired or failed:  # judge what the repairs left, as the single-account job does
                state = read_state(
                    keyring, rotation.lock, connect=rotation.connect, protection=True
                )
        drift = DriftCheck(tuple(drift_findings(state, now)))
        busy |= _held_back(rotation, state, now)
    except ConnectKeyRotatorError as error:
        drift = DriftCheck(error=f"drift check: reading the keyring: {describe(error)}")
    detail = {"account": partition.account, "region": partition.region}
    checks = after_rotations(
        rotation,
        keyring,
        publisher,
        units,
        busy,
        now,
        what_if,
        describe,
        drift=drift,
        extra_detail=detail,
    )
    run = RotationJobRun(
        now,
        checks.results,
        checks.still_due,
        telemetry_error=checks.expiry.error,
        what_if=what_if,
        expiry_events=checks.expiry.details,
        drift=checks.drift.findings,
        expiries=checks.expiries,
    )
    dimensions = (("Account", partition.account), ("Region", partition.region))
    metrics = tuple(replace(m, dimensions=dimensions + m.dimensions) for m in checks.metrics)
    return PartitionCheck(partition, run, metrics, tuple(repaired), units_failed)


def _outcome(raw: object) -> Outcome:
    """A Map item's outcome; anything else (a caught invocation error) is a failure."""
    values = {o.value: o for o in Outcome}
    return values.get(str(raw), Outcome.FAILED)


def _finish_interrupted(
    rotation: RotationService,
    state: KeyringState,
    now: datetime,
    describe: Callable[[ConnectKeyRotatorError], str],
) -> tuple[list[str], list[InstanceResult]]:
    """What the single-account job's visit of every instance finishes on instances that are not
    due (the evaluation reads no Connect, so the Map never visits them): a retired key Connect
    still holds (a retire cut short between its record and Connect's answer) and a stale lock.
    Found in the drift check's read; each finished by the rotation's own code. A retired key a
    managed flow still uses is left, as the single-account job leaves it (still a finding)."""
    repaired: list[str] = []
    failed: list[InstanceResult] = []
    for instance in state.instances:
        instance_id = instance.instance_id
        try:
            if instance.lock is not None and instance.lock.stale_reason is not None:
                cleared = rotation.lock.clear_if_stale(instance_id)
                if cleared:
                    repaired.append(f"{instance_id}: stale lock removed ({cleared})")
            for key_id in instance.associations:
                record = state.record(key_id)
                if record is None or record.state is not KeyState.RETIRED:
                    continue
                try:
                    repaired.append(f"{instance_id}: {rotation.retire(key_id, now)}")
                except RotationRefused as refused:  # a managed flow still uses it
                    log.warning("retire_deferred", instance_id=instance_id, detail=str(refused))
        except ConnectKeyRotatorError as error:
            failed.append(InstanceResult(instance_id, Outcome.FAILED, describe(error)))
    return repaired, failed


def _held_back(rotation: RotationService, state: KeyringState, now: datetime) -> set[str]:
    """The instances whose due key the rotation window or a freeze holds back: the evaluation
    left them out of the Map (the single-account job's "waiting"), so not "left due"."""
    if rotation.schedule is None:
        return set()
    waiting = set()
    for instance in state.instances:
        current = state.record(state.current.get(instance.instance_id, ""))
        if instance.rotation_interrupted or current is None or current.state is not KeyState.ACTIVE:
            continue
        if rotation_due(current, rotation.settings.policy, now).due and (
            window_decision(rotation.schedule, current.not_after, now).waits
        ):
            waiting.add(instance.instance_id)
    return waiting


def _fleet_value(metrics: Sequence[Metric], name: str) -> float | None:
    """A partition's series of `name` with no dimension but its Account and Region."""
    for metric in metrics:
        if metric.name == name and [d for d, _ in metric.dimensions] == ["Account", "Region"]:
            return metric.value
    return None


def _fleet_metrics(run: AggregateRun, checks: Sequence[PartitionCheck]) -> list[Metric]:
    """Each partition's metrics, then the fleet's totals without dimensions (the series the
    template's alarms watch: RotationFailure, the nearest DaysToExpiry)."""
    metrics = [m for check in checks for m in check.metrics]
    # A partition's own failed reads are failures too, as in the single-account job.
    extra = sum(len(c.own_failures) for c in checks)
    not_checked = [c for c in checks if c.run.expiries is None]
    metrics += [
        Metric("RotationSuccess", run.counts[Outcome.ROTATED.value]),
        Metric("RotationFailure", run.counts[Outcome.FAILED.value] + extra),
        Metric(FLEET_PARTITION_ERRORS_METRIC, len(run.partition_errors) + len(not_checked)),
    ]
    if checks:  # counted only where partitions were checked
        metrics.append(Metric("KeysDueNotRotated", sum(len(c.run.still_due) for c in checks)))
        metrics += [
            Metric(
                DRIFT_FINDINGS_METRIC,
                sum(f.severity is severity for c in checks for f in c.run.drift),
                dimensions=(("Severity", severity.value),),
            )
            for severity in Severity
        ]
    if run.min_days_to_expiry is not None:  # the one series the days-to-expiry alarm watches
        metrics.append(Metric("DaysToExpiry", run.min_days_to_expiry, "None"))
    return metrics


def _fleet_subject(run: AggregateRun) -> str:
    """The single-account job's subject over the whole fleet (the first kind of problem)."""
    failed = len(run.failures) + sum(len(c.own_failures) for c in run.checks)
    if failed:
        return f"connect-key-rotator: {failed} rotation(s) failed"
    still_due = sum(len(c.run.still_due) for c in run.checks)
    if still_due:
        return f"connect-key-rotator: {still_due} key(s) due and not rotated"
    critical = sum(len(c.run.critical_drift) for c in run.checks)
    if critical:
        return (
            f"connect-key-rotator: {critical} critical drift finding(s): "
            "a change the rotator did not make"
        )
    if run.partition_errors:
        return f"{FLEET_FAILED_SUBJECT}: {len(run.partition_errors)} partition(s) unreadable"
    return "connect-key-rotator: publishing failed"


def _fleet_message(run: AggregateRun) -> str:
    lines = [f"Fleet run at {run.now.isoformat()}:"]
    lines += [f"- {line}" for line in run.problems]
    lines.append("Runbook: runbooks/ (rotator verify --account NAME --region R).")
    return "\n".join(lines)
