"""What the keyring holds: every key's state, dates and days to expiry, at a given time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from rotator.adapters.lock import SsmLock, stale_reason
from rotator.adapters.ssm_keyring import InstanceEntry, SsmKeyring
from rotator.domain.findings import RunbookName
from rotator.domain.flows import FlowRef, flow_drift
from rotator.domain.lifecycle import KeyRecord, KeyState
from rotator.domain.policy import RotationPolicy, rotation_due
from rotator.domain.rotation import ManagedInstance, RotationState
from rotator.errors import ConnectKeyRotatorError, NotFound


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
            "due": self.due,
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
            facts.append(f"OVERDUE: {self.rotation}")
        return f"{self.key_id} ({', '.join(facts)})"


def key_rows(
    records: Iterable[KeyRecord], current: Mapping[str, str], policy: RotationPolicy, now: datetime
) -> list[KeyStatus]:
    """One row per key; `rotation` says when an active key is due (other states: not applicable)."""
    rows = []
    for record in records:
        is_current = (
            record.instance_id is not None and current.get(record.instance_id) == record.key_id
        )
        due = rotation_due(record, policy, now) if record.state is KeyState.ACTIVE else None
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
                rotation="-" if due is None else due.reason,
                due=due is not None and due.due,
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "instances": [i.to_dict() for i in self.instances],
            "unmanaged_instances": [u.to_dict() for u in self.unmanaged],
            "keys": [k.to_dict() for k in self.keys],
        }


def keyring_overview(
    keyring: SsmKeyring,
    lock: SsmLock,
    policy: RotationPolicy,
    now: datetime,
    *,
    instance_id: str | None = None,
    flows: FlowReader | None = None,
) -> KeyringStatus:
    """Everything `status` shows, from one sweep of keys, instances and locks; narrowed to one
    instance if given (NotFound if the keyring knows nothing of it). With `flows`, each managed
    flow is read once and its drift (a dynamic key reference, a block changed by hand) shown."""
    entries = keyring.instance_entries()
    rows = key_rows(keyring.records(), _current(entries), policy, now)
    instances = instance_rows(entries, lock, now)
    unmanaged = _unmanaged(entries, rows)
    if instance_id is not None:
        known = {e.instance_id for e in entries} | {r.instance_id for r in rows if r.instance_id}
        if instance_id not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise NotFound(
                f"no instance {instance_id} in the keyring at {keyring.layout.prefix} "
                f"(instances it knows: {listed})"
            )
        instances = [i for i in instances if i.instance_id == instance_id]
        unmanaged = [u for u in unmanaged if u.instance_id == instance_id]
        rows = [r for r in rows if r.instance_id == instance_id]
    if flows is not None:
        configs = {e.instance_id: e.config for e in entries if e.config is not None}
        instances = [
            replace(i, drift=flow_drift_of(flows, configs[i.instance_id], i.current_key_id))
            for i in instances
        ]
    return KeyringStatus(keyring.layout.prefix, tuple(instances), tuple(unmanaged), tuple(rows))


class FlowReader(Protocol):
    """Reads a managed flow's content (the Connect gateway, or a fake)."""

    def flow_content(self, instance_id: str, ref: FlowRef) -> str: ...


def flow_drift_of(
    flows: FlowReader, config: ManagedInstance, current_key_id: str | None
) -> tuple[str, ...]:
    """Each difference between the instance's managed flows and what the rotator manages in
    them, with the runbook that explains it; a flow that cannot be read says so."""
    found = []
    for ref in config.refs:
        try:
            content = flows.flow_content(config.instance_id, ref)
            drifts = flow_drift(
                ref, content, config.managed_identifiers(ref, content), current_key_id
            )
        except ConnectKeyRotatorError as error:  # status never fails on one unreadable flow
            found.append(f"{ref} could not be read: {error}")
            continue
        found += [f"{drift} (runbook: {RunbookName.FLOW_DRIFT.path})" for drift in drifts]
    return tuple(found)


def unmanaged_instances(
    keyring: SsmKeyring, policy: RotationPolicy, now: datetime
) -> list[UnmanagedInstance]:
    """Instances that hold keys in the keyring but were never `init`ed."""
    entries = keyring.instance_entries()
    return _unmanaged(entries, key_rows(keyring.records(), _current(entries), policy, now))


def instance_rows(
    entries: Iterable[InstanceEntry], lock: SsmLock, now: datetime
) -> list[InstanceStatus]:
    """Per managed instance: current key, managed flows, last rotation, and its lock."""
    holders = lock.holders()
    rows = []
    for entry in entries:
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


def _current(entries: Iterable[InstanceEntry]) -> dict[str, str]:
    return {e.instance_id: e.current_key_id for e in entries if e.current_key_id is not None}


def _unmanaged(entries: list[InstanceEntry], rows: list[KeyStatus]) -> list[UnmanagedInstance]:
    """Instances with a key record or a current pointer (an import with --instance-id) but no
    managed-flows config."""
    managed = {e.instance_id for e in entries if e.config is not None}
    current = _current(entries)
    holding = {r.instance_id for r in rows if r.instance_id is not None} | set(current)
    return [
        UnmanagedInstance(
            instance_id,
            current.get(instance_id),
            tuple(r for r in rows if r.instance_id == instance_id),
        )
        for instance_id in sorted(holding - managed)
    ]


def rotation_summary(rotation: RotationState | None) -> str:
    """The instance's last rotation in one line; an interrupted one says how to resume it."""
    if rotation is None:
        return "never rotated"
    if rotation.finished:
        return f"last rotation {rotation.started_at:%Y-%m-%d} ({rotation.reason})"
    return f"INTERRUPTED after step {rotation.step}: run rotator rotate to resume"
