"""Encrypt exactly as Amazon Connect does: for canaries that prove a new key, and for tests."""

from __future__ import annotations

import base64

from aws_encryption_sdk import CommitmentPolicy, EncryptionSDKClient
from aws_encryption_sdk.identifiers import Algorithm, EncryptionKeyType
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKey
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lambda_decrypt.keys import CONNECT_WRAPPING
from lambda_decrypt.message import CONNECT_PROVIDER_ID

CONNECT_FRAME_LENGTH = 4096
# Connect's suite is non-committing: encrypting with it needs FORBID_ENCRYPT_ALLOW_DECRYPT.
_client = EncryptionSDKClient(commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT)


def encrypt_like_connect(plaintext: bytes, *, key_id: str, certificate_pem: str) -> str:
    """Base64 message: suite 0x0378, one data key from `AmazonConnect` with provider info =
    key ID, RSA-OAEP-SHA512, 4096-byte frames, as the flow block with this certificate makes.

    `certificate_pem` may also be a bare public key PEM (keys adopted without a certificate).
    """
    public_pem = certificate_pem.encode("ascii")
    if b"BEGIN CERTIFICATE" in public_pem:
        public_pem = (
            x509.load_pem_x509_certificate(public_pem)
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    master_key = RawMasterKey(
        provider_id=CONNECT_PROVIDER_ID,
        key_id=key_id.encode("utf-8"),
        wrapping_key=WrappingKey(
            wrapping_algorithm=CONNECT_WRAPPING,
            wrapping_key=public_pem,
            wrapping_key_type=EncryptionKeyType.PUBLIC,
        ),
    )
    ciphertext, _ = _client.encrypt(
        source=plaintext,
        key_provider=master_key,
        algorithm=Algorithm.AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384,
        frame_length=CONNECT_FRAME_LENGTH,
    )
    return base64.b64encode(ciphertext).decode("ascii")
