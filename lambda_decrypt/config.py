"""Settings of the decrypt path: environment variable names (defined here once) and defaults."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from lambda_decrypt.errors import ConfigError


class Env(StrEnum):
    """Environment variables read by the decrypt Lambda (the rotator reads KEYRING_PREFIX too)."""

    KEYRING_PREFIX = "KEYRING_PREFIX"
    ENCRYPTED_PARAMETERS = "ENCRYPTED_PARAMETERS"
    DECRYPT_ATTRIBUTES = "DECRYPT_ATTRIBUTES"
    RESPONSE_MODE = "RESPONSE_MODE"
    KEY_CACHE_TTL_SECONDS = "KEY_CACHE_TTL_SECONDS"
    KEY_CHECK_SECONDS = "KEY_CHECK_SECONDS"
    NEGATIVE_CACHE_TTL_SECONDS = "NEGATIVE_CACHE_TTL_SECONDS"
    MAX_KEY_LOOKUPS_PER_MINUTE = "MAX_KEY_LOOKUPS_PER_MINUTE"
    MAX_MESSAGE_BYTES = "MAX_MESSAGE_BYTES"
    SSM_TIMEOUT_SECONDS = "SSM_TIMEOUT_SECONDS"
    LOG_LEVEL = "LOG_LEVEL"


DEFAULT_KEYRING_PREFIX = "/connect-keys"
# Connect's messages are < 1.5 KB; the cap refuses anything absurd before any work is done.
DEFAULT_MAX_MESSAGE_BYTES = 8192
RESPONSE_MODES = ("plaintext", "masked")


@dataclass(frozen=True)
class DecryptConfig:
    """Everything the decrypt path can be told; explicit arguments > environment > defaults."""

    keyring_prefix: str = DEFAULT_KEYRING_PREFIX
    # None: decrypt every parameter whose value looks like an Encryption SDK message.
    encrypted_parameters: tuple[str, ...] | None = None
    decrypt_attributes: tuple[str, ...] = ()
    response_mode: str = "plaintext"
    key_cache_ttl_seconds: float = 900.0
    # How often a cached key's state is re-read (no KMS call): the bound on a destroyed key.
    key_check_seconds: float = 60.0
    negative_cache_ttl_seconds: float = 60.0
    max_key_lookups_per_minute: int = 30
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Connect and read timeout of one SSM attempt; None: derived from the function's timeout.
    ssm_timeout_seconds: float | None = None
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        validate_prefix(self.keyring_prefix, Env.KEYRING_PREFIX)
        if self.response_mode not in RESPONSE_MODES:
            raise ConfigError(Env.RESPONSE_MODE, f"must be one of {', '.join(RESPONSE_MODES)}")
        for setting, value in (
            (Env.KEY_CACHE_TTL_SECONDS, self.key_cache_ttl_seconds),
            (Env.KEY_CHECK_SECONDS, self.key_check_seconds),
            (Env.NEGATIVE_CACHE_TTL_SECONDS, self.negative_cache_ttl_seconds),
            (Env.MAX_KEY_LOOKUPS_PER_MINUTE, self.max_key_lookups_per_minute),
            (Env.MAX_MESSAGE_BYTES, self.max_message_bytes),
            (Env.SSM_TIMEOUT_SECONDS, self.ssm_timeout_seconds),
        ):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(setting, "must be a finite number greater than zero")
        validate_log_level(self.log_level, Env.LOG_LEVEL)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> DecryptConfig:
        """Build the config at call time: `overrides` win over `environ` (default os.environ)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if Env.KEYRING_PREFIX in env:
            values["keyring_prefix"] = env[Env.KEYRING_PREFIX]
        # Empty or blank means automatic detection, never "decrypt nothing".
        if split_names(env.get(Env.ENCRYPTED_PARAMETERS, "")):
            values["encrypted_parameters"] = split_names(env[Env.ENCRYPTED_PARAMETERS])
        if Env.DECRYPT_ATTRIBUTES in env:
            values["decrypt_attributes"] = split_names(env[Env.DECRYPT_ATTRIBUTES])
        if Env.RESPONSE_MODE in env:
            values["response_mode"] = env[Env.RESPONSE_MODE].strip().lower()
        for setting, field, kind in (
            (Env.KEY_CACHE_TTL_SECONDS, "key_cache_ttl_seconds", float),
            (Env.KEY_CHECK_SECONDS, "key_check_seconds", float),
            (Env.NEGATIVE_CACHE_TTL_SECONDS, "negative_cache_ttl_seconds", float),
            (Env.MAX_KEY_LOOKUPS_PER_MINUTE, "max_key_lookups_per_minute", int),
            (Env.MAX_MESSAGE_BYTES, "max_message_bytes", int),
            (Env.SSM_TIMEOUT_SECONDS, "ssm_timeout_seconds", float),
        ):
            if setting in env:
                values[field] = parse_number(setting, env[setting], kind)
        if Env.LOG_LEVEL in env:
            values["log_level"] = env[Env.LOG_LEVEL].strip().upper()
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def split_names(raw: str) -> tuple[str, ...]:
    """Parse a comma-separated list of names, ignoring blanks."""
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def parse_number(setting: str, raw: str, kind: type[int] | type[float]) -> int | float:
    """Parse a numeric setting or say which one is wrong."""
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(setting, f"{raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(setting, f"{raw!r} is not a finite number")
    return value


def validate_log_level(level: str, setting: str) -> None:
    if level.upper() not in logging.getLevelNamesMapping():
        raise ConfigError(setting, f"{level!r} is not a log level (DEBUG, INFO, WARNING, ERROR)")


def validate_prefix(prefix: str, setting: str) -> None:
    """A keyring prefix is an absolute SSM path without a trailing slash."""
    if not prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise ConfigError(
            setting, f"{prefix!r} must look like /connect-keys (absolute, no '/' at the end)"
        )
