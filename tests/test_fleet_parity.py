"""Fleet mode does what the single-account rotation job does: the same fake world, run once
through `rotation_job` and once through the state machine's steps (evaluate, the Map's
rotate-target units with the ASL's own selectors, aggregate) for one account and region,
publishes the same metrics (modulo the Account and Region dimensions, plus the fleet's totals),
the same expiry events (recorded in the keyring's history), the same drift findings and the
same notice, and leaves the world the same: retires cut short finished, stale locks cleared,
orphaned staging removed on instances that were not due."""

from __future__ import annotations

import json
import random
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from rotator.config import Settings
from rotator.domain.findings import FindingCode
from rotator.domain.fleet import Partition, Target
from rotator.domain.history import EventKind
from rotator.domain.keys import self_signed_material
from rotator.domain.lifecycle import KeyState
from rotator.entrypoints import scheduled
from rotator.ports import Metric
from rotator.services import rotation as rotation_module
from rotator.services.jobs import (
    AggregateRun,
    RotationJobRun,
    aggregate_job,
    evaluate_job,
    rotate_target_job,
    rotation_job,
)
from rotator.services.rotation import Outcome, RotationService
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
from tests.world import KeyPool

DAY = timedelta(days=1)
PARTITION = Partition("prod", REGION)
ASL = Path(__file__).resolve().parents[1] / "deploy" / "statemachine" / "fleet.asl.json"
# A line of the fleet's notice names its partition; the single-account job's does not.
PARTITION_PREFIX = re.compile(rf"{PARTITION}(/|: )")


