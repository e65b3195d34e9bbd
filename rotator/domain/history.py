"""History events: one append-only record per key transition, rotation step or runbook run."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from rotator.domain.lifecycle import KeyRecord, KeyState, Transition
from rotator.domain.rotation import RotationState, RotationStep
from rotator.errors import KeyringError

KEYRING_SCOPE = "keyring"  # events of keys that belong to no instance
RUNBOOKS_SCOPE = "runbooks"
CUSTODIANS_SCOPE = "custodians"  # key custodians' acknowledgements (PCI DSS 3.7.8)
REQUESTS_SCOPE = "requests"  # dual control's requests and decisions (PCI DSS 3.7.6)


class EventKind(StrEnum):
    KEY_TRANSITION = "key_transition"
    ROTATION_STEP = "rotation_step"
    RUNBOOK_RUN = "runbook_run"
    EXPIRY_EVENT_SENT = "expiry_event_sent"  # an expiry event was put on the bus (its instance's)
    STORED_CIPHERTEXTS = "stored_ciphertexts"  # an inventory of stored ciphertexts per key ID
    # Dual control (PCI DSS 3.7.6, domain/approval.py): a gated command's request, a refused
    # or granted approval, a withdrawal, and the approved command's outcome.
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_CANCELLED = "approval_cancelled"
    APPROVAL_REFUSED = "approval_refused"
    APPROVAL_GRANTED = "approval_granted"
    APPROVAL_EXECUTED = "approval_executed"
    # A principal accepted the key-custodian responsibilities (details: the text's SHA-256).
    CUSTODIAN_ACKNOWLEDGED = "custodian_acknowledged"


class ClockKind(StrEnum):
    """Which clock `at` was read from: the system's, or a sandbox's simulated one."""

    REAL = "real"
    SIMULATED = "simulated"


@dataclass(frozen=True)
class HistoryEvent:
    """Something that happened, when, by whom and why; `details` is small (the event is one
    SSM parameter). `kind` stays a plain string when read, so a newer writer's kinds load.
    `actor` is who says they made it (user@host and the way in); `principal` is the AWS
    principal ARN whose credentials made it (STS GetCallerIdentity; "" in events written
    before it was recorded, and in what the keyring records for itself)."""

    kind: str
    at: datetime
    actor: str
    instance_id: str | None = None
    key_id: str | None = None
    rotation_id: str | None = None
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    clock: str = ClockKind.REAL
    principal: str = ""

    @property
    def scope(self) -> str:
        """The history folder it belongs in: runbook runs, custodians' acknowledgements, its
        instance, or the keyring."""
        if self.kind == EventKind.RUNBOOK_RUN:
            return RUNBOOKS_SCOPE
        if self.kind == EventKind.CUSTODIAN_ACKNOWLEDGED:
            return CUSTODIANS_SCOPE
        if self.kind.startswith("approval_"):
            return REQUESTS_SCOPE
        return self.instance_id or KEYRING_SCOPE

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "at": self.at.isoformat(),
            "actor": self.actor,
            "instance_id": self.instance_id,
            "key_id": self.key_id,
            "rotation_id": self.rotation_id,
            "reason": self.reason,
            "details": dict(self.details),
            "clock": str(self.clock),
            "principal": self.principal,
        }

    def to_json(self) -> str:
        return json.dumps({"schema": 1, **self.to_dict()}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> HistoryEvent:
        try:
            data = json.loads(raw)
            details = data.get("details", {})
            if not isinstance(details, dict):
                raise TypeError("details")
            return cls(
                kind=str(data["kind"]),
                at=datetime.fromisoformat(data["at"]),
                actor=str(data["actor"]),
                instance_id=data.get("instance_id"),
                key_id=data.get("key_id"),
                rotation_id=data.get("rotation_id"),
                reason=str(data.get("reason", "")),
                details=details,
                clock=str(data.get("clock", ClockKind.REAL)),
                principal=str(data.get("principal") or ""),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise KeyringError(f"history event is not readable: {type(error).__name__}") from None


def key_transition_events(
    recorded: Iterable[Transition], after: KeyRecord, clock: ClockKind
) -> list[HistoryEvent]:
    """An event per transition of `after` not among those `recorded` already."""
    known = set(recorded)
    events = []
    for index, transition in enumerate(after.history):
        if transition in known:
            continue
        previous = after.history[index - 1].state.value if index else None
        details: dict[str, Any] = {"state": transition.state.value, "from": previous}
        if previous is None:  # the key's first record: which key it is, should metadata be lost
            details.update(
                public_key_sha256=after.public_key_sha256,
                key_size=after.key_size,
                source=after.source,
            )
        events.append(
            HistoryEvent(
                kind=EventKind.KEY_TRANSITION,
                at=transition.at,
                actor=transition.actor,
                instance_id=after.instance_id,
                key_id=after.key_id,
                reason=transition.reason,
                details=details,
                clock=clock,
                principal=transition.principal,
            )
        )
    return events


def rotation_step_event(state: RotationState, at: datetime, clock: ClockKind) -> HistoryEvent:
    """A rotation reached `state.step` at `at` (each step is recorded once it is done)."""
    return HistoryEvent(
        kind=EventKind.ROTATION_STEP,
        at=at,
        actor=state.actor,
        instance_id=state.instance_id,
        key_id=state.new_key_id,
        rotation_id=state.rotation_id,
        reason=state.reason,
        details={
            "step": state.step.value,
            "started_at": state.started_at.isoformat(),
            "old_key_id": state.old_key_id,
            "new_key_id": state.new_key_id,
            "emergency": state.emergency,
        },
        clock=clock,
        principal=state.principal,
    )


def transitions_by_key(events: Iterable[HistoryEvent]) -> dict[str, list[Transition]]:
    """Key ID -> its transitions as its key_transition events record them, in event order."""
    found: dict[str, list[Transition]] = {}
    for event in events:
        if event.kind != EventKind.KEY_TRANSITION or event.key_id is None:
            continue
        try:
            state = KeyState(event.details["state"])
        except (KeyError, ValueError) as error:
            raise KeyringError(
                f"transition event of key {event.key_id} is not readable: {type(error).__name__}"
            ) from None
        found.setdefault(event.key_id, []).append(
            Transition(state, event.at, event.actor, event.reason, event.principal)
        )
    return found


def key_history(recorded: list[Transition], cached: Iterable[Transition]) -> tuple[Transition, ...]:
    """A key's transitions: those its events record, and any its metadata caches that no event
    records (written before the history existed), in time order."""
    seen = set(recorded)
    merged = [*recorded, *(t for t in cached if t not in seen)]
    return tuple(sorted(merged, key=lambda t: t.at))


@dataclass(frozen=True)
class RotationRun:
    """One rotation of an instance: who started it, why, between which keys, how far it got."""

    rotation_id: str
    started_at: datetime
    actor: str
    reason: str
    emergency: bool
    old_key_id: str | None
    new_key_id: str | None
    step: str
    updated_at: datetime | None  # when its last step was recorded (None: not in the history)

    @property
    def finished(self) -> bool:
        return self.step == RotationStep.DONE

    @classmethod
    def from_state(cls, state: RotationState, updated_at: datetime | None = None) -> RotationRun:
        return cls(
            rotation_id=state.rotation_id,
            started_at=state.started_at,
            actor=state.actor,
            reason=state.reason,
            emergency=state.emergency,
            old_key_id=state.old_key_id,
            new_key_id=state.new_key_id,
            step=state.step.value,
            updated_at=updated_at,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rotation_id": self.rotation_id,
            "started_at": self.started_at.isoformat(),
            "actor": self.actor,
            "reason": self.reason,
            "emergency": self.emergency,
            "old_key_id": self.old_key_id,
            "new_key_id": self.new_key_id,
            "step": self.step,
            "finished": self.finished,
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
        }


def rotation_runs(events: Iterable[HistoryEvent]) -> list[RotationRun]:
    """Every rotation the rotation_step events record, each as of its latest step, by start."""
    runs: dict[str, RotationRun] = {}
    for event in events:
        if event.kind != EventKind.ROTATION_STEP or event.rotation_id is None:
            continue
        details = event.details
        try:
            runs[event.rotation_id] = RotationRun(
                rotation_id=event.rotation_id,
                started_at=datetime.fromisoformat(details["started_at"]),
                actor=event.actor,
                reason=event.reason,
                emergency=bool(details.get("emergency", False)),
                old_key_id=details.get("old_key_id"),
                new_key_id=details.get("new_key_id"),
                step=str(details["step"]),
                updated_at=event.at,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise KeyringError(
                f"rotation step event of {event.rotation_id} is not readable: "
                f"{type(error).__name__}"
            ) from None
    return sorted(runs.values(), key=lambda run: (run.started_at, run.rotation_id))
