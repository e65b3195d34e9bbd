"""Issue 9's proof for races: whole `rotator rotate` runs at once against `rotator sandbox`, in
two PID namespaces under one host name, with clocks 20 minutes apart, with the lock holder
SIGKILLed mid-rotation, and with one run deciding while the other associates its new key; the
one that meets the lock is skipped (exit 0), exactly one rotates, and a plain re-run converges.

Converged means what tests/test_crash_processes.py means: `rotator verify` passes, every contact
encrypted before decrypts in a new Lambda container, and the race cost exactly one new key.

Each run is the rotator's own CLI entry point in a wrapper (RACER) that hooks botocore's call
events (the product has no test hooks): at a chosen AWS call it stops until the test opens its
gate, so the runs overlap for certain, not by luck; the gate may also SIGKILL it there. Runs
start from a KEEPER: a process that is PID 1 of a new PID namespace (or a plain process in this
one) and starts each run it is sent at once, so the namespace outlives a killed run.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli_e2e import (
    CARD_BEFORE,
    CARD_LATE,
    CLI_TIMEOUT,
    CliRun,
    CliWorld,
    SandboxProcess,
    sandbox_process,  # noqa: F401 - the module's `rotator sandbox` process, a fixture
)
from tests.test_crash_processes import Crashing, crashing, key_ids
from tests.test_lock_processes import CLOCK_AHEAD, NEW_PID_NAMESPACE, require_pid_namespaces

AHEAD = 20 * 60.0  # seconds: more than the 15-minute lease
# Mid-rotation: Connect holds the new key, the rotation's record does not say so yet.
MID_ROTATION = ("after", "connect:AssociateSecurityKey", 1)
GATE_TIMEOUT = 120  # seconds a run waits at its gate before giving up on the test

# `rotator ARGV...` that records who it is, logs every AWS call it completed, and at its pause
# point (when, "service:Operation", occurrence) waits for its gate: "go" or "kill" (SIGKILL).
RACER = (
    """
import json, os, signal, socket, sys, time
from pathlib import Path
run = Path(sys.argv[1])
spec = json.loads((run / "spec.json").read_text())
ahead = spec["ahead"]
"""
    + CLOCK_AHEAD
    + """
import boto3
from rotator.entrypoints.cli import main

(run / "started.part").write_text(json.dumps({
    "pid": os.getpid(),
    "ns": os.readlink("/proc/self/ns/pid"),
    "host": socket.gethostname(),
    "clock_ahead": (dt.datetime.now(dt.UTC) - Real.now(dt.UTC)).total_seconds(),
}))
(run / "started.part").rename(run / "started.json")  # whole when the test sees it
matched = 0

def on_call(phase):
    def hook(model, **_):
        global matched
        name = f"{model.service_model.service_name}:{model.name}"
        if phase == "after":
            with open(run / "calls.log", "a") as log:
                log.write(name + "\\n")
        if [phase, name] == spec["pause"][:2]:
            matched += 1
            if matched == spec["pause"][2]:
                (run / "paused").touch()
                gate, deadline = run / "gate", time.monotonic() + spec["timeout"]
                while not gate.exists():
                    if time.monotonic() > deadline:
                        sys.exit("the test never opened the gate")
                    time.sleep(0.01)
                if gate.read_text() == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
    return hook

boto3.setup_default_session()  # every client the CLI makes comes from this session
for phase in ("before", "after"):
    boto3.DEFAULT_SESSION.events.register(f"{phase}-call", on_call(phase))
sys.exit(main(sys.argv[2:]))
"""
)

# Starts each job sent on stdin at once, and writes its exit code and output to the job's file.
# It first starts and reaps `argv[1]` short-lived children: a fresh namespace gives PIDs in order
# (a thread takes one too), so its runs get PIDs that are free in a namespace that skipped none.
KEEPER = """
import json, os, subprocess, sys, threading
for _ in range(int(sys.argv[1])):
    subprocess.run(["true"], check=True)

