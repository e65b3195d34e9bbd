"""What the keyring holds: every key's state, dates and days to expiry, at a given time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rotator.domain.findings import RunbookName
from rotator.domain.lifecycle import KeyRecord, KeyState
from rotator.domain.policy import RotationPolicy, rotation_due
from rotator.domain.state import InstanceState, KeyringState, ProtectionSweep, rotation_summary
from rotator.domain.window import RotationSchedule, WindowAction, WindowStatus, window_decision
from rotator.errors import NotFound
from rotator.ports import FlowReader, Keyring, Lock
from rotator.services.state import read_state

__all__ = ["FlowReader", "rotation_summary"]  # kept where callers found them


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
    due: bool = False  # an active key that must be rotated now
    # A due key held back by the rotation window or a freeze: until when (None: not waiting).
    waits_until: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        waiting = {} if self.waits_until is None else {"waits_until": self.waits_until.isoformat()}
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
            "due": self.due,
            **waiting,
        }

    def describe(self) -> str:
        """One line for a list of keys: ID, state, expiry and whether it is overdue."""
        facts = [self.state] + (["current"] if self.current else [])
        if self.not_after is None or self.days_to_expiry is None:
            facts.append("expiry unknown")
        elif self.days_to_expiry < 0:
            facts.append(f"expired {self.not_after:%Y-%m-%d}")
        else:
            facts.append(f"expires {self.not_after:%Y-%m-%d}, {self.days_to_expiry:.0f} days left")
        if self.due:
            facts.append(f"{'WAITING' if self.waits_until else 'OVERDUE'}: {self.rotation}")
        return f"{self.key_id} ({', '.join(facts)})"


def key_rows(
    records: Iterable[KeyRecord],
    current: Mapping[str, str],
    policy: RotationPolicy,
    now: datetime,
    schedule: RotationSchedule | None = None,
) -> list[KeyStatus]:
    """One row per key; `rotation` says when an active key is due (other states: not applicable)
    and, with a `schedule`, whether a due key waits for the rotation window and until when."""
    rows = []
    for record in records:
        is_current = (
            record.instance_id is not None and current.get(record.instance_id) == record.key_id
        )
        due = rotation_due(record, policy, now) if record.state is KeyState.ACTIVE else None
        rotation = "-" if due is None else due.reason
        waits_until = None
        if due is not None and due.due and schedule is not None:
            window = window_decision(schedule, record.not_after, now)
            if window.action is not WindowAction.ROTATE:
                rotation = f"{rotation}; {window.describe(schedule)}"
            waits_until = window.until if window.waits else None
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
                due=due is not None and due.due,
                waits_until=waits_until,
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
    # How the managed flows differ from what the rotator manages (a dynamic key reference, a
    # block changed by hand); empty when they are as managed or were not read.
    drift: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "current_key_id": self.current_key_id,
            "managed": self.managed,
            "rotation": self.rotation,
            "lock": self.lock,
            "lock_stale": self.lock_stale,
            "drift": list(self.drift),
        }


# What brings an unmanaged instance under the rotator; the flows are the operator's to name.
INIT_COMMAND = "rotator init --instance-id {instance_id} --flow-id FLOW [--flow-module-id MODULE]"


@dataclass(frozen=True)
class UnmanagedInstance:
    """An instance the keyring holds keys for (an adopted key) that `init` never set up:
    nothing rotates its keys, however close to expiry they are."""

    instance_id: str
    current_key_id: str | None
    keys: tuple[KeyStatus, ...]

    @property
    def command(self) -> str:
        return INIT_COMMAND.format(instance_id=self.instance_id)

    @property
    def overdue(self) -> bool:
        return any(key.due for key in self.keys)

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "current_key_id": self.current_key_id,
            "keys": [key.to_dict() for key in self.keys],
            "overdue": self.overdue,
            "command": self.command,
        }

    def describe(self) -> str:
        """Two lines: what it holds, and the command that manages it."""
        held = "; ".join(key.describe() for key in self.keys) or "no keys"
        return (
            f"instance {self.instance_id}: NOT MANAGED (nothing rotates its keys): holds {held}\n"
            f"  to manage it: {self.command}\n"
        )


@dataclass(frozen=True)
class KeyringStatus:
    """`rotator status`: managed instances, unmanaged ones, and every key."""

    prefix: str
    instances: tuple[InstanceStatus, ...]
    unmanaged: tuple[UnmanagedInstance, ...]
    keys: tuple[KeyStatus, ...]
    window: WindowStatus | None = None  # None: no rotation window and no freeze configured

    def to_dict(self) -> dict[str, Any]:
        window = {} if self.window is None else {"rotation_window": self.window.to_dict()}
        return {
            "prefix": self.prefix,
            **window,
            "instances": [i.to_dict() for i in self.instances],
            "unmanaged_instances": [u.to_dict() for u in self.unmanaged],
            "keys": [k.to_dict() for k in self.keys],
        }


def keyring_overview(
    keyring: Keyring,
    lock: Lock,
    policy: RotationPolicy,
    now: datetime,
    *,
    instance_id: str | None = None,
    flows: FlowReader | None = None,
    schedule: RotationSchedule | None = None,
) -> KeyringStatus:
    """Everything `status` shows, from one read of keys, instances and locks (see
    services/state.py); narrowed to one instance if given (NotFound if the keyring knows
    nothing of it). With `flows`, each managed flow is read once and its drift shown. With a
    `schedule`, the rotation window's next opening and why a due key waits."""
    state = read_state(keyring, lock, flows=flows, instance_id=instance_id)
    rows = key_rows(state.records, state.current, policy, now, schedule)
    # Unmanaged instances are never rotated: no window holds their keys back.
    unmanaged = _unmanaged(state, key_rows(state.records, state.current, policy, now))
    if instance_id is not None:
        known = set(state.managed_ids) | set(state.current)
        known |= {r.instance_id for r in rows if r.instance_id}
        if instance_id not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise NotFound(
                f"no instance {instance_id} in the keyring at {state.prefix} "
                f"(instances it knows: {listed})"
            )
        unmanaged = [u for u in unmanaged if u.instance_id == instance_id]
        rows = [r for r in rows if r.instance_id == instance_id]
    instances = [instance_row(i, shown_drift=flows is not None) for i in state.instances]
    window = None if schedule is None else WindowStatus.at(schedule, now)
    return KeyringStatus(state.prefix, tuple(instances), tuple(unmanaged), tuple(rows), window)


