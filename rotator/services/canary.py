"""Prove a stored key decrypts: a canary encrypted like Connect, decrypted by the Lambda's code."""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING

from lambda_decrypt.decrypt import Decryptor, KeySource
from lambda_decrypt.errors import DecryptError
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.errors import ConnectKeyRotatorError, KeyringError

if TYPE_CHECKING:
    from rotator.ports import Keyring


class VerificationFailed(ConnectKeyRotatorError):
    """A key stored in the keyring did not decrypt a canary encrypted for it."""


def prove_key_decrypts(keyring: Keyring, key_id: str, public_pem: str) -> None:
    """Encrypt a random canary with `public_pem` (certificate or public key) as Connect would,
    then decrypt it with the keyring's keys as the decrypt Lambda reads them (no cache)."""
    canary_decrypts(keyring.decrypt_keys(), key_id, public_pem)


def prove_stored_key(keyring: Keyring, key_id: str, private_key_pem: str, public_pem: str) -> None:
    """The read-back of a key just stored, made the way the decrypt Lambda reads it (one read,
    no cache): the bytes its reader loaded must be `private_key_pem`, which the caller validated
    in full (the Lambda loads them unchecked), and they must decrypt a canary made as Connect
    would make it with `public_pem`."""
    keys = keyring.decrypt_keys()
    try:
        loaded = keys.get(key_id)
    except DecryptError as error:
        raise KeyringError(f"key {key_id} did not read back ({error.code})") from None
    if loaded.source_sha256 != hashlib.sha256(private_key_pem.encode("ascii")).hexdigest():
        raise KeyringError(f"key {key_id} did not read back as stored")
    canary_decrypts(keys, key_id, public_pem)  # the reader holds the key now: no second read


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
