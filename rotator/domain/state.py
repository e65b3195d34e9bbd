"""The keyring's state as one read saw it: immutable data that status, verify and report judge."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from rotator.domain.flows import LambdaInvocation
from rotator.domain.history import HistoryEvent, RotationRun
from rotator.domain.key_protection import DecryptFunctionCheck, KekDescription
from rotator.domain.lifecycle import KeyRecord
from rotator.domain.rotation import ManagedInstance, RotationState

# The blog deployment's private key parameter ("Creating a secure IVR solution with Amazon
# Connect"), and the source a key adopted from it records: "blog" for this name, else
# "blog:<name>", so that the report can check the copy is gone (PCI DSS 3.6.1.4).
BLOG_KEY_PARAMETER = "CONNECT_INPUT_DECRYPTION_KEY"
BLOG_SOURCE = "blog"


def blog_source(key_parameter: str) -> str:
    """The source a key adopted from the blog parameter `key_parameter` records."""
    if key_parameter == BLOG_KEY_PARAMETER:
        return BLOG_SOURCE
    return f"{BLOG_SOURCE}:{key_parameter}"


def copied_from(source: str) -> str | None:
    """The parameter outside the keyring a key with this source was copied from, if any."""
    if source == BLOG_SOURCE:
        return BLOG_KEY_PARAMETER
    prefix = f"{BLOG_SOURCE}:"
    return source[len(prefix) :] if source.startswith(prefix) else None


def copy_sources(records: Sequence[KeyRecord]) -> dict[str, tuple[str, ...]]:
    """Parameter outside the keyring -> the key IDs adopted from it, by name."""
    found: dict[str, list[str]] = {}
    for record in records:
        parameter = copied_from(record.source)
        if parameter is not None:
            found.setdefault(parameter, []).append(record.key_id)
    return {name: tuple(sorted(found[name])) for name in sorted(found)}


@dataclass(frozen=True)
class KeyCopy:
    """A parameter outside the keyring that still holds a private key the keyring adopted: its
    name only (never read, never decrypted) and the key IDs adopted from it."""

    parameter: str
    key_ids: tuple[str, ...]


@dataclass(frozen=True)
class ProtectedKey:
    """Where a private key is stored (shown to operators, e.g. to re-protect it) and which KMS
    key encrypts it, as the store reports it ("" if it does not say)."""

    location: str
    kms_key_id: str


@dataclass(frozen=True)
class ProtectionSweep:
    """Every private key the keyring holds, stored or staged, with its protection: one sweep."""

    keys: dict[str, ProtectedKey]  # key ID -> its private key
    staged: dict[str, ProtectedKey]  # rotation ID -> its staged private key

    @classmethod
    def unread(cls) -> ProtectionSweep:
        """Not swept: `rotator status` reads no protection."""
        return cls({}, {})


@dataclass(frozen=True)
class InstanceEntry:
    """What the keyring holds about one instance: managed flows, current key, last rotation."""

    instance_id: str
    config: ManagedInstance | None
    current_key_id: str | None
    rotation: RotationState | None


@dataclass(frozen=True)
class BlockCertificate:
    """The certificate a managed block encrypts with, as fingerprints: what is compared with the
    keyring's record of the block's key (None: the block's Key is not a readable certificate)."""

    identifier: str
    key_id: str
    certificate_sha256: str | None
    public_key_sha256: str | None


@dataclass(frozen=True)
class FlowState:
    """A managed flow or module: the key IDs its encrypting blocks name, how it differs from
    what the rotator manages in it, and the managed blocks that are as managed."""

    flow: str
    key_ids: tuple[str, ...]
    drift: tuple[str, ...] = ()  # how the flow differs from what the rotator manages in it
    as_managed: tuple[str, ...] = ()  # managed block identifiers on the current key
    # The static key and certificate of each managed block (drift and substitution, 3.7.7).
    certificates: tuple[BlockCertificate, ...] = ()
    # Every Invoke AWS Lambda function block: is the decrypt function invoked on its alias?
    lambda_invocations: tuple[LambdaInvocation, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"flow": self.flow, "key_ids": list(self.key_ids), "drift": list(self.drift)}


@dataclass(frozen=True)
class LockState:
    """An instance's lock: who holds it, and why it is stale (None: it is not)."""

    description: str
    stale_reason: str | None

    def describe(self) -> str:
        """As `rotator status` shows it."""
        if self.stale_reason is None:
            return self.description
        return f"STALE ({self.stale_reason}): {self.description}"


@dataclass(frozen=True)
class CanaryResult:
    """A live canary decrypt of one key from the keyring (only `rotator verify` runs them)."""

    key_id: str
    ok: bool
    message: str


@dataclass(frozen=True)
class InstanceState:
    """A managed instance as the keyring and Connect show it."""

    instance_id: str
    current_key_id: str | None
    managed: tuple[str, ...]
    rotation: str  # rotation_summary of its rotation record
    rotation_interrupted: bool  # its rotation record is unfinished (running or stopped)
    lock: LockState | None
    associations: tuple[str, ...] = ()  # association (key) IDs Connect holds
    flows: tuple[FlowState, ...] = ()
    unreadable: str | None = None  # why Connect could not be read
    rotations: tuple[RotationRun, ...] = ()  # every rotation, oldest first
    history: tuple[HistoryEvent, ...] = ()  # every event of the instance's history scope
    rotation_state: RotationState | None = None  # the rotation record itself
    # association ID -> SHA-256 of the public key Connect holds for it
    public_keys: Mapping[str, str] = field(default_factory=dict)

    @property
    def stopped_rotation(self) -> RotationState | None:
        """An unfinished rotation that no live lock holds: nothing is running it."""
        rotation = self.rotation_state
        if rotation is None or rotation.finished:
            return None
        if self.lock is not None and self.lock.stale_reason is None:
            return None
        return rotation

    def referenced(self) -> dict[str, list[str]]:
        """Key ID -> the managed flows whose encrypting blocks name it."""
        found: dict[str, list[str]] = {}
        for flow in self.flows:
            for key_id in flow.key_ids:
                found.setdefault(key_id, []).append(flow.flow)
        return found

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
            "flows": [f.to_dict() for f in self.flows],
            "unreadable": self.unreadable,
            "rotations": [r.to_dict() for r in self.rotations],
            "history": [e.to_dict() for e in self.history],
        }


