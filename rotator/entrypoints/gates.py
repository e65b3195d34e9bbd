"""Dual control's gated commands: one table, and how a request's command line is derived."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Gate:
    """A command (by handler name), or one of its flags, that waits for a second person while
    dual control is on. `passes_reason`: the request's --reason is also the flag's own
    (an override is recorded with its reason)."""

    command: str
    what: str  # how a refusal names it: the command, or the flag
    applies: Callable[[argparse.Namespace], bool]
    passes_reason: bool = False


def _always(_: argparse.Namespace) -> bool:
    return True


# One line per gated command or flag (PCI DSS 3.7.6: what can cost data or trust).
GATES: tuple[Gate, ...] = (
    Gate("destroy", "destroy", _always),
    Gate("destroy", "--override-retention", lambda a: a.override_retention, passes_reason=True),
    Gate(
        "destroy",
        "--ignore-stored-ciphertexts",
        lambda a: a.ignore_stored_ciphertexts,
        passes_reason=True,
    ),
    Gate("rotate", "--emergency", lambda a: a.emergency, passes_reason=True),
    Gate("retire", "--emergency", lambda a: a.emergency, passes_reason=True),
    Gate("init", "--abandon-key", lambda a: bool(a.abandon_key), passes_reason=True),
    Gate("rollback", "rollback", _always),
    Gate("import", "import", _always),
)
GATED_COMMANDS = tuple(dict.fromkeys(gate.command for gate in GATES))
# Global options stripped from a request's command line: where the request is kept (the
# approver's --prefix finds it there) and the requester's log level. --kms-key-id stays: it
# changes what `import` does.
LOCAL_OPTIONS = ("--prefix", "--log-level")


def gates_for(args: argparse.Namespace) -> list[Gate]:
    """The gates this parsed command line passes through (none: it runs directly)."""
    return [g for g in GATES if g.command == getattr(args, "handler", None) and g.applies(args)]


def what_if(args: argparse.Namespace) -> bool:
    """--dry-run or --now: it changes nothing, so it needs no approval."""
    return bool(getattr(args, "dry_run", False)) or getattr(args, "now", None) is not None


def dual_control_on(enabled: bool, sandbox: Callable[[], bool]) -> bool:
    """The setting, except against the local sandbox, where it is off unless the environment
    sets it: the sandbox has one principal, and the demo stays one command."""
    if not enabled:
        return False
    return "ROTATOR_DUAL_CONTROL" in os.environ or not sandbox()


def refusal(gates: Sequence[Gate], argv: Sequence[str]) -> str:
    """Why a gated command does not run directly, and the command that requests it."""
    import shlex

    named = ", ".join(dict.fromkeys(g.what for g in gates))
    return (
        f"dual control is on: {named} needs a second person. Request it with "
        f"`rotator request {shlex.join(argv)} --reason TEXT`; another AWS principal then runs "
        "`rotator approve REQUEST_ID` (or add --dry-run / --now for a what-if)"
    )


def strip_options(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """`argv` without `options` (`--flag VALUE` or `--flag=VALUE`)."""
    kept: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split("=", 1)[0]
        if name in options:
            skip = "=" not in token
            continue
        kept.append(token)
    return kept


def requested_argv(raw: Sequence[str]) -> list[str]:
    """The gated command a `rotator [globals] request COMMAND ARGS` line asks for: what follows
    `request`, without the local global options and without --reason (added back by the
    caller when the command takes it)."""
    tokens = strip_options(raw, LOCAL_OPTIONS)
    if "request" not in tokens:
        raise ValueError("not a `rotator request` command line")
    return strip_options(tokens[tokens.index("request") + 1 :], ("--reason",))
