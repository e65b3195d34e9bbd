"""What every `rotator` command handler receives besides its arguments, and the handler's shape.

Both the CLI's own handlers and the runbook's use it, so neither imports the other."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rotator.clock import Clock
    from rotator.config import Settings
    from rotator.entrypoints.bootstrap import Adapters

# `rotator ARGV` run in this process, printing to the stream given: a runbook's step, the demo.
Executor = Callable[[Sequence[str], TextIO], int]


@dataclass(frozen=True)
class Moment:
    """The time a command runs at, and whether it may change anything at that time."""

    now: datetime
    what_if: bool = False  # --now: evaluate only
    simulated: bool = False  # the sandbox's clock, not real time

    @classmethod
    def resolve(cls, requested: datetime | None, clock: Clock) -> Moment:
        if requested is not None:
            return cls(requested, what_if=True, simulated=clock.simulated)
        return cls(clock.now(), simulated=clock.simulated)

    def banner(self) -> str | None:
        """The line printed before a what-if's or a simulated run's output."""
        if self.what_if:
            return (
                f"what-if at {self.now.isoformat(timespec='seconds')}: evaluated only, "
                "nothing was changed"
            )
        if self.simulated:
            from rotator.clock import describe  # the clock reads the sandbox over HTTP

            return describe(self.now, simulated=True)
        return None


@dataclass(frozen=True)
class Session:
    """A command that uses AWS: the time it runs at and the adapters built for it."""

    moment: Moment
    adapters: Adapters


@dataclass(frozen=True)
class Context:
    """Where a handler prints, how it runs a nested command, and (for a command that uses AWS)
    its session. A command registered without AWS never builds one: asking for it is a bug."""

    out: TextIO
    execute: Executor
    session: Session | None = None
    # The command line as typed (`rotator request` records the command it asks for).
    argv: tuple[str, ...] = ()
    # The request an approval runs (`rotator approve`): the dual-control gate lets this one
    # run through. Set only by the approve handler, never from the command line.
    approval: str | None = None

    def _session(self) -> Session:
        if self.session is None:
            raise RuntimeError("this command is registered as one that needs no AWS")
        return self.session

    @property
    def moment(self) -> Moment:
        return self._session().moment

    @property
    def adapters(self) -> Adapters:
        return self._session().adapters

    @property
    def settings(self) -> Settings:
        return self._session().adapters.settings


Handler = Callable[[argparse.Namespace, Context], int]
