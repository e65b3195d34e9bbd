"""AWS calls of one rotation on the sandbox, per step: counted, never timed, so a regression fails.

bench/rotation_bench.py prints the same table for a run of its own (with the baseline of 73
calls measured before the calls were cut).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest

from rotator.domain.rotation import RotationStep, StepDone
from rotator.services.rotation import Outcome
from tests.conftest import NOW
from tests.world import World

ROTATE_AT = NOW + timedelta(days=400)  # past the default cryptoperiod: due
AFTER_DONE = "after done"  # the staging's delete, the lock's release, the staging sweep
# A rotation writes its steps together (rotator.services.rotation.WRITTEN_AFTER): a phase's calls
# are those up to and including the write that ends at its step. "started" holds the run's
# listing of instances, the look before and under the lock, the lock and the rotation's first
# record. Upper bounds: each is what the rotation makes today.
MOST_CALLS_PER_STEP = {
    # instances sweep, ListSecurityKeys, records, lock, look under it, history, record
    "started": 7,
    # staged: certificate, private key, read-back; associated: lease check, AssociateSecurityKey
    # (Connect's keys as the look under the lock listed them); stored: private key, certificate,
    # one read-back through the decrypt Lambda's reader (the bytes, then the canary), history,
    # the new key's metadata
    "stored": 10,
    # lease check, 2 describes, 2 updates, history, 2 metadata, current pointer, record
    "done": 10,
    AFTER_DONE: 3,  # the staging's delete, the lock's delete, the run's orphaned-staging sweep
}
MOST_CALLS = 30  # 73, then 45, before (see bench/rotation_bench.py); the target is 30
PHASES = list(MOST_CALLS_PER_STEP)


class StepCalls:
    """Every API call of the rotator's clients, by the step it was made for."""

    def __init__(self) -> None:
        self.phase = PHASES[0]
        self.calls: Counter[tuple[str, str]] = Counter()

    def before_call(self, model: Any, **_: Any) -> None:
        self.calls[(self.phase, f"{model.service_model.service_name}:{model.name}")] += 1

    def recorded(self, step: RotationStep) -> None:
        self.phase = PHASES[PHASES.index(str(step)) + 1]

    def per_step(self) -> dict[str, int]:
        found = dict.fromkeys(PHASES, 0)
        for (phase, _), count in self.calls.items():
            found[phase] += count
        return found


@pytest.fixture
def counted(world: World, monkeypatch: pytest.MonkeyPatch) -> StepCalls:
    """`world`, initialised, with its rotator's calls counted from here on."""
    init = world.init(NOW)
    assert init.outcome is Outcome.ROTATED, init.detail
    counter = StepCalls()
    for client in (world.adapters.ssm, world.adapters.connect_client):
        client.meta.events.register("before-call", counter.before_call)
    keyring = world.service.keyring
    put_rotation = keyring.put_rotation

    def recorded(steps: list[StepDone], *, at: datetime, **kwargs: Any) -> None:
        put_rotation(steps, at=at, **kwargs)
        counter.recorded(steps[-1].state.step)

    monkeypatch.setattr(keyring, "put_rotation", recorded)
    return counter


def test_a_rotation_makes_at_most_its_calls_per_step(world: World, counted: StepCalls) -> None:
    (result,) = world.service.rotate(None, ROTATE_AT)
    assert result.outcome is Outcome.ROTATED, result.detail
    assert result.new_key_id != result.old_key_id
    per_step = counted.per_step()
    over = {
        step: f"{calls} > {MOST_CALLS_PER_STEP[step]}: "
        + ", ".join(f"{op} {n}" for (p, op), n in sorted(counted.calls.items()) if p == step)
        for step, calls in per_step.items()
        if calls > MOST_CALLS_PER_STEP[step]
    }
    assert over == {}
    assert sum(per_step.values()) <= MOST_CALLS == sum(MOST_CALLS_PER_STEP.values())


def test_one_list_of_connects_keys_per_step_and_no_single_parameter_reads_but_the_locks(
    world: World, counted: StepCalls
) -> None:
    (result,) = world.service.rotate(None, ROTATE_AT)
    assert result.outcome is Outcome.ROTATED, result.detail
    listings = Counter(
        p
        for (p, op), n in counted.calls.items()
        for _ in range(n)
        if op.endswith(":ListSecurityKeys")
    )
    assert max(listings.values()) == 1, listings
    # GetParameter (one name) is the lock's read alone: the checks before the association and
    # before the flows; the release comes within the half lease the last check proved ahead.
    single = sum(n for (_, op), n in counted.calls.items() if op == "ssm:GetParameter")
    assert single == 2
