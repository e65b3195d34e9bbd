"""In-memory fakes of the rotator's ports (rotator.ports); tests/test_contracts.py holds each
to the same contract as the real adapter, so a fake cannot drift from SSM or Connect."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lambda_decrypt.errors import KeyDestroyed, UnknownKey
from lambda_decrypt.keys import ConnectKey
from rotator.adapters.publishing import SNS_SUBJECT_LIMIT
from rotator.domain.connect_ids import SecurityKey, association_id_of_key, key_id_of_association
from rotator.domain.flows import FlowKind, FlowRef
from rotator.domain.history import (
    ClockKind,
    HistoryEvent,
    key_transition_events,
    rotation_step_event,
)
from rotator.domain.key_protection import FunctionEnvironment, KekDescription, holds_private_key
from rotator.domain.keys import KeyMaterial, load_key_material
from rotator.domain.lifecycle import KeyRecord, KeyState, Transition
from rotator.domain.rotation import ManagedInstance, RotationState, StepDone
from rotator.domain.stored_ciphertext import ConcurrentChange, StoredRecord, strings_in
from rotator.errors import (
    AwsCallError,
    ConfigError,
    KeyringConflict,
    LockHeld,
    LockLost,
    NotFound,
)
from rotator.ports import (
    BusEvent,
    InstanceEntry,
    KeyPart,
    LockState,
    Metric,
    ProtectedKey,
    ProtectionSweep,
)
from rotator.sandbox import connect_emulator
from rotator.sandbox.sample_flows import (
    DECRYPT_LAMBDA_ARN,
    card_blocks,
    payment_flow_content,
    payment_module_content,
)
from rotator.services.rotation import Outcome, RotationService

_K = TypeVar("_K")
# What SSM reports as the KMS key of a SecureString stored without one.
SSM_DEFAULT_KMS_KEY = "alias/aws/ssm"


class HeldKeys:
    """Connect's security keys per instance, as `ListSecurityKeys` would list them, and the
    content of the flows a test puts there (the `SecurityKeys` port, and flow reads)."""

    def __init__(self, held: dict[str, dict[str, str]] | None = None) -> None:
        self.held = held or {}  # instance ID -> {association ID: public key PEM}
        self.flows: dict[tuple[str, str], str] = {}  # (instance ID, flow ID) -> content

    def flow(self, instance_id: str, flow_id: str, content: str) -> HeldKeys:
        self.flows[(instance_id, flow_id)] = content
        return self

    def flow_content(self, instance_id: str, ref: FlowRef) -> str:
        try:
            return self.flows[(instance_id, ref.flow_id)]
        except KeyError:
            raise NotFound(f"connect: {instance_id}/{ref.flow_id} not found") from None

    def hold(self, instance_id: str, key_id: str, public_key_pem: str) -> HeldKeys:
        self.held.setdefault(instance_id, {})[association_id_of_key(key_id)] = public_key_pem
        return self

    def list_security_keys(self, instance_id: str) -> list[SecurityKey]:
        return [SecurityKey(k, pem) for k, pem in self.held.get(instance_id, {}).items()]


# -- Keyring ------------------------------------------------------------------------------------


class FakeHistory:
    """The append-only history: events kept in the order they were appended."""

    def __init__(self) -> None:
        self.appended: list[HistoryEvent] = []

    def append(self, event: HistoryEvent) -> str:
        self.appended.append(event)
        return f"{event.scope}/{len(self.appended)}"

    def events(self, scope: str | None = None) -> list[HistoryEvent]:
        found = [e for e in self.appended if scope is None or e.scope == scope]
        return sorted(found, key=lambda e: e.at)  # stable: same-instant events keep their order


@dataclass
class FakeKeyring:
    """The `Keyring` port in memory, with SSM's rules: a private key (stored or staged) is
    created once and never replaced, a missing one reads as absent, deletes are idempotent."""

    kms_key_id: str | None = None
    clock: ClockKind = ClockKind.REAL
    private_keys: dict[str, str] = field(default_factory=dict)
    certificates: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, KeyRecord] = field(default_factory=dict)
    staged: dict[str, dict[KeyPart, str]] = field(default_factory=dict)
    configs: dict[str, ManagedInstance] = field(default_factory=dict)
    currents: dict[str, str] = field(default_factory=dict)
    rotations: dict[str, RotationState] = field(default_factory=dict)
    # Parameters outside the keyring (a blog deployment's), by name.
    outside: dict[str, str] = field(default_factory=dict)
    history: FakeHistory = field(default_factory=FakeHistory)
    # KMS key per stored private key: the configured one when it was created.
    protection: dict[str, str] = field(default_factory=dict)

    # keys
    def store_key(self, key_id: str, material: KeyMaterial, record: KeyRecord) -> None:
        self.create_private_key(key_id, material.private_key_pem)
        self.store_certificate(key_id, material.certificate_pem)
        self.put_record(record)

    def create_private_key(self, key_id: str, private_key_pem: str) -> None:
        _create_once(self.private_keys, key_id, private_key_pem, f"private key {key_id}")
        self.protection.setdefault(key_id, self.kms_key_id or SSM_DEFAULT_KMS_KEY)

    def store_certificate(self, key_id: str, certificate_pem: str, *, new: bool = False) -> None:
        self.certificates[key_id] = certificate_pem

    def read_material(self, key_id: str, *, validated: bool = False) -> KeyMaterial:
        if key_id not in self.private_keys:
            raise NotFound(f"no private key stored for key ID {key_id}")
        certificate = self.read_certificate(key_id)
        return load_key_material(self.private_keys[key_id], certificate, validated=validated)

    def read_certificate(self, key_id: str) -> str:
        if key_id not in self.certificates:
            raise NotFound(f"no certificate stored for key ID {key_id}")
        return self.certificates[key_id]

    def read_private_key_pem(self, key_id: str) -> str:
        if key_id not in self.private_keys:
            raise NotFound(f"no private key stored for key ID {key_id}")
        return self.private_keys[key_id]

    def find_private_key(self, key_id: str) -> str | None:
        return self.private_keys.get(key_id)

    def stored_parts(self, key_id: str) -> frozenset[KeyPart]:
        parts = {KeyPart.PRIVATE_KEY: self.private_keys, KeyPart.CERTIFICATE: self.certificates}
        return frozenset(part for part, held in parts.items() if key_id in held)

    def stored_private_keys(self, key_ids: Sequence[str]) -> set[str]:
        return {key_id for key_id in key_ids if key_id in self.private_keys}

    def delete_private_key(self, key_id: str) -> None:
        self.private_keys.pop(key_id, None)
        self.protection.pop(key_id, None)

    def private_key_protection(self) -> dict[str, ProtectedKey]:
        return self.protection_sweep().keys

    def protection_sweep(self) -> ProtectionSweep:
        keys = {
            key_id: ProtectedKey(f"fake:keys/{key_id}/private-key", kms)
            for key_id, kms in self.protection.items()
        }
        # Staged keys are created with the configured KMS key, as stored ones are.
        kms = self.kms_key_id or SSM_DEFAULT_KMS_KEY
        staged = {
            rotation_id: ProtectedKey(f"fake:staging/{rotation_id}/private-key", kms)
            for rotation_id, parts in self.staged.items()
            if KeyPart.PRIVATE_KEY in parts
        }
        return ProtectionSweep(keys, staged)

    def decrypt_keys(self) -> FakeKeySource:
        return FakeKeySource(self)

    # staging
    def stage_key(self, rotation_id: str, material: KeyMaterial) -> None:
        staged = self.staged.setdefault(rotation_id, {})
        staged[KeyPart.CERTIFICATE] = material.certificate_pem
        _create_once(staged, KeyPart.PRIVATE_KEY, material.private_key_pem, "staged private key")

    def read_staged(self, rotation_id: str, *, validated: bool = False) -> KeyMaterial | None:
        staged = self.staged.get(rotation_id, {})
        pem, certificate = staged.get(KeyPart.PRIVATE_KEY), staged.get(KeyPart.CERTIFICATE)
        if pem is None or certificate is None:
            return None
        return load_key_material(pem, certificate, validated=validated)

    def delete_staging(self, rotation_id: str) -> None:
        self.staged.pop(rotation_id, None)

    def orphaned_staging(self) -> set[str]:
        owned = {r.rotation_id for r in self.rotations.values() if not r.finished}
        return {rotation_id for rotation_id, parts in self.staged.items() if parts} - owned

    # metadata
    def put_record(self, record: KeyRecord) -> None:
        existing = self.find_record(record.key_id)
        if existing != record:
            self._write_record(() if existing is None else existing.history, record)

    def write_record(self, record: KeyRecord) -> None:
        self._write_record(record.history[:-1], record)

    def _write_record(self, recorded: Sequence[Transition], record: KeyRecord) -> None:
        for event in key_transition_events(recorded, record, self.clock):
            self.history.append(event)
        self.metadata[record.key_id] = record

    def get_record(self, key_id: str) -> KeyRecord:
        if key_id not in self.metadata:
            raise NotFound(f"no key {key_id} in the keyring")
        return self.metadata[key_id]

    def find_record(self, key_id: str) -> KeyRecord | None:
        return self.metadata.get(key_id)

    def find_records(self, key_ids: Iterable[str]) -> dict[str, KeyRecord | None]:
        return {key_id: self.metadata.get(key_id) for key_id in key_ids}

    def records(self) -> list[KeyRecord]:
        return sorted(
            self.metadata.values(), key=lambda r: (r.instance_id or "", r.created_at, r.key_id)
        )

    # instances
    def instance_snapshot(
        self, instance_id: str, key_ids: Iterable[str] = ()
    ) -> tuple[InstanceEntry, dict[str, KeyRecord | None]]:
        entry = InstanceEntry(
            instance_id,
            self.configs.get(instance_id),
            self.currents.get(instance_id),
            self.rotations.get(instance_id),
        )
        return entry, self.find_records(key_ids)

    def get_instance(self, instance_id: str) -> ManagedInstance | None:
        return self.configs.get(instance_id)

    def put_instance(self, instance: ManagedInstance) -> None:
        self.configs[instance.instance_id] = instance

    def managed_instances(self) -> list[ManagedInstance]:
        return [self.configs[i] for i in sorted(self.configs)]

    def instance_entries(self) -> list[InstanceEntry]:
        ids = sorted({*self.configs, *self.currents, *self.rotations})
        return [
            InstanceEntry(i, self.configs.get(i), self.currents.get(i), self.rotations.get(i))
            for i in ids
        ]

    @property
    def prefix(self) -> str:
        return "fake:"

    def history_events(self) -> list[HistoryEvent]:
        return self.history.events()

    def append_event(self, event: HistoryEvent) -> None:
        self.history.append(replace(event, clock=self.clock))

    def get_rotation(self, instance_id: str) -> RotationState | None:
        return self.rotations.get(instance_id)

    def put_rotation(
        self,
        steps: Sequence[StepDone],
        *,
        at: datetime,
        current: str | None = None,
        checkpoint: RotationState | None = None,
    ) -> None:
        for step in steps:
            for record in step.records:
                for event in key_transition_events(record.history[:-1], record, self.clock):
                    self.history.append(event)
            self.history.append(rotation_step_event(step.state, at, self.clock))
        for step in steps:
            self.metadata.update((record.key_id, record) for record in step.records)
        if current is not None:
            self.currents[steps[-1].state.instance_id] = current
        if checkpoint is not None:
            self.rotations[checkpoint.instance_id] = checkpoint

    def get_current(self, instance_id: str) -> str | None:
        return self.currents.get(instance_id)

    def set_current(self, instance_id: str, key_id: str) -> None:
        self.currents[instance_id] = key_id

    # outside the keyring
    def read_blog_key(self, key_parameter: str, key_id_parameter: str) -> tuple[str, str]:
        missing = [n for n in (key_parameter, key_id_parameter) if n not in self.outside]
        if missing:
            raise NotFound(f"blog parameter(s) not found: {', '.join(missing)}")
        return self.outside[key_id_parameter].strip(), self.outside[key_parameter]

    def existing_outside(self, names: Sequence[str]) -> set[str]:
        return {name for name in names if name in self.outside}


class FakeKeySource:
    """What the decrypt Lambda's reader answers for the fake keyring, read afresh each time."""

    def __init__(self, keyring: FakeKeyring) -> None:
        self.keyring = keyring

    def get(self, key_id: str) -> ConnectKey:
        record = self.keyring.metadata.get(key_id)
        if record is not None and record.state is KeyState.DESTROYED:
            raise KeyDestroyed(f"key ID {key_id} was destroyed")
        pem = self.keyring.private_keys.get(key_id)
        if pem is None:
            raise UnknownKey(f"no private key for key ID {key_id}")
        return ConnectKey.from_pem(key_id, pem, trusted=True)


