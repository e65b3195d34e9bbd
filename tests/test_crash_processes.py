"""Issue 9's proof with real processes: `rotator` SIGKILLed after chosen AWS calls and at random
moments, against `rotator sandbox`; a plain re-run converges every time.

Converged means: `rotator verify` passes, every contact encrypted before (and right after) the
kill decrypts in a new Lambda container, and the kill cost exactly one rotation (one new key in
the keyring, not two). The exhaustive sweep over every call is in-process
(tests/test_rotation_faults.py); here a handful of points prove it across processes, where the
dead run's lock, its half-written records and Connect's state are all that is left of it.

The killed process runs the rotator's own CLI entry point through a wrapper (KILLER) that hooks
botocore's call events: the product has no test hooks.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli_e2e import (
    CARD_AFTER,
    CARD_BEFORE,
    CARD_LATE,
    CLI_TIMEOUT,
    CliRun,
    CliWorld,
    SandboxProcess,
    lambda_decrypts,
    new_scenario,
    ok,
    sandbox_process,  # noqa: F401 - the module's `rotator sandbox` process, a fixture
)

DUE = timedelta(days=366)  # the cryptoperiod (365 days) is over: a plain `rotate` rotates
PAST_GRACE = timedelta(days=8)  # a previous key's grace period (7 days) is over
SIGKILLED = -signal.SIGKILL
RANDOM_KILLS = 3
RANDOM_SEED = 9  # the number: the same moments on every run

# `rotator ARGV...` (the CLI's own entry point) that SIGKILLs itself at one AWS call: before it
# is sent, or right after its answer came back (AWS holds its effect, the rotator never acts on
# it). It logs every call it completed, one line each, so the test sees where it died.
KILLER = """
import os, signal, sys
import boto3
from rotator.entrypoints.cli import main

when, target, occurrence, call_log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
matched = 0

def on_call(phase):
    def hook(model, **_):
        global matched
        name = f"{model.service_model.service_name}:{model.name}"
        if phase == "after":
            with open(call_log, "a") as log:
                log.write(name + "\\n")
        if phase == when and target in (name, "any"):
            matched += 1
            if matched == occurrence:
                os.kill(os.getpid(), signal.SIGKILL)
    return hook

boto3.setup_default_session()  # every client the CLI makes comes from this session
for phase in ("before", "after"):
    boto3.DEFAULT_SESSION.events.register(f"{phase}-call", on_call(phase))
sys.exit(main(sys.argv[5:]))
"""


@dataclass(frozen=True)
class Kill:
    """Where the process dies: `when` ("before", "after") the `occurrence`-th call `call`
    ("service:Operation", or "any" call); "never" runs to the end."""

    when: str
    call: str = "any"
    occurrence: int = 1
    why: str = ""

    def __str__(self) -> str:
        if self.when == "never":
            return "run to its end"
        return f"killed {self.when} {self.call} #{self.occurrence} ({self.why})"

    def assert_reached(self, calls: list[str]) -> None:
        """The call log shows the process died exactly there."""
        if self.call == "any":
            done = len(calls)
        else:
            done = calls.count(self.call)
            if self.when == "after":
                assert calls[-1] == self.call, f"{self}: last call {calls[-1:]}"
        expected = self.occurrence if self.when == "after" else self.occurrence - 1
        assert done == expected, f"{self}: {done} such calls completed, calls: {calls}"


NEVER = Kill("never")


@dataclass
class Crashing:
    """A scenario whose `rotator` runs can be killed; ciphertexts to check after each kill."""

    s: CliWorld
    killer: Path
    contacts: dict[str, str]  # ciphertext -> the card a caller typed

    def start(self, kill: Kill, *argv: str) -> tuple[subprocess.Popen[str], Path]:
        call_log = self.killer.parent / f"calls-{uuid.uuid4().hex[:8]}.log"
        command = [sys.executable, str(self.killer), kill.when, kill.call, str(kill.occurrence)]
        process = subprocess.Popen(
            [*command, str(call_log), *argv],
            cwd=self.s.sandbox.workdir,
            env=self.s.cli_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        return process, call_log

    def run(self, kill: Kill, *argv: str) -> list[str]:
        """`rotator ARGV` killed at `kill`: the calls it completed."""
        process, call_log = self.start(kill, *argv)
        code = self.finish(process, argv)
        calls = call_log.read_text().splitlines() if call_log.exists() else []
        expected = 0 if kill is NEVER else SIGKILLED
        assert code == expected, f"rotator {' '.join(argv)} {kill}: exited {code}"
        if kill is not NEVER:
            kill.assert_reached(calls)
        return calls

    def finish(self, process: subprocess.Popen[str], argv: tuple[str, ...]) -> int:
        """Wait for (and reap) the process; its output joins the scenario's secret check."""
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT)
        self.s.runs.append(CliRun(argv, process.returncode, stdout, stderr))
        return process.returncode

    def caller_types(self, card: str) -> None:
        """A caller reaching the flow now; their contact must decrypt after every re-run."""
        self.contacts[self.s.caller_types(card)] = card

    def converges(
        self, where: str, rerun: tuple[str, ...], at: datetime | None, keys_before: set[str]
    ) -> dict[str, Any]:
        """After a kill: a plain re-run, verify, every contact decrypts, exactly one new key.
        The re-run's result for the instance."""
        s = self.s
        (result,) = s.rotator(*rerun, "--json", at=at, expect=0).json()["results"]
        verified = s.rotator("verify", "--instance-id", s.instance_id, "--json", at=at, expect=0)
        assert verified.json()["ok"] is True, where
        new = key_ids(s) - keys_before
        assert len(new) == 1, f"{where}: one rotation per kill, not {len(new)}: {sorted(new)}"
        assert {s.flow_block().key_id, s.module_block().key_id} == new, where
        assert s.flow_block().key_id in s.associations() and len(s.associations()) <= 2, where
        for ciphertext, card in self.contacts.items():
            assert lambda_decrypts(ciphertext, new_container=True) == ok(card), where
        self.caller_types(CARD_AFTER)  # and a caller on the new key
        return dict(result)


