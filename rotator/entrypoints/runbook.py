"""`rotator runbook list|show|run|audit`: the on-call runbooks, each step run through the CLI
itself, and the audit trail of their runs."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import json
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from rotator.adapters.runbook_audit import SsmRunbookAudit
from rotator.domain.runbook import MAIN, PLACEHOLDER
from rotator.entrypoints.bootstrap import Adapters
from rotator.services.runbook_runner import Console, prepare, run_procedure, show_plan
from rotator.services.runbooks import list_runbooks, load_runbook

EXIT_USAGE = 2


def configure_runbook_parser(parser: argparse.ArgumentParser) -> None:
    """Adds list/show/run under the `runbook` subcommand parser the CLI created."""
    actions = parser.add_subparsers(dest="runbook_action", required=True, metavar="ACTION")
    actions.add_parser("list", help="every runbook: name, title, purpose, procedures")
    show = actions.add_parser("show", help="print a runbook's Markdown")
    show.add_argument("name", metavar="NAME")
    run = actions.add_parser(
        "run", help="run a runbook's steps; each step that changes state asks first"
    )
    run.add_argument("name", metavar="NAME")
    run.add_argument(
        "--procedure", default=MAIN, help="a named procedure of the runbook (default: main)"
    )
    run.add_argument(
        "--param",
        action="append",
        default=[],
        type=parse_param,
        metavar="NAME=VALUE",
        help="fills <NAME> in the steps; repeat it for an option that takes several values",
    )
    run.add_argument("--yes", action="store_true", help="do not ask before steps that change state")
    run.add_argument(
        "--dry-run", action="store_true", help="print the checked steps; run nothing, audit nothing"
    )
    audit = actions.add_parser("audit", help="every recorded run: when, by whom, how it ended")
    audit.add_argument("--json", action="store_true", help="every audit record, as JSON")
    audit.set_defaults(run=show_audit)
    parser.set_defaults(run=run_runbook)


def parse_param(value: str) -> tuple[str, str]:
    name, equals, text = value.partition("=")
    if not equals or not PLACEHOLDER.fullmatch(f"<{name}>"):
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=VALUE with NAME like INSTANCE_ID")
    return name, text


def browse_runbooks(args: argparse.Namespace, out: TextIO) -> int:
    """`runbook list` and `runbook show NAME`: no AWS needed, so they work anywhere."""
    if args.runbook_action == "list":
        for runbook in list_runbooks():
            procedures = ", ".join(f"{p.name} ({len(p.steps)} steps)" for p in runbook.procedures)
            out.write(f"{runbook.name:<24}{runbook.title}\n{'':<24}{runbook.purpose}\n")
            out.write(f"{'':<24}procedures: {procedures}\n")
        return 0
    out.write(load_runbook(args.name).markdown)
    return 0


def run_runbook(args: argparse.Namespace, adapters: Adapters, moment: object, out: TextIO) -> int:
    """`runbook run NAME` (CLI signature: arguments, adapters, time, output stream)."""
    runbook = load_runbook(args.name)
    params: dict[str, list[str]] = {}
    for name, value in args.param:
        params.setdefault(name, []).append(value)
    procedure = runbook.procedure(args.procedure)
    planned = prepare(runbook, procedure, params, validate_command)
    if args.dry_run:
        return show_plan(runbook, procedure, planned, out)
    settings = adapters.settings
    global_options = ["--prefix", settings.keyring_prefix, "--log-level", settings.log_level]
    if settings.kms_key_id:
        global_options += ["--kms-key-id", settings.kms_key_id]
    audit = SsmRunbookAudit(adapters.ssm, settings.keyring_prefix)
    console = Console(
        execute=cli_executor(global_options, out),
        confirm=stdin_confirm(out),
        audit=lambda record: audit.write(record.event()),
        clock=lambda: datetime.now(UTC),
        out=out,
    )
    return run_procedure(
        runbook, procedure, planned, params, console, actor=operator(), assume_yes=args.yes
    )


def show_audit(args: argparse.Namespace, adapters: Adapters, now: datetime, out: TextIO) -> int:
    """`runbook audit`: one line per run, as its latest record tells (`--json`: every record)."""
    records = SsmRunbookAudit(adapters.ssm, adapters.settings.keyring_prefix).records()
    if args.json:
        out.write(json.dumps({"records": records}, indent=2) + "\n")
        return 0
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
    return 0


def validate_command(argv: Sequence[str]) -> str | None:
    """The real parser's complaint about a step (None: a valid `rotator` command)."""
    from rotator.entrypoints.cli import build_parser  # the CLI imports this module

    complaint = io.StringIO()
    try:
        with contextlib.redirect_stderr(complaint):
            build_parser().parse_args(list(argv))
    except SystemExit:
        lines = complaint.getvalue().strip().splitlines()
        return lines[-1] if lines else "not a valid command"
    return None


def cli_executor(global_options: list[str], out: TextIO) -> Callable[[Sequence[str]], int]:
    """Runs a step in this process through the CLI's own main(); its exit code is the result."""

    def execute(argv: Sequence[str]) -> int:
        from rotator.entrypoints.cli import main  # the CLI imports this module

        try:
            return main([*global_options, *argv], out)
        except SystemExit as stop:  # argparse: checked before the run, but never fatal here
            return stop.code if isinstance(stop.code, int) else EXIT_USAGE

    return execute


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


def operator() -> str:
    """Who runs the runbook, for its audit record (CloudTrail adds the IAM principal)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} (runbook)"
