"""Adopt existing key pairs into the keyring: from files, or from a running blog deployment."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from cryptography.hazmat.primitives import serialization

from lambda_decrypt.message import is_valid_key_id
from rotator.domain.keys import (
    KeyMaterial,
    load_key_material,
    load_private_key,
    public_key_sha256,
    public_key_sha256_of_pem,
)
from rotator.domain.lifecycle import KeyRecord, KeyState
from rotator.domain.state import BLOG_KEY_PARAMETER as BLOG_KEY_PARAMETER
from rotator.domain.state import blog_source
from rotator.errors import ConnectKeyRotatorError, KeyMaterialError, KeyringConflict
from rotator.ports import KeyPart, Keyring, SecurityKeys
from rotator.services.canary import prove_key_decrypts
from rotator.services.report import same_kms_key

BLOG_KEY_ID_PARAMETER = "CONNECT_INPUT_KEY_ID"
WHAT_IF_NOTHING_STORED = "what-if: every check passed; nothing was stored"
WHAT_IF_ALREADY = "what-if: the key is already in the keyring; nothing was changed"
# The KMS key SSM uses for a SecureString when it is given none.
SSM_DEFAULT_KMS_KEY = "alias/aws/ssm"


@dataclass(frozen=True)
class ImportResult:
    record: KeyRecord
    created: bool
    warnings: list[str] = field(default_factory=list)
    what_if: bool = False


def import_key(
    keyring: Keyring,
    *,
    key_id: str,
    private_key_pem: str,
    certificate_pem: str,
    instance_id: str | None,
    now: datetime,
    actor: str,
    connect: SecurityKeys | None = None,
    principal: str = "",
    source: str = "imported",
    dry_run: bool = False,
) -> ImportResult:
    """Store, read back and test-decrypt a validated pair; an expired one only as decrypt-only.

    With `instance_id`, Connect must hold this key ID on the instance with this very public
    key (else nothing is stored); a key ID Connect does not list is stored decrypt-only.
    `dry_run` (a what-if): every check runs, nothing is stored."""
    _check_key_id(key_id)
    material = load_key_material(private_key_pem, certificate_pem)
    held = _held_by_connect(connect, instance_id, key_id, material.public_key_sha256)
    existing = _existing(keyring, key_id, material.public_key_sha256)
    if existing is not None:
        return _again(
            keyring,
            existing,
            material.private_key_pem,
            material.certificate_pem,
            material,
            dry_run=dry_run,
        )
    warnings: list[str] = []
    state = _initial_state(keyring, material, instance_id, now, warnings, held=held)
    record = KeyRecord.for_material(
        key_id,
        material,
        instance_id=instance_id,
        state=state,
        at=now,
        actor=actor,
        reason=_adopted(source),
        source=source,
        kms_key_id=keyring.kms_key_id,
        principal=principal,
    )
    if dry_run:
        return ImportResult(
            record, created=False, warnings=[*warnings, WHAT_IF_NOTHING_STORED], what_if=True
        )
    keyring.store_key(key_id, material, record)
    if keyring.read_material(key_id).public_key_sha256 != material.public_key_sha256:
        raise KeyringConflict(f"key {key_id} did not read back as stored")
    prove_key_decrypts(keyring, key_id, material.certificate_pem)
    if state is KeyState.ACTIVE and instance_id is not None:
        keyring.set_current(instance_id, key_id)
    return ImportResult(record, created=True, warnings=warnings)


def import_from_blog(
    keyring: Keyring,
    *,
    key_parameter: str = BLOG_KEY_PARAMETER,
    key_id_parameter: str = BLOG_KEY_ID_PARAMETER,
    certificate_pem: str | None,
    instance_id: str | None,
    now: datetime,
    actor: str,
    connect: SecurityKeys | None = None,
    principal: str = "",
    dry_run: bool = False,
) -> ImportResult:
    """Copy the blog's two parameters into the keyring; the parameters themselves are only read.
    Connect is checked as for `import_key`."""
    key_id, private_pem = keyring.read_blog_key(key_parameter, key_id_parameter)
    if certificate_pem is not None:
        return import_key(
            keyring,
            key_id=key_id,
            private_key_pem=private_pem,
            certificate_pem=certificate_pem,
            instance_id=instance_id,
            now=now,
            actor=actor,
            connect=connect,
            source=blog_source(key_parameter),
            dry_run=dry_run,
            principal=principal,
        )
    _check_key_id(key_id)
    private_key = load_private_key(private_pem)
    fingerprint = public_key_sha256(private_key.public_key())
    held = _held_by_connect(connect, instance_id, key_id, fingerprint)
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    pkcs8 = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    existing = _existing(keyring, key_id, fingerprint)
    if existing is not None:
        return _again(keyring, existing, pkcs8, public_pem, dry_run=dry_run)
    warnings = ["no certificate given: expiry is unknown, so the key is due for rotation now"]
    state = KeyState.RETIRED
    if instance_id is None:
        warnings.append("no --instance-id: imported as decrypt-only (retired)")
    elif not held:
        warnings.append(_not_listed(instance_id, key_id))
    else:
        _check_no_other_current(keyring, instance_id, key_id)
        state = KeyState.ACTIVE
    record = KeyRecord.for_public_key(
        key_id,
        fingerprint,
        private_key.key_size,
        instance_id=instance_id,
        state=state,
        at=now,
        actor=actor,
        reason=_adopted(blog_source(key_parameter)),
        source=blog_source(key_parameter),
        kms_key_id=keyring.kms_key_id,
        principal=principal,
    )
    if dry_run:
        return ImportResult(
            record, created=False, warnings=[*warnings, WHAT_IF_NOTHING_STORED], what_if=True
        )
    keyring.create_private_key(key_id, pkcs8)
    keyring.put_record(record)
    prove_key_decrypts(keyring, key_id, public_pem)
    if state is KeyState.ACTIVE and instance_id is not None:
        keyring.set_current(instance_id, key_id)
    return ImportResult(record, created=True, warnings=warnings)


def _again(
    keyring: Keyring,
    record: KeyRecord,
    private_pem: str,
    public_pem: str,
    material: KeyMaterial | None = None,
    *,
    dry_run: bool = False,
) -> ImportResult:
    """The same key again: a no-op, unless its private key (or the certificate on record) was
    deleted: that is restored and test-decrypted. A destroyed key is never brought back.

    `dry_run` (a what-if) says which of these a real run would do, and does nothing."""
    key_id = record.key_id
    restorable = {KeyPart.PRIVATE_KEY: private_pem}
    if material is not None and material.certificate_sha256 == record.certificate_sha256:
        restorable[KeyPart.CERTIFICATE] = material.certificate_pem
    missing = sorted(set(restorable) - keyring.stored_parts(key_id))
    if not missing:
        already = WHAT_IF_ALREADY if dry_run else f"key {key_id} was already imported"
        return ImportResult(record, created=False, warnings=[already])
    if not record.decrypts:
        raise KeyringConflict(f"key {key_id} was destroyed; a destroyed key is never restored")
    restored = " and ".join(missing)
    if dry_run:
        would = (
            f"key {key_id} ({record.state}) has no {restored}: would restore and test-decrypt it"
        )
        return ImportResult(
            record, created=False, warnings=[would, WHAT_IF_NOTHING_STORED], what_if=True
        )
    for part in missing:  # certificate before private key, as everywhere
        if part is KeyPart.PRIVATE_KEY:
            keyring.create_private_key(key_id, private_pem)
        else:
            keyring.store_certificate(key_id, restorable[part])
    prove_key_decrypts(keyring, key_id, public_pem)
    return ImportResult(
        record,
        created=True,
        warnings=[f"key {key_id} ({record.state}) had no {restored}: restored, test-decrypted"],
    )


def _initial_state(
    keyring: Keyring,
    material: KeyMaterial,
    instance_id: str | None,
    now: datetime,
    warnings: list[str],
    *,
    held: bool,
) -> KeyState:
    try:
        material.check_registrable(now)
    except KeyMaterialError as error:
        warnings.append(f"{error}: imported as decrypt-only (retired), never as current")
        return KeyState.RETIRED
    if instance_id is None:
        warnings.append("no --instance-id: imported as decrypt-only (retired)")
        return KeyState.RETIRED
    if not held:
        warnings.append(_not_listed(instance_id, key_id=None))
        return KeyState.RETIRED
    _check_no_other_current(keyring, instance_id, None)
    return KeyState.ACTIVE


class ImportRefused(ConnectKeyRotatorError):
    """The key does not match what Connect holds under its key ID; nothing was stored."""


def _held_by_connect(
    connect: SecurityKeys | None, instance_id: str | None, key_id: str, fingerprint: str
) -> bool:
    """Whether Connect holds this key ID on the instance; refused if it holds another key.

    A private key that does not match Connect's public key would become current and make every
    contact answer `tampered`: the pair is checked before anything is stored."""
    if instance_id is None:
        return False
    if connect is None:
        raise ImportRefused(f"checking key {key_id} against instance {instance_id} needs Connect")
    held = {k.key_id: k for k in connect.list_security_keys(instance_id)}.get(key_id)
    if held is None:
        return False
    theirs = public_key_sha256_of_pem(held.public_key_pem)
    if theirs != fingerprint:
        raise ImportRefused(
            f"the private key does not match the public key Connect holds for key {key_id} on "
            f"instance {instance_id} (Connect's public key SHA-256 {theirs}, this key's "
            f"{fingerprint}); nothing was stored. Find the private key that belongs to {key_id}"
        )
    return True


def _not_listed(instance_id: str, key_id: str | None) -> str:
    what = f"key {key_id}" if key_id else "this key ID"
    return (
        f"Connect does not list {what} on instance {instance_id}: imported as decrypt-only "
        "(retired), never as current"
    )


def _check_no_other_current(keyring: Keyring, instance_id: str, key_id: str | None) -> None:
    current = keyring.get_current(instance_id)
    if current is not None and current != key_id:
        raise KeyringConflict(
            f"instance {instance_id} already has current key {current}; "
            "import without --instance-id to add this key as decrypt-only"
        )


def _existing(keyring: Keyring, key_id: str, fingerprint: str) -> KeyRecord | None:
    record = keyring.find_record(key_id)
    if record is None:
        return None
    if record.public_key_sha256 != fingerprint:
        raise KeyringConflict(f"key ID {key_id} is already in the keyring with a different key")
    return record


def _check_key_id(key_id: str) -> None:
    if not is_valid_key_id(key_id):
        raise KeyMaterialError(
            f"key ID {key_id!r} is not valid (letters, digits, '-', '_', '.'; at most 128)"
        )


def _adopted(source: str) -> str:
    """The reason recorded on an adopted key's first transition."""
    return f"adopted ({source})"


