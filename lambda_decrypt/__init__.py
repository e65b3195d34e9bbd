"""Multi-key decryption of Amazon Connect's encrypted customer input (the Lambda and the library).

`decrypt(ciphertext)` uses the SSM keyring named by KEYRING_PREFIX; `Decryptor` takes any key
source (for example `StaticKeys`) for code that embeds the decryption in its own Lambda.
"""

from __future__ import annotations

from lambda_decrypt.decrypt import Decrypted, Decryptor, KeySource
from lambda_decrypt.errors import DecryptError
from lambda_decrypt.keys import ConnectKey, StaticKeys

__all__ = [
    "ConnectKey",
    "DecryptError",
    "Decrypted",
    "Decryptor",
    "KeySource",
    "StaticKeys",
    "decrypt",
]

_default: Decryptor | None = None


def decrypt(ciphertext: str | bytes) -> Decrypted:
    """Decrypt with the process-wide keyring reader (configured from the environment)."""
    global _default
    if _default is None:
        from lambda_decrypt.config import DecryptConfig

        _default = Decryptor.from_config(DecryptConfig.from_env())
    return _default.decrypt(ciphertext)
