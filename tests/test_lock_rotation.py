"""Invariant 4 in the rotation service: a lock conflict is skipped (no failure, no alarm), a run
whose lock is taken over writes nothing more, and a failed release never hides the first error."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import EndpointConnectionError
from structlog.testing import capture_logs

from rotator.adapters.lock import DEFAULT_LEASE, LockHolder
from rotator.domain.keys import KeyMaterial
from rotator.domain.rotation import RotationStep
from rotator.entrypoints.cli import main
from rotator.errors import KeyMaterialError
from rotator.services.jobs import rotation_job
from rotator.services.rotation import Outcome
from tests.conftest import NOW
from tests.fakes import FakePublisher
from tests.world import World

ROTATE_AT = NOW + timedelta(days=400)  # past the cryptoperiod: due


def initialised(world: World) -> str:
    result = world.init(NOW)
    assert result.outcome is Outcome.ROTATED and result.new_key_id, result.detail
    return result.new_key_id


def another_run(world: World) -> None:
    """A rotation running on another machine: its lock is live and cannot be proved gone."""
    holder = replace(LockHolder.this_process("manual-run", DEFAULT_LEASE), host="ops-laptop")
    world.ssm.put_parameter(
        Name=world.adapters.lock.layout.lock(world.instance_id),
        Value=replace(holder, pid=4242).to_json(),
        Type="String",
        Overwrite=True,
    )


def test_a_lock_conflict_is_skipped_not_failed(world: World) -> None:
    first = initialised(world)
    another_run(world)
    (result,) = world.service.rotate(None, ROTATE_AT)
    assert result.outcome is Outcome.SKIPPED
    assert result.detail.startswith(
        "skipped: another rotation is running (lock held by ops-laptop pid 4242, "
        "rotation manual-run, lease until "
    )
    assert world.adapters.keyring.get_current(world.instance_id) == first

    telemetry = FakePublisher()
    summary = rotation_job(
        world.service, world.adapters.keyring, telemetry, world.adapters.settings.policy, ROTATE_AT
    )
    assert summary.ok, summary.to_dict()
    assert summary.to_dict()["counts"]["skipped"] == 1
    assert (telemetry.value("RotationFailure"), telemetry.value("KeysDueNotRotated")) == (0, 0)
    assert telemetry.notices == []

    out = io.StringIO()
    assert main(["rotate", "--force", "--json"], out) == 0
    (printed,) = json.loads(out.getvalue())["results"]
    assert printed["outcome"] == "skipped"


def test_an_init_under_a_held_lock_is_skipped_too(world: World) -> None:
    another_run(world)
    result = world.init(NOW)
    assert result.outcome is Outcome.SKIPPED, result.detail
    assert world.associations() == [] and world.adapters.keyring.records() == []


def test_a_run_whose_lock_is_taken_over_stops_before_its_next_write(world: World) -> None:
    first = initialised(world)
    generate = world.service.generate

    def generate_while_the_lock_is_taken(now: datetime) -> KeyMaterial:
        another_run(world)  # e.g. a run on another machine judged this one's lease over
        return generate(now)

    world.service.generate = generate_while_the_lock_is_taken
    (result,) = world.service.rotate(None, ROTATE_AT)
    assert result.outcome is Outcome.FAILED
    assert "lost its lock (it is now held by ops-laptop" in result.detail
    rotation = world.adapters.keyring.get_rotation(world.instance_id)
    # Its first write only: it staged a key, and the check before the association stopped it.
    assert rotation is not None and rotation.step is RotationStep.STARTED
    assert world.associations() == [first] and world.flow_key_id() == first
    held = world.adapters.lock.holder(world.instance_id)
    assert held is not None and held.holder.host == "ops-laptop"  # its lock is left alone


def test_a_failed_release_after_a_failed_step_keeps_the_first_error(world: World) -> None:
    initialised(world)
    ssm_down = []

    def no_entropy_and_then_no_ssm(now: datetime) -> KeyMaterial:
        ssm_down.append(True)
        raise KeyMaterialError("no key could be generated")

    def refuse(**_: Any) -> None:
        if ssm_down:
            raise EndpointConnectionError(endpoint_url="https://ssm.example")

    world.ssm.meta.events.register("before-call.ssm", refuse)
    world.service.generate = no_entropy_and_then_no_ssm
    with capture_logs() as logs:
        (result,) = world.service.rotate(None, ROTATE_AT)
    world.ssm.meta.events.unregister("before-call.ssm", refuse)

    assert result.outcome is Outcome.FAILED
    assert result.detail == "no key could be generated"
    (warning,) = [e for e in logs if e["event"] == "lock_release_failed"]
    assert warning["log_level"] == "warning" and warning["after"] == "KeyMaterialError"
    # The lease was taken moments ago: the release deletes it without reading it first.
    assert "ssm:DeleteParameter failed" in warning["error"]
    assert world.adapters.lock.holder(world.instance_id) is not None  # left to expire
