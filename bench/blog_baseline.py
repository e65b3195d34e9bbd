"""The AWS blog's decrypt Lambda (SDK >= 2 spelling): SSM reads and a PEM parse on every call."""

from __future__ import annotations

import base64
from typing import Any

import aws_encryption_sdk
import boto3
from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider

PARAM_PRIVATE_KEY = "CONNECT_INPUT_DECRYPTION_KEY"
PARAM_KEY_ID = "CONNECT_INPUT_KEY_ID"
ENCRYPTED_PARAMETER = "EncryptedCreditCard"

ssm = boto3.client("ssm")


class ConnectDecryption(RawMasterKeyProvider):  # type: ignore[misc]
    """The blog's key provider: one private key PEM, handed to the SDK as bytes."""

    provider_id = "AmazonConnect"

    def __init__(self, **kwargs: Any) -> None:
        self._private_key_pem = b""

    def set_private_key(self, private_key_pem: bytes) -> None:
        self._private_key_pem = private_key_pem

    def _get_raw_key(self, key_id: str) -> WrappingKey:
        # The SDK loads the PEM here, with OpenSSL's full RSA checks, for every new provider.
        return WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.RSA_OAEP_SHA512_MGF1,
            wrapping_key=self._private_key_pem,
            wrapping_key_type=EncryptionKeyType.PRIVATE,
        )


def lambda_handler(event: Any, context: Any) -> dict[str, str]:
    """Read key and key ID from SSM, build a provider, decrypt the one encrypted parameter."""
    encrypted_text = base64.b64decode(event["Details"]["Parameters"][ENCRYPTED_PARAMETER])
    private_key = ssm.get_parameter(Name=PARAM_PRIVATE_KEY, WithDecryption=True)
    key_id = ssm.get_parameter(Name=PARAM_KEY_ID, WithDecryption=True)
    provider = ConnectDecryption()
    provider.set_private_key(private_key["Parameter"]["Value"].encode("utf-8"))
    provider.add_master_key(key_id["Parameter"]["Value"])
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=aws_encryption_sdk.CommitmentPolicy.REQUIRE_ENCRYPT_ALLOW_DECRYPT
    )
    plaintext, _ = client.decrypt(source=encrypted_text, key_provider=provider)
    return {"status": "ok", ENCRYPTED_PARAMETER: plaintext.decode("utf-8")}
