"""Rotator errors: the project's one hierarchy (rooted in `lambda_decrypt.errors`) extended."""

from __future__ import annotations

from lambda_decrypt.errors import AwsCallError, ConfigError, ConnectKeyRotatorError

__all__ = [
    "AwsCallError",
    "ConfigError",
    "ConnectKeyRotatorError",
    "InvalidTransition",
    "KeyMaterialError",
    "KeyringConflict",
    "KeyringError",
    "LockHeld",
    "LockLost",
    "NotFound",
]


class KeyMaterialError(ConnectKeyRotatorError):
    """A key or certificate is malformed, too small, mismatched, expired or too long for Connect."""


class KeyringError(ConnectKeyRotatorError):
    """The keyring's stored state is unreadable or inconsistent."""


class KeyringConflict(KeyringError):
    """A write would replace something that must never be replaced (a stored private key)."""


class NotFound(KeyringError):
    """A key, instance or parameter the command names does not exist."""


class InvalidTransition(ConnectKeyRotatorError):
    """A lifecycle change that the key's current state does not allow."""


class LockHeld(ConnectKeyRotatorError):
    """Another run holds the instance's lock and it is not stale."""

    def __init__(self, instance_id: str, holder: str) -> None:
        super().__init__(f"instance {instance_id} is being rotated: lock {holder}")
        self.instance_id = instance_id
        self.holder = holder


class LockLost(ConnectKeyRotatorError):
    """The lock a run took is no longer its own (or its lease ran out): it must stop writing."""


class DualControlRefused(ConnectKeyRotatorError):
    """Dual control (3.7.6): a gated command run directly, or an approval or withdrawal that
    is not allowed; the message names the `rotator request ...` command to use instead."""
