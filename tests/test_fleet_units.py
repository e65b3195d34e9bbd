"""Fleet evaluation and units (services/fleet.py): two fake accounts x two regions give exactly
the due targets; the pool holds `--concurrency` overall and the per-partition bound in each
(account, region), observed by a recording fake that holds each unit until the test lets it go
(no sleeps, no timing)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest

from rotator.domain.fleet import Partition, Target
from rotator.domain.keys import KeyMaterial
from rotator.domain.policy import RotationPolicy
from rotator.domain.rotation import ManagedInstance, RotationState, RotationStep
from rotator.domain.window import schedule_from
from rotator.errors import AwsCallError, ConnectKeyRotatorError
from rotator.services.fleet import evaluate, rotate_target, run_units
from rotator.services.rotation import InstanceResult, Outcome
from tests.conftest import NOW, keep_rotation, make_record
from tests.fakes import FakeKeyring

FLOW = "bbbbbbbb-1111-4222-8333-444444444444"
LATER = NOW + timedelta(days=10)
POLICY = RotationPolicy()
PARTITIONS = [
    Partition("prod", "eu-west-2"),
    Partition("prod", "eu-central-1"),
    Partition("test", "eu-west-2"),
    Partition("test", "us-east-1"),
]


def _keyring(material: KeyMaterial, tag: str) -> FakeKeyring:
    """Five instances: fresh (not due), old (cryptoperiod over: due), new (managed, no key: its
    first key), mid (an unfinished rotation: resumes), and one only holding a key (unmanaged)."""
    keyring = FakeKeyring()
    for name in ("fresh", "old", "new", "mid"):
        keyring.put_instance(ManagedInstance(f"{tag}-{name}", (FLOW,), ()))
    fresh = make_record(f"{tag}-k1", material, instance_id=f"{tag}-fresh")
    old = replace(
        make_record(f"{tag}-k2", material, instance_id=f"{tag}-old"),
        not_before=NOW - timedelta(days=400),
    )
    mid = make_record(f"{tag}-k3", material, instance_id=f"{tag}-mid")
    stray = replace(
        make_record(f"{tag}-k4", material, instance_id=f"{tag}-stray"),
        not_before=NOW - timedelta(days=400),
    )
    for record, instance in ((fresh, "fresh"), (old, "old"), (mid, "mid"), (stray, "stray")):
        keyring.put_record(record)
        keyring.set_current(f"{tag}-{instance}", record.key_id)
    keep_rotation(
        keyring,
        RotationState("r-1", f"{tag}-mid", RotationStep.STAGED, NOW, "test", f"{tag}-k3"),
        at=NOW,
    )
    return keyring


def test_evaluation_over_two_accounts_and_two_regions_is_exactly_the_due_targets(
    material_2048: KeyMaterial,
) -> None:
    keyrings = {p: _keyring(material_2048, f"{p.account}.{p.region}") for p in PARTITIONS}
    evaluation = evaluate(keyrings, POLICY, LATER)  # type: ignore[arg-type]
    expected = {
        Target(p.account, p.region, f"{p.account}.{p.region}-{name}")
        for p in PARTITIONS
        for name in ("old", "new", "mid")
    }
    assert set(evaluation.targets) == expected and len(evaluation.targets) == 12
    assert evaluation.ok
    summary = evaluation.to_dict()
    assert summary["counts"] == {"partitions": 4, "managed": 16, "due": 12, "waiting": 0}
    first = summary["partitions"][0]
    assert (first["account"], first["region"]) == ("prod", "eu-west-2")
    reasons = dict(zip((t["instance_id"] for t in first["targets"]), first["reasons"], strict=True))
    assert reasons["prod.eu-west-2-new"] == "first key"
    assert reasons["prod.eu-west-2-mid"].startswith("resume rotation r-1")
    assert "cryptoperiod" in reasons["prod.eu-west-2-old"]
    # Only one instance, if asked.
    one = evaluate(keyrings, POLICY, LATER, instance_id="test.us-east-1-old")  # type: ignore[arg-type]
    assert one.targets == (Target("test", "us-east-1", "test.us-east-1-old"),)


def test_a_window_holds_due_keys_back_but_never_a_resume(material_2048: KeyMaterial) -> None:
    keyring = _keyring(material_2048, "a")
    # A freeze on the evaluation's day: the old key waits, the first key and the resume do not.
    schedule = schedule_from(None, f"{LATER:%Y-%m-%d}", timedelta(days=7))
    evaluation = evaluate({PARTITIONS[0]: keyring}, POLICY, LATER, schedule=schedule)
    assert {t.instance_id for t in evaluation.targets} == {"a-new", "a-mid"}
    assert evaluation.partitions[0].waiting == ("a-old",)


class _Unreadable(FakeKeyring):
    def instance_entries(self) -> list:  # type: ignore[type-arg]
        raise AwsCallError("GetParametersByPath", "/connect-keys", "AccessDenied")


def test_an_unreadable_partition_is_its_own_error(material_2048: KeyMaterial) -> None:
    keyrings = {PARTITIONS[0]: _Unreadable(), PARTITIONS[1]: _keyring(material_2048, "b")}
    evaluation = evaluate(keyrings, POLICY, LATER)  # type: ignore[arg-type]
    assert not evaluation.ok
    assert evaluation.errors[0].startswith("prod/eu-west-2: ")
    assert {t.instance_id for t in evaluation.targets} == {"b-old", "b-new", "b-mid"}


class _HeldConnect:
    """Stands in for each partition's Connect: records how many units are in flight, per
    partition and overall, and holds each one until the test releases it."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.in_flight: dict[Partition, int] = {}
        self.most: dict[Partition, int] = {}
        self.most_overall = 0
        self.held: list[tuple[Target, threading.Event]] = []
        self.left = 0  # units released that have left

    def rotate(self, target: Target) -> InstanceResult:
        gate = threading.Event()
        with self.changed:
            count = self.in_flight.get(target.partition, 0) + 1
            self.in_flight[target.partition] = count
            self.most[target.partition] = max(self.most.get(target.partition, 0), count)
            self.most_overall = max(self.most_overall, sum(self.in_flight.values()))
            self.held.append((target, gate))
            self.changed.notify_all()
        if not gate.wait(timeout=30):
            raise RuntimeError("never released")
        with self.changed:
            self.in_flight[target.partition] -= 1
            self.left += 1
            self.changed.notify_all()
        if target.instance_id.endswith("-boom"):
            raise AwsCallError("AssociateSecurityKey", "instance", "Throttling")
        return InstanceResult(target.instance_id, Outcome.ROTATED, "rotated")

    def _settled(self, steady: object) -> Callable[[], bool]:
        """Every released unit has left, and the units in flight are `steady()`."""
        assert callable(steady)
        released = sum(1 for _, gate in self.held if gate.is_set())
        return lambda: self.left == released and sum(self.in_flight.values()) == steady()

    def run_until_done(self, steady: object) -> None:
        """Release units one by one; before each, wait until the units in flight are exactly
        what the bounds allow (`steady()`), no more: a unit past a bound would make it differ."""
        assert callable(steady)
        while True:
            with self.changed:
                if not self.changed.wait_for(self._settled(steady), timeout=30):
                    raise AssertionError(f"in flight {self.in_flight}, expected {steady()}")
                waiting = [(t, g) for t, g in self.held if not g.is_set()]
                if not waiting:
                    return
                waiting[0][1].set()


