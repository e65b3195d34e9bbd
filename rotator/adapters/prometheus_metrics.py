"""Prometheus metrics for `rotator serve --metrics-port`: the job runs' results on /metrics.

`JobMetrics` holds what the daemon's job runs computed (it never reads AWS itself); the daemon
updates it after every run. `serve_metrics` exposes it with prometheus_client's own HTTP server
on a dedicated registry. prometheus_client is imported only there, so that a `serve` without
`--metrics-port` (and every other command) never loads it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from rotator.domain.expiry import KeyExpiry

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

PREFIX = "connect_key_rotator_"
DAYS_TO_EXPIRY = f"{PREFIX}days_to_expiry"
LAST_ROTATION = f"{PREFIX}last_rotation_timestamp_seconds"
FINDINGS = f"{PREFIX}findings"
REPORT_TIMESTAMP = f"{PREFIX}report_timestamp_seconds"
ROTATIONS = f"{PREFIX}rotations"  # a counter: exposed as connect_key_rotator_rotations_total
JOB_SUCCESS = f"{PREFIX}job_last_success_timestamp_seconds"
DEFAULT_ADDRESS = "127.0.0.1"  # loopback: exposing the metrics is the operator's choice


@dataclass(frozen=True)
class Snapshot:
    """Everything /metrics shows, taken at once (a scrape never sees half of a run)."""

    keys: tuple[KeyExpiry, ...]
    last_rotation: Mapping[str, float]
    rotations: Mapping[str, int]
    findings: Mapping[str, int] | None
    report_at: float | None
    job_success: Mapping[str, float]


class JobMetrics:
    """The metrics' state, written by the daemon's job threads and read by the scrape thread.

    Gauges hold the last run's values (a key that is gone leaves the gauge with its run); the
    rotation counter adds every run's counts, from zero for every outcome known at start."""

    def __init__(self, outcomes: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._keys: tuple[KeyExpiry, ...] = ()
        self._last_rotation: dict[str, float] = {}
        # Every outcome from zero, so that `increase()` sees a counter's first rise.
        self._rotations: dict[str, int] = dict.fromkeys(outcomes, 0)
        self._findings: dict[str, int] | None = None
        self._report_at: float | None = None
        self._job_success: dict[str, float] = {}

    def rotation_run(
        self,
        at: datetime,
        outcomes: Mapping[str, int],
        rotated: Iterable[str],
        keys: Sequence[KeyExpiry] | None,
    ) -> None:
        """A rotation job's run at `at`: its counts by outcome, the instances it rotated, and
        the keys' days to expiry (None: it could not read the keyring, the last ones stay)."""
        with self._lock:
            for outcome, n in outcomes.items():
                self._rotations[outcome] = self._rotations.get(outcome, 0) + n
            for instance_id in rotated:
                self._last_rotation[instance_id] = at.timestamp()
            if keys is not None:
                self._keys = tuple(keys)

    def report_run(self, at: datetime, findings: Mapping[str, int] | None) -> None:
        """A report job's run: its findings by severity (None: the report was not built, and
        the last counts stay; `report_timestamp_seconds` says how old they are)."""
        if findings is None:
            return
        with self._lock:
            self._findings = dict(findings)
            self._report_at = at.timestamp()

    def job_ran(self, job: str, at: datetime, *, ok: bool) -> None:
        """Any job's run: its time is kept when it succeeded."""
        if ok:
            with self._lock:
                self._job_success[job] = at.timestamp()

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                self._keys,
                dict(self._last_rotation),
                dict(self._rotations),
                None if self._findings is None else dict(self._findings),
                self._report_at,
                dict(self._job_success),
            )


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot (prometheus_client's types)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    days = GaugeMetricFamily(
        DAYS_TO_EXPIRY,
        "Days until the key's certificate expires (NotAfter), as the last rotation job computed",
        labels=("instance_id", "key_id", "state"),
    )
    for key in snapshot.keys:
        days.add_metric((key.instance_id, key.key_id, key.state), key.days)
    yield days
    last = GaugeMetricFamily(
        LAST_ROTATION,
        "When the rotation job last rotated (or initialised) the instance, unix time",
        labels=("instance_id",),
    )
    for instance_id, at in sorted(snapshot.last_rotation.items()):
        last.add_metric((instance_id,), at)
    yield last
    rotations = CounterMetricFamily(
        ROTATIONS, "Rotation job results by outcome, per instance", labels=("outcome",)
    )
    for outcome, n in sorted(snapshot.rotations.items()):
        rotations.add_metric((outcome,), n)
    yield rotations
    findings = GaugeMetricFamily(
        FINDINGS, "Findings of the report job's last report, by severity", labels=("severity",)
    )
    for severity, n in sorted((snapshot.findings or {}).items()):
        findings.add_metric((severity,), n)
    yield findings
    if snapshot.report_at is not None:
        yield GaugeMetricFamily(
            REPORT_TIMESTAMP,
            "When the report behind connect_key_rotator_findings was made, unix time",
            value=snapshot.report_at,
        )
    success = GaugeMetricFamily(
        JOB_SUCCESS, "When each job last ran successfully, unix time", labels=("job",)
    )
    for job, at in sorted(snapshot.job_success.items()):
        success.add_metric((job,), at)
    yield success


@dataclass
class MetricsEndpoint:
    """prometheus_client's HTTP server, serving one registry until `close()`."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        address = self.server.server_address[0]
        host = address.decode() if isinstance(address, bytes) else address
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        """Stop serving, release the port and wait for the server thread."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def serve_metrics(
    metrics: JobMetrics, port: int, address: str = DEFAULT_ADDRESS
) -> MetricsEndpoint:
    """Serve `metrics` at http://ADDRESS:PORT/metrics (port 0: any free port), in the Prometheus
    text format or OpenMetrics as the scraper asks. Raises OSError if it cannot listen."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.registry import Collector

    class JobCollector(Collector):
        def collect(self) -> Iterable[Metric]:
            return families(metrics.snapshot())

    # A registry of our own: no process or platform collectors, nothing another import adds.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobCollector())
    server, thread = start_http_server(port, address, registry=registry)
    return MetricsEndpoint(server, thread)
