"""The fleet's aggregation checks its account regions on a bounded pool: the checks overlap
(each waits at a barrier until all have started), at most `workers` run at once, and the run
is the serial one's (checks, metrics, notice, summary in the partitions' order, whatever order
they finish in). One partition's failure, or its bug, stays that partition's. The fleet report's
partition reads use the same pool; the AWS publisher the partitions share makes each client
once from several threads; a context variable set in one partition reaches no other."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from rotator.adapters.publishing import AwsPublisher
from rotator.config import Settings
from rotator.domain.fleet import Partition
from rotator.errors import KeyringError
from rotator.ports import BusEvent
from rotator.services import fleet as fleet_module
from rotator.services import jobs
from rotator.services import rotation as rotation_module
from rotator.services.fleet import PARTITION_WORKERS, on_partitions
from rotator.services.jobs import AggregateRun, aggregate_job
from rotator.services.rotation import InstanceResult, Outcome, RotationService
from tests import fakes
from tests.conftest import NOW, REGION
from tests.fakes import (
    FakeClock,
    FakeConnect,
    FakeKeyring,
    FakeLock,
    FakePublisher,
    init_payment_instance,
)
from tests.test_fleet_parity import SeededIds
from tests.world import KeyPool

# Not in any sorted order: the run must keep this one.
PARTITIONS = (
    Partition("prod", "eu-west-2"),
    Partition("test", REGION),
    Partition("prod", REGION),
    Partition("bu", "ap-south-1"),
)
SETTINGS = Settings(
    keyring_prefix="/pool", key_size=2048, renew_before_days=1, cryptoperiod_days=1000
)
# A bound on waiting for the other threads, never a proof: a serial run breaks the barrier.
TIMEOUT = 10.0
Fleet = dict[Partition, RotationService]
World = tuple[Fleet, datetime, list[dict[str, Any]]]
Check = Callable[..., jobs.PartitionCheck]


def build_fleet(key_pool: KeyPool) -> tuple[Fleet, datetime, list[dict[str, Any]]]:
    """A managed instance per partition with a stale lock and a key associated by hand
    (critical drift), checked twenty days before its key
    expires (expiry events owed); the Map's results: that instance's unit failed."""
    fleet: Fleet = {}
    stranger = (
        key_pool.private_keys[-1]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    clocks = []
    results = []
    for partition in PARTITIONS:
        clock, keyring, connect = FakeClock(NOW), FakeKeyring(), FakeConnect()
        lock = FakeLock(clock.now)
        service = RotationService(
            keyring, connect, lock, SETTINGS, actor="pool", generate=key_pool.generator()
        )
        instance = init_payment_instance(service, connect, NOW)
        lock.acquire(instance.instance_id, "a run killed mid-way")
        connect.associate_security_key(instance.instance_id, stranger, client_token="by-hand")
        fleet[partition] = service
        clocks.append(clock)
        results.append(
            {
                "account": partition.account,
                "region": partition.region,
                "instance_id": instance.instance_id,
                "outcome": "failed",
                "failure": f"Throttling in {partition}",
            }
        )
    (record, *_) = next(iter(fleet.values())).keyring.records()
    assert record.not_after is not None
    at = record.not_after - timedelta(days=20)
    for clock in clocks:
        clock.at = at
    return fleet, at, results


@pytest.fixture
def world(key_pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> Callable[[], World]:
    """Builds the same world each time it is called (the same IDs, the same keys)."""
    connect_ids, rotation_ids = SeededIds(21), SeededIds(22)
    monkeypatch.setattr(fakes, "uuid", connect_ids)
    monkeypatch.setattr(rotation_module, "uuid", rotation_ids)

    def build() -> World:
        connect_ids.reset()
        rotation_ids.reset()
        return build_fleet(key_pool)

    return build


def aggregate(world: Callable[[], World], workers: int) -> tuple[AggregateRun, FakePublisher]:
    """The aggregation over a new world (each run starts from the same state)."""
    fleet, at, results = world()
    publisher = FakePublisher()
    evaluation = {"errors": [], "min_days_to_expiry": None}
    run = aggregate_job(evaluation, results, publisher, at, partitions=fleet, workers=workers)
    return run, publisher


def metric_rows(publisher: FakePublisher) -> list[tuple[str, float, tuple[tuple[str, str], ...]]]:
    return [(m.name, m.value, m.dimensions) for m, _ in publisher.metrics]


def events_by_partition(publisher: FakePublisher) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Each partition's events in the order it put them (EventBridge keeps no order across
    callers; the fake's list is in the order the threads put them)."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _, event in publisher.events:
        detail = dict(event.detail)
        grouped.setdefault((detail["account"], detail["region"]), []).append(detail)
    return grouped


class Gate:
    """Wraps `jobs._check_partition`: counts the checks running at once (and the threads they
    run on), holds each at a barrier of `parties`, and with `reverse` lets a partition's check
    return only after the next one's has: they finish in the reverse of the partitions' order."""

    def __init__(self, real: Check, parties: int, *, reverse: bool = False) -> None:
        self.real = real
        self.barrier = threading.Barrier(parties, timeout=TIMEOUT)
        self.reverse = reverse
        self.finished = {partition: threading.Event() for partition in PARTITIONS}
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0
        self.threads: set[str] = set()
        self.returned: list[Partition] = []

    def __call__(self, partition: Partition, *args: Any) -> jobs.PartitionCheck:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.threads.add(threading.current_thread().name)
        try:
            self.barrier.wait()
            check = self.real(partition, *args)
            position = PARTITIONS.index(partition)
            if self.reverse and position + 1 < len(PARTITIONS):
                assert self.finished[PARTITIONS[position + 1]].wait(TIMEOUT)
            with self.lock:
                self.returned.append(partition)
            return check
        finally:
            with self.lock:
                self.active -= 1
            self.finished[partition].set()


def test_the_partitions_checks_overlap_and_the_run_is_the_serial_ones(
    world: Callable[[], World], monkeypatch: pytest.MonkeyPatch
) -> None:
    serial, by_serial = aggregate(world, workers=1)
    gate = Gate(jobs._check_partition, len(PARTITIONS), reverse=True)
    monkeypatch.setattr(jobs, "_check_partition", gate)
    pooled, by_pool = aggregate(world, workers=len(PARTITIONS))

    # Every check waited at the barrier until all had started: they ran at once; and they
    # finished last partition first.
    assert gate.most == len(PARTITIONS)
    assert gate.returned == list(reversed(PARTITIONS))
    # The run is the serial one's, in the partitions' order.
    assert [check.partition for check in pooled.checks] == list(PARTITIONS)
    assert pooled.checks == serial.checks
    assert pooled.to_dict() == serial.to_dict()
    assert metric_rows(by_pool) == metric_rows(by_serial)
    assert by_pool.notices == by_serial.notices
    assert events_by_partition(by_pool) == events_by_partition(by_serial)
    # What is compared is there: each partition's metrics, events, repairs and failed unit.
    (notice,) = by_pool.notices
    drift = [line for line in notice.message.splitlines() if line.startswith("- drift: ")]
    assert [line.split(": ")[1] for line in drift] == [str(p) for p in PARTITIONS]
    assert len(events_by_partition(by_pool)) == len(PARTITIONS)
    assert all(check.repaired and check.metrics for check in pooled.checks)


def test_at_most_workers_partitions_are_checked_at_once(
    world: Callable[[], World], monkeypatch: pytest.MonkeyPatch
) -> None:
    serial, by_serial = aggregate(world, workers=1)
    gate = Gate(jobs._check_partition, 2)  # two at a time meet at the barrier
    monkeypatch.setattr(jobs, "_check_partition", gate)
    pools: list[int] = []

    class Pool(ThreadPoolExecutor):
        """The pool's own bound, whatever the scheduling: the threads it may start."""

        def __init__(self, max_workers: int, **options: Any) -> None:
            pools.append(max_workers)
            super().__init__(max_workers, **options)

    monkeypatch.setattr(fleet_module, "ThreadPoolExecutor", Pool)
    pooled, by_pool = aggregate(world, workers=2)
    assert pools == [2]
    assert gate.most == 2  # two at once (the barrier), never more
    assert len(gate.threads) == 2
    assert pooled.to_dict() == serial.to_dict()
    assert metric_rows(by_pool) == metric_rows(by_serial)
    assert by_pool.notices == by_serial.notices