def _create_once(held: dict[_K, str], key: _K, value: str, what: str) -> None:
    """SSM's PutParameter without Overwrite: the same value again is a retry, another refused."""
    existing = held.get(key)
    if existing is not None and _digest(existing) != _digest(value):
        raise KeyringConflict(f"fake:{key} already holds a different {what}; it is never replaced")
    held[key] = value


def _digest(pem: str) -> str:
    return hashlib.sha256(pem.encode("ascii")).hexdigest()


# -- Connect ------------------------------------------------------------------------------------


@dataclass
class _Instance:
    keys: dict[str, connect_emulator.HeldSecurityKey] = field(default_factory=dict)
    tokens: dict[str, tuple[rsa.RSAPublicNumbers, str]] = field(default_factory=dict)
    flows: dict[tuple[FlowKind, str], str] = field(default_factory=dict)


class FakeConnect:
    """The `Connect` port in memory, with the rules the Connect emulator enforces (which the
    contract suite checks against it): two security keys an instance, an RSA public key PEM
    of at most 1024 characters, one association per public key, ClientToken idempotency, flow
    content checked as Connect checks it; AWS errors as the gateway raises them."""

    def __init__(self) -> None:
        self.instances: dict[str, _Instance] = {}
        self.updates: dict[tuple[str, str], int] = {}

    # set-up, as a test would create things in Connect
    def create_instance(self) -> str:
        instance_id = str(uuid.uuid4())
        self.instances[instance_id] = _Instance()
        return instance_id

    def create_flow(
        self, instance_id: str, content: str, kind: FlowKind = FlowKind.FLOW
    ) -> FlowRef:
        instance = self._instance(instance_id, "CreateContactFlow")
        flow_id = str(uuid.uuid4())
        self._check(instance, content, f"{instance_id}/{flow_id}", kind, "CreateContactFlow")
        instance.flows[(kind, flow_id)] = content
        return FlowRef(kind, flow_id)

    # the port
    def list_security_keys(self, instance_id: str) -> list[SecurityKey]:
        instance = self._instance(instance_id, "ListSecurityKeys")
        return [SecurityKey(k.association_id, k.pem) for k in instance.keys.values()]

    def associate_security_key(
        self, instance_id: str, public_key_pem: str, client_token: str
    ) -> str:
        call = "connect:AssociateSecurityKey"
        instance = self._instance(instance_id, "AssociateSecurityKey")
        numbers = _public_key_numbers(public_key_pem, call, instance_id)
        if client_token in instance.tokens:
            first_numbers, first_id = instance.tokens[client_token]
            if first_numbers != numbers:
                raise AwsCallError(call, instance_id, "ResourceConflictException")
            if first_id in instance.keys:
                return key_id_of_association(first_id)
        if any(key.numbers == numbers for key in instance.keys.values()):
            raise AwsCallError(call, instance_id, "ResourceConflictException")
        if len(instance.keys) >= connect_emulator.MAX_SECURITY_KEYS:
            raise AwsCallError(call, instance_id, "ServiceQuotaExceededException")
        association_id = str(uuid.uuid4())
        instance.keys[association_id] = connect_emulator.HeldSecurityKey(
            association_id, public_key_pem, numbers, 0.0
        )
        instance.tokens[client_token] = (numbers, association_id)
        return key_id_of_association(association_id)

    def disassociate_security_key(self, instance_id: str, key_id: str) -> None:
        association_id = association_id_of_key(key_id)
        instance = self._instance(instance_id, "DisassociateSecurityKey")
        if instance.keys.pop(association_id, None) is None:
            raise NotFound(
                f"connect:DisassociateSecurityKey: {instance_id}/{association_id} not found"
            )

    def flow_content(self, instance_id: str, ref: FlowRef) -> str:
        operation = _operation("Describe", ref)
        instance = self._instance(instance_id, operation)
        try:
            return instance.flows[(ref.kind, ref.flow_id)]
        except KeyError:
            raise NotFound(f"connect:{operation}: {instance_id}/{ref.flow_id} not found") from None

    def update_flow_content(self, instance_id: str, ref: FlowRef, content: str) -> None:
        operation = _operation("Update", ref)
        instance = self._instance(instance_id, operation)
        resource = f"{instance_id}/{ref.flow_id}"
        if (ref.kind, ref.flow_id) not in instance.flows:
            raise NotFound(f"connect:{operation}: {resource} not found")
        self.updates[(instance_id, ref.flow_id)] = self.updates.get((instance_id, ref.flow_id), 0)
        self.updates[(instance_id, ref.flow_id)] += 1
        self._check(instance, content, resource, ref.kind, operation)
        instance.flows[(ref.kind, ref.flow_id)] = content

    def _instance(self, instance_id: str, operation: str) -> _Instance:
        instance = self.instances.get(instance_id)
        if instance is None:
            raise NotFound(f"connect:{operation}: {instance_id} not found")
        return instance

    @staticmethod
    def _check(
        instance: _Instance, content: str, resource: str, kind: FlowKind, operation: str
    ) -> None:
        # The emulator's own content rules, so that the two cannot disagree on a flow.
        if connect_emulator._content_problems(content, instance.keys):
            invalid = (
                "InvalidContactFlowException"
                if kind is FlowKind.FLOW
                else "InvalidContactFlowModuleException"
            )
            raise AwsCallError(f"connect:{operation}", resource, invalid)


