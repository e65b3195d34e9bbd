"""The cryptographic architecture (PCI DSS 3.6.1.1): algorithms, keys, where and under what."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rotator.domain.findings import Finding, FindingCode
from rotator.domain.key_protection import (
    STRENGTH_SOURCE,
    DecryptFunctionCheck,
    KekDescription,
    rsa_strength,
)
from rotator.domain.state import KeyringState

# What Connect does with a key, as docs DESIGN.md section 2 states it (verified facts).
KEY_USE = "encrypt customer input (Connect's Store customer input block); decrypt in the Lambda"


@dataclass(frozen=True)
class Algorithm:
    """One algorithm of the scheme: what it does, its name and parameters, its strength."""

    role: str
    algorithm: str
    strength_bits: int | None  # None: the key's own (the RSA size of each key)

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "algorithm": self.algorithm, "strength_bits": self.strength_bits}


# Connect encrypts with the AWS Encryption SDK message format v1, algorithm suite 0x0378.
ALGORITHMS: tuple[Algorithm, ...] = (
    Algorithm(
        "message format",
        "AWS Encryption SDK message format v1, algorithm suite 0x0378 (non-committing), "
        "framed body (4096-byte frames)",
        None,
    ),
    Algorithm("content encryption", "AES-256-GCM", 256),
    Algorithm("data key derivation", "HKDF with SHA-384", None),
    Algorithm("message signature", "ECDSA on P-384 with SHA-384", 192),
    Algorithm(
        "data key wrapping",
        "RSA-OAEP with SHA-512 and MGF1-SHA-512 (key provider AmazonConnect, key ID as "
        "provider info)",
        None,
    ),
    Algorithm("key-encrypting key", "KMS key of the SSM SecureString (see below)", None),
)


@dataclass(frozen=True)
class ArchitectureKey:
    """One key of the keyring: its size and strength, use, expiry, and where it is stored."""

    key_id: str
    instance_id: str | None
    state: str
    key_size: int
    strength_bits: int
    not_after: datetime | None
    stored_at: str | None  # the SecureString parameter's name (None: no private key stored)
    kms_key: str | None  # the KMS key reference SSM reports for it

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "instance_id": self.instance_id,
            "state": self.state,
            "algorithm": f"RSA-{self.key_size}",
            "key_size": self.key_size,
            "strength_bits": self.strength_bits,
            "use": KEY_USE,
            "not_after": None if self.not_after is None else self.not_after.isoformat(),
            "stored_at": self.stored_at,
            "kms_key": self.kms_key,
        }


@dataclass(frozen=True)
class ArchitectureKek:
    """A KMS key that protects private keys: as described (or why not), and what it protects."""

    references: tuple[str, ...]  # as SSM reports it (or as configured), each once
    description: KekDescription | None
    unreadable: str | None
    protects: tuple[str, ...]  # key IDs
    strongest_protected_bits: int | None  # the strongest key it protects, as strength

    @property
    def aliases(self) -> tuple[str, ...]:
        return tuple(r for r in self.references if r.startswith("alias/") or ":alias/" in r)

    @property
    def strength_bits(self) -> int | None:
        return None if self.description is None else self.description.strength

    def to_dict(self) -> dict[str, Any]:
        described = self.description
        return {
            "references": list(self.references),
            "key_id": None if described is None else described.key_id,
            "arn": None if described is None else described.arn,
            "aliases": list(self.aliases),
            "key_spec": None if described is None else described.key_spec,
            "key_usage": None if described is None else described.key_usage,
            "key_manager": None if described is None else described.key_manager,
            "strength_bits": self.strength_bits,
            "unreadable": self.unreadable,
            "protects": list(self.protects),
            "strongest_protected_key_bits": self.strongest_protected_bits,
        }


@dataclass(frozen=True)
class CryptoArchitecture:
    """The report's cryptographic-architecture section."""

    algorithms: tuple[Algorithm, ...]
    keys: tuple[ArchitectureKey, ...]
    keks: tuple[ArchitectureKek, ...]
    decrypt_function: DecryptFunctionCheck | None  # None: not read

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithms": [a.to_dict() for a in self.algorithms],
            "strength_source": STRENGTH_SOURCE,
            "private_key_store": "SSM SecureString parameters under the keyring prefix",
            "keys": [k.to_dict() for k in self.keys],
            "key_encrypting_keys": [k.to_dict() for k in self.keks],
            "decrypt_function": (self.decrypt_function or DecryptFunctionCheck(None)).to_dict(),
        }


def crypto_architecture(state: KeyringState) -> CryptoArchitecture:
    """The section from the read model alone (pure): every keyring key, every KMS key reference
    that protects one (described, or why not), and the decrypt function's environment."""
    keys = tuple(
        ArchitectureKey(
            key_id=record.key_id,
            instance_id=record.instance_id,
            state=record.state.value,
            key_size=record.key_size,
            strength_bits=rsa_strength(record.key_size),
            not_after=record.not_after,
            stored_at=None if protected is None else protected.location,
            kms_key=None if protected is None else protected.kms_key_id or None,
        )
        for record in state.records
        for protected in (state.protection.keys.get(record.key_id),)
    )
    return CryptoArchitecture(ALGORITHMS, keys, _keks(state, keys), state.decrypt_function)


def _keks(state: KeyringState, keys: tuple[ArchitectureKey, ...]) -> tuple[ArchitectureKek, ...]:
    """One entry per KMS key: references that DescribeKey resolves to the same ARN are one key."""
    references = sorted({*state.keks, *state.kek_errors, *(k.kms_key for k in keys if k.kms_key)})
    groups: dict[str, list[str]] = {}
    for reference in references:
        described = state.keks.get(reference)
        groups.setdefault(reference if described is None else described.arn, []).append(reference)
    found = []
    for _, members in sorted(groups.items()):
        description = next((state.keks[r] for r in members if r in state.keks), None)
        errors = [state.kek_errors[r] for r in members if r in state.kek_errors]
        protected = [k for k in keys if k.kms_key in members]
        found.append(
            ArchitectureKek(
                references=tuple(members),
                description=description,
                unreadable=None if description is not None else (errors[0] if errors else None),
                protects=tuple(k.key_id for k in protected),
                strongest_protected_bits=max((k.strength_bits for k in protected), default=None),
            )
        )
    return tuple(found)


def kek_findings(state: KeyringState) -> Iterator[Finding]:
    """A private key protected by a KMS key of lower security strength than its own: whoever
    breaks the weaker KEK has the stronger key (NIST SP 800-57 Part 1, 5.6.1)."""
    architecture = crypto_architecture(state)
    for kek in architecture.keks:
        strength, described = kek.strength_bits, kek.description
        if strength is None or described is None:
            continue
        for key in architecture.keys:
            if key.key_id not in kek.protects or key.strength_bits <= strength:
                continue
            yield Finding(
                FindingCode.KEK_WEAKER_THAN_KEY,
                key.instance_id,
                key.key_id,
                f"{key.stored_at} (RSA-{key.key_size}, {key.strength_bits}-bit security) is "
                f"encrypted with KMS key {described.arn} ({described.key_spec}, {strength}-bit "
                "security): re-protect it under a key at least as strong",
            )