def key_ids(s: CliWorld) -> set[str]:
    """Every key in the keyring, by its metadata (a key is stored with it)."""
    root = f"{s.prefix}/keys/"
    return {
        name[len(root) :].partition("/")[0]
        for name in s.parameter_versions()
        if name.startswith(root) and name.endswith("/metadata")
    }


def crashing(
    sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch, name: str
) -> Iterator[Crashing]:
    killer = sandbox.workdir / f"killer-{name}" / "rotator_killed.py"
    killer.parent.mkdir()
    killer.write_text(KILLER)
    for scenario in new_scenario(sandbox, monkeypatch, name):
        yield Crashing(scenario, killer, {})
        scenario.stand_clock_at(None)  # the next scenario starts on real time


@pytest.fixture
def crash_init(
    sandbox_process: SandboxProcess,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Crashing]:
    name = f"crash-init-{request.node.callspec.id}"  # a fresh instance and keyring per case
    yield from crashing(sandbox_process, monkeypatch, name)


@pytest.fixture
def crash_calls(
    sandbox_process: SandboxProcess,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Crashing]:
    yield from crashing(sandbox_process, monkeypatch, "crash-calls")


@pytest.fixture
def crash_random(
    sandbox_process: SandboxProcess,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Crashing]:
    yield from crashing(sandbox_process, monkeypatch, "crash-random")


# Each with what the plain re-run does: resume the rotation, or find it done.
INIT_KILLS = [
    pytest.param(
        Kill("after", "connect:UpdateContactFlowContent", why="the flow moved, the module not"),
        "resumed rotation",
        id="flow-moved",
    ),
    pytest.param(
        Kill("before", "ssm:DeleteParameter", why="the rotation done, its lock not released"),
        "already initialised",
        id="lock-left",
    ),
]


@pytest.mark.parametrize(("kill", "rerun"), INIT_KILLS)
def test_init_killed_converges_on_rerun(crash_init: Crashing, kill: Kill, rerun: str) -> None:
    c, s = crash_init, crash_init.s
    c.run(kill, *s.init_argv())
    assert s.flow_block().key_id is not None  # callers meet the new key at once
    c.caller_types(CARD_LATE)

    result = c.converges(str(kill), s.init_argv(), at=None, keys_before=set())
    assert result["detail"].startswith(rerun), result
    s.assert_no_secret_in_any_output(expected_keys=1)


# Chained on one instance, each a year after the last, so every kill meets the same shape of
# rotation: the previous key (past its grace) is retired to free Connect's second slot, then the
# new key is staged, associated, stored, put into the flow and the module, and promoted.
# Each with what the plain re-run does: a new rotation, the killed one resumed, or nothing left.
ROTATE_KILLS = (
    (Kill("after", "any", why="the first call: nothing written yet"), "rotated"),
    (
        Kill(
            "before",
            "connect:DisassociateSecurityKey",
            why="the old key's retire recorded, Connect still holds it",
        ),
        "rotated",
    ),
    (
        Kill(
            "after", "connect:AssociateSecurityKey", why="Connect holds a key the keyring has not"
        ),
        "resumed",
    ),
    (
        Kill("after", "connect:UpdateContactFlowContent", why="the flow moved, the module not"),
        "resumed",
    ),
    (Kill("after", "ssm:GetParametersByPath", why="the last call: the staging sweep"), "not_due"),
)