class SeededIds:
    """A `uuid` module answering the same IDs after each `reset`: two worlds built alike get
    the same instance, flow, key and rotation IDs."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._random = random.Random(self.seed)

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self._random.getrandbits(128), version=4)


@dataclass
class FakeWorld:
    """Three managed instances on the fakes: A, B, C (in that order), each initialised at NOW."""

    clock: FakeClock
    keyring: FakeKeyring
    connect: FakeConnect
    lock: FakeLock
    service: RotationService
    instances: list[str]
    pool: KeyPool

    def associations(self, instance_id: str) -> set[str]:
        return {k.key_id for k in self.connect.list_security_keys(instance_id)}


@pytest.fixture
def build(key_pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> Callable[[Settings], FakeWorld]:
    connect_ids, rotation_ids = SeededIds(12), SeededIds(13)
    monkeypatch.setattr(fakes, "uuid", connect_ids)
    monkeypatch.setattr(rotation_module, "uuid", rotation_ids)

    def world(settings: Settings) -> FakeWorld:
        connect_ids.reset()
        rotation_ids.reset()
        clock, keyring, connect = FakeClock(NOW), FakeKeyring(), FakeConnect()
        lock = FakeLock(clock.now)
        service = RotationService(
            keyring, connect, lock, settings, actor="parity", generate=key_pool.generator()
        )
        instances = []
        for _ in range(3):
            instances.append(init_payment_instance(service, connect, NOW).instance_id)
        return FakeWorld(clock, keyring, connect, lock, service, instances, key_pool)

    return world


def cut_short_retire(world: FakeWorld, instance_id: str, at: datetime) -> str:
    """A rotation at `at`, then its old key recorded retired and never disassociated (a retire
    killed between its record and Connect's answer). Answers that key."""
    (rotated,) = world.service.rotate(instance_id, at, force=True)
    assert rotated.outcome is Outcome.ROTATED and rotated.old_key_id is not None
    world.service._transition(rotated.old_key_id, KeyState.RETIRED, at, "cut short")
    assert rotated.old_key_id in world.associations(instance_id)
    return rotated.old_key_id


def seed_quiet(world: FakeWorld) -> dict[str, str]:
    """Nothing due. A: a stale lock and an orphaned staged key; B: a key associated by hand
    (drift); C: a retire cut short."""
    world.lock.acquire(world.instances[0], "a run killed mid-way")
    stranger = self_signed_material(world.pool.private_keys[-1], now=NOW, subject="CN=stranger")
    world.keyring.stage_key("orphaned-rotation", stranger)
    public = (
        world.pool.private_keys[-1]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    world.connect.associate_security_key(
        world.instances[1], public.decode("ascii"), client_token="by-hand"
    )
    return {"retired": cut_short_retire(world, world.instances[2], NOW + DAY)}


def seed_due(world: FakeWorld) -> dict[str, str]:
    """Everything due (one-day cryptoperiod). A rotates; B's old key is still in its grace
    period, so its rotation fails (Connect holds two keys); C has a retire cut short, which its
    rotation finishes first."""
    world.service.rotate(world.instances[1], NOW + DAY, force=True)
    return {"retired": cut_short_retire(world, world.instances[2], NOW + DAY)}


def result_fields(state: str) -> list[str]:
    """The fields a state's ResultSelector keeps of the Lambda's answer (what crosses)."""

    def find(node: Any) -> dict[str, Any] | None:
        if isinstance(node, dict):
            if state in node.get("States", {}):
                found: dict[str, Any] = node["States"][state]
                return found
            for value in node.values():
                if (hit := find(value)) is not None:
                    return hit
        return None

    found = find(json.loads(ASL.read_text(encoding="utf-8")))
    assert found is not None, state
    return [key.removesuffix(".$") for key in found["ResultSelector"]]


def run_state_machine(world: FakeWorld, publisher: FakePublisher, at: datetime) -> AggregateRun:
    """The state machine's three steps over one partition, carrying between them only what the
    ASL's selectors keep."""
    settings = world.service.settings
    evaluated = evaluate_job({PARTITION: world.keyring}, settings.policy, at)
    fleet = {key: evaluated[key] for key in result_fields("Evaluate")}
    kept = result_fields("RotateTarget")
    answers = [
        [rotate_target_job(world.service, Target.from_dict(t), at) for t in targets]
        for targets in fleet["units"]
    ]
    units = [[{key: answer[key] for key in kept} for answer in group] for group in answers]
    evaluation, results = scheduled._aggregate_input(  # the Lambda's own reading of its input
        {"evaluation": {k: fleet[k] for k in ("errors", "min_days_to_expiry")}, "results": units}
    )
    return aggregate_job(evaluation, results, publisher, at, partitions={PARTITION: world.service})


def metric_rows(metrics: list[Metric]) -> list[tuple[str, float, str, tuple[tuple[str, str], ...]]]:
    return [(m.name, m.value, m.unit, m.dimensions) for m in metrics]


def without_partition(dimensions: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    assert dimensions[:2] == (("Account", PARTITION.account), ("Region", PARTITION.region))
    return dimensions[2:]


def sent_history(world: FakeWorld) -> list[dict[str, Any]]:
    return [
        dict(e.details)
        for e in world.keyring.history_events()
        if e.kind == EventKind.EXPIRY_EVENT_SENT
    ]


@dataclass(frozen=True)
class Scenario:
    seed: Callable[[FakeWorld], dict[str, str]]
    settings: Settings
    at: Callable[[FakeWorld], datetime]


def twenty_days_before_expiry(world: FakeWorld) -> datetime:
    (record, *_) = world.keyring.records()
    assert record.not_after is not None
    return record.not_after - 20 * DAY


SCENARIOS = {
    "quiet": Scenario(
        seed_quiet,
        Settings(
            keyring_prefix="/parity", key_size=2048, renew_before_days=1, cryptoperiod_days=1000
        ),
        twenty_days_before_expiry,
    ),
    "due": Scenario(
        seed_due,
        Settings(keyring_prefix="/parity", key_size=2048, cryptoperiod_days=1),
        lambda world: NOW + 3 * DAY,
    ),
}


def run_both(
    build: Callable[[Settings], FakeWorld], scenario: Scenario
) -> tuple[FakeWorld, RotationJobRun, FakePublisher, FakeWorld, AggregateRun, FakePublisher, str]:
    single = build(scenario.settings)
    seeded = scenario.seed(single)
    at = scenario.at(single)
    single.clock.at = at
    by_job = FakePublisher()
    job = rotation_job(single.service, single.keyring, by_job, scenario.settings.policy, at)

    fleet = build(scenario.settings)
    assert scenario.seed(fleet) == seeded and fleet.instances == single.instances
    fleet.clock.at = at
    by_fleet = FakePublisher()
    aggregate = run_state_machine(fleet, by_fleet, at)
    return single, job, by_job, fleet, aggregate, by_fleet, seeded["retired"]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_fleet_path_publishes_what_the_rotation_job_publishes(
    build: Callable[[Settings], FakeWorld], name: str
) -> None:
    single, job, by_job, fleet, aggregate, by_fleet, retired = run_both(build, SCENARIOS[name])
    (check,) = aggregate.checks

    # Metrics: the partition's series are the single-account job's, in its order, with the
    # Account and Region dimensions; the fleet's totals are its dimensionless ones.
    job_rows = metric_rows([m for m, _ in by_job.metrics])
    fleet_rows = metric_rows([m for m, _ in by_fleet.metrics])
    per_partition = [r for r in fleet_rows if r[3][:1] == (("Account", PARTITION.account),)]
    assert [(n, v, u, without_partition(d)) for n, v, u, d in per_partition] == job_rows
    totals = [r for r in fleet_rows if r not in per_partition and r[0] != "FleetPartitionErrors"]
    unattributed = [r for r in job_rows if not any(k == "KeyId" for k, _ in r[3])]
    assert Counter(totals) == Counter(unattributed)
    assert ("FleetPartitionErrors", 0, "Count", ()) in fleet_rows
    assert {at for _, at in by_fleet.metrics} == {job.now}

    # Expiry events: the same, the fleet's naming its partition; recorded alike in the history.
    fleet_events = [(bus, dict(e.detail)) for bus, e in by_fleet.events]
    assert [(bus, d.pop("account"), d.pop("region")) for bus, d in fleet_events] == [
        ("default", PARTITION.account, PARTITION.region)
    ] * len(fleet_events)
    assert [(bus, dict(e.detail)) for bus, e in by_job.events] == fleet_events
    assert sent_history(single) == sent_history(fleet)
    assert list(check.run.expiry_events) == [
        d | dict(PARTITION.__dict__) for d in job.expiry_events
    ]

    # Drift, keys left due, and the notice: the same lines, each naming the partition.
    assert check.run.drift == job.drift
    assert check.run.still_due == job.still_due
    assert Counter(
        PARTITION_PREFIX.sub("", p).removeprefix("failed: ") for p in aggregate.problems
    ) == Counter(job.failures())
    assert [n.subject for n in by_fleet.notices] == [n.subject for n in by_job.notices]
    for notice in by_fleet.notices:
        assert all(f"- {p}" in notice.message for p in aggregate.problems)
    assert aggregate.ok is job.ok

    # The world after: what the single-account job's visit of every instance finished.
    for world in (single, fleet):
        assert retired not in world.associations(world.instances[2])
        assert world.lock.states() == {}
        assert world.keyring.orphaned_staging() == set()
        assert world.keyring.get_record(retired).state is KeyState.RETIRED


def test_the_quiet_world_is_not_vacuous(build: Callable[[Settings], FakeWorld]) -> None:
    """What the parity above compares is there to compare: events, drift, repairs."""
    _, job, by_job, _, aggregate, by_fleet, _ = run_both(build, SCENARIOS["quiet"])
    (check,) = aggregate.checks
    assert (
        len(by_fleet.events) == 3
        and [e.detail["threshold"] for _, e in by_fleet.events] == [30] * 3
    )
    assert [f.code for f in check.run.drift] == [FindingCode.ASSOCIATION_ADDED]
    assert len(check.repaired) == 2 and any("stale lock" in r for r in check.repaired)
    assert by_fleet.value is not None and not aggregate.ok
    (notice,) = by_fleet.notices
    assert notice.subject.startswith("connect-key-rotator: 1 critical drift finding(s)")
    assert "association-added" in notice.message and str(PARTITION) in notice.message
    drift = {m.dimensions: m.value for m, _ in by_fleet.metrics if m.name == "DriftFindings"}
    assert drift[(("Account", "prod"), ("Region", REGION), ("Severity", "critical"))] == 1
    assert drift[(("Severity", "critical"),)] == 1
    assert job.critical_drift and by_job.notices


def test_the_due_world_rotates_fails_and_leaves_due_alike(
    build: Callable[[Settings], FakeWorld],
) -> None:
    _, job, _, _, aggregate, by_fleet, _ = run_both(build, SCENARIOS["due"])
    assert job.counts()["rotated"] == aggregate.counts["rotated"] == 2
    assert job.counts()["failed"] == aggregate.counts["failed"] == 1
    (check,) = aggregate.checks
    assert len(check.run.still_due) == 1
    (notice,) = by_fleet.notices
    assert notice.subject == "connect-key-rotator: 1 rotation(s) failed"
    keys_due = {m.dimensions: m.value for m, _ in by_fleet.metrics if m.name == "KeysDueNotRotated"}
    assert keys_due == {(("Account", "prod"), ("Region", REGION)): 1, (): 1}


def test_without_the_partition_check_the_fleet_path_would_differ(
    build: Callable[[Settings], FakeWorld],
) -> None:
    """The aggregation without its per-partition work (what it did before): no drift, no
    expiry events, the retire left cut short. The parity test would catch it."""
    scenario = SCENARIOS["quiet"]
    world = build(scenario.settings)
    retired = scenario.seed(world)["retired"]
    at = scenario.at(world)
    world.clock.at = at
    publisher = FakePublisher()
    run = aggregate_job({"errors": [], "min_days_to_expiry": None}, [], publisher, at)
    assert run.checks == () and publisher.events == [] and publisher.notices == []
    assert retired in world.associations(world.instances[2])
