"""The one read model: read the keyring, locks and Connect once into a KeyringState."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from rotator.adapters.lock import SsmLock, stale_reason
from rotator.adapters.ssm_keyring import InstanceEntry, SsmKeyring
from rotator.domain.flows import FlowRef, flow_drift, referenced_key_ids
from rotator.domain.history import HistoryEvent, RotationRun, rotation_runs
from rotator.domain.keys import public_key_sha256_of_pem
from rotator.domain.lifecycle import KeyRecord
from rotator.domain.rotation import ManagedInstance
from rotator.domain.state import (
    CanaryResult,
    FlowState,
    InstanceState,
    KeyringState,
    LockState,
    rotation_summary,
)
from rotator.errors import ConnectKeyRotatorError
from rotator.services.canary import verify_key_decrypts

if TYPE_CHECKING:
    from rotator.adapters.connect import SecurityKey


class FlowReader(Protocol):
    """Reads a managed flow's content (the Connect gateway, or a fake)."""

    def flow_content(self, instance_id: str, ref: FlowRef) -> str: ...


class ConnectReader(FlowReader, Protocol):
    """What the read model asks of Connect: the keys it holds, and the managed flows."""

    def list_security_keys(self, instance_id: str) -> list[SecurityKey]: ...


def read_state(
    keyring: SsmKeyring,
    lock: SsmLock,
    *,
    connect: ConnectReader | None = None,
    flows: FlowReader | None = None,
    protection: bool = False,
    history: bool = False,
    canaries: bool = False,
    instance_id: str | None = None,
) -> KeyringState:
    """Batched reads, each once: keys, instances (and the history) by path, locks by path,
    SecureStrings by one DescribeParameters sweep (`protection`); per managed instance (only
    `instance_id`'s if given) one ListSecurityKeys (`connect`) and one read per managed flow
    (`connect` or `flows`). `canaries`: a live canary decrypt of every key a managed flow uses
    whose private key is stored (`rotator verify`; it reads the private keys)."""
    entries = keyring.instance_entries()
    holders = lock.holders()
    records = tuple(keyring.records())
    events = tuple(keyring.history.events()) if history else ()
    scopes: dict[str, list[HistoryEvent]] = {}
    for event in events:
        scopes.setdefault(event.scope, []).append(event)
    flow_reader = connect if connect is not None else flows
    instances = []
    for entry in entries:
        if entry.config is None or instance_id not in (None, entry.instance_id):
            continue
        holder = holders.get(entry.instance_id)
        held = None if holder is None else LockState(holder.describe(), stale_reason(holder))
        instances.append(
            _instance_state(
                entry,
                entry.config,
                held,
                scopes.get(entry.instance_id, []),
                connect=connect,
                flows=flow_reader,
            )
        )
    secure = keyring.secure_parameters() if protection else {}
    state = KeyringState(
        prefix=keyring.layout.prefix,
        records=records,
        current={e.instance_id: e.current_key_id for e in entries if e.current_key_id},
        instances=tuple(instances),
        protection=secure,
        orphaned_staging=_orphaned_staging(keyring, entries, secure) if protection else (),
        events=events,
        managed_ids=tuple(e.instance_id for e in entries if e.config is not None),
    )
    if canaries:
        state = _with_canaries(keyring, state)
    return state


def _orphaned_staging(
    keyring: SsmKeyring, entries: list[InstanceEntry], protection: Mapping[str, str]
) -> tuple[str, ...]:
    """From the SecureString sweep already made: staged keys whose rotation is not unfinished."""
    root = keyring.layout.staging_root() + "/"
    staged = {name[len(root) :].partition("/")[0] for name in protection if name.startswith(root)}
    rotations = [e.rotation for e in entries if e.rotation is not None]
    owned = {r.rotation_id for r in rotations if not r.finished}
    return tuple(sorted(staged - owned))


