"""The one read model: read the keyring, locks and Connect once into a KeyringState."""

from __future__ import annotations

from dataclasses import replace

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from rotator.domain.flows import (
    FlowRef,
    encrypting_blocks,
    flow_drift,
    lambda_invocations,
    referenced_key_ids,
)
from rotator.domain.history import HistoryEvent, RotationRun, rotation_runs
from rotator.domain.keys import load_certificate, public_key_sha256, public_key_sha256_of_pem
from rotator.domain.lifecycle import KeyRecord
from rotator.domain.rotation import ManagedInstance
from rotator.domain.state import (
    BlockCertificate,
    CanaryResult,
    FlowState,
    InstanceEntry,
    InstanceState,
    KeyCopy,
    KeyringState,
    LockState,
    ProtectionSweep,
    copy_sources,
    rotation_summary,
)
from rotator.errors import ConnectKeyRotatorError
from rotator.ports import ConnectReader, FlowReader, Keyring, Lock
from rotator.services.canary import prove_key_decrypts


def read_state(
    keyring: Keyring,
    lock: Lock,
    *,
    connect: ConnectReader | None = None,
    flows: FlowReader | None = None,
    protection: bool = False,
    history: bool = False,
    canaries: bool = False,
    copies: bool = False,
    instance_id: str | None = None,
    decrypt_function: str | None = None,
) -> KeyringState:
    """Batched reads, each once: keys, instances (and the history) by path, locks by path,
    SecureStrings by one DescribeParameters sweep (`protection`); per managed instance (only
    `instance_id`'s if given) one ListSecurityKeys (`connect`) and one read per managed flow
    (`connect` or `flows`). `canaries`: a live canary decrypt of every key a managed flow uses
    whose private key is stored (`rotator verify`; it reads the private keys). `copies`: which
    parameters outside the keyring that adopted keys were copied from still exist (one
    metadata read, and none if no key was adopted from one: the report). `decrypt_function`:
    the decrypt Lambda the flows' Lambda invocations are judged against (nothing more is read)."""
    entries = keyring.instance_entries()
    locks = lock.states()
    records = tuple(keyring.records())
    events = tuple(keyring.history_events()) if history else ()
    scopes: dict[str, list[HistoryEvent]] = {}
    for event in events:
        scopes.setdefault(event.scope, []).append(event)
    flow_reader = connect if connect is not None else flows
    instances = []
    for entry in entries:
        if entry.config is None or instance_id not in (None, entry.instance_id):
            continue
        held = locks.get(entry.instance_id)
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
    sweep = keyring.protection_sweep() if protection else ProtectionSweep.unread()
    state = KeyringState(
        prefix=keyring.prefix,
        records=records,
        current={e.instance_id: e.current_key_id for e in entries if e.current_key_id},
        instances=tuple(instances),
        protection=sweep,
        orphaned_staging=_orphaned_staging(entries, sweep) if protection else (),
        events=events,
        managed_ids=tuple(e.instance_id for e in entries if e.config is not None),
        copies=_copies(keyring, records) if copies else (),
        decrypt_function_setting=decrypt_function,
    )
    if canaries:
        state = _with_canaries(keyring, state)
    return state


def _copies(keyring: Keyring, records: tuple[KeyRecord, ...]) -> tuple[KeyCopy, ...]:
    """The parameters adopted keys were copied from that still exist, by name."""
    sources = copy_sources(records)
    if not sources:
        return ()
    existing = keyring.existing_outside(list(sources))
    return tuple(KeyCopy(name, key_ids) for name, key_ids in sources.items() if name in existing)


def _orphaned_staging(entries: list[InstanceEntry], sweep: ProtectionSweep) -> tuple[str, ...]:
    """From the protection sweep already made: staged keys whose rotation is not unfinished."""
    rotations = [e.rotation for e in entries if e.rotation is not None]
    owned = {r.rotation_id for r in rotations if not r.finished}
    return tuple(sorted(sweep.staged.keys() - owned))


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
        certificates=tuple(
            _block_certificate(block.identifier, block.key_id, block.certificate_pem)
            for block in encrypting_blocks(content)
            if block.identifier in managed
        ),
        lambda_invocations=tuple(lambda_invocations(content)),
    )


def _block_certificate(identifier: str, key_id: str, certificate_pem: str) -> BlockCertificate:
    """Fingerprints of a block's certificate; one that does not parse is judged, not raised:
    the rest of the instance stays readable."""
    try:
        certificate = load_certificate(certificate_pem)
    except ConnectKeyRotatorError:
        return BlockCertificate(identifier, key_id, None, None)
    public_key = certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)  # noqa: S101 - load_certificate checks it
    return BlockCertificate(
        identifier,
        key_id,
        certificate.fingerprint(hashes.SHA256()).hex(),
        public_key_sha256(public_key),
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
            associations = tuple(k.key_id for k in keys)
            public_keys = {k.key_id: public_key_sha256_of_pem(k.public_key_pem) or "" for k in keys}
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


def _with_canaries(keyring: Keyring, state: KeyringState) -> KeyringState:
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


def _canary(keyring: Keyring, key_id: str) -> CanaryResult:
    """Live: encrypt as Connect would with the stored certificate, decrypt from the keyring."""
    try:
        certificate = keyring.read_certificate(key_id)
        prove_key_decrypts(keyring, key_id, certificate)
    except ConnectKeyRotatorError as error:
        return CanaryResult(key_id, False, f"key {key_id}: {error}")
    return CanaryResult(key_id, True, f"key {key_id} decrypts a canary from the keyring")
