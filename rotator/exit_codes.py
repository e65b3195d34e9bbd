"""The exit codes of every `rotator` command, the daemon and the runbook runner, in one place."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a process or a step ended with; an `int`, so it goes to `sys.exit` as it is."""

    OK = 0
    # A command failed, a check found a broken invariant, a report found findings at or above
    # --fail-on, a runbook step failed or was declined.
    FAILURE = 1
    USAGE = 2  # bad arguments or configuration: the message names what to set
    # Dual control: the command needs a second person's approval (`rotator request ...`), or
    # an approval or withdrawal was refused (self-approval, expired, already decided).
    NEEDS_APPROVAL = 3
    INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it
