"""The ports: what services need from the outside world (the keyring, Connect, the lock, the
clock and publishing), as Protocols the adapters implement."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from rotator.domain.key_protection import FunctionEnvironment, KekDescription
from rotator.domain.state import InstanceEntry, LockState, ProtectedKey, ProtectionSweep

if TYPE_CHECKING:
    # Types only: ports stay cheap to import (lambda_decrypt.decrypt loads the Encryption SDK).
    from lambda_decrypt.decrypt import KeySource
    from rotator.domain.connect_ids import SecurityKey
    from rotator.domain.flows import FlowRef
    from rotator.domain.history import HistoryEvent
    from rotator.domain.keys import KeyMaterial
    from rotator.domain.lifecycle import KeyRecord
    from rotator.domain.rotation import ManagedInstance, RotationState, StepDone
    from rotator.domain.stored_ciphertext import StoredRecord

__all__ = [
    "Approvals",
    "BusEvent",
    "Checkpoint",
    "CiphertextStore",
    "Clock",
    "Connect",
    "ConnectReader",
    "FlowReader",
    "FunctionEnvironments",
    "Identity",
    "KeyEncryptionKeys",
    "KeyPart",
    "InstanceEntry",
    "Keyring",
    "Lease",
    "Lock",
    "LockState",
    "Metric",
    "ProtectedKey",
    "ProtectionSweep",
    "Publisher",
    "SecurityKeys",
]

# -- Keyring ------------------------------------------------------------------------------------


class KeyPart(StrEnum):
    """What the keyring stores of a key besides its metadata."""

    CERTIFICATE = "certificate"
    PRIVATE_KEY = "private-key"


class Keyring(Protocol):
    """Private keys (created once, never replaced: a key ID names one key for life), their
    certificates and metadata, keys staged by a rotation before Connect names them, and per
    instance its managed flows, current key and rotation record. Metadata and rotation changes
    are recorded in the history as they are written."""

    @property
    def kms_key_id(self) -> str | None:
        """The KMS key that new private keys are encrypted with (None: the store's default)."""
        ...

    # keys
    def store_key(self, key_id: str, material: KeyMaterial, record: KeyRecord) -> None:
        """Private key, certificate and metadata; the same key again is a no-op."""
        ...

    def create_private_key(self, key_id: str, private_key_pem: str) -> None:
        """Create once; the same PEM again is fine, a different one raises KeyringConflict."""
        ...

    def store_certificate(self, key_id: str, certificate_pem: str, *, new: bool = False) -> None:
        """Written unless it holds this already; `new`: the caller knows the key ID has nothing
        stored yet, so it is written without that read."""
        ...

    def read_material(self, key_id: str, *, validated: bool = False) -> KeyMaterial:
        """Private key and certificate, validated (NotFound if either is missing)."""
        ...

    def read_certificate(self, key_id: str) -> str: ...

    def read_private_key_pem(self, key_id: str) -> str:
        """NotFound if no private key is stored."""
        ...

    def find_private_key(self, key_id: str) -> str | None: ...

    def stored_parts(self, key_id: str) -> frozenset[KeyPart]:
        """Which of the key's private key and certificate are stored (nothing decrypted)."""
        ...

    def stored_private_keys(self, key_ids: Sequence[str]) -> set[str]:
        """Those of `key_ids` whose private key is stored (nothing decrypted)."""
        ...

    def delete_private_key(self, key_id: str) -> None:
        """Gone already is fine: a destroy may be redone."""
        ...

    def private_key_protection(self) -> dict[str, ProtectedKey]:
        """Key ID -> where its private key is and which KMS key protects it, for every key."""
        ...

    def protection_sweep(self) -> ProtectionSweep:
        """private_key_protection, and the same for staged keys, in one read."""
        ...

    def decrypt_keys(self) -> KeySource:
        """The private keys as the decrypt Lambda reads them, with nothing cached: the canary."""
        ...

    # keys staged by a rotation (under its rotation ID, before Connect gives a key ID)
    def stage_key(self, rotation_id: str, material: KeyMaterial) -> None:
        """Certificate first, then the private key (create-only, as for stored keys)."""
        ...

    def read_staged(self, rotation_id: str, *, validated: bool = False) -> KeyMaterial | None: ...

    def delete_staging(self, rotation_id: str) -> None: ...

    def orphaned_staging(self) -> set[str]:
        """Rotation IDs with staged keys that no unfinished rotation owns."""
        ...

    # metadata
    def put_record(self, record: KeyRecord) -> None:
        """A new version unless nothing changed; every new transition becomes an event."""
        ...

    def write_record(self, record: KeyRecord) -> None:
        """A new version whose last transition is the one new transition."""
        ...

    def get_record(self, key_id: str) -> KeyRecord: ...

    def find_record(self, key_id: str) -> KeyRecord | None: ...

    def find_records(self, key_ids: Iterable[str]) -> dict[str, KeyRecord | None]:
        """Key ID -> its record (None: no such key), read in as few calls as the store allows."""
        ...

    def records(self) -> list[KeyRecord]: ...

    # instances
    def instance_snapshot(
        self, instance_id: str, key_ids: Iterable[str] = ()
    ) -> tuple[InstanceEntry, dict[str, KeyRecord | None]]:
        """The instance's config, current key and rotation record with the records of
        `key_ids` (None: no such key), read together."""
        ...

    def get_instance(self, instance_id: str) -> ManagedInstance | None: ...

    def put_instance(self, instance: ManagedInstance) -> None: ...

    def managed_instances(self) -> list[ManagedInstance]: ...

    def instance_entries(self) -> list[InstanceEntry]:
        """Every instance the keyring knows (managed or only a current key), in one read."""
        ...

    @property
    def prefix(self) -> str:
        """Where the keyring lives, as operators name it (status and reports show it)."""
        ...

    def history_events(self) -> list[HistoryEvent]:
        """The append-only history, oldest first."""
        ...

    def append_event(self, event: HistoryEvent) -> None:
        """Append an event that no key or rotation write records (an expiry event sent), its
        clock the keyring's."""
        ...

    def get_rotation(self, instance_id: str) -> RotationState | None: ...

    def put_rotation(
        self,
        steps: Sequence[StepDone],
        *,
        at: datetime,
        current: str | None = None,
        checkpoint: RotationState | None = None,
    ) -> None:
        """The rotation steps done at `at`, in order, each with the key records it changed:
        their events first (each step's key transitions, then the step), then each changed
        key's latest record, the instance's new `current` key, and last the `checkpoint`: the
        rotation record to keep, the point a redone rotation starts from (None: kept as is)."""
        ...

    def get_current(self, instance_id: str) -> str | None: ...

    def set_current(self, instance_id: str, key_id: str) -> None: ...

    # outside the keyring
    def read_blog_key(self, key_parameter: str, key_id_parameter: str) -> tuple[str, str]:
        """(key ID, private key PEM) from a blog deployment's two parameters, only read;
        NotFound names the missing ones."""
        ...

    def existing_outside(self, names: Sequence[str]) -> set[str]:
        """Which of these parameters outside the keyring exist: one metadata read, nothing
        read or decrypted (copies of adopted private keys left behind)."""
        ...


# -- Connect ------------------------------------------------------------------------------------


class SecurityKeys(Protocol):
    """The security keys Connect holds for an instance (what an import checks)."""

    def list_security_keys(self, instance_id: str) -> list[SecurityKey]: ...


class FlowReader(Protocol):
    """A managed flow's or module's content (what `status` reads of Connect)."""

    def flow_content(self, instance_id: str, ref: FlowRef) -> str: ...


class ConnectReader(SecurityKeys, FlowReader, Protocol):
    """What the read model asks of Connect: the keys it holds, and the managed flows."""


class Connect(ConnectReader, Protocol):
    """Amazon Connect's security keys and flow content. Keys are named by their key ID (see
    rotator.domain.connect_ids); an unknown instance, flow or key raises NotFound."""

    def associate_security_key(
        self, instance_id: str, public_key_pem: str, client_token: str
    ) -> str:
        """The new key's key ID; the same client token and key again answer the same ID."""
        ...

    def disassociate_security_key(self, instance_id: str, key_id: str) -> None: ...

    def update_flow_content(self, instance_id: str, ref: FlowRef, content: str) -> None: ...


# -- Lock ---------------------------------------------------------------------------------------


class Lease(Protocol):
    """A lock as its taker holds it."""

    def check(self) -> None:
        """Before every write made under the lock: raise LockLost unless it is still ours and
        live (renewing it when due)."""
        ...

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        ...


class Lock(Protocol):
    """One run at a time per instance."""

    def acquire(self, instance_id: str, purpose: str) -> Lease:
        """Take the lock (breaking a stale one first), or raise LockHeld."""
        ...

    def clear_if_stale(self, instance_id: str) -> str | None:
        """Remove a lock whose holder is provably gone or whose lease expired; say why."""
        ...

    def states(self) -> dict[str, LockState]:
        """Instance ID -> its lock as `status`, `verify` and `report` show it: who holds it,
        and why it is stale (None while its holder may still be running). One read."""
        ...


# -- Clock --------------------------------------------------------------------------------------


class Clock(Protocol):
    """The time at which state changes happen and are recorded."""

    @property
    def simulated(self) -> bool: ...

    def now(self) -> datetime: ...


# -- Identity -----------------------------------------------------------------------------------


class Identity(Protocol):
    """Who is calling AWS: the principal that dual control and custodian records name."""

    def caller_arn(self) -> str:
        """The calling principal's ARN (STS GetCallerIdentity), read once per run. An assumed
        role reads `arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`."""
        ...


# -- Publishing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One data point of a job's metrics (CloudWatch's shape: a name, a value, a unit and
    dimensions as (name, value) pairs)."""

    name: str
    value: float
    unit: str = "Count"
    dimensions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BusEvent:
    """One EventBridge event: its source, detail type, JSON detail, and time (the job's)."""

    source: str
    detail_type: str
    detail: Mapping[str, Any]
    time: datetime


class Publisher(Protocol):
    """Where a job's results go: metrics, notices on the alert topic, and the report's delivery.

    Every method raises a ConnectKeyRotatorError (an AwsCallError for AWS, a ConfigError for an
    unwritable file) when what it publishes does not arrive. Nothing secret is ever passed in:
    callers publish counts, key IDs, findings and rendered reports only."""

    def put_metrics(self, metrics: Sequence[Metric], at: datetime) -> None:
        """Record `metrics` with the timestamp `at` (the job's time, which may be simulated)."""
        ...

    def notify(self, subject: str, message: str) -> bool:
        """Send a notice to the alert topic; False when none is configured (nothing was sent)."""
        ...

    def store_report(self, location: str, body: bytes, content_type: str) -> None:
        """Store a rendered report at `location`: `s3://bucket/key`, or a local file path."""
        ...

    def post_summary(self, topic_arn: str, subject: str, message: str) -> None:
        """Post a report's summary on `topic_arn` (the report topic, or the alert topic)."""
        ...

    def put_events(self, event_bus: str, events: Sequence[BusEvent]) -> None:
        """Put `events` on the EventBridge bus `event_bus` (a name or ARN). Raises when any is
        not accepted; the others may have been."""
        ...


# -- Stored ciphertexts (rewrap) ----------------------------------------------------------------


class CiphertextStore(Protocol):
    """Where Connect ciphertexts outlive the contact: `s3://bucket/prefix` (JSON, JSON Lines,
    gzip of either) or `dynamodb://table` (string attributes anywhere in an item). Records are
    the unit of a conditional write: an object, or an item."""

    @property
    def uri(self) -> str: ...

    def records(self, *, after: str | None = None) -> Iterator[StoredRecord]:
        """Every record with its string values, in a stable order (S3: by key; DynamoDB: by
        the Scan's pages); `after` starts past that ref (S3 only, a hint others may ignore)."""
        ...

    def read(self, ref: str) -> StoredRecord | None:
        """One record as stored now (None if it is gone)."""
        ...

    def replace(self, record: StoredRecord, changes: Mapping[str, str]) -> None:
        """Write `record` back with each old value (key of `changes`) replaced by its new one,
        only if it is unchanged since `record` was read: S3 a conditional PutObject on the ETag
        (the bucket's versioning keeps the old object), DynamoDB a condition on each old value.
        Raises ConcurrentChange when the store refused the write because of a change."""
        ...


class Checkpoint(Protocol):
    """A rewrap's progress: the records done (after their write), durable across a crash."""

    def done(self) -> set[tuple[str, str]]:
        """(store URI, ref) of every record recorded as done."""
        ...

    def record(self, store: str, ref: str) -> None:
        """Record a record as done, durably, before returning."""
        ...

    def exists(self) -> bool: ...

    def clear(self) -> None: ...


# -- Approvals (dual control) -------------------------------------------------------------------


class Approvals(Protocol):
    """Dual control's requests (domain/approval.py): their events in the append-only history,
    and the create-once claim that makes a decision on a request happen exactly once."""

    def record(self, event: HistoryEvent) -> None:
        """Append a dual-control event to the history (never overwritten)."""
        ...

    def events(self) -> list[HistoryEvent]:
        """Every dual-control event, oldest first."""
        ...

    def claim(self, request_id: str, decision: HistoryEvent) -> bool:
        """Decide `request_id` once: True if this is the first decision (approve or cancel)
        on it, False if another decision was claimed first (two approvers racing)."""
        ...


# -- Key-encrypting keys and the decrypt function (evidence, PCI DSS 3.6.1.1 and 3.6.1.4) -------


class KeyEncryptionKeys(Protocol):
    """The KMS keys that encrypt the keyring's SecureStrings, as KMS describes them."""

    def describe(self, key_id: str) -> KekDescription:
        """DescribeKey of a key ID, ARN or alias (as SSM reports a SecureString's key); an
        unknown key raises NotFound, a refused call AwsCallError."""
        ...


class FunctionEnvironments(Protocol):
    """Lambda functions' environments, as the copy inventory may see them: names only."""

    def private_key_variables(self, function_name: str) -> FunctionEnvironment:
        """The names of the function's environment variables whose value holds private-key
        text (GetFunctionConfiguration). No value ever leaves the adapter: not in the answer,
        a log or an exception. An unknown function raises NotFound."""
        ...