def test_rotate_and_retire_killed_at_chosen_aws_calls_converge_on_plain_reruns(
    crash_calls: Crashing,
) -> None:
    c, s = crash_calls, crash_calls.s
    t0 = datetime.now(UTC)
    s.rotator(*s.init_argv(), expect=0)
    c.caller_types(CARD_BEFORE)
    at = t0
    for kill, rerun in ROTATE_KILLS:
        at += DUE
        keys_before = key_ids(s)
        s.stand_clock_at(at)
        c.run(kill, "rotate", "--instance-id", s.instance_id, "--force")
        c.caller_types(CARD_LATE)  # a caller right after the kill
        result = c.converges(str(kill), ("rotate",), at, keys_before)
        resumed = result["detail"].startswith("resumed rotation")
        outcome = "resumed" if resumed else result["outcome"]
        assert outcome == rerun, f"{kill}: {result}"
        c.caller_types(CARD_BEFORE)  # the next kill's "before" contact

    # `retire` of the previous key past its grace, killed after its record says retired and
    # before Connect let go of the key; re-run as it was typed.
    at += PAST_GRACE
    (previous,) = set(s.associations()) - {s.flow_block().key_id}
    keys_before = key_ids(s)
    s.stand_clock_at(at)
    cut = Kill("before", "connect:DisassociateSecurityKey", why="a retire cut in half")
    c.run(cut, "retire", previous)
    again = s.rotator("retire", previous, at=at, expect=0).stdout
    assert f"key {previous} is retired (decrypt-only) but was still associated" in again
    s.rotator("verify", "--instance-id", s.instance_id, at=at, expect=0)
    assert s.associations() == [s.flow_block().key_id] and key_ids(s) == keys_before
    for ciphertext, card in c.contacts.items():  # the retired key's contacts included
        assert lambda_decrypts(ciphertext, new_container=True) == ok(card)
    s.assert_no_secret_in_any_output(expected_keys=len(ROTATE_KILLS) + 1)


def test_rotate_killed_at_random_moments_converges_on_plain_rerun(crash_random: Crashing) -> None:
    """SIGKILL from outside, at a seeded random moment: a while after a random call (one in each
    third of the run), so it may land mid-request (AWS acts, the answer is lost) or mid-keygen."""
    c, s = crash_random, crash_random.s
    rng = random.Random(RANDOM_SEED)
    t0 = datetime.now(UTC)
    # The init counts its calls: a rotation (with its retire) makes more, so it always dies.
    init_calls = len(c.run(NEVER, *s.init_argv()))
    c.caller_types(CARD_BEFORE)

    at = t0
    for third in range(RANDOM_KILLS):
        at += DUE
        keys_before = key_ids(s)
        s.stand_clock_at(at)
        call = rng.randint(third * init_calls // 3 + 1, (third + 1) * init_calls // 3)
        delay = rng.uniform(0.0, 0.03)
        argv = ("rotate", "--instance-id", s.instance_id, "--force")
        process, call_log = c.start(NEVER, *argv)
        wait_for_calls(process, call_log, call)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        code = c.finish(process, argv)  # reaped: its lock's holder is provably gone
        calls = call_log.read_text().splitlines()
        where = f"killed {delay * 1000:.0f} ms after call {call}, dead after {len(calls)} calls"
        assert code == SIGKILLED, f"{where}: it exited {code} first"
        c.caller_types(CARD_LATE)
        c.converges(where, ("rotate",), at, keys_before)
        c.caller_types(CARD_BEFORE)
    s.assert_no_secret_in_any_output(expected_keys=1 + RANDOM_KILLS)


def wait_for_calls(process: subprocess.Popen[str], call_log: Path, count: int) -> None:
    """Until the process has completed `count` AWS calls."""
    deadline = time.monotonic() + CLI_TIMEOUT
    while not call_log.exists() or call_log.read_text().count("\n") < count:
        assert process.poll() is None, f"the rotator exited before {count} AWS calls"
        assert time.monotonic() < deadline, f"no {count} AWS calls in time"
        time.sleep(0.001)