@dataclass(frozen=True)
class KeyringState:
    """Everything the views look at, read once: no key material, no plaintext.

    A part that was not read is empty: `rotator status` reads no associations, SecureStrings,
    history or canaries, and judges nothing that needs them."""

    prefix: str
    records: tuple[KeyRecord, ...]
    current: Mapping[str, str]  # instance ID -> current key ID (managed or not)
    instances: tuple[InstanceState, ...]  # managed instances (narrowed if one was asked for)
    protection: ProtectionSweep  # every stored and staged private key, with its KMS key
    orphaned_staging: tuple[str, ...] = ()  # staged rotation IDs no unfinished rotation owns
    events: tuple[HistoryEvent, ...] = ()  # the whole history, oldest first
    canaries: Mapping[str, CanaryResult] = field(default_factory=dict)  # by key ID
    managed_ids: tuple[str, ...] = ()  # every managed instance, however narrowed
    # Parameters outside the keyring still holding an adopted private key (the report reads them)
    copies: tuple[KeyCopy, ...] = ()
    # What protects the private keys (the report reads them, services/crypto_architecture.py):
    # each KMS key reference SSM reports -> its DescribeKey, or why it could not be described;
    # and the decrypt function's environment (None: not read).
    keks: Mapping[str, KekDescription] = field(default_factory=dict)
    kek_errors: Mapping[str, str] = field(default_factory=dict)
    decrypt_function: DecryptFunctionCheck | None = None
    # ROTATOR_DECRYPT_FUNCTION as configured (a name, a partial or a full ARN), against which the
    # flows' Lambda invocations are judged; None: not configured, they are not judged.
    decrypt_function_setting: str | None = None

    def record(self, key_id: str) -> KeyRecord | None:
        return next((r for r in self.records if r.key_id == key_id), None)

    def private_key_stored(self, key_id: str) -> bool:
        return key_id in self.protection.keys

    def instance(self, instance_id: str | None) -> InstanceState | None:
        return next((i for i in self.instances if i.instance_id == instance_id), None)

    def narrowed(self, instance_id: str) -> KeyringState:
        """Only this managed instance (the records stay whole: a key may move between them)."""
        return replace(
            self, instances=tuple(i for i in self.instances if i.instance_id == instance_id)
        )


def rotation_summary(rotation: RotationState | None) -> str:
    """The instance's last rotation in one line; an interrupted one says how to resume it."""
    if rotation is None:
        return "never rotated"
    if rotation.finished:
        return f"last rotation {rotation.started_at:%Y-%m-%d} ({rotation.reason})"
    return f"INTERRUPTED after step {rotation.step}: run rotator rotate to resume"
