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
from collections.abc import Callable, Iterator, Mapping, Sequence
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
from rotator.adapters.prometheus_metrics import (
    DEFAULT_ADDRESS,
    JobMetrics,
    serve_metrics,
)
from rotator.config import Settings
from rotator.config_file import RotatorConfig, cron_trigger, load_config
from rotator.entrypoints.bootstrap import (
    Adapters,
    build_adapters,
    build_publisher,
    environment_problem,
)
from rotator.errors import ConfigError, ConnectKeyRotatorError
from rotator.exit_codes import ExitCode
from rotator.ports import Publisher
from rotator.services import jobs
from rotator.services.rotation import InstanceResult, Outcome

# A run that could not start on time (process suspended, previous run too long) still runs
# within this many seconds of its time; later, it is skipped until its next time.
MISFIRE_GRACE_SECONDS = 3600
MAX_PORT = 65535
REPORT_DESTINATIONS = "directory, s3_uri or sns_topic_arn in the config's [report] table"
log = get_logger("rotator.serve")


class DaemonLog:
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
    console: DaemonLog
    publisher: Publisher
    metrics: JobMetrics | None = None  # `--metrics-port`: where each run's results go


@dataclass(frozen=True)
class ScheduledJob:
    name: str
    trigger: BaseTrigger
    run: JobFunction


def rotation_job(context: JobContext) -> JobFunction:
    """Bring configured instances under management, then rotate every managed one that is due;
    metrics and notices as the scheduled Lambda publishes them (`services.jobs`)."""

    def run(now: datetime) -> JobResult:
        adapters = context.adapters
        result = jobs.rotation_job(
            adapters.rotation(context.actor),
            adapters.keyring,
            context.publisher,
            adapters.settings.policy,
            now,
            initialise=context.config.instances,
            on_initialised=lambda r: context.console.say(_initialised(r)),
            describe=_describe,
        )
        if context.metrics is not None:
            context.metrics.rotation_run(
                now,
                result.counts(),
                [r.instance_id for r in result.results if r.outcome is Outcome.ROTATED],
                None if result.expiries is None else list(result.expiries),
            )
        return JobResult(
            outcomes=dict(Counter(str(r.outcome) for r in result.results)),
            failures=tuple(result.failures()),
        )

    return run


def report_job(context: JobContext) -> JobFunction:
    """The compliance report as the scheduled Lambda makes it (`services.jobs`: ReportFindings
    metrics, a notice when it fails), delivered to every destination: HTML and JSON files in
    the config's directory, the HTML in S3, the summary on SNS. Findings do not fail the job
    (they are the report's content); a delivery that fails does."""

    def run(now: datetime) -> JobResult:
        adapters = context.adapters
        make = jobs.report_maker(
            adapters.keyring,
            adapters.connect,
            adapters.lock,
            adapters.settings.report_options(),
            evidence=adapters.evidence(),
        )
        destinations = serve_destinations(context.config, adapters.settings)
        result = jobs.report_job(make, context.publisher, destinations, now)
        counts = result.counts()
        if context.metrics is not None:
            context.metrics.report_run(
                now, None if counts is None else {s.value: n for s, n in counts.items()}
            )
        outcomes: dict[str, int] = {}
        if counts is not None:
            outcomes = {f"findings {s.value}": n for s, n in counts.items()}
            outcomes["delivered"] = result.delivered
        return JobResult(outcomes, failures=result.errors, warnings=result.warnings)

    return run


def serve_destinations(config: RotatorConfig, settings: Settings) -> jobs.ReportDestinations:
    """The config's [report] table under the environment's report settings (environment > file,
    as for every setting); the summary falls back to the alert topic, as in the Lambda."""
    report = config.report
    return jobs.ReportDestinations(
        REPORT_DESTINATIONS,
        s3_uri=settings.report_s3_uri or report.s3_uri,
        topic_arn=settings.report_sns_topic_arn or report.sns_topic_arn or settings.sns_topic_arn,
        directory=report.directory,
    )


def verify_job(context: JobContext) -> JobFunction:
    """`rotator verify`'s checks as the scheduled Lambda runs them on `{"job": "verify"}`
    (`services.jobs`: a VerifyFailures metric, a notice listing the failed checks); a failed
    check fails the job."""

    def run(now: datetime) -> JobResult:
        result = jobs.verify_job(
            context.adapters.invariants(), context.publisher, now, describe=_describe
        )
        passed = len(result.checks) - len(result.failed)
        return JobResult(
            outcomes={"passed": passed, "failed": len(result.failed)},
            failures=tuple(result.failures()),
        )

    return run


