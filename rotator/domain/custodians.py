"""Key custodians (PCI DSS 3.7.8): who ran key operations, and who acknowledged the duties."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rotator.domain.history import EventKind, HistoryEvent

# An acknowledgement holds for 12 months (PCI DSS asks for it at least once a year); the report
# looks back as far for the principals that ran key operations.
ACKNOWLEDGEMENT_VALID_FOR = timedelta(days=365)
PERIOD = ACKNOWLEDGEMENT_VALID_FOR
# What counts as a key operation: a key's state changed, a rotation step, a runbook run.
# Requesting or approving a gated command (dual control) is a key operation too: the person
# who asks for a destroy, or lets it run, is a custodian of that key.
KEY_OPERATIONS = frozenset(
    {
        EventKind.KEY_TRANSITION,
        EventKind.ROTATION_STEP,
        EventKind.RUNBOOK_RUN,
        EventKind.APPROVAL_REQUESTED,
        EventKind.APPROVAL_GRANTED,
    }
)
# The actors the scheduled jobs record (entrypoints/scheduled.py, entrypoints/daemon.py): their
# principal is the function's role, a machine, not a person who can accept responsibilities.
SCHEDULED_ACTORS = ("eventbridge-scheduler", "rotator serve@")


def acknowledgement_event(
    principal: str, at: datetime, actor: str, text_sha256: str, text: str
) -> HistoryEvent:
    """`principal` accepts the key-custodian responsibilities of `text` (a path or name)."""
    return HistoryEvent(
        kind=EventKind.CUSTODIAN_ACKNOWLEDGED,
        at=at,
        actor=actor,
        reason="accepts the key-custodian responsibilities (PCI DSS 3.7.8)",
        details={"text_sha256": text_sha256, "text": text},
        principal=principal,
    )


@dataclass(frozen=True)
class Custodian:
    """A principal: its key operations in the period, and its latest acknowledgement."""

    principal: str
    operations: int  # key operations in the period
    last_operation: datetime | None
    automation: bool  # every operation was a scheduled job's (the function's role)
    acknowledged_at: datetime | None
    text_sha256: str | None  # of the text it acknowledged last
    current_text: bool | None  # that text is the shipped one (None: the shipped one unknown)
    acknowledged_in_time: bool  # acknowledged in the 12 months before the report's time

    @property
    def unacknowledged(self) -> bool:
        """A person who ran a key operation in the period without a valid acknowledgement."""
        return self.operations > 0 and not self.automation and not self.acknowledged_in_time

    def describe(self) -> str:
        if self.acknowledged_at is None:
            acknowledged = "never acknowledged"
        else:
            acknowledged = f"acknowledged {self.acknowledged_at:%Y-%m-%d}"
            if not self.acknowledged_in_time:
                acknowledged += " (more than 12 months ago)"
            if self.current_text is False:
                acknowledged += " (an earlier text)"
        if self.automation:
            return f"{acknowledged}; a scheduled job's role: no person to acknowledge"
        return acknowledged

    def to_dict(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "key_operations": self.operations,
            "last_key_operation": _iso(self.last_operation),
            "automation": self.automation,
            "acknowledged_at": _iso(self.acknowledged_at),
            "text_sha256": self.text_sha256,
            "current_text": self.current_text,
            "acknowledged_in_time": self.acknowledged_in_time,
        }


def custodians(
    events: Iterable[HistoryEvent],
    now: datetime,
    current_text_sha256: str | None = None,
    *,
    with_acknowledgers: bool = True,
) -> list[Custodian]:
    """Every principal that ran a key operation in the 12 months before `now`, and (with
    `with_acknowledgers`) every one that ever acknowledged, by principal. Nothing after `now`
    counts; events without a principal (written before it was recorded) are nobody's."""
    since = now - PERIOD
    operations: dict[str, list[HistoryEvent]] = {}
    acknowledged: dict[str, HistoryEvent] = {}
    for event in events:
        if not event.principal or event.at > now:
            continue
        if event.kind == EventKind.CUSTODIAN_ACKNOWLEDGED:
            latest = acknowledged.get(event.principal)
            if latest is None or event.at >= latest.at:
                acknowledged[event.principal] = event
        elif event.kind in KEY_OPERATIONS and event.at > since:
            operations.setdefault(event.principal, []).append(event)
    principals = set(operations) | (set(acknowledged) if with_acknowledgers else set())
    found = []
    for principal in sorted(principals):
        ops = operations.get(principal, [])
        ack = acknowledged.get(principal)
        text = None if ack is None else str(ack.details.get("text_sha256") or "") or None
        found.append(
            Custodian(
                principal=principal,
                operations=len(ops),
                last_operation=max((e.at for e in ops), default=None),
                automation=bool(ops) and all(e.actor.startswith(SCHEDULED_ACTORS) for e in ops),
                acknowledged_at=None if ack is None else ack.at,
                text_sha256=text,
                current_text=None
                if current_text_sha256 is None or ack is None
                else text == current_text_sha256,
                acknowledged_in_time=ack is not None and ack.at > now - ACKNOWLEDGEMENT_VALID_FOR,
            )
        )
    return found


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
