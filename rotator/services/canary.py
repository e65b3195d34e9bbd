"""Prove a stored key decrypts: a canary encrypted like Connect, decrypted by the Lambda's code."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from lambda_decrypt.decrypt import Decryptor, KeySource
from lambda_decrypt.errors import DecryptError
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.errors import ConnectKeyRotatorError

if TYPE_CHECKING:
    from rotator.ports import Keyring


class VerificationFailed(ConnectKeyRotatorError):
    """A key stored in the keyring did not decrypt a canary encrypted for it."""


def prove_key_decrypts(keyring: Keyring, key_id: str, public_pem: str) -> None:
    """Encrypt a random canary with `public_pem` (certificate or public key) as Connect would,
    then decrypt it with the keyring's keys as the decrypt Lambda reads them (no cache)."""
    canary_decrypts(keyring.decrypt_keys(), key_id, public_pem)


def canary_decrypts(keys: KeySource, key_id: str, public_pem: str) -> None:
    canary = secrets.token_hex(8).encode("ascii")
    ciphertext = encrypt_like_connect(canary, key_id=key_id, certificate_pem=public_pem)
    try:
        decrypted = Decryptor(keys).decrypt(ciphertext)
    except DecryptError as error:
        raise VerificationFailed(
            f"key {key_id} failed its canary decrypt from the keyring ({error.code})"
        ) from None
    if decrypted.plaintext != canary:
        raise VerificationFailed(f"key {key_id} decrypted its canary to the wrong value")