# The jobs, by their key in [schedules]: adding a job is one entry here. A job whose key is
# neither in the file nor a default (config_file.OPTIONAL_SCHEDULES) is not scheduled.
JOBS: Mapping[str, Callable[[JobContext], JobFunction]] = {
    "rotation": rotation_job,
    "report": report_job,
    "verify": verify_job,
}


def _initialised(result: InstanceResult) -> str:
    """The line `serve` prints for a configured instance it brought under management."""
    if result.outcome is Outcome.FAILED:
        return f"rotation: instance {result.instance_id} could not be initialised: {result.detail}"
    return f"rotation: instance {result.instance_id} initialised: {result.detail}"


class Daemon:
    """Runs jobs once each, or on their triggers until `stop()` (SIGTERM, SIGINT)."""

    def __init__(
        self,
        jobs: Sequence[ScheduledJob],
        console: DaemonLog,
        now: Callable[[], datetime],
        metrics: JobMetrics | None = None,
    ) -> None:
        self.jobs = jobs
        self.console = console
        self.now = now
        self.metrics = metrics
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
        if self.metrics is not None:
            self.metrics.job_ran(job.name, now, ok=result.ok)
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
    config: RotatorConfig,
    adapters: Adapters,
    console: DaemonLog,
    publisher: Publisher,
    metrics: JobMetrics | None = None,
) -> list[ScheduledJob]:
    """Every job of the registry, built, on its cron schedule from the config."""
    actor = f"rotator serve@{socket.gethostname()}"
    context = JobContext(config, adapters, actor, console, publisher, metrics)
    return [
        ScheduledJob(name, cron_trigger(config.schedules[name]), build(context))
        for name, build in JOBS.items()
        if name in config.schedules
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
    publisher_factory: Callable[[Settings], Publisher] = build_publisher,
    metrics_port: int | None = None,
    metrics_address: str = DEFAULT_ADDRESS,
) -> int:
    """`rotator serve [--config FILE] [--once] [--metrics-port N [--metrics-address ADDR]]`;
    `flags` are the global CLI flags (None = unset).

    With `once`: every job once, 0 if all succeeded, else 1. Otherwise: until SIGTERM/SIGINT,
    then 0. A config error, or a metrics port it cannot listen on: 2, before anything runs.
    With `metrics_port` (0: any free port), /metrics serves the job runs' results while the
    daemon runs; without it, no port is opened and prometheus_client is not imported.
    """
    try:
        config = RotatorConfig() if config_path is None else load_config(config_path)
        settings = config.settings_for(os.environ, **(flags or {}))
        if settings.fleet:  # refused, not ignored: it would rotate this account only
            raise ConfigError(
                "[[accounts]]",
                "rotator serve runs one account; a fleet runs on the template's state machine, "
                "or by hand with `rotator rotate --concurrency N`",
            )
        configure_logging(settings.log_level, stream="stderr")
        adapters = _adapters(adapters_factory, settings)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.USAGE
    console = DaemonLog(out)
    publisher = publisher_factory(settings)
    metrics = None if metrics_port is None else JobMetrics(o.value for o in Outcome)
    jobs_ = scheduled_jobs(config, adapters, console, publisher, metrics)
    daemon = Daemon(jobs_, console, now, metrics)
    endpoint = None
    if metrics is not None and metrics_port is not None:
        where = f"{metrics_address}:{metrics_port}"
        try:
            if not 0 <= metrics_port <= MAX_PORT:
                raise OSError(f"{metrics_port} is not a port number (0 to {MAX_PORT})")
            endpoint = serve_metrics(metrics, metrics_port, metrics_address)
        except OSError as error:  # in use, not ours to bind, an unknown address
            print(f"error: --metrics-port: cannot listen on {where}: {error}", file=sys.stderr)
            return ExitCode.USAGE
        console.say(f"rotator serve: metrics at {endpoint.url}")
        log.info("metrics_serving", url=endpoint.url)
    try:
        if once:
            return ExitCode.OK if daemon.run_once() else ExitCode.FAILURE
        daemon.serve()
        return ExitCode.OK
    finally:
        if endpoint is not None:
            endpoint.close()


def _adapters(factory: Callable[[Settings], Adapters], settings: Settings) -> Adapters:
    """A missing region (or profile) is found when the clients are made: a ConfigError."""
    try:
        return factory(settings)
    except Exception as error:
        problem = environment_problem(error)
        if problem is None:
            raise
        raise problem from None