def _operation(verb: str, ref: FlowRef) -> str:
    if verb == "Describe":
        return "DescribeContactFlow" if ref.kind is FlowKind.FLOW else "DescribeContactFlowModule"
    if ref.kind is FlowKind.FLOW:
        return "UpdateContactFlowContent"
    return "UpdateContactFlowModuleContent"


def _public_key_numbers(pem: str, call: str, resource: str) -> rsa.RSAPublicNumbers:
    if len(pem) > connect_emulator.PEM_LIMIT:
        raise AwsCallError(call, resource, "InvalidParameterException")
    try:
        public_key = serialization.load_pem_public_key(pem.encode("utf-8"))
    except (ValueError, UnsupportedAlgorithm):
        raise AwsCallError(call, resource, "InvalidParameterException") from None
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise AwsCallError(call, resource, "InvalidParameterException")
    return public_key.public_numbers()


# -- Lock ---------------------------------------------------------------------------------------


@dataclass
class _Held:
    token: str
    purpose: str
    written_at: datetime
    lease: timedelta

    @property
    def expires_at(self) -> datetime:
        return self.written_at + self.lease

    def describe(self) -> str:
        return f"held by fake, rotation {self.purpose}, lease until {self.expires_at:%H:%M:%S} UTC"


class FakeLock:
    """The `Lock` port in memory: one holder per instance, a lease on `now` (a fake clock's),
    renewed by a check past half of it, broken once it is over."""

    def __init__(
        self, now: Callable[[], datetime], lease: timedelta = timedelta(minutes=15)
    ) -> None:
        self.now = now
        self.lease = lease
        self.held: dict[str, _Held] = {}

    def acquire(self, instance_id: str, purpose: str) -> FakeLease:
        current = self.held.get(instance_id)
        if current is not None and self.now() < current.expires_at:
            raise LockHeld(instance_id, current.describe())
        mine = _Held(secrets.token_hex(16), purpose, self.now(), self.lease)
        self.held[instance_id] = mine
        return FakeLease(self, instance_id, mine.token)

    def clear_if_stale(self, instance_id: str) -> str | None:
        current = self.held.get(instance_id)
        if current is None or self.now() < current.expires_at:
            return None
        del self.held[instance_id]
        return f"removed the stale lock {current.describe()}: its lease has expired"

    def states(self) -> dict[str, LockState]:
        now = self.now()
        return {
            instance_id: LockState(
                held.describe(), "its lease has expired" if now >= held.expires_at else None
            )
            for instance_id, held in self.held.items()
        }


