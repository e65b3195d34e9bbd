"""Private keys as ready-to-use Encryption SDK master keys, built once per key per container."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKey
from aws_encryption_sdk.materials_managers.default import DefaultCryptoMaterialsManager
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from lambda_decrypt.errors import KeyUnusable, TamperedMessage, UnknownKey
from lambda_decrypt.message import CONNECT_PROVIDER_ID

MIN_RSA_BITS = 2048
CONNECT_WRAPPING = WrappingAlgorithm.RSA_OAEP_SHA512_MGF1
SIGNER_KEY_CONTEXT = "aws-crypto-public-key"


class _LoadedWrappingKey(WrappingKey):  # type: ignore[misc]
    """A WrappingKey around an already-loaded private key.

    The SDK's own constructor re-parses the PEM, and OpenSSL 3's RSA checks make that cost
    ~250 ms for RSA-4096; parsing once and handing the key object over removes it.
    """

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self.wrapping_algorithm = CONNECT_WRAPPING
        self.wrapping_key_type = EncryptionKeyType.PRIVATE
        self._wrapping_key = private_key


class _ConnectMaterialsManager(DefaultCryptoMaterialsManager):  # type: ignore[misc]
    """The SDK's default materials manager, loading the message's signature key in C.

    The SDK decompresses the signer's P-384 point with Python big-integer arithmetic
    (~0.25 ms, a tenth of a whole decrypt); cryptography does the same in OpenSSL.
    """

    def _load_verification_key_from_encryption_context(
        self, algorithm: Any, encryption_context: dict[str, str]
    ) -> bytes | None:
        encoded = encryption_context.get(SIGNER_KEY_CONTEXT)
        curve = algorithm.signing_algorithm_info
        if curve is None or encoded is None:
            # Unsigned suites or a missing key: the SDK's own checks and messages apply.
            return super()._load_verification_key_from_encryption_context(  # type: ignore[no-any-return]
                algorithm, encryption_context
            )
        try:
            point = ec.EllipticCurvePublicKey.from_encoded_point(curve(), base64.b64decode(encoded))
        except (ValueError, binascii.Error):
            # The encryption context is covered by the header's authentication tag.
            raise TamperedMessage("the signature key in the header is not a P-384 point") from None
        return point.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class ConnectKey:
    """One private key, addressed by the key ID that Connect writes into message headers."""

    key_id: str
    key_size: int
    master_key: RawMasterKey = field(repr=False, compare=False)
    # SHA-256 of the PEM bytes it was loaded from: a writer proves with it that the bytes a
    # reader loaded (unchecked, see `trusted`) are the ones it validated in full.
    source_sha256: str = field(repr=False, compare=False)
    materials_manager: DefaultCryptoMaterialsManager = field(repr=False, compare=False)

    @classmethod
    def from_pem(cls, key_id: str, private_key_pem: str | bytes, *, trusted: bool) -> ConnectKey:
        """Load a PEM private key.

        `trusted=True` skips OpenSSL's expensive RSA consistency checks; use it only for keys
        that were fully validated when they were stored (the rotator validates every key it
        writes to the keyring).
        """
        pem = (
            private_key_pem.encode("ascii") if isinstance(private_key_pem, str) else private_key_pem
        )
        try:
            private_key = load_pem_private_key(
                pem, password=None, unsafe_skip_rsa_key_validation=trusted
            )
        except (ValueError, TypeError):
            raise KeyUnusable(
                f"private key for key ID {key_id} is not a loadable PEM key"
            ) from None
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise KeyUnusable(f"private key for key ID {key_id} is not an RSA key")
        if private_key.key_size < MIN_RSA_BITS:
            raise KeyUnusable(f"private key for key ID {key_id} has {private_key.key_size} bits")
        master_key = RawMasterKey(
            provider_id=CONNECT_PROVIDER_ID,
            key_id=key_id.encode("utf-8"),
            wrapping_key=_LoadedWrappingKey(private_key),
        )
        return cls(
            key_id=key_id,
            key_size=private_key.key_size,
            master_key=master_key,
            source_sha256=hashlib.sha256(pem).hexdigest(),
            materials_manager=_ConnectMaterialsManager(master_key_provider=master_key),
        )


class StaticKeys:
    """A fixed set of keys held in memory: for embedding the decryptor, and for tests."""

    def __init__(self, keys: Mapping[str, ConnectKey] | None = None) -> None:
        self._keys = dict(keys or {})

    def add(self, key: ConnectKey) -> None:
        self._keys[key.key_id] = key

    def get(self, key_id: str) -> ConnectKey:
        try:
            return self._keys[key_id]
        except KeyError:
            raise UnknownKey(f"no private key for key ID {key_id}") from None
