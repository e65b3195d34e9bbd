"""Fleet mode: the evaluation over every (account, region) keyring, and the rotation units.

The evaluation reads each partition's keyring twice (its instances with their current key and
rotation record, and its key records: O(1) calls per instance) and judges with the rotation's
own rules (`rotation_due`, an unfinished rotation resumes, a managed instance with no key gets
its first one, the rotation window holds a due key back). Each due target is then its own unit
of work: locally a bounded pool (`run_units`), in AWS one Lambda invocation per item of the
state machine's Map. A unit decides again under the instance's lock, so an evaluation that is
stale by the time a unit runs can never make it rotate a key that is not due.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from lambda_decrypt.logs import get_logger
from rotator.domain.fleet import Partition, Target, interleave
from rotator.domain.lifecycle import KeyRecord, KeyState
from rotator.domain.policy import RotationPolicy, rotation_due
from rotator.domain.state import InstanceEntry
from rotator.domain.window import RotationSchedule, window_decision
from rotator.errors import ConnectKeyRotatorError
from rotator.ports import Keyring
from rotator.services.rotation import InstanceResult, Outcome

# Connect's API quota is per account and region: 2 requests per second steady, a burst of 5, for
# each of the key and flow APIs (README "Fleet"). One rotation spreads about a dozen Connect
# calls over its steps, so two at once in a partition stay inside the burst; adaptive retries
# absorb the rest.
DEFAULT_PARTITION_CONCURRENCY = 2

# How many account regions the fleet's aggregation and the fleet report check at once, in one
# Lambda (`on_partitions`). The work is IO-bound: a partition's thread waits on its own account
# region's SSM and Connect (their quotas are per account and region, so partitions share none),
# so the Lambda's vCPUs (one at the template's memory; the GIL is free while a call waits) are
# not the limit. What the partitions share is the central publisher, whose boto3 clients keep
# botocore's 10 pooled connections, and the Lambda's memory (each partition's state read at
# once). 10 is also FleetPartitionConcurrency's default: the Map's account regions at once.
PARTITION_WORKERS = 10

Item = TypeVar("Item")
Answer = TypeVar("Answer")

log = get_logger("rotator.fleet")


@dataclass(frozen=True)
class DueTarget:
    """A target the evaluation found due, and why."""

    target: Target
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {**self.target.to_dict(), "reason": self.reason}


@dataclass(frozen=True)
class PartitionEvaluation:
    """One (account, region): its due targets, how many instances it manages, the ones a
    window holds back, its nearest active-key expiry, or why its keyring could not be read."""

    partition: Partition
    due: tuple[DueTarget, ...] = ()
    managed: int = 0
    waiting: tuple[str, ...] = ()
    min_days_to_expiry: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.partition.account,
            "region": self.partition.region,
            "managed": self.managed,
            "targets": [due.target.to_dict() for due in self.due],
            "reasons": [due.reason for due in self.due],
            "waiting": list(self.waiting),
            "min_days_to_expiry": self.min_days_to_expiry,
            "error": self.error,
        }


@dataclass(frozen=True)
class Evaluation:
    """The fleet's evaluation at `now`: per partition, in configuration order."""

    now: datetime
    partitions: tuple[PartitionEvaluation, ...]

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(due.target for p in self.partitions for due in p.due)

    @property
    def errors(self) -> list[str]:
        return [f"{p.partition}: {p.error}" for p in self.partitions if p.error is not None]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """The evaluation; the state machine's Map iterates `units`."""
        return {
            "ok": self.ok,
            "job": "evaluate",
            "now": self.now.isoformat(),
            "counts": {
                "partitions": len(self.partitions),
                "managed": sum(p.managed for p in self.partitions),
                "due": len(self.targets),
                "waiting": sum(len(p.waiting) for p in self.partitions),
            },
            "partitions": [p.to_dict() for p in self.partitions],
            "errors": self.errors,
            # What the state machine keeps (its state is at most 256 KB): the targets, a list
            # per partition that has any, and the fleet's nearest active-key expiry.
            "units": [[d.target.to_dict() for d in p.due] for p in self.partitions if p.due],
            "min_days_to_expiry": min(days) if (days := self._days()) else None,
        }

    def _days(self) -> list[float]:
        return [p.min_days_to_expiry for p in self.partitions if p.min_days_to_expiry is not None]


def evaluate(
    keyrings: Mapping[Partition, Keyring],
    policy: RotationPolicy,
    now: datetime,
    *,
    schedule: RotationSchedule | None = None,
    instance_id: str | None = None,
    describe: Callable[[ConnectKeyRotatorError], str] = str,
) -> Evaluation:
    """Every partition's due targets (only `instance_id`'s, if given). A partition that cannot
    be read (its role not assumable, its keyring unreadable) is an error of its own: the others
    are still evaluated."""
    evaluations = []
    for partition, keyring in keyrings.items():
        try:
            evaluations.append(
                _evaluate_partition(partition, keyring, policy, now, schedule, instance_id)
            )
        except ConnectKeyRotatorError as error:
            log.error("fleet_evaluation_failed", partition=str(partition), error=describe(error))
            evaluations.append(PartitionEvaluation(partition, error=describe(error)))
    return Evaluation(now, tuple(evaluations))


