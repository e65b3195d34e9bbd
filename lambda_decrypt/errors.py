"""The project's one error hierarchy; `rotator.errors` extends it."""

from __future__ import annotations

from typing import ClassVar


class ConnectKeyRotatorError(Exception):
    """Root of every error this project raises on purpose.

    Messages say what went wrong and where, never a secret: no plaintext, no key material.
    """


class ConfigError(ConnectKeyRotatorError):
    """A setting is missing or has a value that cannot be used."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"configuration: {setting}: {problem}")
        self.setting = setting


class AwsCallError(ConnectKeyRotatorError):
    """An AWS call failed for a reason other than the one the caller handles itself."""

    def __init__(self, call: str, resource: str, reason: str) -> None:
        super().__init__(f"{call} failed for {resource}: {reason}")
        self.call = call
        self.resource = resource
        self.reason = reason


class DecryptError(ConnectKeyRotatorError):
    """A ciphertext could not be decrypted; `code` is the stable answer given to Connect."""

    code: ClassVar[str] = "internal"


class MalformedMessage(DecryptError):
    """Not an Encryption SDK message, or its structure is inconsistent."""

    code = "malformed"


class TruncatedMessage(DecryptError):
    """The message ends before its structure says it should."""

    code = "truncated"


class UnsupportedSuite(DecryptError):
    """An algorithm suite or format Connect does not send (no downgrade is accepted)."""

    code = "unsupported_suite"


class WrongProvider(DecryptError):
    """The data key was not wrapped by the `AmazonConnect` key provider."""

    code = "wrong_provider"


class UnknownKey(DecryptError):
    """No private key for the key ID in the message header."""

    code = "unknown_key"


class KeyDestroyed(DecryptError):
    """The key ID is known, but its private key was destroyed after its retention period."""

    code = "key_destroyed"


class TamperedMessage(DecryptError):
    """Authentication failed: the data key, a frame or the signature does not verify."""

    code = "tampered"


class MessageTooLarge(DecryptError):
    """The input exceeds the configured size cap."""

    code = "too_large"


class KeyringUnavailable(DecryptError):
    """The keyring could not be read (SSM or KMS error); the caller sees `internal`."""

    code = "internal"


class KeyringAccessDenied(KeyringUnavailable):
    """The function's role may not read the keyring: a deployment (IAM) error, not an outage."""


class KeyUnusable(DecryptError):
    """A stored private key cannot be loaded as an RSA key of an accepted size."""

    code = "internal"


def aws_reason(error: BaseException) -> str:
    """The AWS error code of a botocore error, or the exception type; never a payload."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
    return type(error).__name__