def _flow_state(
    ref: FlowRef, content: str, config: ManagedInstance, current_key_id: str | None
) -> FlowState:
    """The flow's keys and drift, computed here once for every view."""
    managed = config.managed_identifiers(ref, content)
    drifts = flow_drift(ref, content, managed, current_key_id)
    drifted = {d.identifier for d in drifts}
    return FlowState(
        flow=str(ref),
        key_ids=tuple(sorted(referenced_key_ids(content))),
        drift=tuple(str(d) for d in drifts),
        as_managed=tuple(i for i in managed if i not in drifted),
    )


def _rotations(history: list[HistoryEvent], entry: InstanceEntry) -> tuple[RotationRun, ...]:
    """The rotations the history records, and the latest one from the instance's rotation
    record if no event records it (a rotation made before the history existed, or the
    history was not read)."""
    runs = rotation_runs(history)
    latest = entry.rotation
    if latest is not None and all(r.rotation_id != latest.rotation_id for r in runs):
        runs.append(RotationRun.from_state(latest))
        runs.sort(key=lambda run: (run.started_at, run.rotation_id))
    return tuple(runs)


def _instance_state(
    entry: InstanceEntry,
    config: ManagedInstance,
    lock: LockState | None,
    history: list[HistoryEvent],
    *,
    connect: ConnectReader | None,
    flows: FlowReader | None,
) -> InstanceState:
    instance_id = entry.instance_id
    unreadable = None
    associations: tuple[str, ...] = ()
    public_keys: dict[str, str] = {}
    flow_states: tuple[FlowState, ...] = ()
    try:
        if connect is not None:
            keys = connect.list_security_keys(instance_id)
            associations = tuple(k.association_id for k in keys)
            public_keys = {
                k.association_id: public_key_sha256_of_pem(k.public_key_pem) or "" for k in keys
            }
        if flows is not None:
            flow_states = tuple(
                _flow_state(ref, flows.flow_content(instance_id, ref), config, entry.current_key_id)
                for ref in config.refs
            )
    except ConnectKeyRotatorError as error:  # one unreadable instance does not stop the others
        unreadable = str(error)
    rotation = entry.rotation
    return InstanceState(
        instance_id=instance_id,
        current_key_id=entry.current_key_id,
        managed=tuple(str(ref) for ref in config.refs),
        rotation=rotation_summary(rotation),
        rotation_interrupted=rotation is not None and not rotation.finished,
        lock=lock,
        associations=associations,
        flows=flow_states,
        unreadable=unreadable,
        rotations=_rotations(history, entry),
        history=tuple(history),
        rotation_state=rotation,
        public_keys=public_keys,
    )


def _with_canaries(keyring: SsmKeyring, state: KeyringState) -> KeyringState:
    """A canary for each key a managed flow uses that may decrypt: its record says so and its
    private key is stored (a key that fails those is a finding already, without a canary)."""
    results: dict[str, CanaryResult] = {}
    for instance in state.instances:
        for key_id in sorted(instance.referenced()):
            record = state.record(key_id)
            if key_id in results or not _may_decrypt(state, record, key_id):
                continue
            results[key_id] = _canary(keyring, key_id)
    return replace(state, canaries=results)


def _may_decrypt(state: KeyringState, record: KeyRecord | None, key_id: str) -> bool:
    return record is not None and record.decrypts and state.private_key_stored(key_id)


def _canary(keyring: SsmKeyring, key_id: str) -> CanaryResult:
    """Live: encrypt as Connect would with the stored certificate, decrypt from the keyring."""
    try:
        certificate = keyring.read_certificate(key_id)
        verify_key_decrypts(keyring.ssm, keyring.layout.prefix, key_id, certificate)
    except ConnectKeyRotatorError as error:
        return CanaryResult(key_id, False, f"key {key_id}: {error}")
    return CanaryResult(key_id, True, f"key {key_id} decrypts a canary from the keyring")