def flow_drift_of(instance: InstanceState) -> tuple[str, ...]:
    """Each difference between the instance's managed flows and what the rotator manages in
    them, with the runbook that explains it; flows that cannot be read say so."""
    found = [
        f"{drift} (runbook: {RunbookName.FLOW_DRIFT.path})"
        for flow in instance.flows
        for drift in flow.drift
    ]
    if instance.unreadable is not None:  # status never fails on one unreadable flow
        found.append(f"managed flows could not be read: {instance.unreadable}")
    return tuple(found)


def unmanaged_instances(
    keyring: Keyring, policy: RotationPolicy, now: datetime
) -> list[UnmanagedInstance]:
    """Instances that hold keys in the keyring but were never `init`ed (reads keys and
    instances only)."""
    entries = keyring.instance_entries()
    current = {e.instance_id: e.current_key_id for e in entries if e.current_key_id}
    state = KeyringState(
        prefix=keyring.prefix,
        records=tuple(keyring.records()),
        current=current,
        instances=(),
        protection=ProtectionSweep.unread(),
        managed_ids=tuple(e.instance_id for e in entries if e.config is not None),
    )
    return _unmanaged(state, key_rows(state.records, current, policy, now))


def instance_row(instance: InstanceState, *, shown_drift: bool = True) -> InstanceStatus:
    """A managed instance: current key, managed flows, last rotation, its lock and drift."""
    lock = instance.lock
    return InstanceStatus(
        instance_id=instance.instance_id,
        current_key_id=instance.current_key_id,
        managed=", ".join(instance.managed),
        rotation=instance.rotation,
        lock="none" if lock is None else lock.describe(),
        lock_stale=lock is not None and lock.stale_reason is not None,
        drift=flow_drift_of(instance) if shown_drift else (),
    )


def _unmanaged(state: KeyringState, rows: list[KeyStatus]) -> list[UnmanagedInstance]:
    """Instances with a key record or a current pointer (an import with --instance-id) but no
    managed-flows config."""
    holding = {r.instance_id for r in rows if r.instance_id is not None} | set(state.current)
    return [
        UnmanagedInstance(
            instance_id,
            state.current.get(instance_id),
            tuple(r for r in rows if r.instance_id == instance_id),
        )
        for instance_id in sorted(holding - set(state.managed_ids))
    ]
