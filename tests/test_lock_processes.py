"""Invariant 4 across real processes on the sandbox's SSM: a holder in another PID namespace under
the same host name keeps its lock (also against a clock 20 minutes ahead); a SIGKILLed holder in
this namespace is proved gone at once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from rotator.adapters.lock import LockHeld, SsmLock
from rotator.sandbox.server import Sandbox

HOLDER = """
import json, os, sys
import boto3
from rotator.adapters.lock import SsmLock
lease = SsmLock(boto3.client("ssm"), sys.argv[1]).acquire(sys.argv[2], "holder")
print(json.dumps({"pid": os.getpid(), "ns": os.readlink("/proc/self/ns/pid")}), flush=True)
sys.stdin.read()  # hold the lock until the test closes stdin
lease.check()
lease.release()
print("released", flush=True)
"""

# PID 1 of a new namespace runs the holder as its child: PID 2, a PID no fresh namespace has.
IN_CHILD = "import subprocess, sys; sys.exit(subprocess.call([sys.executable, *sys.argv[1:]]))"

# This process's clock, every reading of it, runs `ahead` seconds fast (set `ahead` before).
# Its datetimes are of the fast class, and one of the real class still counts as a datetime.
CLOCK_AHEAD = """
import datetime as dt, time
real_time, Real = time.time, dt.datetime
class AnyDatetime(type):
    def __instancecheck__(cls, value):
        return isinstance(value, Real)
class Ahead(dt.datetime, metaclass=AnyDatetime):
    @classmethod
    def now(cls, tz=None):
        return super().now(tz) + dt.timedelta(seconds=ahead)
    @classmethod
    def utcnow(cls):
        return super().utcnow() + dt.timedelta(seconds=ahead)
if ahead:
    time.time = lambda: real_time() + ahead
    dt.datetime = Ahead
"""

CONTENDER = (
    """
import json, os, sys
ahead = float(sys.argv[4])
"""
    + CLOCK_AHEAD
    + """
import boto3
from rotator.adapters.lock import LockHeld, SsmLock
try:
    os.kill(int(sys.argv[3]), 0)
    exists = True
except ProcessLookupError:
    exists = False
lock = SsmLock(boto3.client("ssm"), sys.argv[1])
cleared = lock.clear_if_stale(sys.argv[2])
try:
    lock.acquire(sys.argv[2], "contender")
    outcome = "acquired"
except LockHeld as held:
    outcome = str(held)
print(json.dumps({
    "holder_pid_exists_here": exists,
    "clock_ahead": (dt.datetime.now(dt.UTC) - Real.now(dt.UTC)).total_seconds(),
    "cleared": cleared,
    "outcome": outcome,
}))
"""
)

NEW_PID_NAMESPACE = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"]


def require_pid_namespaces() -> None:
    """Fail, never skip, where PID namespaces cannot be made: these tests are the only proof."""
    assert shutil.which("unshare") is not None, "util-linux `unshare` is not installed"
    probe = subprocess.run(
        [*NEW_PID_NAMESPACE, "true"], capture_output=True, text=True, check=False
    )
    assert probe.returncode == 0, (
        f"`{' '.join(NEW_PID_NAMESPACE)} true` failed ({probe.stderr.strip()}): these tests need "
        "root or unprivileged user namespaces"
    )


@pytest.fixture
def env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in sandbox.environment().items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


@pytest.fixture
def prefix() -> str:
    return f"/lock-processes-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def start(env: dict[str, str]) -> Iterator[Any]:
    """Start a holder (optionally in a new PID namespace); once it holds the lock, its PID."""
    started: list[subprocess.Popen[str]] = []

    def run(prefix: str, *, namespace: bool) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        command = [sys.executable, "-c", HOLDER, prefix, "i-1"]
        if namespace:
            command = [*NEW_PID_NAMESPACE, sys.executable, "-c", IN_CHILD, *command[1:]]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        started.append(process)
        assert process.stdout is not None
        return process, json.loads(process.stdout.readline())

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def contend(
    env: dict[str, str], prefix: str, holder_pid: int, *, clocks_ahead: list[float]
) -> list[dict[str, Any]]:
    """Contenders at once, each in a new PID namespace of its own, with its clock this far ahead."""
    contenders = [
        subprocess.Popen(
            [*NEW_PID_NAMESPACE, sys.executable, "-c", CONTENDER]
            + [prefix, "i-1", str(holder_pid), str(ahead)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for ahead in clocks_ahead
    ]
    outputs = [process.communicate(timeout=60)[0] for process in contenders]
    assert [process.returncode for process in contenders] == [0] * len(contenders)
    return [json.loads(output) for output in outputs]


def test_a_holder_in_another_pid_namespace_under_the_same_host_name_keeps_its_lock(
    env: dict[str, str], prefix: str, start: Any
) -> None:
    require_pid_namespaces()
    holder, held = start(prefix, namespace=True)
    assert held["pid"] == 2 and held["ns"] != str(Path("/proc/self/ns/pid").readlink())

    seen, skewed = contend(env, prefix, held["pid"], clocks_ahead=[0, 20 * 60])
    # Same host name, and no PID 2 in the contender's namespace: once "provably gone".
    assert seen["holder_pid_exists_here"] is False
    assert seen["cleared"] is None
    assert seen["outcome"].startswith("instance i-1 is being rotated: lock held by")
    assert "pid 2, rotation holder" in seen["outcome"]
    # A 15-minute lease and a clock 20 minutes ahead: the lease is still SSM's to time.
    assert skewed["clock_ahead"] == pytest.approx(1200, abs=5)
    assert skewed["cleared"] is None and "is being rotated" in skewed["outcome"]

    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.close()
    assert holder.stdout.readline().strip() == "released"  # its lease.check() still passed
    assert holder.wait(timeout=30) == 0


def test_a_sigkilled_holder_in_this_namespace_is_proved_gone_at_once(
    env: dict[str, str], prefix: str, start: Any
) -> None:
    holder, held = start(prefix, namespace=False)
    lock = SsmLock(boto3.client("ssm"), prefix)
    with pytest.raises(LockHeld, match=f"pid {held['pid']}, rotation holder"):
        lock.acquire("i-1", "successor")
    holder.send_signal(signal.SIGKILL)
    stat = Path(f"/proc/{held['pid']}/stat")
    deadline = time.monotonic() + 10
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":  # dead, not reaped: a zombie
        assert time.monotonic() < deadline, "the holder did not die"
        time.sleep(0.01)
    assert "its process is no longer running" in (lock.clear_if_stale("i-1") or "")
    assert lock.acquire("i-1", "successor").holder.rotation_id == "successor"
    holder.wait()
