"""Rotator settings: explicit arguments > environment > defaults; env names defined here once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from lambda_decrypt.config import DEFAULT_KEYRING_PREFIX, Env, parse_number, validate_prefix
from rotator.domain.keys import (
    DEFAULT_KEY_SIZE,
    DEFAULT_SUBJECT,
    DEFAULT_VALIDITY_DAYS,
    check_key_size,
)
from rotator.domain.policy import RotationPolicy
from rotator.errors import ConfigError, KeyMaterialError


class RotatorEnv(StrEnum):
    """Environment variables read by the rotator (besides KEYRING_PREFIX and LOG_LEVEL)."""

    KMS_KEY_ID = "ROTATOR_KMS_KEY_ID"
    KEY_SIZE = "ROTATOR_KEY_SIZE"
    VALIDITY_DAYS = "ROTATOR_VALIDITY_DAYS"
    SUBJECT = "ROTATOR_SUBJECT"
    RENEW_BEFORE_DAYS = "ROTATOR_RENEW_BEFORE_DAYS"
    CRYPTOPERIOD_DAYS = "ROTATOR_CRYPTOPERIOD_DAYS"


@dataclass(frozen=True)
class Settings:
    keyring_prefix: str = DEFAULT_KEYRING_PREFIX
    kms_key_id: str | None = None
    key_size: int = DEFAULT_KEY_SIZE
    validity_days: int = DEFAULT_VALIDITY_DAYS
    subject: str = DEFAULT_SUBJECT
    renew_before_days: int = 30
    cryptoperiod_days: int = 365
    log_level: str = "WARNING"

    def __post_init__(self) -> None:
        validate_prefix(self.keyring_prefix, Env.KEYRING_PREFIX)
        try:
            check_key_size(self.key_size)
        except KeyMaterialError as error:
            raise ConfigError(RotatorEnv.KEY_SIZE, str(error)) from None
        for setting, days in (
            (RotatorEnv.VALIDITY_DAYS, self.validity_days),
            (RotatorEnv.RENEW_BEFORE_DAYS, self.renew_before_days),
            (RotatorEnv.CRYPTOPERIOD_DAYS, self.cryptoperiod_days),
        ):
            if days <= 0:
                raise ConfigError(setting, "must be a positive number of days")
        if self.renew_before_days >= self.validity_days:
            raise ConfigError(
                RotatorEnv.RENEW_BEFORE_DAYS, "must be shorter than the certificate validity"
            )

    @property
    def policy(self) -> RotationPolicy:
        return RotationPolicy(
            renew_before=timedelta(days=self.renew_before_days),
            cryptoperiod=timedelta(days=self.cryptoperiod_days),
        )

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **explicit: object) -> Settings:
        """`explicit` values (None = not given) win over the environment, which beats defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if Env.KEYRING_PREFIX in env:
            values["keyring_prefix"] = env[Env.KEYRING_PREFIX]
        if env.get(RotatorEnv.KMS_KEY_ID):
            values["kms_key_id"] = env[RotatorEnv.KMS_KEY_ID]
        if RotatorEnv.SUBJECT in env:
            values["subject"] = env[RotatorEnv.SUBJECT]
        if Env.LOG_LEVEL in env:
            values["log_level"] = env[Env.LOG_LEVEL].upper()
        for setting, field in (
            (RotatorEnv.KEY_SIZE, "key_size"),
            (RotatorEnv.VALIDITY_DAYS, "validity_days"),
            (RotatorEnv.RENEW_BEFORE_DAYS, "renew_before_days"),
            (RotatorEnv.CRYPTOPERIOD_DAYS, "cryptoperiod_days"),
        ):
            if setting in env:
                values[field] = parse_number(setting, env[setting], int)
        values.update({k: v for k, v in explicit.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
