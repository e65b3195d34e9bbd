"""`rotator serve`: the rotator's jobs on cron schedules (APScheduler), or each once."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from lambda_decrypt.logs import configure_logging, get_logger
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.config import Settings
from rotator.config_file import RotatorConfig, cron_trigger, load_config
from rotator.domain.rotation import ManagedInstance
from rotator.entrypoints.bootstrap import Adapters, build_adapters, environment_problem
from rotator.errors import ConfigError, ConnectKeyRotatorError
from rotator.services.report import ReportOptions, make_report
from rotator.services.report_delivery import delivered_nowhere, publish_report
from rotator.services.report_render import ReportFormat, render
from rotator.services.rotation import InstanceResult, Outcome, RotationService

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2  # the CLI's exit codes
# A run that could not start on time (process suspended, previous run too long) still runs
# within this many seconds of its time; later, it is skipped until its next time.
MISFIRE_GRACE_SECONDS = 3600
REPORT_DESTINATIONS = "directory, s3_uri or sns_topic_arn in the config's [report] table"
log = get_logger("rotator.serve")


class Console:
    """The daemon's stdout: whole lines, flushed, even when two jobs run in scheduler threads."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()


@dataclass(frozen=True)
class JobResult:
    """What one run of a job did: counts by outcome, one line per failure, and warnings about
    a run that succeeded but may not have done what was meant (a report delivered nowhere)."""

    outcomes: Mapping[str, int]
    failures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures


JobFunction = Callable[[datetime], JobResult]


@dataclass(frozen=True)
class JobContext:
    """What a job is built from, and where it says what it does as it goes."""

    config: RotatorConfig
    adapters: Adapters
    actor: str
    console: Console


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    trigger: BaseTrigger
    run: JobFunction


def rotation_job(context: JobContext) -> JobFunction:
    """Bring configured instances under management, then rotate every managed one that is due."""

    def run(now: datetime) -> JobResult:
        service = context.adapters.rotation(context.actor)
        results: dict[str, InstanceResult] = {}
        for instance in context.config.instances:
            initialised = _initialise(service, context.adapters.keyring, instance, now)
            if initialised is not None:
                results[instance.instance_id] = initialised
                context.console.say(_initialised(initialised))
        for result in service.rotate(None, now):
            results.setdefault(result.instance_id, result)
        return _job_result(results.values())

    return run


def report_job(context: JobContext) -> JobFunction:
    """The compliance report, delivered to every destination of the config's [report] table:
    HTML and JSON files in a directory, the HTML in S3, a summary on SNS. Findings do not
    fail the job (they are the report's content); a delivery that fails does."""

    def run(now: datetime) -> JobResult:
        adapters, destinations = context.adapters, context.config.report
        report = make_report(
            adapters.keyring,
            adapters.connect,
            adapters.lock,
            ReportOptions.from_settings(adapters.settings),
            now,
        )
        delivered = 0
        if destinations.directory is not None:
            destinations.directory.mkdir(parents=True, exist_ok=True)
            for fmt in (ReportFormat.HTML, ReportFormat.JSON):
                target = destinations.directory / f"report-{now:%Y-%m-%d}.{fmt.value}"
                target.write_text(render(report, fmt), encoding="utf-8")
                delivered += 1
        published = publish_report(
            report,
            s3_uri=destinations.s3_uri,
            s3_client=adapters.s3() if destinations.s3_uri else None,
            sns_client=adapters.sns() if destinations.sns_topic_arn else None,
            topic_arn=destinations.sns_topic_arn,
        )
        delivered += (published.location is not None) + published.notified
        counts = {f"findings {s.value}": n for s, n in report.counts().items()}
        warnings = () if delivered else (delivered_nowhere(REPORT_DESTINATIONS),)
        return JobResult(outcomes={**counts, "delivered": delivered}, warnings=warnings)

    return run


# The jobs, by their key in [schedules]: adding a job is one entry here.
JOBS: Mapping[str, Callable[[JobContext], JobFunction]] = {
    "rotation": rotation_job,
    "report": report_job,
}


