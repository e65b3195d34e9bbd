"""Run a runbook procedure: step by step, asking before each change, stopping at the first
failure, with an audit record written before the first step and after the last."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, TextIO

from lambda_decrypt.logs import get_logger
from rotator.domain.history import EventKind, HistoryEvent
from rotator.domain.runbook import Procedure, Runbook, Step, render
from rotator.errors import ConfigError, ConnectKeyRotatorError
from rotator.exit_codes import ExitCode

log = get_logger("rotator.runbook")
STOPPED = "the runbook stopped here; nothing after it ran"
Planned = list[tuple[Step, tuple[str, ...]]]


class RunbookNotAudited(ConnectKeyRotatorError):
    """The audit record of a run could not be written (before the first step: nothing ran)."""


class RunOutcome(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DECLINED = "declined"
    INTERRUPTED = "interrupted"


EXIT_CODES = {RunOutcome.SUCCEEDED: ExitCode.OK, RunOutcome.INTERRUPTED: ExitCode.INTERRUPTED}


@dataclass(frozen=True)
class StepResult:
    number: int
    command: str
    changes: bool
    at: datetime
    exit_code: int | None  # None: not run (declined)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.number,
            "command": self.command,
            "changes": self.changes,
            "at": self.at.isoformat(),
            "exit_code": self.exit_code,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class RunRecord:
    """Who ran which runbook with which parameters, when, and how each step ended."""

    run_id: str
    runbook: str
    procedure: str
    actor: str
    parameters: Mapping[str, Sequence[str]]
    planned: tuple[str, ...]
    started_at: datetime
    outcome: RunOutcome = RunOutcome.RUNNING
    steps: tuple[StepResult, ...] = ()
    finished_at: datetime | None = None
    message: str = ""
    principal: str = ""  # the AWS principal ARN that ran it

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "run_id": self.run_id,
            "runbook": self.runbook,
            "procedure": self.procedure,
            "actor": self.actor,
            "parameters": {k: list(v) for k, v in sorted(self.parameters.items())},
            "planned": list(self.planned),
            "started_at": self.started_at.isoformat(),
            "outcome": self.outcome.value,
            "steps": [s.to_dict() for s in self.steps],
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "message": self.message,
            "principal": self.principal,
        }

    def event(self) -> HistoryEvent:
        """The record as a history event: written when the run starts and when it ends."""
        return HistoryEvent(
            kind=EventKind.RUNBOOK_RUN,
            at=self.finished_at or self.started_at,
            actor=self.actor,
            reason=self.message or f"{self.runbook} ({self.procedure}) {self.outcome.value}",
            details=self.to_dict(),
            principal=self.principal,
        )


@dataclass(frozen=True)
class Console:
    """How a run reaches the world: the CLI, the operator, the audit trail, the clock."""

    execute: Callable[[Sequence[str]], int]
    confirm: Callable[[str], bool]
    audit: Callable[[RunRecord], None]
    clock: Callable[[], datetime]
    out: TextIO


def prepare(
    runbook: Runbook,
    procedure: Procedure,
    params: Mapping[str, Sequence[str]],
    validate: Callable[[Sequence[str]], str | None],
) -> Planned:
    """Every step filled in and checked as a CLI command before anything runs."""
    wanted = procedure.placeholders()
    missing = [name for name in wanted if name not in params]
    if missing:
        raise ConfigError(
            "--param",
            f"runbook {runbook.name} ({procedure.name}) needs a value for "
            + ", ".join(f"<{name}>" for name in missing)
            + ": give "
            + " ".join(f"--param {name}=..." for name in missing),
        )
    unknown = sorted(set(params) - set(wanted))
    if unknown:
        raise ConfigError(
            "--param",
            f"runbook {runbook.name} ({procedure.name}) has no <{'>, <'.join(unknown)}>"
            f" (it takes: {', '.join(wanted) or 'no parameters'})",
        )
    planned = [(step, step.fill(params)) for step in procedure.steps]
    problems = [
        f"line {step.line}: {render(argv)}: {problem}"
        for step, argv in planned
        if (problem := validate(argv)) is not None
    ]
    if problems:
        raise ConfigError(f"runbook {runbook.name}", "invalid step(s): " + "; ".join(problems))
    return planned


def show_plan(runbook: Runbook, procedure: Procedure, planned: Planned, out: TextIO) -> int:
    """--dry-run: every step as it would run; nothing runs and no audit record is written."""
    out.write(f"runbook {runbook.name} ({procedure.name}), dry run: nothing runs\n")
    for number, (step, argv) in enumerate(planned, 1):
        _announce(out, number, len(planned), step, argv)
    changing = sum(step.changes for step, _ in planned)
    out.write(f"\n{len(planned)} steps, {changing} would ask before changing state\n")
    return 0


def run_procedure(
    runbook: Runbook,
    procedure: Procedure,
    planned: Planned,
    params: Mapping[str, Sequence[str]],
    console: Console,
    *,
    actor: str,
    assume_yes: bool,
    principal: str = "",
) -> int:
    """0 when every step succeeded; 1 at the first failure or a declined step; 130 on Ctrl-C."""
    record = RunRecord(
        run_id=str(uuid.uuid4()),
        runbook=runbook.name,
        procedure=procedure.name,
        actor=actor,
        parameters=params,
        planned=tuple(render(argv) for _, argv in planned),
        started_at=console.clock(),
        principal=principal,
    )
    try:
        console.audit(record)
    except ConnectKeyRotatorError as error:
        raise RunbookNotAudited(f"no audit record could be written; nothing ran: {error}") from None
    out = console.out
    changing = sum(step.changes for step, _ in planned)
    out.write(
        f"runbook {runbook.name} ({procedure.name}): {len(planned)} steps, {changing} change "
        f"state{'' if assume_yes else ' (each asks first)'}; run {record.run_id} by {actor}\n"
    )
    results: list[StepResult] = []
    outcome, message = _steps(record, planned, console, results, assume_yes=assume_yes)
    out.write(f"\n{message}\n")
    final = replace(
        record, outcome=outcome, steps=tuple(results), finished_at=console.clock(), message=message
    )
    (log.info if outcome is RunOutcome.SUCCEEDED else log.warning)(
        "runbook_run",
        run_id=record.run_id,
        runbook=runbook.name,
        procedure=procedure.name,
        actor=actor,
        parameters={k: list(v) for k, v in params.items()},
        outcome=outcome.value,
        steps_run=len(results),
        message=message,
    )
    try:
        console.audit(final)
    except ConnectKeyRotatorError as error:
        raise RunbookNotAudited(
            f"the run {outcome} but its final audit record could not be written ({error}); "
            f"the start record of run {record.run_id} and the log line remain"
        ) from None
    return EXIT_CODES.get(outcome, ExitCode.FAILURE)


def _steps(
    record: RunRecord,
    planned: Planned,
    console: Console,
    results: list[StepResult],
    *,
    assume_yes: bool,
) -> tuple[RunOutcome, str]:
    total = len(planned)
    try:
        for number, (step, argv) in enumerate(planned, 1):
            command = render(argv)
            _announce(console.out, number, total, step, argv)
            asked = step.changes and not assume_yes
            if asked and not console.confirm(f"run step {number}/{total}? it changes state [y/N] "):
                results.append(StepResult(number, command, True, console.clock(), None))
                return (
                    RunOutcome.DECLINED,
                    f"step {number} not run (declined): {command}; {STOPPED}",
                )
            started, timer = console.clock(), time.perf_counter()
            code = console.execute(argv)
            seconds = round(time.perf_counter() - timer, 3)
            results.append(StepResult(number, command, step.changes, started, code, seconds))
            log.info(
                "runbook_step",
                run_id=record.run_id,
                runbook=record.runbook,
                step=number,
                command=command,
                exit_code=code,
                seconds=seconds,
            )
            if code != 0:
                return (
                    RunOutcome.FAILED,
                    f"step {number} failed (exit {code}): {command}; {STOPPED}",
                )
    except KeyboardInterrupt:
        return RunOutcome.INTERRUPTED, f"interrupted at step {len(results) + 1}; {STOPPED}"
    return (
        RunOutcome.SUCCEEDED,
        f"runbook {record.runbook} ({record.procedure}): all {total} steps succeeded",
    )


def _announce(out: TextIO, number: int, total: int, step: Step, argv: Sequence[str]) -> None:
    kind = "changes state" if step.changes else "read-only"
    out.write(f"\n[{number}/{total}] {render(argv)}    ({kind})\n")
    if step.note:
        out.write(f"      {step.note}\n")
    out.flush()
