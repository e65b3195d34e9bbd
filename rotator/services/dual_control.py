"""Dual control (PCI DSS 3.7.6): request a gated command, withdraw it, approve it once."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from rotator.domain.approval import (
    Request,
    RequestStatus,
    approval_refused,
    cancel_refused,
    check_request_id,
    decision_event,
    request_event,
    requests_from,
)
from rotator.domain.history import ClockKind, EventKind, HistoryEvent
from rotator.errors import DualControlRefused, NotFound
from rotator.ports import Approvals, Identity


@dataclass(frozen=True)
class DualControl:
    """Requests and their decisions for one run: who calls (`identity`), the way in (`actor`)
    and how long a request waits for its second person (`expiry`)."""

    approvals: Approvals
    identity: Identity
    expiry: timedelta
    actor: str
    clock: ClockKind = ClockKind.REAL

    def request(self, argv: Sequence[str], reason: str, now: datetime) -> Request:
        """Record a request for `rotator ARGV` (already checked against the parser)."""
        request_id = f"req-{secrets.token_hex(6)}"
        principal = self.identity.caller_arn()
        event = request_event(
            request_id, argv, reason, principal, self.actor, now, self.expiry, self.clock
        )
        self.approvals.record(event)
        return requests_from([event])[request_id]

    def requests(self) -> dict[str, Request]:
        return requests_from(self.approvals.events())

    def open_requests(self, now: datetime) -> list[Request]:
        found = self.requests().values()
        return [r for r in found if r.status(now) is RequestStatus.OPEN]

    def cancel(self, request_id: str, now: datetime) -> Request:
        """Withdraw an open request (its requester only); a refusal is recorded and raised."""
        request = self._get(request_id)
        principal = self.identity.caller_arn()
        self._refuse_if(cancel_refused(request, principal, now), request, principal, now)
        decision = self._event(EventKind.APPROVAL_CANCELLED, request, principal, now)
        if not self.approvals.claim(request.request_id, decision):
            self._refuse_if(self._taken(request), request, principal, now)
        self.approvals.record(decision)
        return replace(request, cancelled_at=now)

    def approve(self, request_id: str, now: datetime) -> Request:
        """Approve an open request by a principal other than its requester, exactly once (the
        claim); a refusal is recorded and raised. The caller then runs the command and
        records its outcome with `finish`."""
        request = self._get(request_id)
        principal = self.identity.caller_arn()
        self._refuse_if(approval_refused(request, principal, now), request, principal, now)
        decision = self._event(EventKind.APPROVAL_GRANTED, request, principal, now)
        if not self.approvals.claim(request.request_id, decision):
            self._refuse_if(self._taken(request), request, principal, now)
        self.approvals.record(decision)
        return replace(request, approver=principal, approved_at=now)

    def finish(self, request: Request, exit_code: int, now: datetime) -> None:
        """Record the approved command's outcome (its exit code)."""
        principal = self.identity.caller_arn()
        self.approvals.record(
            decision_event(
                EventKind.APPROVAL_EXECUTED,
                request.request_id,
                principal,
                self.actor,
                now,
                self.clock,
                exit_code=exit_code,
            )
        )

    def _get(self, request_id: str) -> Request:
        request = self.requests().get(check_request_id(request_id))
        if request is None:
            raise NotFound(f"no request {request_id} in this keyring's history")
        return request

    def _event(
        self, kind: EventKind, request: Request, principal: str, now: datetime
    ) -> HistoryEvent:
        return decision_event(kind, request.request_id, principal, self.actor, now, self.clock)

    def _taken(self, request: Request) -> str:
        return (
            f"request {request.request_id} was already decided (approved or withdrawn) by "
            "someone else a moment ago"
        )

    def _refuse_if(self, why: str | None, request: Request, principal: str, now: datetime) -> None:
        """A refusal is part of the audit trail: recorded, then raised."""
        if why is None:
            return
        self.approvals.record(
            decision_event(
                EventKind.APPROVAL_REFUSED,
                request.request_id,
                principal,
                self.actor,
                now,
                self.clock,
                why=why,
            )
        )
        raise DualControlRefused(why)
