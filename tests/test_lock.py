"""Invariant 4: one rotation at a time per instance. The lease lock on moto's SSM: fencing by
token, renewal, SSM's clock for every lease decision, "provably gone" only when provable."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from moto.core import responses as moto_responses
from moto.ssm import models as moto_ssm

from rotator.adapters import lock as lock_module
from rotator.adapters.lock import DEFAULT_LEASE, LockHeld, LockHolder, LockLost, SsmLock

PREFIX = "/connect-keys"
NAME = f"{PREFIX}/locks/i-1"
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)  # the Date header counts whole seconds: a lease ends up to 1 s late


class ServerClock:
    """moto's clock (LastModifiedDate and the Date header): SSM's time, moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = timedelta()
        real = moto_ssm.utcnow
        for module in (moto_ssm, moto_responses):
            monkeypatch.setattr(module, "utcnow", lambda: real() + self.offset)

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ServerClock:
    return ServerClock(monkeypatch)


def dead_pid() -> int:
    process = subprocess.Popen(["true"])  # noqa: S607 - any short-lived process
    process.wait()
    return process.pid


def me(**changes: Any) -> LockHolder:
    """A holder that is this very process unless `changes` say otherwise."""
    return replace(LockHolder.this_process("other-rotation", DEFAULT_LEASE), **changes)


def elsewhere() -> LockHolder:
    return me(host="another-host", pid=4242)


def plant(ssm: Any, holder: LockHolder | str) -> None:
    value = holder if isinstance(holder, str) else holder.to_json()
    ssm.put_parameter(Name=NAME, Value=value, Type="String", Overwrite=True)


def version(ssm: Any) -> int:
    return int(ssm.get_parameter(Name=NAME)["Parameter"]["Version"])


# -- taking, fencing, releasing -------------------------------------------------------------------


def test_acquire_release_and_the_lock_names_its_holder(ssm: Any) -> None:
    lock = SsmLock(ssm, PREFIX)
    lease = lock.acquire("i-1", "rotation-1")
    held = lock.holder("i-1")
    assert held is not None and held.holder == lease.holder
    assert (held.holder.pid, held.holder.rotation_id) == (os.getpid(), "rotation-1")
    assert len(held.holder.token) == 32
    with pytest.raises(LockHeld, match="rotation-1") as conflict:
        SsmLock(ssm, PREFIX).acquire("i-1", "rotation-2")
    assert conflict.value.holder == held.describe()
    lease.check()
    lease.release()
    assert lock.holder("i-1") is None


def test_check_fences_a_run_out_once_its_lock_is_taken_over_or_removed(ssm: Any) -> None:
    lease = SsmLock(ssm, PREFIX).acquire("i-1", "rotation-1")
    plant(ssm, elsewhere())
    with pytest.raises(LockLost, match="rotation-1 lost its lock .it is now held by another-host"):
        lease.check()
    lease.release()  # someone else's lock stays
    held = SsmLock(ssm, PREFIX).holder("i-1")
    assert held is not None and held.holder.host == "another-host"
    ssm.delete_parameter(Name=NAME)
    with pytest.raises(LockLost, match="it was removed"):
        lease.check()


def ssm_calls(ssm: Any) -> list[str]:
    """The operations the client sends from now on."""
    sent: list[str] = []
    ssm.meta.events.register("before-call.ssm", lambda model, **_: sent.append(model.name))
    return sent


