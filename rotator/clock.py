"""Where "now" comes from: the system clock, or the sandbox's simulated clock, never a flag."""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime

# The Protocol lives with the other ports; imported from here by callers of SystemClock & co.
from rotator.ports import Clock as Clock

# The path the sandbox serves its simulated clock on; no AWS endpoint answers it.
SANDBOX_CLOCK_PATH = "/_sandbox/clock"
# What the sandbox puts in its answer, so that an unrelated loopback server is never taken for it.
SANDBOX_CLOCK_MARK = "connect-key-rotator-sandbox"


class SystemClock:
    """Real time: what every deployment uses."""

    simulated = False

    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True)
class SandboxClock:
    """The simulated clock a local sandbox serves, so the demo and tests can live a key's year.

    Only reachable through a loopback endpoint that answers with the sandbox's mark: a real
    deployment (AWS endpoints, or no endpoint override) cannot pick it up by accident."""

    url: str
    simulated = True

    def now(self) -> datetime:
        answer = _read_sandbox_clock(self.url)
        if answer is None:
            raise OSError(f"the sandbox clock at {self.url} stopped answering")
        return answer[0]


def clock_from_environment() -> Clock:
    """The sandbox's simulated clock when AWS_ENDPOINT_URL is a loopback sandbox whose clock
    was moved; real time otherwise (every deployment, and a sandbox at real time)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if not _is_loopback_http(endpoint):
        return SystemClock()
    url = endpoint.rstrip("/") + SANDBOX_CLOCK_PATH
    answer = _read_sandbox_clock(url)
    if answer is None or not answer[1]:
        return SystemClock()
    return SandboxClock(url)


def local_sandbox() -> bool:
    """Whether AWS_ENDPOINT_URL is a local sandbox (`rotator sandbox`, the demo), at any time."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if not _is_loopback_http(endpoint):
        return False
    return _read_sandbox_clock(endpoint.rstrip("/") + SANDBOX_CLOCK_PATH) is not None


def describe(now: datetime, *, simulated: bool) -> str:
    """One line that says which clock a run used (printed on every simulated run)."""
    kind = "simulated time (sandbox clock)" if simulated else "real time"
    return f"{kind}: {now.isoformat(timespec='seconds')}"


def _is_loopback_http(endpoint: str) -> bool:
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme != "http" or not parsed.hostname:
        return False
    if parsed.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parsed.hostname).is_loopback
    except ValueError:
        return False


def _read_sandbox_clock(url: str) -> tuple[datetime, bool] | None:
    """(the sandbox's time, whether it was moved off real time), or None if no sandbox answers."""
    try:
        # S310: a loopback http URL, checked by the caller; never user-supplied schemes.
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
            answer = json.loads(response.read(4096))
        if not isinstance(answer, dict) or answer.get("service") != SANDBOX_CLOCK_MARK:
            return None
        moment = datetime.fromisoformat(str(answer["now"]))
    except (OSError, ValueError, KeyError):
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)), answer.get(
        "simulated"
    ) is True