def run(job):
    done = subprocess.run(job["argv"], capture_output=True, text=True)
    part = job["out"] + ".part"
    with open(part, "w") as out:
        json.dump({"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}, out)
    os.rename(part, job["out"])

for line in sys.stdin:
    threading.Thread(target=run, args=(json.loads(line),)).start()
"""


@dataclass
class Run:
    """One `rotator` process started by a keeper; its files are in `folder`."""

    argv: tuple[str, ...]
    folder: Path
    scenario: CliWorld = field(repr=False)  # it holds private keys: never in a failure's text
    gate_opened: bool = False

    def started(self) -> dict[str, Any]:
        return dict(json.loads((self.folder / "started.json").read_text()))

    @property
    def pid(self) -> int:
        return int(self.started()["pid"])

    def paused(self) -> bool:
        return (self.folder / "paused").exists()

    def done(self) -> bool:
        return (self.folder / "result.json").exists()

    def calls(self) -> list[str]:
        log = self.folder / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def open_gate(self, action: str = "go") -> None:
        part = self.folder / "gate.part"
        part.write_text(action)
        part.rename(self.folder / "gate")
        self.gate_opened = True

    def result(self) -> CliRun:
        """Once it exited: its code and output (which join the scenario's secret check)."""
        wait_until(self.done, f"rotator {' '.join(self.argv)} did not exit", [self])
        data = json.loads((self.folder / "result.json").read_text())
        run = CliRun(self.argv, data["code"], data["stdout"], data["stderr"])
        self.scenario.runs.append(run)
        self.scenario.remember_private_keys()
        return run

    def outcome(self) -> dict[str, Any]:
        """Its one instance's result, after it exited 0."""
        run = self.result()
        assert run.code == 0, f"rotator {' '.join(self.argv)} exited {run.code}: {run.stderr}"
        (result,) = run.json()["results"]
        return dict(result)

    def describe(self) -> str:
        state = "exited" if self.done() else "paused" if self.paused() else "running"
        started = self.folder / "started.json"
        who = started.read_text() if started.exists() else "not started"
        text = f"rotator {' '.join(self.argv)} {who} ({state}) after calls {self.calls()}"
        if self.done():
            data = json.loads((self.folder / "result.json").read_text())
            text += f"; exit {data['code']}, stdout {data['stdout']!r}, stderr {data['stderr']!r}"
        return text


@dataclass
class Place:
    """Where runs start: PID 1 of a PID namespace of its own (same host name), or this one."""

    keeper: subprocess.Popen[str]
    scenario: CliWorld = field(repr=False)  # it holds private keys: never in a failure's text
    folder: Path
    runs: list[Run] = field(default_factory=list)

    def start(
        self, *argv: str, pause: tuple[str, str, int] | None = None, ahead: float = 0.0
    ) -> Run:
        folder = self.folder / f"run-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        spec = {"pause": list(pause or ("never", "", 0)), "ahead": ahead, "timeout": GATE_TIMEOUT}
        (folder / "spec.json").write_text(json.dumps(spec))
        racer = self.folder.parent / "racer.py"
        job = {
            "argv": [sys.executable, str(racer), str(folder), *argv, "--json"],
            "out": str(folder / "result.json"),
        }
        assert self.keeper.stdin is not None
        self.keeper.stdin.write(json.dumps(job) + "\n")
        self.keeper.stdin.flush()
        run = Run((*argv, "--json"), folder, self.scenario)
        self.runs.append(run)
        wait_until(lambda: (folder / "started.json").exists(), "the run did not start", [run])
        return run


@dataclass
class Race:
    """A scenario (a Connect instance initialised with its own keyring) and places to run in."""

    c: Crashing
    folder: Path
    places: list[Place] = field(default_factory=list)

    @property
    def s(self) -> CliWorld:
        return self.c.s

    def rotate(self, *flags: str) -> tuple[str, ...]:
        return ("rotate", "--instance-id", self.s.instance_id, *flags)

    def open_place(self, *, namespace: bool, skip_pids: int = 0) -> Place:
        """A keeper: PID 1 of a new PID namespace (same host name), or a process in this one."""
        command = [sys.executable, "-c", KEEPER, str(skip_pids)]
        keeper = subprocess.Popen(
            [*NEW_PID_NAMESPACE, *command] if namespace else command,
            cwd=self.s.sandbox.workdir,
            env=self.s.cli_environment(),
            stdin=subprocess.PIPE,
            text=True,
        )
        place = Place(keeper, self.s, self.folder / f"place-{len(self.places)}")
        self.places.append(place)
        place.folder.mkdir()
        return place


@pytest.fixture
def race(
    sandbox_process: SandboxProcess,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Race]:
    require_pid_namespaces()
    name = f"race-{request.node.name.removeprefix('test_')[:40]}"
    for c in crashing(sandbox_process, monkeypatch, name):
        race = Race(c, c.killer.parent)  # the scenario's own folder
        (race.folder / "racer.py").write_text(RACER)
        try:
            c.s.rotator(*c.s.init_argv(), expect=0)
            c.caller_types(CARD_BEFORE)
            yield race
        finally:
            close(race.places)


def close(places: list[Place]) -> None:
    """Every run still at its gate is killed there; each keeper ends once its runs did."""
    for place in places:
        for run in place.runs:
            if not run.gate_opened and run.paused():
                run.open_gate("kill")
        assert place.keeper.stdin is not None
        place.keeper.stdin.close()
    for place in places:
        try:
            place.keeper.wait(timeout=CLI_TIMEOUT)
        except subprocess.TimeoutExpired:
            place.keeper.kill()  # in a namespace, --kill-child takes its runs with it
            place.keeper.wait()


def wait_until(ready: Callable[[], bool], failure: str, runs: list[Run]) -> None:
    deadline = time.monotonic() + CLI_TIMEOUT
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"{failure}: " + "; ".join(run.describe() for run in runs))
        time.sleep(0.01)


def holder_and_skipped(first: Run, second: Run) -> tuple[Run, Run]:
    """Of two runs that overlap: the one paused holding the lock, and the one that exited."""
    runs = [first, second]
    wait_until(
        lambda: all(run.paused() or run.done() for run in runs),
        "no run holds the lock",
        runs,
    )
    held = [run for run in runs if run.paused()]
    assert len(held) == 1, f"{len(held)} runs took the lock: " + "; ".join(
        run.describe() for run in runs
    )
    (holder,) = held
    (skipped,) = [run for run in runs if run is not holder]
    return holder, skipped


def assert_not_a_pid_there(pid: int, namespace: str) -> None:
    """No process or thread in PID namespace `namespace` has PID `pid` there: a check of the
    PID alone would call a holder with that PID gone."""
    seen = set()
    for task in Path("/proc").glob("[0-9]*/task/[0-9]*"):
        try:
            if str((task / "ns/pid").readlink()) != namespace:
                continue
            status = (task / "status").read_text()
        except OSError:
            continue  # it ended meanwhile
        seen |= {int(line.split()[-1]) for line in status.splitlines() if line[:6] == "NSpid:"}
    assert 1 in seen, f"no process of {namespace} found"  # its keeper: the look works
    assert pid not in seen, f"PID {pid} exists in {namespace}"


def assert_skipped_for(skipped: Run, holder: Run) -> None:
    """The run that met a live lock: exit 0, outcome skipped, naming the holder's process."""
    result = skipped.outcome()
    assert result["outcome"] == "skipped", skipped.describe()
    started = holder.started()
    assert result["detail"].startswith(
        f"skipped: another rotation is running (lock held by {started['host']} "
        f"pid {started['pid']}, rotation "
    ), result
    assert "connect:AssociateSecurityKey" not in skipped.calls()  # it wrote nothing


def test_two_rotations_in_pid_namespaces_under_one_host_name_rotate_once(race: Race) -> None:
    """Started at the same moment, each in a PID namespace of its own: whichever takes the lock
    first holds it (paused mid-rotation) while the other, whose namespace has no process with the
    holder's PID, is skipped; then a plain re-run finds nothing to do."""
    c, s = race.c, race.s
    keys_before = key_ids(s)
    first = race.open_place(namespace=True)
    second = race.open_place(namespace=True, skip_pids=2)
    forced = race.rotate("--force")
    holder, skipped = holder_and_skipped(
        first.start(*forced, pause=MID_ROTATION), second.start(*forced, pause=MID_ROTATION)
    )
    mine, theirs = holder.started(), skipped.started()
    assert mine["host"] == theirs["host"] == socket.gethostname()
    assert mine["ns"] != theirs["ns"]
    assert_not_a_pid_there(mine["pid"], theirs["ns"])
    assert_skipped_for(skipped, holder)

    holder.open_gate()
    rotated = holder.outcome()
    assert rotated["outcome"] == "rotated", holder.describe()
    c.caller_types(CARD_LATE)
    result = c.converges("PID namespaces", ("rotate",), None, keys_before)
    assert result["outcome"] == "not_due", result
    assert result["new_key_id"] is None and rotated["new_key_id"] in s.associations()
    s.assert_no_secret_in_any_output(expected_keys=2)


def test_a_rotation_with_its_clock_20_minutes_ahead_is_skipped_by_a_live_lock(
    race: Race,
) -> None:
    """A rotation whose clock runs 20 minutes fast (past the 15-minute lease) meets a rotation
    holding the lock mid-rotation: the lease is timed by SSM's clock, so it is skipped."""
    c, s = race.c, race.s
    keys_before = key_ids(s)
    here = race.open_place(namespace=False)
    holder = here.start(*race.rotate("--force"), pause=MID_ROTATION)
    wait_until(holder.paused, "the holder did not reach mid-rotation", [holder])
    fast = here.start(*race.rotate("--force"), ahead=AHEAD)
    assert fast.started()["clock_ahead"] == pytest.approx(AHEAD, abs=5)
    assert fast.started()["ns"] == holder.started()["ns"]  # the holder's PID is live there
    assert_skipped_for(fast, holder)

    holder.open_gate()
    assert holder.outcome()["outcome"] == "rotated", holder.describe()
    c.caller_types(CARD_LATE)
    result = c.converges("clocks 20 minutes apart", ("rotate",), None, keys_before)
    assert result["outcome"] == "not_due", result
    s.assert_no_secret_in_any_output(expected_keys=2)


def test_a_sigkilled_holder_keeps_its_lock_in_other_namespaces_and_resumes_in_its_own(
    race: Race,
) -> None:
    """The holder is SIGKILLed mid-rotation in its namespace. From another namespace it is not
    provably gone (no PID there tells), so runs there are skipped until its lease ends; a plain
    re-run in its own namespace proves it gone at once and finishes its rotation."""
    c, s = race.c, race.s
    keys_before = key_ids(s)
    own = race.open_place(namespace=True)
    other = race.open_place(namespace=True, skip_pids=2)
    holder = own.start(*race.rotate("--force"), pause=MID_ROTATION)
    wait_until(holder.paused, "the holder did not reach mid-rotation", [holder])
    waiting = other.start(*race.rotate())  # the next run, from the other namespace
    assert waiting.started()["ns"] != holder.started()["ns"]
    assert_skipped_for(waiting, holder)

    holder.open_gate("kill")
    assert holder.result().code == -signal.SIGKILL
    c.caller_types(CARD_LATE)  # a caller right after the kill
    after_kill = other.start(*race.rotate())
    assert_not_a_pid_there(holder.pid, after_kill.started()["ns"])
    assert_skipped_for(after_kill, holder)
    assert s.flow_block().key_id in keys_before  # the killed rotation is still unfinished

    resumed = own.start(*race.rotate())
    outcome = resumed.outcome()
    assert outcome["outcome"] == "rotated", resumed.describe()
    assert outcome["detail"].startswith("resumed rotation "), outcome
    result = c.converges("holder SIGKILLed", ("rotate",), None, keys_before)
    assert result["outcome"] == "not_due", result
    s.assert_no_secret_in_any_output(expected_keys=2)


def test_a_rotation_deciding_while_another_associates_its_key_is_skipped_not_failed(
    race: Race,
) -> None:
    """A run reads the instance's state (no rotation running), and before it lists Connect's
    keys, another run takes the lock and associates its new key: one that the keyring does not
    hold yet. That is the other rotation at work, not an orphan: the late run is skipped, it
    does not fail (a failure raises the alarm and sends a notice)."""
    c, s = race.c, race.s
    keys_before = key_ids(s)
    here = race.open_place(namespace=False)
    # Its one listing of Connect's keys before the lock, made after it read the keyring: the
    # listing that its decision (keys to retire first) and the retires to finish both use.
    late = here.start(*race.rotate("--force"), pause=("before", "connect:ListSecurityKeys", 1))
    wait_until(late.paused, "the late run did not reach its decision", [late])
    holder = here.start(*race.rotate("--force"), pause=MID_ROTATION)
    wait_until(holder.paused, "the holder did not reach mid-rotation", [holder, late])
    new = set(s.associations()) - keys_before
    assert len(new) == 1, f"the holder's new key, not yet in the keyring: {new}"
    late.open_gate()
    assert_skipped_for(late, holder)

    holder.open_gate()
    assert holder.outcome()["outcome"] == "rotated", holder.describe()
    result = c.converges("a decision outside the lock", ("rotate",), None, keys_before)
    assert result["outcome"] == "not_due", result
    s.assert_no_secret_in_any_output(expected_keys=2)
