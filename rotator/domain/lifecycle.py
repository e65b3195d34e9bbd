"""Key lifecycle: states, allowed transitions, and the record stored as a key's metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from rotator.domain.keys import KeyMaterial
from rotator.errors import InvalidTransition, KeyringError


class KeyState(StrEnum):
    """pending -> active -> previous -> retired -> destroyed (see DESIGN.md section 4)."""

    PENDING = "pending"
    ACTIVE = "active"
    PREVIOUS = "previous"
    RETIRED = "retired"
    DESTROYED = "destroyed"


ALLOWED_TRANSITIONS: dict[KeyState, frozenset[KeyState]] = {
    KeyState.PENDING: frozenset({KeyState.ACTIVE, KeyState.RETIRED, KeyState.DESTROYED}),
    KeyState.ACTIVE: frozenset({KeyState.PREVIOUS, KeyState.RETIRED}),
    # previous -> active is a rollback while the old key is still associated.
    KeyState.PREVIOUS: frozenset({KeyState.ACTIVE, KeyState.RETIRED}),
    KeyState.RETIRED: frozenset({KeyState.DESTROYED}),
    KeyState.DESTROYED: frozenset(),
}
# States whose private key decrypts (every state but destroyed).
DECRYPTING_STATES = frozenset(set(KeyState) - {KeyState.DESTROYED})


@dataclass(frozen=True)
class Transition:
    """One recorded state change: what, when, by whom (`actor`: user@host and the way in;
    `principal`: the AWS principal ARN that made it, "" when not known), why."""

    state: KeyState
    at: datetime
    actor: str
    reason: str
    principal: str = ""

    def to_dict(self) -> dict[str, str]:
        data = {
            "state": self.state,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "reason": self.reason,
        }
        if self.principal:  # a record without one stays byte for byte what it was
            data["principal"] = self.principal
        return data

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Transition:
        return cls(
            KeyState(raw["state"]),
            datetime.fromisoformat(raw["at"]),
            raw["actor"],
            raw["reason"],
            str(raw.get("principal", "")),
        )


@dataclass(frozen=True)
class KeyRecord:
    """Everything known about a key but the key itself; stored as its metadata parameter."""

    key_id: str
    instance_id: str | None
    state: KeyState
    key_size: int
    public_key_sha256: str
    certificate_sha256: str | None
    subject: str | None
    not_before: datetime | None
    not_after: datetime | None
    created_at: datetime
    source: str
    kms_key_id: str | None
    history: tuple[Transition, ...]

    @classmethod
    def for_material(
        cls,
        key_id: str,
        material: KeyMaterial,
        *,
        instance_id: str | None,
        state: KeyState,
        at: datetime,
        actor: str,
        reason: str,
        source: str,
        kms_key_id: str | None,
        principal: str = "",
    ) -> KeyRecord:
        """The first record of a key: its material's facts and one recorded transition."""
        first = cls.for_public_key(
            key_id,
            material.public_key_sha256,
            material.key_size,
            instance_id=instance_id,
            state=state,
            at=at,
            actor=actor,
            reason=reason,
            source=source,
            kms_key_id=kms_key_id,
            principal=principal,
        )
        return replace(
            first,
            certificate_sha256=material.certificate_sha256,
            subject=material.subject,
            not_before=material.not_before,
            not_after=material.not_after,
        )

    @classmethod
    def for_public_key(
        cls,
        key_id: str,
        public_key_sha256: str,
        key_size: int,
        *,
        instance_id: str | None,
        state: KeyState,
        at: datetime,
        actor: str,
        reason: str,
        source: str,
        kms_key_id: str | None,
        principal: str = "",
    ) -> KeyRecord:
        """The first record of a key known without its certificate (adopted from a private
        key alone): no certificate facts, one recorded transition."""
        return cls(
            key_id=key_id,
            instance_id=instance_id,
            state=state,
            key_size=key_size,
            public_key_sha256=public_key_sha256,
            certificate_sha256=None,
            subject=None,
            not_before=None,
            not_after=None,
            created_at=at,
            source=source,
            kms_key_id=kms_key_id,
            history=(Transition(state, at, actor, reason, principal),),
        )

    def transition(
        self, to: KeyState, *, at: datetime, actor: str, reason: str, principal: str = ""
    ) -> KeyRecord:
        """The same record in state `to`, with the change appended to its history."""
        if to not in ALLOWED_TRANSITIONS[self.state]:
            raise InvalidTransition(f"key {self.key_id} cannot go from {self.state} to {to}")
        change = Transition(to, at, actor, reason, principal)
        return replace(self, state=to, history=(*self.history, change))

    @property
    def decrypts(self) -> bool:
        return self.state in DECRYPTING_STATES

    def entered(self, state: KeyState) -> datetime | None:
        """When the key last entered `state` (None if it never did)."""
        times = [t.at for t in self.history if t.state is state]
        return times[-1] if times else None

    def days_to_expiry(self, now: datetime) -> float | None:
        if self.not_after is None:
            return None
        return (self.not_after - now).total_seconds() / 86400

    def to_json(self) -> str:
        return json.dumps(
            {
                "schema": 1,
                "key_id": self.key_id,
                "instance_id": self.instance_id,
                "state": self.state,
                "key_size": self.key_size,
                "public_key_sha256": self.public_key_sha256,
                "certificate_sha256": self.certificate_sha256,
                "subject": self.subject,
                "not_before": _iso(self.not_before),
                "not_after": _iso(self.not_after),
                "created_at": self.created_at.isoformat(),
                "source": self.source,
                "kms_key_id": self.kms_key_id,
                "history": [t.to_dict() for t in self.history],
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str) -> KeyRecord:
        try:
            data = json.loads(raw)
            return cls(
                key_id=data["key_id"],
                instance_id=data.get("instance_id"),
                state=KeyState(data["state"]),
                key_size=int(data["key_size"]),
                public_key_sha256=data["public_key_sha256"],
                certificate_sha256=data.get("certificate_sha256"),
                subject=data.get("subject"),
                not_before=_parse(data.get("not_before")),
                not_after=_parse(data.get("not_after")),
                created_at=datetime.fromisoformat(data["created_at"]),
                source=data.get("source", "unknown"),
                kms_key_id=data.get("kms_key_id"),
                history=tuple(Transition.from_dict(t) for t in data.get("history", [])),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise KeyringError(f"key metadata is not readable: {type(error).__name__}") from None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