def _initialise(
    service: RotationService, keyring: SsmKeyring, instance: ManagedInstance, now: datetime
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


def _initialised(result: InstanceResult) -> str:
    """The line `serve` prints for a configured instance it brought under management."""
    if result.outcome is Outcome.FAILED:
        return f"rotation: instance {result.instance_id} could not be initialised: {result.detail}"
    return f"rotation: instance {result.instance_id} initialised: {result.detail}"


def _job_result(results: Iterable[InstanceResult]) -> JobResult:
    results = list(results)
    return JobResult(
        outcomes=dict(Counter(str(r.outcome) for r in results)),
        failures=tuple(
            f"{r.instance_id}: {r.detail}" for r in results if r.outcome is Outcome.FAILED
        ),
    )


class Daemon:
    """Runs jobs once each, or on their triggers until `stop()` (SIGTERM, SIGINT)."""

    def __init__(
        self, jobs: Sequence[ScheduledJob], console: Console, now: Callable[[], datetime]
    ) -> None:
        self.jobs = jobs
        self.console = console
        self.now = now
        self._stopping = threading.Event()

    def run_once(self) -> bool:
        """Every job once, in order; True if all succeeded."""
        return all([self.run_job(job) for job in self.jobs])

    def serve(self) -> None:
        """Block until stopped; a job still running then is waited for."""
        scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={
                "max_instances": 1,
                "coalesce": True,
                "misfire_grace_time": MISFIRE_GRACE_SECONDS,
            },
        )
        for job in self.jobs:
            scheduler.add_job(self.run_job, job.trigger, args=(job,), id=job.name, name=job.name)
        scheduler.add_listener(self._skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        # Its plain-text warnings say what `job_skipped` says, in the JSON log.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        with _stop_on_signals(self.stop):
            scheduler.start()
            for job in scheduler.get_jobs():
                self._say(
                    f"rotator serve: job {job.name}: next run {job.next_run_time.isoformat()}"
                )
            log.info("serve_started", jobs=[job.name for job in self.jobs])
            self._stopping.wait()
            self._say("rotator serve: stopping (waiting for a running job to finish)")
            scheduler.shutdown(wait=True)
        log.info("serve_stopped")
        self._say("rotator serve: stopped")

    def stop(self) -> None:
        """Ask `serve` to return; safe from a signal handler and from any thread."""
        self._stopping.set()

    def run_job(self, job: ScheduledJob) -> bool:
        """One run: the clock read once, every exception caught and logged, a summary line."""
        now = self.now()
        started = time.monotonic()
        try:
            result = job.run(now)
        except Exception as error:  # noqa: BLE001 - one failing run must not stop the daemon
            log.debug("job_error", job=job.name, exc_info=True)
            result = JobResult({}, (_describe(error),))
        duration = time.monotonic() - started
        level = log.error if not result.ok else log.warning if result.warnings else log.info
        level(
            "job_run",
            job=job.name,
            started=now.isoformat(),
            duration_s=round(duration, 3),
            ok=result.ok,
            outcomes=dict(result.outcomes),
            failures=list(result.failures),
            warnings=list(result.warnings),
        )
        self._say(_summary(job.name, now, duration, result))
        return result.ok

    def _skipped(self, event: JobEvent) -> None:
        reason = (
            "the previous run is still going"
            if event.code == EVENT_JOB_MAX_INSTANCES
            else f"missed its time by more than {MISFIRE_GRACE_SECONDS} s"
        )
        log.warning("job_skipped", job=event.job_id, reason=reason)

    def _say(self, line: str) -> None:
        self.console.say(line)


def _summary(name: str, now: datetime, duration: float, result: JobResult) -> str:
    counts = ", ".join(f"{n} {outcome.replace('_', ' ')}" for outcome, n in result.outcomes.items())
    line = (
        f"{name} at {now.isoformat()}: {'ok' if result.ok else 'FAILED'} in {duration:.1f} s "
        f"({counts or 'nothing to do'})"
    )
    line += "".join(f"; {failure}" for failure in result.failures)
    return line + "".join(f"; warning: {warning}" for warning in result.warnings)


def _describe(error: Exception) -> str:
    """The project's errors say what and where without secrets; anything else by type only.
    A missing region or credentials says what to set."""
    problem = environment_problem(error)
    if problem is not None:
        return str(problem)
    if isinstance(error, ConnectKeyRotatorError):
        return str(error)
    return f"unexpected {type(error).__name__} (LOG_LEVEL=DEBUG logs details)"


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call `stop` while inside; handlers exist only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop()

    previous: dict[signal.Signals, Any] = {
        sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def scheduled_jobs(
    config: RotatorConfig, adapters: Adapters, console: Console
) -> list[ScheduledJob]:
    """Every job of the registry, built, on its cron schedule from the config."""
    context = JobContext(config, adapters, f"rotator serve@{socket.gethostname()}", console)
    return [
        ScheduledJob(name, cron_trigger(config.schedules[name]), build(context))
        for name, build in JOBS.items()
    ]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def run_serve(
    config_path: Path | None,
    *,
    once: bool,
    out: TextIO,
    flags: Mapping[str, object] | None = None,
    now: Callable[[], datetime] = _utc_now,
    adapters_factory: Callable[[Settings], Adapters] = build_adapters,
) -> int:
    """`rotator serve [--config FILE] [--once]`; `flags` are the global CLI flags (None = unset).

    With `once`: every job once, 0 if all succeeded, else 1. Otherwise: until SIGTERM/SIGINT,
    then 0. A config error: 2, before anything runs.
    """
    try:
        config = RotatorConfig() if config_path is None else load_config(config_path)
        settings = config.settings_for(os.environ, **(flags or {}))
        configure_logging(settings.log_level, stream="stderr")
        adapters = _adapters(adapters_factory, settings)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    console = Console(out)
    daemon = Daemon(scheduled_jobs(config, adapters, console), console, now)
    if once:
        return EXIT_OK if daemon.run_once() else EXIT_FAILURE
    daemon.serve()
    return EXIT_OK


def _adapters(factory: Callable[[Settings], Adapters], settings: Settings) -> Adapters:
    """A missing region (or profile) is found when the clients are made: a ConfigError."""
    try:
        return factory(settings)
    except Exception as error:
        problem = environment_problem(error)
        if problem is None:
            raise
        raise problem from None
