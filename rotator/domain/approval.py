"""Dual control (PCI DSS 3.7.6): a request's state, folded from its history events at a time."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from rotator.domain.history import ClockKind, EventKind, HistoryEvent
from rotator.errors import ConfigError, KeyringError

DEFAULT_REQUEST_EXPIRY_HOURS = 24
# `req-` and 12 hex digits: a request ID is part of an SSM parameter name (the claim).
REQUEST_ID = re.compile(r"req-[0-9a-f]{12}")
APPROVAL_KINDS = frozenset(
    {
        EventKind.APPROVAL_REQUESTED,
        EventKind.APPROVAL_CANCELLED,
        EventKind.APPROVAL_REFUSED,
        EventKind.APPROVAL_GRANTED,
        EventKind.APPROVAL_EXECUTED,
    }
)


class RequestStatus(StrEnum):
    OPEN = "open"  # waits for a second person
    EXPIRED = "expired"  # not approved in time
    CANCELLED = "cancelled"  # withdrawn by its requester
    APPROVED = "approved"  # approved; its command started, no outcome recorded yet
    EXECUTED = "executed"  # approved, and its command's exit code recorded


@dataclass(frozen=True)
class Refusal:
    """An approval or withdrawal that was refused: by whom, when, why."""

    at: datetime
    principal: str
    why: str

    def to_dict(self) -> dict[str, str]:
        return {"at": self.at.isoformat(), "principal": self.principal, "why": self.why}


@dataclass(frozen=True)
class Request:
    """One request for a gated command, as its events record it."""

    request_id: str
    argv: tuple[str, ...]
    reason: str
    requester: str  # the requesting principal's ARN
    requested_at: datetime
    expires_at: datetime
    cancelled_at: datetime | None = None
    approver: str | None = None
    approved_at: datetime | None = None
    exit_code: int | None = None
    finished_at: datetime | None = None
    refusals: tuple[Refusal, ...] = field(default=())

    @property
    def command(self) -> str:
        return shlex.join(["rotator", *self.argv])

    def status(self, now: datetime) -> RequestStatus:
        """A decision (cancel, approval) made in time stands; otherwise, the request is open
        strictly before `expires_at` and expired from that instant on."""
        if self.exit_code is not None:
            return RequestStatus.EXECUTED
        if self.approved_at is not None:
            return RequestStatus.APPROVED
        if self.cancelled_at is not None:
            return RequestStatus.CANCELLED
        return RequestStatus.OPEN if now < self.expires_at else RequestStatus.EXPIRED

    def to_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "command": self.command,
            "argv": list(self.argv),
            "reason": self.reason,
            "requester": self.requester,
            "requested_at": self.requested_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "status": self.status(now).value,
            "cancelled_at": _iso(self.cancelled_at),
            "approver": self.approver,
            "approved_at": _iso(self.approved_at),
            "exit_code": self.exit_code,
            "finished_at": _iso(self.finished_at),
            "refusals": [r.to_dict() for r in self.refusals],
        }


def check_request_id(request_id: str) -> str:
    if not REQUEST_ID.fullmatch(request_id):
        raise ConfigError(
            "REQUEST_ID", f"{request_id!r} is not a request ID (like req-0123456789ab)"
        )
    return request_id


def requests_from(events: Iterable[HistoryEvent]) -> dict[str, Request]:
    """Request ID -> the request as of its latest event (events oldest first; others ignored)."""
    found: dict[str, Request] = {}
    for event in events:
        if event.kind not in APPROVAL_KINDS:
            continue
        details = event.details
        try:
            request_id = str(details["request_id"])
            principal = str(details["principal"])
            if event.kind == EventKind.APPROVAL_REQUESTED:
                found[request_id] = Request(
                    request_id=request_id,
                    argv=tuple(str(a) for a in details["argv"]),
                    reason=event.reason,
                    requester=principal,
                    requested_at=event.at,
                    expires_at=datetime.fromisoformat(details["expires_at"]),
                )
                continue
            request = found.get(request_id)
            if request is None:  # a decision on a request this history does not hold
                continue
            if event.kind == EventKind.APPROVAL_CANCELLED:
                request = replace(request, cancelled_at=event.at)
            elif event.kind == EventKind.APPROVAL_GRANTED:
                request = replace(request, approver=principal, approved_at=event.at)
            elif event.kind == EventKind.APPROVAL_EXECUTED:
                request = replace(
                    request, exit_code=int(details["exit_code"]), finished_at=event.at
                )
            else:
                refusal = Refusal(event.at, principal, event.reason)
                request = replace(request, refusals=(*request.refusals, refusal))
            found[request_id] = request
        except (KeyError, TypeError, ValueError) as error:
            raise KeyringError(
                f"dual-control event is not readable: {type(error).__name__}"
            ) from None
    return found


def approval_refused(request: Request, approver: str, now: datetime) -> str | None:
    """Why `approver` may not approve `request` at `now`; None: it may."""
    status = request.status(now)
    if status is not RequestStatus.OPEN:
        when = f" at {request.expires_at.isoformat()}" if status is RequestStatus.EXPIRED else ""
        return f"request {request.request_id} is {status.value}{when}: it can no longer be approved"
    if approver == request.requester:
        return (
            f"{approver} made request {request.request_id}: a second principal must approve it "
            "(dual control)"
        )
    return None


def cancel_refused(request: Request, principal: str, now: datetime) -> str | None:
    """Why `principal` may not withdraw `request` at `now`; None: it may. Only the requester
    withdraws: a second person who disagrees simply does not approve (and the request expires)."""
    status = request.status(now)
    if status is not RequestStatus.OPEN:
        return f"request {request.request_id} is {status.value}: there is nothing to withdraw"
    if principal != request.requester:
        return f"only its requester ({request.requester}) withdraws request {request.request_id}"
    return None


def request_event(
    request_id: str,
    argv: Sequence[str],
    reason: str,
    principal: str,
    actor: str,
    now: datetime,
    expiry: timedelta,
    clock: ClockKind,
) -> HistoryEvent:
    details = {
        "request_id": request_id,
        "principal": principal,
        "argv": list(argv),
        "expires_at": (now + expiry).isoformat(),
    }
    return HistoryEvent(
        EventKind.APPROVAL_REQUESTED,
        now,
        actor,
        reason=reason,
        details=details,
        clock=clock,
        principal=principal,
    )


def decision_event(
    kind: EventKind,
    request_id: str,
    principal: str,
    actor: str,
    now: datetime,
    clock: ClockKind,
    *,
    why: str = "",
    exit_code: int | None = None,
) -> HistoryEvent:
    """A cancel, refusal, approval or outcome of `request_id` by `principal` at `now`."""
    details: dict[str, Any] = {"request_id": request_id, "principal": principal}
    if exit_code is not None:
        details["exit_code"] = exit_code
    return HistoryEvent(
        kind, now, actor, reason=why, details=details, clock=clock, principal=principal
    )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
