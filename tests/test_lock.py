"""Invariant 4: one rotation at a time per instance, stale locks detected and taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from datetime import timedelta
from typing import Any

import pytest

from rotator.adapters.lock import LockHeld, LockHolder, SsmLock
from tests.conftest import NOW

PREFIX = "/connect-keys"


def dead_pid() -> int:
    process = subprocess.Popen(["true"])  # noqa: S607 - any short-lived process
    process.wait()
    return process.pid


def plant(ssm: Any, holder: LockHolder) -> None:
    ssm.put_parameter(
        Name=f"{PREFIX}/locks/i-1", Value=json.dumps(vars(holder)), Type="String", Overwrite=True
    )


def holder(pid: int, *, host: str | None = None, lease_end: Any = None) -> LockHolder:
    return LockHolder(
        host=host or socket.gethostname(),
        pid=pid,
        started_at=NOW.isoformat(),
        expires_at=(lease_end or NOW + timedelta(minutes=15)).isoformat(),
        rotation_id="other-rotation",
    )


def test_acquire_release_and_the_lock_names_its_holder(ssm: Any) -> None:
    lock = SsmLock(ssm, PREFIX)
    mine = lock.acquire("i-1", "rotation-1", NOW)
    assert lock.holder("i-1") == mine
    assert (mine.host, mine.rotation_id) == (socket.gethostname(), "rotation-1")
    with pytest.raises(LockHeld, match="rotation-1"):
        SsmLock(ssm, PREFIX).acquire("i-1", "rotation-2", NOW)
    lock.release("i-1", mine)
    assert lock.holder("i-1") is None


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(ssm: Any) -> None:
    plant(ssm, holder(dead_pid()))
    taken = SsmLock(ssm, PREFIX).acquire("i-1", "rotation-2", NOW)
    assert taken.rotation_id == "rotation-2"


def test_a_live_holder_elsewhere_is_waited_for_until_its_lease_expires(ssm: Any) -> None:
    plant(ssm, holder(dead_pid(), host="another-host"))
    lock = SsmLock(ssm, PREFIX)
    with pytest.raises(LockHeld, match="another-host"):
        lock.acquire("i-1", "rotation-2", NOW + timedelta(minutes=14))
    assert lock.acquire("i-1", "rotation-2", NOW + timedelta(minutes=15)).rotation_id == (
        "rotation-2"
    )


def test_clear_if_stale_leaves_a_live_lock_alone(ssm: Any) -> None:
    plant(ssm, holder(os.getpid()))
    lock = SsmLock(ssm, PREFIX)
    assert lock.clear_if_stale("i-1", NOW) is None
    assert lock.holder("i-1") is not None
    plant(ssm, holder(dead_pid()))
    assert "no longer running" in (lock.clear_if_stale("i-1", NOW) or "")
    assert lock.holder("i-1") is None


def test_releasing_a_lock_someone_else_took_over_leaves_theirs(ssm: Any) -> None:
    lock = SsmLock(ssm, PREFIX)
    mine = lock.acquire("i-1", "rotation-1", NOW)
    theirs = holder(4242, host="another-host")
    plant(ssm, theirs)
    lock.release("i-1", mine)
    assert lock.holder("i-1") == theirs


def test_many_takers_at_once_exactly_one_wins(ssm: Any) -> None:
    barrier = threading.Barrier(8)
    winners: list[str] = []
    losers: list[str] = []

    def take(n: int) -> None:
        barrier.wait()
        try:
            SsmLock(ssm, PREFIX).acquire("i-1", f"rotation-{n}", NOW)
            winners.append(f"rotation-{n}")
        except LockHeld:
            losers.append(f"rotation-{n}")

    threads = [threading.Thread(target=take, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and len(losers) == 7
