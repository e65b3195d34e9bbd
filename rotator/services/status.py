"""What the keyring holds: every key's state, dates and days to expiry, at a given time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rotator.adapters.lock import SsmLock, stale_reason
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.lifecycle import KeyState
from rotator.domain.policy import RotationPolicy, rotation_due
from rotator.domain.rotation import RotationState


@dataclass(frozen=True)
class KeyStatus:
    key_id: str
    instance_id: str | None
    state: str
    current: bool
    key_size: int
    not_before: datetime | None
    not_after: datetime | None
    days_to_expiry: float | None
    rotation: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "instance_id": self.instance_id,
            "state": self.state,
            "current": self.current,
            "key_size": self.key_size,
            "not_before": self.not_before.isoformat() if self.not_before else None,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "days_to_expiry": None
            if self.days_to_expiry is None
            else round(self.days_to_expiry, 1),
            "rotation": self.rotation,
        }


def keyring_status(keyring: SsmKeyring, policy: RotationPolicy, now: datetime) -> list[KeyStatus]:
    """One row per key; `rotation` says when an active key is due (other states: not applicable)."""
    current = keyring.current_pointers()
    rows = []
    for record in keyring.records():
        is_current = (
            record.instance_id is not None and current.get(record.instance_id) == record.key_id
        )
        rotation = (
            rotation_due(record, policy, now).reason if record.state is KeyState.ACTIVE else "-"
        )
        rows.append(
            KeyStatus(
                key_id=record.key_id,
                instance_id=record.instance_id,
                state=record.state,
                current=is_current,
                key_size=record.key_size,
                not_before=record.not_before,
                not_after=record.not_after,
                days_to_expiry=record.days_to_expiry(now),
                rotation=rotation,
            )
        )
    return rows


@dataclass(frozen=True)
class InstanceStatus:
    instance_id: str
    current_key_id: str | None
    managed: str
    rotation: str
    lock: str
    lock_stale: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "current_key_id": self.current_key_id,
            "managed": self.managed,
            "rotation": self.rotation,
            "lock": self.lock,
            "lock_stale": self.lock_stale,
        }


def instance_status(keyring: SsmKeyring, lock: SsmLock, now: datetime) -> list[InstanceStatus]:
    """Per managed instance: current key, managed flows, last rotation, and its lock."""
    holders = lock.holders()
    rows = []
    for entry in keyring.instance_entries():
        if entry.config is None:
            continue
        holder = holders.get(entry.instance_id)
        stale = stale_reason(holder) if holder else None
        held = "none" if holder is None else holder.describe()
        rows.append(
            InstanceStatus(
                instance_id=entry.instance_id,
                current_key_id=entry.current_key_id,
                managed=", ".join(str(ref) for ref in entry.config.refs),
                rotation=rotation_summary(entry.rotation),
                lock=f"STALE ({stale}): {held}" if stale else held,
                lock_stale=stale is not None,
            )
        )
    return rows


def rotation_summary(rotation: RotationState | None) -> str:
    """The instance's last rotation in one line; an interrupted one says how to resume it."""
    if rotation is None:
        return "never rotated"
    if rotation.finished:
        return f"last rotation {rotation.started_at:%Y-%m-%d} ({rotation.reason})"
    return f"INTERRUPTED after step {rotation.step}: run rotator rotate to resume"