def _evaluate_partition(
    partition: Partition,
    keyring: Keyring,
    policy: RotationPolicy,
    now: datetime,
    schedule: RotationSchedule | None,
    instance_id: str | None,
) -> PartitionEvaluation:
    entries = [
        entry
        for entry in keyring.instance_entries()
        if entry.config is not None and instance_id in (None, entry.instance_id)
    ]
    records = {record.key_id: record for record in keyring.records()}
    due: list[DueTarget] = []
    waiting: list[str] = []
    days: list[float] = []
    for entry in entries:
        current = records.get(entry.current_key_id) if entry.current_key_id else None
        if current is not None and current.state is KeyState.ACTIVE:
            left = current.days_to_expiry(now)
            if left is not None:
                days.append(left)
        reason = _due_reason(entry, current, policy, now)
        if reason is None:
            continue
        if current is not None and _waits(entry, current, schedule, now):
            waiting.append(entry.instance_id)
            continue
        due.append(
            DueTarget(Target(partition.account, partition.region, entry.instance_id), reason)
        )
    return PartitionEvaluation(
        partition,
        tuple(due),
        managed=len(entries),
        waiting=tuple(waiting),
        min_days_to_expiry=min(days) if days else None,
    )


def _due_reason(
    entry: InstanceEntry, current: KeyRecord | None, policy: RotationPolicy, now: datetime
) -> str | None:
    """Why the rotation would act on this instance now (RotationService._decide's order)."""
    if entry.rotation is not None and not entry.rotation.finished:
        return f"resume rotation {entry.rotation.rotation_id} after step {entry.rotation.step}"
    if current is None:
        return "first key"
    due = rotation_due(current, policy, now)
    return due.reason if due.due else None


def _waits(
    entry: InstanceEntry, current: KeyRecord, schedule: RotationSchedule | None, now: datetime
) -> bool:
    """A due key the rotation window or a freeze holds back (an unfinished rotation never
    waits: it resumes)."""
    if entry.rotation is not None and not entry.rotation.finished:
        return False
    return window_decision(schedule, current.not_after, now).waits


# -- the units ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetResult:
    """One unit's result."""

    target: Target
    result: InstanceResult

    @property
    def failed(self) -> bool:
        return self.result.outcome is Outcome.FAILED

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.target.to_dict(),
            "outcome": self.result.outcome.value,
            "detail": self.result.detail,
            # What the state machine keeps of it: the detail of a failure only.
            "failure": self.result.detail if self.failed else None,
            "old_key_id": self.result.old_key_id,
            "new_key_id": self.result.new_key_id,
        }


RotateOne = Callable[[Target], InstanceResult]


def run_units(
    targets: Sequence[Target],
    rotate_one: RotateOne,
    *,
    concurrency: int,
    per_partition: int = DEFAULT_PARTITION_CONCURRENCY,
) -> list[TargetResult]:
    """Each target's rotation on a pool of `concurrency` threads, at most `per_partition` at once
    in any (account, region); results in the order of `targets`. One failure stops nothing."""
    if concurrency < 1 or per_partition < 1:
        raise ValueError("concurrency and per-partition concurrency are at least 1")
    gates = {target.partition: threading.BoundedSemaphore(per_partition) for target in targets}

    def unit(target: Target) -> TargetResult:
        with gates[target.partition]:
            return TargetResult(target, _rotated(target, rotate_one))

    # Round robin over the partitions: a thread waits at a partition's gate only when every
    # partition with work left is at its bound.
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rotator-unit") as pool:
        futures = {target: pool.submit(unit, target) for target in interleave(targets)}
        return [futures[target].result() for target in targets]


def on_partitions(
    work: Callable[[Partition, Item], Answer],
    items: Mapping[Partition, Item],
    *,
    workers: int = PARTITION_WORKERS,
) -> list[Answer]:
    """`work` for each partition on a pool of at most `workers` threads (a partition's own work
    stays serial, on one thread); the answers in the order of `items`, so what is made of them
    is the serial loop's. Each runs in its own copy of the caller's context (contextvars):
    nothing one binds reaches another partition or the caller. `work` answers its own failure;
    an exception it lets out is raised here once every partition has finished."""
    if workers < 1:
        raise ValueError("workers is at least 1")
    if not items:
        return []
    with ThreadPoolExecutor(
        max_workers=min(workers, len(items)), thread_name_prefix="rotator-partition"
    ) as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, work, partition, item)
            for partition, item in items.items()
        ]
        return [future.result() for future in futures]


def _rotated(target: Target, rotate_one: RotateOne) -> InstanceResult:
    try:
        return rotate_one(target)
    except ConnectKeyRotatorError as error:
        log.error("rotation_failed", target=str(target), error=str(error))
        return InstanceResult(target.instance_id, Outcome.FAILED, str(error))
    except Exception as error:  # noqa: BLE001 - one unit's bug must not lose the others' results
        # Its type only: an unexpected exception's text is not known to be free of secrets.
        log.error("rotation_crashed", target=str(target), error=type(error).__name__)
        return InstanceResult(target.instance_id, Outcome.FAILED, type(error).__name__)


def rotate_target(
    rotate: Callable[..., list[InstanceResult]],
    target: Target,
    now: datetime,
    **options: Any,
) -> InstanceResult:
    """One unit: `RotationService.rotate` for the target's instance (it decides again under the
    instance's lock)."""
    results = rotate(target.instance_id, now, **options)
    return results[0] if results else InstanceResult(target.instance_id, Outcome.NOT_DUE, "")
