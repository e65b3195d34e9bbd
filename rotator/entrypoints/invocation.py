"""Who runs a command and at which requested time: shared by the CLI, its runbooks and the jobs."""

from __future__ import annotations

from datetime import UTC, datetime


def actor(via: str, *, simulated: bool = False) -> str:
    """Who made a change, for the audit trail: the OS user, the host and the way in (`cli`,
    `runbook`); CloudTrail adds the IAM principal."""
    import getpass  # here, not at the top: `rotator --help` never needs them
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return on_clock(f"{user}@{socket.gethostname()} ({via})", simulated=simulated)


def on_clock(who: str, *, simulated: bool) -> str:
    """A change made under the sandbox's simulated clock says so in its actor."""
    return f"{who} [simulated clock]" if simulated else who


def requested_time(raw: object) -> datetime:
    """A what-if time (a `--now` flag, an event's "now"): ISO 8601, a time without an offset is
    taken as UTC. ValueError names the value."""
    try:
        moment = datetime.fromisoformat(str(raw))
    except ValueError:
        raise ValueError(f"{raw!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
