"""What protects the private keys: KMS key descriptions, security strengths, private-key text."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

# Security strength in bits (NIST SP 800-57 Part 1 Rev. 5, table 2: RSA-2048 = 112, RSA-3072 =
# 128, AES-256 = 256; RSA-4096 = 152 is the estimate of NIST SP 800-56B Rev. 2, appendix D,
# which table 2 has no row for). A size between two rows counts as the lower one.
RSA_STRENGTH: dict[int, int] = {1024: 80, 2048: 112, 3072: 128, 4096: 152, 7680: 192, 15360: 256}
STRENGTH_SOURCE = (
    "NIST SP 800-57 Part 1 Rev. 5 table 2 (AES-256 256, RSA-2048 112, RSA-3072 128); "
    "RSA-4096 152 per NIST SP 800-56B Rev. 2 appendix D"
)
# KMS key specs that can encrypt a SecureString's data, and their strength. SSM accepts only
# symmetric keys; the RSA specs are here so that a KEK described as one is judged, not guessed.
KMS_KEY_SPEC_STRENGTH: dict[str, int] = {
    "SYMMETRIC_DEFAULT": 256,  # AES-256-GCM
    "RSA_2048": 112,
    "RSA_3072": 128,
    "RSA_4096": 152,
}

# "-----BEGIN PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----", "... ENCRYPTED PRIVATE KEY".
_PEM_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]{600,}")
# DER: a SEQUENCE (long form length) that starts with INTEGER 0, then either PKCS#1's modulus
# (INTEGER, long form) or PKCS#8's AlgorithmIdentifier (SEQUENCE).
_DER_PRIVATE_KEY = re.compile(rb"\A\x30\x82..\x02\x01\x00(\x02\x82|\x30)", re.DOTALL)


def rsa_strength(key_size: int) -> int:
    """The security strength of an RSA key of `key_size` bits (0 below RSA-1024)."""
    return max((bits for size, bits in RSA_STRENGTH.items() if size <= key_size), default=0)


def kek_strength(key_spec: str | None) -> int | None:
    """The security strength of a KMS key by its KeySpec; None: unknown or cannot encrypt."""
    return None if key_spec is None else KMS_KEY_SPEC_STRENGTH.get(key_spec)


def holds_private_key(value: str) -> bool:
    """Whether a text holds a private key: PEM private-key text anywhere in it, or the whole
    text base64 of a DER private key (PKCS#1 or PKCS#8). Never says which part, nor echoes it."""
    if _PEM_PRIVATE_KEY.search(value):
        return True
    if not _BASE64.fullmatch(value):
        return False
    try:
        der = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return _DER_PRIVATE_KEY.match(der) is not None


@dataclass(frozen=True)
class KekDescription:
    """A KMS key as DescribeKey shows it, named by the reference it was asked for (an alias, a
    key ID or an ARN, as SSM reports a SecureString's key)."""

    reference: str
    key_id: str
    arn: str
    key_spec: str
    key_usage: str = "ENCRYPT_DECRYPT"
    key_manager: str = "CUSTOMER"  # AWS for an AWS managed key (alias/aws/ssm)

    @property
    def strength(self) -> int | None:
        return kek_strength(self.key_spec)


@dataclass(frozen=True)
class FunctionEnvironment:
    """A Lambda function's environment as the copy inventory sees it: the names of the
    variables that hold private-key text. The values never leave the adapter."""

    function: str
    arn: str
    private_key_variables: tuple[str, ...]


@dataclass(frozen=True)
class DecryptFunctionCheck:
    """The decrypt function's environment in the copy inventory: not configured (None), read
    (`environment`), or unreadable (why)."""

    function: str | None
    environment: FunctionEnvironment | None = None
    unreadable: str | None = None

    @property
    def checked(self) -> bool:
        return self.environment is not None

    def describe(self) -> str:
        if self.function is None:
            return "not checked: no decrypt function configured (ROTATOR_DECRYPT_FUNCTION)"
        if self.environment is None:
            return f"not checked: {self.function} could not be read: {self.unreadable}"
        names = self.environment.private_key_variables
        if not names:
            return f"{self.function}: no environment variable holds a private key"
        return f"{self.function}: private key text in {', '.join(names)}"

    def to_dict(self) -> dict[str, Any]:
        environment = self.environment
        return {
            "function": self.function,
            "function_arn": None if environment is None else environment.arn,
            "checked": self.checked,
            "private_key_variables": []
            if environment is None
            else list(environment.private_key_variables),
            "status": self.describe(),
        }