class FakeLease:
    def __init__(self, lock: FakeLock, instance_id: str, token: str) -> None:
        self.lock = lock
        self.instance_id = instance_id
        self.token = token

    def check(self) -> None:
        current = self.lock.held.get(self.instance_id)
        if current is None or current.token != self.token:
            raise LockLost(f"instance {self.instance_id}: the lock is no longer this run's")
        now = self.lock.now()
        if now >= current.expires_at:
            raise LockLost(f"instance {self.instance_id}: the lease ran out")
        if now - current.written_at >= current.lease / 2:
            current.written_at = now

    def release(self) -> None:
        current = self.lock.held.get(self.instance_id)
        if current is not None and current.token == self.token:
            del self.lock.held[self.instance_id]


# -- Clock --------------------------------------------------------------------------------------


class FakeClock:
    """A clock that stands still until moved."""

    simulated = True

    def __init__(self, at: datetime = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> datetime:
        self.at += delta
        return self.at


# -- Identity -----------------------------------------------------------------------------------


@dataclass
class FakeIdentity:
    """Implements `rotator.ports.Identity`: whoever the test says is calling."""

    arn: str = "arn:aws:iam::123456789012:user/alice"

    def caller_arn(self) -> str:
        return self.arn


# -- Publishing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    subject: str
    message: str


@dataclass(frozen=True)
class StoredReport:
    location: str
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Summary:
    topic_arn: str
    subject: str
    message: str


@dataclass
class FakePublisher:
    """Implements `rotator.ports.Publisher`. `alert_topic_arn` None: `notify` sends nothing
    and answers False, as the AWS publisher does without a topic."""

    alert_topic_arn: str | None = "arn:aws:sns:us-east-1:123456789012:alerts"
    metrics: list[tuple[Metric, datetime]] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    reports: list[StoredReport] = field(default_factory=list)
    summaries: list[Summary] = field(default_factory=list)
    # The buses that exist (names; an ARN names its bus after the last "/"), as on EventBridge.
    event_buses: set[str] = field(default_factory=lambda: {"default"})
    events: list[tuple[str, BusEvent]] = field(default_factory=list)  # (bus, event)

    def put_metrics(self, metrics: Sequence[Metric], at: datetime) -> None:
        self.metrics += [(metric, at) for metric in metrics]

    def notify(self, subject: str, message: str) -> bool:
        if not self.alert_topic_arn:
            return False
        self.notices.append(Notice(subject[:SNS_SUBJECT_LIMIT], message))
        return True

    def store_report(self, location: str, body: bytes, content_type: str) -> None:
        """S3 locations are kept; a directory's file is written, as the AWS publisher does."""
        if not location.startswith("s3://"):
            path = Path(location)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(body)
            except OSError as error:
                raise ConfigError("report directory", f"cannot write {path}") from error
        self.reports.append(StoredReport(location, body, content_type))

    def post_summary(self, topic_arn: str, subject: str, message: str) -> None:
        self.summaries.append(Summary(topic_arn, subject[:SNS_SUBJECT_LIMIT], message))

    def put_events(self, event_bus: str, events: Sequence[BusEvent]) -> None:
        """EventBridge's checks: the bus exists; each entry has a source, a detail type and a
        detail (a refused one raises, as the AWS publisher does on FailedEntryCount)."""
        bus = event_bus.rsplit("/", 1)[-1]
        if bus not in self.event_buses:
            raise AwsCallError("events:PutEvents", event_bus, "ResourceNotFoundException")
        refused = [e for e in events if not (e.source and e.detail_type and e.detail)]
        accepted = [e for e in events if e not in refused]
        self.events += [(bus, event) for event in accepted]
        if refused:
            raise AwsCallError(
                "events:PutEvents", event_bus, f"{len(refused)} event(s) refused (InvalidArgument)"
            )

    def value(self, name: str) -> float:
        """The value of the one metric `name` published (it must be the only one of that name)."""
        (value,) = [m.value for m, _ in self.metrics if m.name == name]
        return value


# -- Stored ciphertexts (rewrap) ----------------------------------------------------------------


def _replace_strings(document: object, changes: Mapping[str, str]) -> object:
    if isinstance(document, str):
        return changes.get(document, document)
    if isinstance(document, dict):
        return {k: _replace_strings(v, changes) for k, v in document.items()}
    if isinstance(document, list):
        return [_replace_strings(v, changes) for v in document]
    return document


class FakeCiphertextStore:
    """Implements `rotator.ports.CiphertextStore` in memory: records are JSON documents under
    refs, each with a version that every write bumps (S3's ETag, DynamoDB's old values).

    `before_write(ref)` runs before each conditional write (a concurrent change, a crash);
    `writes` lists the refs written, in order."""

    def __init__(self, uri: str = "s3://fake-store/records/") -> None:
        self._uri = uri
        self.documents: dict[str, object] = {}
        self.versions: dict[str, int] = {}
        self.writes: list[str] = []
        self.before_write: Callable[[str], None] | None = None

    @property
    def uri(self) -> str:
        return self._uri

    def put(self, ref: str, document: object) -> None:
        """An outside writer (Firehose, a payment back end) stores or changes a record."""
        self.documents[ref] = document
        self.versions[ref] = self.versions.get(ref, 0) + 1

    def records(self, *, after: str | None = None) -> Iterator[StoredRecord]:
        for ref in sorted(self.documents):
            if after is None or ref > after:
                record = self.read(ref)
                if record is not None:
                    yield record

    def read(self, ref: str) -> StoredRecord | None:
        if ref not in self.documents:
            return None
        values = tuple(strings_in(self.documents[ref]))
        return StoredRecord(self._uri, ref, str(self.versions[ref]), values)

    def replace(self, record: StoredRecord, changes: Mapping[str, str]) -> None:
        if self.before_write is not None:
            self.before_write(record.ref)
        if str(self.versions.get(record.ref)) != record.version:
            raise ConcurrentChange(f"{self._uri} {record.ref} changed since it was read")
        self.documents[record.ref] = _replace_strings(self.documents[record.ref], changes)
        self.versions[record.ref] += 1
        self.writes.append(record.ref)


class FakeCheckpoint:
    """Implements `rotator.ports.Checkpoint` in memory."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []
        self.present = False

    def done(self) -> set[tuple[str, str]]:
        return set(self.entries)

    def record(self, store: str, ref: str) -> None:
        self.present = True
        self.entries.append((store, ref))

    def exists(self) -> bool:
        return self.present

    def clear(self) -> None:
        self.entries.clear()
        self.present = False


# -- Approvals (dual control) -------------------------------------------------------------------


@dataclass
class FakeApprovals:
    """Implements `rotator.ports.Approvals`: events kept in order; a claim succeeds once per
    request, as SSM's create-once PutParameter does."""

    recorded: list[HistoryEvent] = field(default_factory=list)
    claims: dict[str, HistoryEvent] = field(default_factory=dict)

    def record(self, event: HistoryEvent) -> None:
        self.recorded.append(event)

    def events(self) -> list[HistoryEvent]:
        return sorted(self.recorded, key=lambda e: e.at)

    def claim(self, request_id: str, decision: HistoryEvent) -> bool:
        if request_id in self.claims:
            return False
        self.claims[request_id] = decision
        return True


# -- Key-encrypting keys and the decrypt function (evidence) -----------------------------------


@dataclass
class FakeKeyEncryptionKeys:
    """Implements `rotator.ports.KeyEncryptionKeys`: keys by ID, ARN or alias, as KMS answers.
    `refused`: references whose DescribeKey is denied (an AwsCallError, as IAM refuses it)."""

    keys: dict[str, KekDescription] = field(default_factory=dict)  # ARN -> description
    aliases: dict[str, str] = field(default_factory=dict)  # alias/NAME -> ARN
    refused: set[str] = field(default_factory=set)

    def add(
        self, key_id: str, key_spec: str = "SYMMETRIC_DEFAULT", alias: str | None = None
    ) -> KekDescription:
        arn = f"arn:aws:kms:us-east-1:123456789012:key/{key_id}"
        self.keys[arn] = KekDescription(arn, key_id, arn, key_spec)
        if alias is not None:
            self.aliases[alias] = arn
        return self.keys[arn]

    def describe(self, key_id: str) -> KekDescription:
        if key_id in self.refused:
            raise AwsCallError("kms:DescribeKey", key_id, "AccessDeniedException")
        arn = self.aliases.get(key_id.split(":", 5)[-1], key_id)
        found = self.keys.get(arn) or next(
            (k for k in self.keys.values() if k.key_id == key_id), None
        )
        if found is None:
            raise NotFound(f"KMS key {key_id} does not exist")
        return replace(found, reference=key_id)


@dataclass
class FakeFunctionEnvironments:
    """Implements `rotator.ports.FunctionEnvironments`: function name -> its variables; the
    values are scanned as the Lambda adapter scans them and never answered."""

    functions: dict[str, dict[str, str]] = field(default_factory=dict)

    def private_key_variables(self, function_name: str) -> FunctionEnvironment:
        variables = self.functions.get(function_name)
        if variables is None:
            raise NotFound(f"Lambda function {function_name} does not exist")
        names = tuple(sorted(n for n, value in variables.items() if holds_private_key(value)))
        arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        return FunctionEnvironment(function_name, arn, names)


# -- a managed payment instance -------------------------------------------------------------------


@dataclass(frozen=True)
class InitialisedInstance:
    """A payment instance in the fake Connect that `rotator init` brought under management."""

    instance_id: str
    flow: FlowRef
    module: FlowRef
    first_key_id: str


def init_payment_instance(
    service: RotationService,
    connect: FakeConnect,
    now: datetime,
    *,
    lambda_arn: str = DECRYPT_LAMBDA_ARN,
) -> InitialisedInstance:
    """The sandbox's payment flow and module (their decrypt block invoking `lambda_arn`) in a
    new instance, both card blocks named for encryption and `service.init` run at `now`: its
    first rotation must complete."""
    instance_id = connect.create_instance()
    flow = connect.create_flow(instance_id, payment_flow_content(None, None, lambda_arn=lambda_arn))
    module_content = payment_module_content(None, None, lambda_arn=lambda_arn)
    module = connect.create_flow(instance_id, module_content, FlowKind.MODULE)
    first = service.init(
        instance_id,
        [flow.flow_id],
        [module.flow_id],
        now,
        encrypt_blocks=card_blocks(flow.flow_id, module.flow_id),
    )
    assert first.outcome is Outcome.ROTATED and first.new_key_id is not None, first.detail
    return InitialisedInstance(instance_id, flow, module, first.new_key_id)
