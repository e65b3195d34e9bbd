"""Invariant 3: a crash after any AWS call of a rotation, then a plain re-run, converges.

The crash is an exception raised right after a call has succeeded (botocore `after-call`), so
AWS holds the call's effect and the rotator never learns of it: the worst moment to die. The
crashed run also takes its lock to the grave: its process ID is one that no longer runs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from rotator.adapters import lock as lock_module
from rotator.services.rotation import Outcome
from tests.conftest import NOW
from tests.world import KeyPool, World, build_world

ROTATE_AT = NOW + timedelta(days=400)


class InjectedCrash(Exception):  # noqa: N818 - it is what happens, not an error class
    """Stands for the process dying right after an AWS call returned."""


class CallCounter:
    def __init__(self, clients: list[Any], crash_after: int | None = None) -> None:
        self.calls: list[str] = []
        self.crash_after = crash_after
        self.clients = clients
        for client in clients:
            client.meta.events.register("after-call", self.after_call)

    def after_call(self, model: Any, **_: Any) -> None:
        self.calls.append(model.name)
        if self.crash_after is not None and len(self.calls) == self.crash_after:
            raise InjectedCrash(f"crashed after call {len(self.calls)}: {model.name}")

    def detach(self) -> None:
        for client in self.clients:
            client.meta.events.unregister("after-call", self.after_call)


@contextmanager
def a_process_that_will_die(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Locks taken inside name a process ID that has already exited."""
    with monkeypatch.context() as patch:
        dead = subprocess.Popen(["true"])  # noqa: S607 - any short-lived process
        dead.wait()
        patch.setattr(lock_module.os, "getpid", lambda: dead.pid)
        yield


def clients(world: World) -> list[Any]:
    return [world.adapters.ssm, world.adapters.connect_client]


def count_rotation_calls(world: World) -> list[str]:
    counter = CallCounter(clients(world))
    (result,) = world.service.rotate(None, ROTATE_AT)
    counter.detach()
    assert result.outcome is Outcome.ROTATED
    return counter.calls


@pytest.fixture
def fresh(sandbox: Any, key_pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in sandbox.environment().items():
        monkeypatch.setenv(name, value)

    def make() -> World:
        world = build_world(sandbox, key_pool, monkeypatch)
        world.init(NOW)
        return world

    return make


# The sweep in shards, so that xdist workers share it; together they crash after every call.
SHARDS = 2


@pytest.mark.parametrize("shard", range(SHARDS))
def test_a_crash_after_any_call_of_a_rotation_converges_on_rerun(
    fresh: Any, monkeypatch: pytest.MonkeyPatch, shard: int
) -> None:
    calls = count_rotation_calls(fresh())
    assert len(calls) > 20  # a real rotation: lock, records, staging, Connect, flows
    for crash_after in range(1 + shard, len(calls) + 1, SHARDS):
        world = fresh()
        initial = world.flow_key_id()
        before = world.caller_types("4000056655665556")
        counter = CallCounter(clients(world), crash_after=crash_after)
        with a_process_that_will_die(monkeypatch):
            try:
                (interrupted,) = world.service.rotate(None, ROTATE_AT)
            except InjectedCrash:
                pass
            else:  # the verification's keyring read turns any SDK failure into a failure
                assert interrupted.outcome is Outcome.FAILED, interrupted.detail
        counter.detach()
        assert len(counter.calls) >= crash_after, "the crash was not reached"
        during = world.caller_types("5555555555554444")  # a caller right after the crash

        (rerun,) = world.service.rotate(None, ROTATE_AT)  # plain re-run: resumes first
        where = f"crash after call {crash_after} ({calls[crash_after - 1]})"
        # Not due only if the crash came after the rotation had completed.
        assert rerun.outcome in (Outcome.ROTATED, Outcome.NOT_DUE), f"{where}: {rerun.detail}"
        records = world.adapters.keyring.records()
        assert len(records) == 2, f"{where}: exactly one new key, not {len(records) - 1}"
        assert world.adapters.keyring.get_current(world.instance_id) != initial, where
        after = world.caller_types()

        findings = world.adapters.invariants().check(None, ROTATE_AT)
        assert [f for f in findings if not f.ok] == [], where
        assert len(world.associations()) <= 2, where
        for ciphertext, digits in (
            (before, "4000056655665556"),
            (during, "5555555555554444"),
            (after, "4111111111111111"),
        ):
            assert world.lambda_decrypts(ciphertext) == {"status": "ok", "Card": digits}, where
