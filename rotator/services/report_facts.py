"""What the report reads, in batches: keyring, history, locks, each managed instance in Connect."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rotator.adapters.connect import ConnectGateway
from rotator.adapters.lock import SsmLock, stale_reason
from rotator.adapters.ssm_keyring import InstanceEntry, SsmKeyring
from rotator.domain.flows import FlowRef, flow_drift, referenced_key_ids
from rotator.domain.history import HistoryEvent, RotationRun, rotation_runs
from rotator.domain.lifecycle import KeyRecord
from rotator.domain.rotation import ManagedInstance
from rotator.errors import ConnectKeyRotatorError
from rotator.services.status import rotation_summary


@dataclass(frozen=True)
class FlowKeys:
    """A managed flow or module and the key IDs its encrypting blocks name."""

    flow: str
    key_ids: tuple[str, ...]
    drift: tuple[str, ...] = ()  # how the flow differs from what the rotator manages in it


@dataclass(frozen=True)
class LockFacts:
    """An instance's lock: who holds it, and why it is stale (None: it is not)."""

    description: str
    stale_reason: str | None


@dataclass(frozen=True)
class InstanceFacts:
    """A managed instance as the keyring and Connect show it."""

    instance_id: str
    current_key_id: str | None
    managed: tuple[str, ...]
    rotation: str
    rotation_interrupted: bool
    lock: LockFacts | None
    associations: tuple[str, ...] = ()
    flows: tuple[FlowKeys, ...] = ()
    unreadable: str | None = None  # why Connect could not be read
    rotations: tuple[RotationRun, ...] = ()  # every rotation, oldest first
    history: tuple[HistoryEvent, ...] = ()  # every event of the instance's history scope

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "current_key_id": self.current_key_id,
            "managed": list(self.managed),
            "rotation": self.rotation,
            "rotation_interrupted": self.rotation_interrupted,
            "lock": None
            if self.lock is None
            else {"holder": self.lock.description, "stale_reason": self.lock.stale_reason},
            "associations": list(self.associations),
            "flows": [
                {"flow": f.flow, "key_ids": list(f.key_ids), "drift": list(f.drift)}
                for f in self.flows
            ],
            "unreadable": self.unreadable,
            "rotations": [r.to_dict() for r in self.rotations],
            "history": [e.to_dict() for e in self.history],
        }


@dataclass(frozen=True)
class KeyringFacts:
    """Everything the report looks at, read once: no key material, no plaintext."""

    prefix: str
    records: tuple[KeyRecord, ...]
    current: Mapping[str, str]  # instance ID -> current key ID
    instances: tuple[InstanceFacts, ...]
    protection: Mapping[str, str]  # SecureString name -> KMS key ID as SSM reports it
    orphaned_staging: tuple[str, ...] = ()  # staged rotation IDs no unfinished rotation owns
    events: tuple[HistoryEvent, ...] = ()  # the whole history, oldest first


def gather(
    keyring: SsmKeyring, connect: ConnectGateway, lock: SsmLock, now: datetime
) -> KeyringFacts:
    """Batched reads: keys, instances and the history by path, SecureStrings by one
    DescribeParameters sweep, locks by path; per managed instance one ListSecurityKeys and one
    read per managed flow."""
    entries = keyring.instance_entries()
    holders = lock.holders()
    events = tuple(keyring.history.events())
    scopes: dict[str, list[HistoryEvent]] = {}
    for event in events:
        scopes.setdefault(event.scope, []).append(event)
    instances = []
    for entry in entries:
        if entry.config is None:
            continue
        holder = holders.get(entry.instance_id)
        held = None if holder is None else LockFacts(holder.describe(), stale_reason(holder))
        history = scopes.get(entry.instance_id, [])
        instances.append(_instance_facts(connect, entry, entry.config, held, history))
    protection = keyring.secure_parameters()
    return KeyringFacts(
        prefix=keyring.layout.prefix,
        records=tuple(keyring.records()),
        current={e.instance_id: e.current_key_id for e in entries if e.current_key_id},
        instances=tuple(instances),
        protection=protection,
        orphaned_staging=_orphaned_staging(keyring, entries, protection),
        events=events,
    )


def _orphaned_staging(
    keyring: SsmKeyring, entries: list[InstanceEntry], protection: Mapping[str, str]
) -> tuple[str, ...]:
    """From the SecureString sweep already made: staged keys whose rotation is not unfinished."""
    root = keyring.layout.staging_root() + "/"
    staged = {name[len(root) :].partition("/")[0] for name in protection if name.startswith(root)}
    rotations = [e.rotation for e in entries if e.rotation is not None]
    owned = {r.rotation_id for r in rotations if not r.finished}
    return tuple(sorted(staged - owned))


def _flow_keys(
    ref: FlowRef, content: str, config: ManagedInstance, current_key_id: str | None
) -> FlowKeys:
    managed = config.managed_identifiers(ref, content)
    drift = flow_drift(ref, content, managed, current_key_id)
    return FlowKeys(
        str(ref), tuple(sorted(referenced_key_ids(content))), tuple(str(d) for d in drift)
    )


def _rotations(history: list[HistoryEvent], entry: InstanceEntry) -> tuple[RotationRun, ...]:
    """The rotations the history records, and the latest one from the instance's rotation
    record if no event records it (a rotation made before the history existed)."""
    runs = rotation_runs(history)
    latest = entry.rotation
    if latest is not None and all(r.rotation_id != latest.rotation_id for r in runs):
        runs.append(RotationRun.from_state(latest))
        runs.sort(key=lambda run: (run.started_at, run.rotation_id))
    return tuple(runs)


def _instance_facts(
    connect: ConnectGateway,
    entry: InstanceEntry,
    config: ManagedInstance,
    lock: LockFacts | None,
    history: list[HistoryEvent],
) -> InstanceFacts:
    instance_id = entry.instance_id
    unreadable = None
    associations: tuple[str, ...] = ()
    flows: tuple[FlowKeys, ...] = ()
    try:
        associations = tuple(k.association_id for k in connect.list_security_keys(instance_id))
        flows = tuple(
            _flow_keys(ref, connect.flow_content(instance_id, ref), config, entry.current_key_id)
            for ref in config.refs
        )
    except ConnectKeyRotatorError as error:  # one unreadable instance does not stop the report
        unreadable = str(error)
    return InstanceFacts(
        instance_id=instance_id,
        current_key_id=entry.current_key_id,
        managed=tuple(str(ref) for ref in config.refs),
        rotation=rotation_summary(entry.rotation),
        rotation_interrupted=entry.rotation is not None and not entry.rotation.finished,
        lock=lock,
        associations=associations,
        flows=flows,
        unreadable=unreadable,
        rotations=_rotations(history, entry),
        history=tuple(history),
    )