@dataclass(frozen=True)
class KmsProtection:
    """Which KMS key encrypts an imported private key, and which one should. A mismatch is
    flagged by the report ("not protected by the configured KMS key") until the private key is
    stored again under `expected`."""

    key_id: str
    parameter: str
    protected_by: str  # as SSM reports it
    expected: str | None  # the configured KMS key, else the one the other private keys use
    configured: bool  # whether `expected` is the configured KMS key

    @property
    def mismatch(self) -> bool:
        return self.expected is not None and not same_kms_key(self.protected_by, self.expected)

    def warning(self) -> str:
        if self.configured:
            return (
                f"the private key of {self.key_id} is encrypted with KMS key {self.protected_by}, "
                f"not the configured KMS key {self.expected}: the report flags it as "
                "not protected by the configured KMS key until it is re-protected"
            )
        return (
            "no KMS key is configured (ROTATOR_KMS_KEY_ID or --kms-key-id), so the private key "
            f"of {self.key_id} is encrypted with {self.protected_by}, while the keyring's other "
            f"private keys use KMS key {self.expected}"
        )


def kms_protection(keyring: Keyring, key_id: str) -> KmsProtection | None:
    """What protects the key's private key, against the configured KMS key (or, with none
    configured, the one the keyring's other private keys use): one DescribeParameters sweep,
    nothing decrypted. None if no private key is stored."""
    protection = keyring.private_key_protection()
    mine = protection.get(key_id)
    if mine is None:
        return None
    expected = keyring.kms_key_id
    if expected is None:
        others = Counter(
            other.kms_key_id
            for other_id, other in protection.items()
            if other_id != key_id and other.kms_key_id not in ("", SSM_DEFAULT_KMS_KEY)
        )
        expected = others.most_common(1)[0][0] if others else None
    return KmsProtection(
        key_id, mine.location, mine.kms_key_id, expected, configured=keyring.kms_key_id is not None
    )