def test_one_partitions_failure_or_bug_leaves_the_others_checks(
    world: Callable[[], World],
) -> None:
    baseline, _ = aggregate(world, workers=1)
    fleet, at, results = world()
    crashing, refused = PARTITIONS[1], PARTITIONS[2]

    def crash() -> None:
        raise RuntimeError("text that must not be published")

    def refuse() -> list[Any]:
        raise KeyringError("ssm:GetParametersByPath: AccessDeniedException")

    fleet[crashing].remove_orphaned_staging = crash  # type: ignore[method-assign]
    fleet[refused].keyring.records = refuse  # type: ignore[method-assign]
    publisher = FakePublisher()
    evaluation = {"errors": [], "min_days_to_expiry": None}
    run = aggregate_job(evaluation, results, publisher, at, partitions=fleet)

    assert [check.partition for check in run.checks] == list(PARTITIONS)
    for before, after in zip(baseline.checks, run.checks, strict=True):
        if after.partition not in (crashing, refused):
            assert after == before
    crashed = run.checks[1]
    assert crashed.own_failures == [
        InstanceResult("*", Outcome.FAILED, "checking the partition: unexpected RuntimeError")
    ]
    assert crashed.metrics == () and crashed.run.expiries is None
    assert crashed.units_failed == 1  # the Map's failed unit is still counted, once
    assert [r.detail for r in run.checks[2].own_failures] == [
        "reading the keyring: ssm:GetParametersByPath: AccessDeniedException",
        "drift check: reading the keyring: ssm:GetParametersByPath: AccessDeniedException",
    ]
    # Neither is checked (their keyring not read): the fleet's partition errors count both.
    assert publisher.value("FleetPartitionErrors") == 2
    (notice,) = publisher.notices
    assert f"failed: {crashing}/*: checking the partition: unexpected RuntimeError" in (
        notice.message
    )
    assert "must not be published" not in notice.message
    assert "must not be published" not in str(run.to_dict())


