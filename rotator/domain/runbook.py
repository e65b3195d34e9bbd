"""Runbooks as data: Markdown in; procedures of `rotator` steps out, each changing or read-only."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rotator.errors import ConfigError

MAIN = "main"
EXECUTABLE = "rotator"  # the info string of a fenced block whose lines are steps
NAME = re.compile(r"[a-z][a-z0-9-]*")
PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*)>")
_FENCE = re.compile(r"(```+|~~~+)\s*(\S*)\s*(.*?)\s*")
# What a step's command does is derived from the command itself, never from annotations:
# these commands change nothing in AWS (`report --output` writes a local file only) ...
READ_ONLY_COMMANDS = frozenset({"status", "verify", "report"})
# ... these do only with this flag, and every other command changes state.
READ_ONLY_WITH_FLAG = {"rotate": "--dry-run"}
# Long-running servers, the demo and runbooks themselves are never steps of a runbook.
NOT_STEPS = frozenset({"runbook", "sandbox", "serve", "demo"})
Params = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class Step:
    """One line of a `rotator` block: the CLI arguments after `rotator`, as written."""

    line: int
    argv: tuple[str, ...]
    note: str = ""

    @property
    def command(self) -> str:
        return self.argv[0]

    @property
    def changes(self) -> bool:
        if self.command in READ_ONLY_COMMANDS:
            return False
        flag = READ_ONLY_WITH_FLAG.get(self.command)
        return flag is None or flag not in self.argv[1:]

    def placeholders(self) -> set[str]:
        return {name for token in self.argv for name in PLACEHOLDER.findall(token)}

    def fill(self, params: Params) -> tuple[str, ...]:
        """The arguments with every placeholder replaced.

        A placeholder that is a whole option value repeats its option for each of several
        values, and an empty value leaves the option out; anywhere else it takes one value."""
        filled: list[str] = []
        for index, token in enumerate(self.argv):
            whole = PLACEHOLDER.fullmatch(token)
            if whole and index > 0 and self.argv[index - 1].startswith("--"):
                option = filled.pop()
                for value in params[whole.group(1)]:
                    if value:
                        filled += [option, value]
                continue
            filled.append(PLACEHOLDER.sub(lambda m: self._single(params, m.group(1)), token))
        return tuple(filled)

    def _single(self, params: Params, name: str) -> str:
        values = params[name]
        if len(values) != 1 or not values[0]:
            raise ConfigError(
                f"--param {name}",
                f"<{name}> in line {self.line} takes exactly one non-empty value",
            )
        return values[0]


def render(argv: Sequence[str]) -> str:
    """A command line as it can be pasted into a shell."""
    return shlex.join([EXECUTABLE, *argv])


@dataclass(frozen=True)
class Procedure:
    """Steps run in order: the `main` one, or a named one (back-out, follow-up)."""

    name: str
    steps: tuple[Step, ...]

    def placeholders(self) -> list[str]:
        return sorted(set().union(*(step.placeholders() for step in self.steps)))


@dataclass(frozen=True)
class Runbook:
    name: str
    title: str
    purpose: str
    markdown: str
    procedures: tuple[Procedure, ...]

    def procedure(self, name: str = MAIN) -> Procedure:
        for procedure in self.procedures:
            if procedure.name == name:
                return procedure
        known = ", ".join(p.name for p in self.procedures)
        raise ConfigError("--procedure", f"runbook {self.name} has no {name!r} (it has {known})")


class _Parser:
    """Reads the Markdown line by line; only fenced `rotator` blocks hold steps."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.title = ""
        self.purpose: list[str] = []
        self.purpose_done = False
        self.fence: str | None = None
        self.procedure: str | None = None
        self.note: list[str] = []
        self.steps: dict[str, list[Step]] = {}

    def error(self, line: int, problem: str) -> ConfigError:
        return ConfigError(f"runbook {self.name} line {line}", problem)

    def feed(self, number: int, line: str) -> None:
        if self.fence is not None:
            self._inside_fence(number, line)
            return
        fence = _FENCE.fullmatch(line.strip())
        if fence:
            self.fence = fence.group(1)
            if fence.group(2) == EXECUTABLE:
                self._open(number, fence.group(3) or MAIN)
        elif not self.title:
            if line.startswith("# "):
                self.title = line[2:].strip()
        elif not self.purpose_done:
            if line.strip():
                self.purpose.append(line.strip())
            elif self.purpose:
                self.purpose_done = True

    def _open(self, number: int, procedure: str) -> None:
        if not NAME.fullmatch(procedure):
            raise self.error(number, f"procedure name {procedure!r} is not lower-case-with-dashes")
        self.procedure = procedure
        self.steps.setdefault(procedure, [])

    def _inside_fence(self, number: int, line: str) -> None:
        text = line.strip()
        if self.fence is not None and _closes(text, self.fence):
            if self.procedure is not None and self.note:
                raise self.error(number, "a comment at the end of a block has no command")
            self.fence, self.procedure = None, None
            return
        if self.procedure is None or not text:
            return
        if text.startswith("#"):
            self.note.append(text.lstrip("#").strip())
            return
        self.steps[self.procedure].append(self._step(number, text))
        self.note = []

    def _step(self, number: int, text: str) -> Step:
        try:
            tokens = shlex.split(text)
        except ValueError as error:
            raise self.error(number, f"cannot split the command: {error}") from None
        if len(tokens) < 2 or tokens[0] != EXECUTABLE:
            raise self.error(number, f"a step is one `{EXECUTABLE} COMMAND ...` per line")
        if tokens[1].startswith("-"):
            raise self.error(number, "global options come from `rotator runbook run`, not a step")
        if tokens[1] in NOT_STEPS:
            raise self.error(number, f"`{EXECUTABLE} {tokens[1]}` cannot be a runbook step")
        return Step(number, tuple(tokens[1:]), " ".join(self.note))

    def result(self, markdown: str, lines: int) -> Runbook:
        if self.fence is not None:
            raise self.error(lines, "a fenced block is not closed")
        if not self.title or not self.purpose:
            raise self.error(1, "needs a `# Title` line and a one-paragraph purpose under it")
        empty = [name for name, steps in self.steps.items() if not steps]
        if empty:
            raise self.error(lines, f"procedure(s) without a step: {', '.join(empty)}")
        if MAIN not in self.steps:
            raise self.error(lines, f"has no ```{EXECUTABLE} block (its {MAIN} procedure)")
        procedures = tuple(Procedure(name, tuple(steps)) for name, steps in self.steps.items())
        return Runbook(self.name, self.title, " ".join(self.purpose), markdown, procedures)


def _closes(text: str, fence: str) -> bool:
    """A closing fence: the opening's character, at least as many times, nothing else."""
    return len(text) >= len(fence) and text == fence[0] * len(text)


def parse_runbook(name: str, markdown: str) -> Runbook:
    """Every ```rotator block (```rotator NAME: a named procedure) is parsed; others are prose."""
    parser = _Parser(name)
    lines = markdown.splitlines()
    for number, line in enumerate(lines, 1):
        parser.feed(number, line)
    return parser.result(markdown, len(lines))
