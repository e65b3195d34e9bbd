"""Decrypt one Connect ciphertext with the key its header names; every failure has a stable code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from aws_encryption_sdk import CommitmentPolicy, EncryptionSDKClient
from aws_encryption_sdk.exceptions import (
    AWSEncryptionSDKClientError,
    DecryptKeyError,
    IncorrectMasterKeyError,
    NotSupportedError,
    SerializationError,
)
from cryptography.exceptions import InvalidSignature, InvalidTag

from lambda_decrypt.config import DEFAULT_MAX_MESSAGE_BYTES
from lambda_decrypt.errors import (
    DecryptError,
    MalformedMessage,
    TamperedMessage,
    UnsupportedSuite,
)
from lambda_decrypt.keys import ConnectKey
from lambda_decrypt.message import ConnectHeader, decode_base64, read_header


class KeySource(Protocol):
    """Anything that maps a key ID to a loaded key (the SSM keyring reader, StaticKeys)."""

    def get(self, key_id: str) -> ConnectKey: ...


@dataclass(frozen=True)
class Decrypted:
    """A decrypted value; its repr never shows the plaintext."""

    key_id: str
    plaintext: bytes = field(repr=False)

    def text(self) -> str:
        return self.plaintext.decode("utf-8", "replace")


class Decryptor:
    """Checks a message's structure, picks the key its header names, lets the SDK decrypt.

    Connect's suite 0x0378 is non-committing, so decrypting needs
    REQUIRE_ENCRYPT_ALLOW_DECRYPT; the header check has already refused every other suite.
    """

    def __init__(self, keys: KeySource, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.keys = keys
        self.max_message_bytes = max_message_bytes
        self._client = EncryptionSDKClient(
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_ALLOW_DECRYPT,
            max_encrypted_data_keys=1,
        )

    def header(self, ciphertext: str | bytes) -> tuple[bytes, ConnectHeader]:
        """Decode base64 text (or take raw bytes) and check the message's structure."""
        message = (
            decode_base64(ciphertext, self.max_message_bytes)
            if isinstance(ciphertext, str)
            else ciphertext
        )
        return message, read_header(message, self.max_message_bytes)

    def decrypt(self, ciphertext: str | bytes) -> Decrypted:
        """Base64 text as Connect sends it, or the raw message bytes."""
        message, header = self.header(ciphertext)
        key = self.keys.get(header.key_id)
        try:
            plaintext, _ = self._client.decrypt(
                source=message, materials_manager=key.materials_manager
            )
        except (IncorrectMasterKeyError, DecryptKeyError):
            raise TamperedMessage(
                f"the data key does not unwrap with the private key of key ID {header.key_id}"
            ) from None
        except (InvalidTag, InvalidSignature):
            raise TamperedMessage("message authentication failed") from None
        except NotSupportedError:
            raise UnsupportedSuite("the Encryption SDK refused the message's format") from None
        except SerializationError as error:
            # The SDK reports a failed header authentication tag as a parse error.
            if isinstance(error.__context__, InvalidTag):
                raise TamperedMessage("header authentication failed") from None
            raise MalformedMessage("the Encryption SDK could not parse the message") from None
        except AWSEncryptionSDKClientError as error:
            raise DecryptError(f"Encryption SDK error {type(error).__name__}") from None
        return Decrypted(key_id=header.key_id, plaintext=plaintext)
