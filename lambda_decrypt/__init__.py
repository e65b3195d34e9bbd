"""Multi-key decryption of Amazon Connect's encrypted customer input (the Lambda and the library).

`decrypt(ciphertext)` uses the SSM keyring named by KEYRING_PREFIX; `Decryptor` takes any key
source (for example `StaticKeys`) for code that embeds the decryption in its own Lambda.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# The re-exports load on first use: importing a submodule that needs neither (the errors, the
# logs; every `rotator` command that never decrypts) must not pay for the Encryption SDK.
_LAZY = {
    "ConnectKey": "lambda_decrypt.keys",
    "DecryptError": "lambda_decrypt.errors",
    "Decrypted": "lambda_decrypt.decrypt",
    "Decryptor": "lambda_decrypt.decrypt",
    "KeySource": "lambda_decrypt.decrypt",
    "StaticKeys": "lambda_decrypt.keys",
}

_default: Decryptor | None = None


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """This package's module. Importing the submodule `lambda_decrypt.decrypt` sets the package's
    attribute `decrypt` to it; loaded lazily, it would replace the function `decrypt` (eagerly
    imported before the function's definition, it never could), so that one assignment is
    ignored: `lambda_decrypt.decrypt` stays the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "decrypt" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def decrypt(ciphertext: str | bytes) -> Decrypted:
    """Decrypt with the process-wide keyring reader (configured from the environment)."""
    global _default
    if _default is None:
        from lambda_decrypt.config import DecryptConfig
        from lambda_decrypt.keyring import keyring_decryptor

        _default = keyring_decryptor(DecryptConfig.from_env())
    return _default.decrypt(ciphertext)
