"""`rotator runbook list|show|run|audit`: the on-call runbooks, each step run through the CLI
itself, and the audit trail of their runs."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from rotator.entrypoints.cli_context import Context, Executor
from rotator.entrypoints.cli_parser import build_parser
from rotator.entrypoints.invocation import actor
from rotator.exit_codes import ExitCode


def list_runbooks_command(args: argparse.Namespace, ctx: Context) -> int:
    """`runbook list`: no AWS needed, so it works anywhere."""
    from rotator.services.runbooks import list_runbooks

    for runbook in list_runbooks():
        procedures = ", ".join(f"{p.name} ({len(p.steps)} steps)" for p in runbook.procedures)
        ctx.out.write(f"{runbook.name:<24}{runbook.title}\n{'':<24}{runbook.purpose}\n")
        ctx.out.write(f"{'':<24}procedures: {procedures}\n")
    return ExitCode.OK


def show_runbook(args: argparse.Namespace, ctx: Context) -> int:
    """`runbook show NAME`: the runbook's Markdown; no AWS needed."""
    from rotator.services.runbooks import load_runbook

    ctx.out.write(load_runbook(args.name).markdown)
    return ExitCode.OK


def run_runbook(args: argparse.Namespace, ctx: Context) -> int:
    """`runbook run NAME`: each step through the CLI's own command runner, audited."""
    from rotator.services.runbook_runner import Console, prepare, run_procedure, show_plan
    from rotator.services.runbooks import load_runbook

    out = ctx.out
    runbook = load_runbook(args.name)
    params: dict[str, list[str]] = {}
    for name, value in args.param:
        params.setdefault(name, []).append(value)
    procedure = runbook.procedure(args.procedure)
    planned = prepare(runbook, procedure, params, validate_command)
    if args.dry_run:
        return show_plan(runbook, procedure, planned, out)
    settings = ctx.settings
    global_options = ["--prefix", settings.keyring_prefix, "--log-level", settings.log_level]
    if settings.kms_key_id:
        global_options += ["--kms-key-id", settings.kms_key_id]
    audit = ctx.adapters.runbook_audit()
    console = Console(
        execute=cli_executor(global_options, out, ctx.execute),
        confirm=stdin_confirm(out),
        audit=lambda record: audit.write(record.event()),
        clock=lambda: datetime.now(UTC),
        out=out,
    )
    return run_procedure(
        runbook,
        procedure,
        planned,
        params,
        console,
        actor=actor("runbook"),
        assume_yes=args.yes,
        principal=ctx.adapters.identity.caller_arn(),  # each step records its own as well
    )


def show_audit(args: argparse.Namespace, ctx: Context) -> int:
    """`runbook audit`: one line per run, as its latest record tells (`--json`: every record)."""

    out = ctx.out
    records = ctx.adapters.runbook_audit().records()
    if args.json:
        out.write(json.dumps({"records": records}, indent=2) + "\n")
        return ExitCode.OK
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        latest[str(record.get("run_id"))] = record
    for record in latest.values():
        ran = sum(s.get("exit_code") is not None for s in record.get("steps", []))
        out.write(
            f"{record.get('started_at')}  {record.get('outcome', '?'):<11} "
            f"{record.get('runbook')} ({record.get('procedure')})  "
            f"{ran}/{len(record.get('planned', []))} steps run  by {record.get('actor')}  "
            f"run {record.get('run_id')}\n"
        )
    out.write(f"{len(latest)} run(s)\n")
    return ExitCode.OK


def validate_command(argv: Sequence[str]) -> str | None:
    """The real parser's complaint about a step (None: a valid `rotator` command)."""
    complaint = io.StringIO()
    try:
        with contextlib.redirect_stderr(complaint):
            build_parser().parse_args(list(argv))
    except SystemExit:
        lines = complaint.getvalue().strip().splitlines()
        return lines[-1] if lines else "not a valid command"
    return None


def cli_executor(
    global_options: list[str], out: TextIO, execute: Executor
) -> Callable[[Sequence[str]], int]:
    """Runs a step in this process through the CLI's command runner; its exit code is the
    result."""

    def step(argv: Sequence[str]) -> int:
        try:
            return execute([*global_options, *argv], out)
        except SystemExit as stop:  # argparse: checked before the run, but never fatal here
            return stop.code if isinstance(stop.code, int) else ExitCode.USAGE

    return step


def stdin_confirm(out: TextIO) -> Callable[[str], bool]:
    """Asks on `out`, reads one line from stdin: only y/yes runs the step; end of input is no."""

    def confirm(prompt: str) -> bool:
        out.write(prompt)
        out.flush()
        answer = sys.stdin.readline()
        if not answer.endswith("\n"):
            out.write("\n")
        return answer.strip().lower() in {"y", "yes"}

    return confirm