def test_a_release_within_the_half_lease_a_check_proved_deletes_without_a_read(
    ssm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No other run may break a lease with half of it ahead: its release is fenced by the check,
    as every write under it is."""
    taken = SsmLock(ssm, PREFIX).acquire("i-1", "rotation-1")
    sent = ssm_calls(ssm)
    taken.release()
    assert sent == ["DeleteParameter"]
    assert SsmLock(ssm, PREFIX).holder("i-1") is None
    checked = SsmLock(ssm, PREFIX).acquire("i-1", "rotation-2")
    moments = iter([1000.0, 1000.0 + DEFAULT_LEASE.total_seconds() / 2 - 6])
    monkeypatch.setattr(lock_module, "_elapsed_clock", lambda: next(moments))
    checked.check()  # asked at 1000
    sent.clear()
    checked.release()  # 6 s short of the half lease after the check
    assert sent == ["DeleteParameter"]


def test_a_release_past_that_half_lease_or_after_a_failed_check_reads_first(
    ssm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = SsmLock(ssm, PREFIX).acquire("i-1", "rotation-1")
    half = DEFAULT_LEASE.total_seconds() / 2
    later = lock_module._elapsed_clock() + half - lock_module.TRUST_MARGIN.total_seconds()
    monkeypatch.setattr(lock_module, "_elapsed_clock", lambda: later)
    plant(ssm, elsewhere())  # by hand: nothing the lease's rules allow
    sent = ssm_calls(ssm)
    lease.release()
    assert sent == ["GetParameter"]  # not ours: left alone
    monkeypatch.undo()
    fresh = SsmLock(ssm, PREFIX)
    ssm.delete_parameter(Name=NAME)
    lease = fresh.acquire("i-1", "rotation-2")
    plant(ssm, elsewhere())
    with pytest.raises(LockLost):
        lease.check()
    sent.clear()
    lease.release()
    assert sent == ["GetParameter"]
    held = fresh.holder("i-1")
    assert held is not None and held.holder.host == "another-host"


def test_a_lease_too_short_to_trust_is_always_read_before_its_release(ssm: Any) -> None:
    lease = SsmLock(ssm, PREFIX, lease=timedelta(seconds=8)).acquire("i-1", "rotation-1")
    plant(ssm, elsewhere())
    lease.release()
    held = SsmLock(ssm, PREFIX).holder("i-1")
    assert held is not None and held.holder.host == "another-host"


def test_the_same_holder_fields_with_another_token_are_not_ours(ssm: Any) -> None:
    """Two runs of one process (retire then rotate) differ only by their token."""
    lease = SsmLock(ssm, PREFIX).acquire("i-1", "rotation-1")
    plant(ssm, replace(lease.holder, token="f" * 32))
    with pytest.raises(LockLost):
        lease.check()


def test_a_lost_put_answer_retried_into_parameter_already_exists_is_still_ours(ssm: Any) -> None:
    """botocore retries a PutParameter whose answer was lost; the retry meets our own lock."""
    lost = []

    def lose_the_first_answer(attempts: int, **_: Any) -> int | None:
        if attempts == 1 and not lost:
            lost.append("answer")
            return 0  # retry at once, as after a connection reset
        return None

    ssm.meta.events.register_first("needs-retry.ssm.PutParameter", lose_the_first_answer)
    lease = SsmLock(ssm, PREFIX).acquire("i-1", "rotation-1")
    assert lost == ["answer"]
    held = SsmLock(ssm, PREFIX).holder("i-1")
    assert held is not None and held.holder.token == lease.holder.token
    lease.check()


def test_many_takers_at_once_exactly_one_wins(ssm: Any) -> None:
    barrier = threading.Barrier(8)
    winners: list[str] = []
    losers: list[str] = []

    def take(n: int) -> None:
        barrier.wait()
        try:
            SsmLock(ssm, PREFIX).acquire("i-1", f"rotation-{n}")
            winners.append(f"rotation-{n}")
        except LockHeld:
            losers.append(f"rotation-{n}")

    threads = [threading.Thread(target=take, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and len(losers) == 7


# -- leases on SSM's clock ---------------------------------------------------------------------


def test_a_live_holder_elsewhere_is_waited_for_until_its_lease_expires(
    ssm: Any, clock: ServerClock
) -> None:
    plant(ssm, elsewhere())
    lock = SsmLock(ssm, PREFIX)
    clock.advance(14 * MINUTE)
    with pytest.raises(LockHeld, match="another-host"):
        lock.acquire("i-1", "rotation-2")
    assert lock.clear_if_stale("i-1") is None
    clock.advance(MINUTE + SECOND)
    assert "its lease has expired" in (lock.clear_if_stale("i-1") or "")
    assert lock.acquire("i-1", "rotation-2").holder.rotation_id == "rotation-2"


def test_the_lease_is_renewed_past_half_its_length(ssm: Any, clock: ServerClock) -> None:
    lease = SsmLock(ssm, PREFIX).acquire("i-1", "rotation-1")
    clock.advance(7 * MINUTE)
    lease.check()
    assert version(ssm) == 1  # less than half the lease gone: no write
    clock.advance(MINUTE)
    lease.check()
    assert version(ssm) == 2 and lease.holder.renewals == 1
    clock.advance(14 * MINUTE)  # 22 minutes after the take, 14 after the renewal
    with pytest.raises(LockHeld):
        SsmLock(ssm, PREFIX).acquire("i-1", "rotation-2")
    clock.advance(MINUTE + SECOND)
    taker = SsmLock(ssm, PREFIX).acquire("i-1", "rotation-2")
    with pytest.raises(LockLost):
        lease.check()
    taker.check()


def test_a_run_whose_lease_ran_out_stops_instead_of_renewing(ssm: Any, clock: ServerClock) -> None:
    """Another run may already be breaking it: renewing now could overwrite its new lock."""
    lease = SsmLock(ssm, PREFIX).acquire("i-1", "rotation-1")
    clock.advance(DEFAULT_LEASE + SECOND)
    with pytest.raises(LockLost, match="its lease ran out"):
        lease.check()
    assert version(ssm) == 1


def test_a_renewal_that_overwrote_another_runs_lock_stops_the_run(
    ssm: Any, clock: ServerClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race SSM cannot close: our lock broken and re-taken between our read and our put.
    The version the put returns is not the next of ours, so the run stops."""
    lock = SsmLock(ssm, PREFIX)
    lease = lock.acquire("i-1", "rotation-1")
    plant(ssm, lease.holder)  # version 2 (at version 1 the re-taken lock could not be told apart)
    clock.advance(8 * MINUTE)
    read = lock.holder

    def read_then_lose_the_race(instance_id: str) -> Any:
        seen = read(instance_id)
        ssm.delete_parameter(Name=NAME)  # another run breaks the lock and takes it: version 1
        ssm.put_parameter(Name=NAME, Value=elsewhere().to_json(), Type="String")
        return seen

    monkeypatch.setattr(lock, "holder", read_then_lose_the_race)
    with pytest.raises(LockLost, match="another run wrote it while it was being renewed"):
        lease.check()


def test_a_client_clock_20_minutes_ahead_does_not_break_a_live_lock(
    ssm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Ahead(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + 20 * MINUTE

        @classmethod
        def utcnow(cls) -> Any:
            return datetime.now(UTC).replace(tzinfo=None) + 20 * MINUTE

    plant(ssm, elsewhere())
    monkeypatch.setattr(lock_module, "datetime", Ahead)
    lock = SsmLock(ssm, PREFIX)
    assert lock.clear_if_stale("i-1") is None
    with pytest.raises(LockHeld, match="another-host"):
        lock.acquire("i-1", "rotation-2")
    assert [lock_module.stale_reason(held) for held in lock.holders().values()] == [None]


def test_a_judged_stale_lock_renewed_meanwhile_is_not_broken(ssm: Any, clock: ServerClock) -> None:
    plant(ssm, elsewhere())
    lock = SsmLock(ssm, PREFIX)
    clock.advance(DEFAULT_LEASE + SECOND)
    stale = lock.holder("i-1")
    assert stale is not None and stale.expired()
    plant(ssm, replace(elsewhere(), renewals=1))  # its holder renewed after all
    assert lock.break_lock("i-1", stale) is False
    assert lock.holder("i-1") is not None


def test_an_unreadable_lock_is_a_lock_whose_lease_is_over(ssm: Any, clock: ServerClock) -> None:
    plant(ssm, "not json")
    lock = SsmLock(ssm, PREFIX)
    held = lock.holder("i-1")
    assert held is not None and held.holder.host == "unknown"
    clock.advance(SECOND)
    assert lock.acquire("i-1", "rotation-2").holder.rotation_id == "rotation-2"


def test_a_lock_from_an_older_release_holds_for_the_default_lease(
    ssm: Any, clock: ServerClock
) -> None:
    """Its own expiry time is the writer's clock: ignored. Its host and PID prove nothing."""
    plant(
        ssm,
        f'{{"host": "{socket.gethostname()}", "pid": {dead_pid()}, "rotation_id": "old", '
        '"started_at": "2020-01-01T00:00:00+00:00", "expires_at": "2020-01-01T00:15:00+00:00"}',
    )
    lock = SsmLock(ssm, PREFIX)
    with pytest.raises(LockHeld, match="rotation old"):
        lock.acquire("i-1", "rotation-2")
    clock.advance(DEFAULT_LEASE + SECOND)
    assert "its lease has expired" in (lock.clear_if_stale("i-1") or "")


# -- provably gone ------------------------------------------------------------------------------


def test_a_lock_of_a_dead_process_of_this_machine_and_namespace_is_taken_over_at_once(
    ssm: Any,
) -> None:
    plant(ssm, me(pid=dead_pid()))
    lock = SsmLock(ssm, PREFIX)
    assert "its process is no longer running" in (lock.clear_if_stale("i-1") or "")
    plant(ssm, me(pid=dead_pid()))
    assert lock.acquire("i-1", "rotation-2").holder.rotation_id == "rotation-2"


def test_a_live_process_is_not_gone_but_a_reused_pid_is() -> None:
    assert me().provably_gone() is False
    assert me(process_start="1").provably_gone() is True  # same PID, another process


@pytest.mark.parametrize(
    "other",
    [
        {"boot_id": "another-boot"},
        {"pid_namespace": "pid:[1]"},  # another container with the same host name
        {"host": "another-host"},
        {"boot_id": None},
        {"pid_namespace": None},
        {"pid": 0},
    ],
)
def test_a_dead_pid_proves_nothing_from_another_boot_namespace_or_host(
    other: dict[str, Any],
) -> None:
    assert me(pid=dead_pid()).provably_gone() is True
    assert me(**{"pid": dead_pid(), **other}).provably_gone() is False


def test_nothing_is_provable_when_this_machine_cannot_read_its_own_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    holder = me(pid=dead_pid())
    monkeypatch.setattr(lock_module, "_boot_id", lambda: None)
    assert holder.provably_gone() is False


def test_a_pid_seen_through_a_proc_of_another_namespace_proves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/proc mounted from another PID namespace shows some other process under that number."""
    holder = me(process_start="1")
    monkeypatch.setattr(lock_module, "_innermost_pid", lambda pid: "99999")
    assert holder.provably_gone() is False