def test_an_exception_the_work_lets_out_is_raised_once_every_partition_has_finished() -> None:
    done: list[Partition] = []
    barrier = threading.Barrier(len(PARTITIONS), timeout=TIMEOUT)

    def work(partition: Partition, n: int) -> int:
        barrier.wait()
        if n == 0:
            raise ValueError("a bug")
        done.append(partition)
        return n

    with pytest.raises(ValueError, match="a bug"):
        on_partitions(work, {p: n for n, p in enumerate(PARTITIONS)})
    assert sorted(done, key=PARTITIONS.index) == list(PARTITIONS[1:])


def test_a_context_variable_set_in_one_partition_reaches_no_other() -> None:
    seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")
    seen.set("caller")

    def work(partition: Partition, _: None) -> str:
        before = seen.get()
        seen.set(str(partition))
        return before

    # One worker: every partition on the same thread, one after another.
    assert on_partitions(work, dict.fromkeys(PARTITIONS), workers=1) == ["caller"] * 4
    assert on_partitions(work, dict.fromkeys(PARTITIONS)) == ["caller"] * 4
    assert seen.get() == "caller"


def test_the_bound_is_at_least_one_and_no_partition_makes_no_pool() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        on_partitions(lambda p, n: n, {PARTITIONS[0]: 1}, workers=0)
    assert on_partitions(lambda p, n: n, {}) == []
    assert PARTITION_WORKERS >= 1


def test_the_fleet_reports_partitions_are_read_on_the_pool(
    world: Callable[[], World], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rotator.domain.checks import ReportOptions
    from rotator.services import fleet_report

    fleet, at, _ = world()
    sources = {
        p: fleet_report.PartitionSources(s.keyring, s.connect, s.lock) for p, s in fleet.items()
    }
    serial = fleet_report.make_fleet_report(sources, ReportOptions(), at, workers=1)
    barrier = threading.Barrier(len(PARTITIONS), timeout=TIMEOUT)
    real = fleet_report.gather_one

    def gather(*args: Any, **kwargs: Any) -> Any:
        barrier.wait()  # all read at once, or the barrier breaks
        return real(*args, **kwargs)

    monkeypatch.setattr(fleet_report, "gather_one", gather)
    pooled = fleet_report.make_fleet_report(sources, ReportOptions(), at)
    assert [s.partition for s in pooled.sections] == list(PARTITIONS)
    assert pooled.to_dict() == serial.to_dict()
    assert all(section.report is not None for section in pooled.sections)


class _Events:
    def put_events(self, **_: Any) -> dict[str, Any]:
        return {"FailedEntryCount": 0}


def test_the_aws_publisher_makes_each_client_once_from_several_threads() -> None:
    made: list[str] = []
    second = threading.Event()

    def client(service: str) -> _Events:
        made.append(service)
        if len(made) == 1:
            # Without the publisher's lock the other thread comes in here meanwhile; with it,
            # it waits for this one (the timeout is that wait, not the proof).
            second.wait(1.0)
        else:
            second.set()
        return _Events()

    publisher = AwsPublisher(client, namespace="unused")
    start = threading.Barrier(2, timeout=TIMEOUT)
    event = BusEvent("source", "detail", {"a": 1}, NOW)

    def put() -> None:
        start.wait()
        publisher.put_events("default", [event])

    threads = [threading.Thread(target=put) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert made == ["events"]