def _targets(per_partition: dict[Partition, int]) -> list[Target]:
    return [
        Target(p.account, p.region, f"i{n}")
        for p, count in per_partition.items()
        for n in range(count)
    ]


def test_units_respect_the_per_partition_bound(material_2048: KeyMaterial) -> None:
    counts = dict(zip(PARTITIONS, (5, 3, 1, 2), strict=True))
    targets = _targets(counts)
    connect = _HeldConnect()
    done: dict[Target, int] = {}

    def steady() -> int:
        # Every target has a thread (concurrency >= targets): each partition runs as many units
        # as its bound allows among those not yet released.
        left = {
            p: counts[p] - sum(1 for t, g in connect.held if g.is_set() and t.partition == p)
            for p in counts
        }
        return sum(min(2, n) for n in left.values())

    runner = threading.Thread(
        target=lambda: done.update(
            {
                r.target: 1
                for r in run_units(targets, connect.rotate, concurrency=16, per_partition=2)
            }
        )
    )
    runner.start()
    connect.run_until_done(steady)
    runner.join(timeout=30)
    assert set(done) == set(targets)
    assert connect.most == {p: min(2, n) for p, n in counts.items()}
    assert connect.most_overall == 2 + 2 + 1 + 2


def test_units_respect_the_overall_bound_and_a_failure_stops_nothing() -> None:
    counts = dict(zip(PARTITIONS, (4, 4, 4, 4), strict=True))
    targets = [*_targets(counts), Target("prod", "eu-west-2", "i-boom")]
    connect = _HeldConnect()
    results: list[object] = []
    released = lambda: sum(1 for _, g in connect.held if g.is_set())  # noqa: E731

    def steady() -> int:
        return min(3, len(targets) - released())

    runner = threading.Thread(
        target=lambda: results.extend(
            run_units(targets, connect.rotate, concurrency=3, per_partition=10)
        )
    )
    runner.start()
    connect.run_until_done(steady)
    runner.join(timeout=30)
    assert connect.most_overall == 3
    by_target = {r.target: r for r in results}  # type: ignore[attr-defined]
    assert [r.target for r in results] == targets  # type: ignore[attr-defined]
    assert by_target[targets[-1]].failed and "Throttling" in by_target[targets[-1]].result.detail
    assert sum(r.result.outcome is Outcome.ROTATED for r in by_target.values()) == 16


def test_an_unexpected_error_is_named_by_its_type_only() -> None:
    def crash(target: Target) -> InstanceResult:
        raise KeyError("-----BEGIN PRIVATE KEY----- secret")

    (result,) = run_units([Target("a", "eu-west-2", "i")], crash, concurrency=1)
    assert result.failed and result.result.detail == "KeyError"


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        run_units([], lambda t: InstanceResult("", Outcome.ROTATED, ""), concurrency=0)


def test_a_unit_is_one_instances_rotation() -> None:
    calls: list[tuple[object, ...]] = []

    def rotate(instance_id: str, now: object, **options: object) -> list[InstanceResult]:
        calls.append((instance_id, now, options))
        return [InstanceResult(instance_id, Outcome.NOT_DUE, "not due")]

    result = rotate_target(rotate, Target("a", "r", "i-1"), NOW, dry_run=True)
    assert calls == [("i-1", NOW, {"dry_run": True})]
    assert result.outcome is Outcome.NOT_DUE
    assert issubclass(AwsCallError, ConnectKeyRotatorError)
