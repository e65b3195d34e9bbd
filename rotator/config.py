"""Rotator settings: explicit arguments > environment > defaults; env names defined here once."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from lambda_decrypt.config import (
    DEFAULT_KEYRING_PREFIX,
    Env,
    parse_number,
    validate_log_level,
    validate_prefix,
)
from rotator.domain.keys import (
    DEFAULT_KEY_SIZE,
    DEFAULT_SUBJECT,
    DEFAULT_VALIDITY_DAYS,
    check_key_size,
    parse_subject,
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
    GRACE_DAYS = "ROTATOR_GRACE_DAYS"
    RETENTION_DAYS = "ROTATOR_RETENTION_DAYS"
    SNS_TOPIC_ARN = "ROTATOR_SNS_TOPIC_ARN"
    METRICS_NAMESPACE = "ROTATOR_METRICS_NAMESPACE"
    REPORT_S3_URI = "ROTATOR_REPORT_S3_URI"
    REPORT_SNS_TOPIC_ARN = "ROTATOR_REPORT_SNS_TOPIC_ARN"


# s3://bucket[/prefix]: an S3 bucket name (3-63 lowercase letters, digits, dots, hyphens).
_S3_URI = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?")


@dataclass(frozen=True)
class Settings:
    keyring_prefix: str = DEFAULT_KEYRING_PREFIX
    kms_key_id: str | None = None
    key_size: int = DEFAULT_KEY_SIZE
    validity_days: int = DEFAULT_VALIDITY_DAYS
    subject: str = DEFAULT_SUBJECT
    renew_before_days: int = 30
    cryptoperiod_days: int = 365
    # previous -> retired: how long the old key stays associated for contacts still in flight.
    grace_days: int = 7
    # retired -> destroyed: how long stored ciphertexts made with a retired key stay decryptable.
    retention_days: int = 90
    # Scheduled runs: where failure notices go, and the CloudWatch namespace of their metrics.
    sns_topic_arn: str | None = None
    metrics_namespace: str = "ConnectKeyRotator"
    # The scheduled Lambda's report job: where the HTML report is stored (None: not stored), and
    # the topic of its summary (None: the sns_topic_arn above).
    report_s3_uri: str | None = None
    report_sns_topic_arn: str | None = None
    log_level: str = "WARNING"

    def __post_init__(self) -> None:
        validate_prefix(self.keyring_prefix, Env.KEYRING_PREFIX)
        validate_log_level(self.log_level, Env.LOG_LEVEL)
        for setting, check in (
            (RotatorEnv.KEY_SIZE, lambda: check_key_size(self.key_size)),
            (RotatorEnv.SUBJECT, lambda: parse_subject(self.subject)),
        ):
            try:
                check()
            except KeyMaterialError as error:
                raise ConfigError(setting, str(error)) from None
        for setting, days in (
            (RotatorEnv.VALIDITY_DAYS, self.validity_days),
            (RotatorEnv.RENEW_BEFORE_DAYS, self.renew_before_days),
            (RotatorEnv.CRYPTOPERIOD_DAYS, self.cryptoperiod_days),
            (RotatorEnv.GRACE_DAYS, self.grace_days),
            (RotatorEnv.RETENTION_DAYS, self.retention_days),
        ):
            if days <= 0:
                raise ConfigError(setting, "must be a positive number of days")
        if self.report_s3_uri is not None and not _S3_URI.fullmatch(self.report_s3_uri):
            raise ConfigError(
                RotatorEnv.REPORT_S3_URI, f"{self.report_s3_uri!r} is not like s3://bucket/prefix/"
            )
        if self.renew_before_days >= self.validity_days:
            raise ConfigError(
                RotatorEnv.RENEW_BEFORE_DAYS, "must be shorter than the certificate validity"
            )

    @property
    def grace(self) -> timedelta:
        return timedelta(days=self.grace_days)

    @property
    def retention(self) -> timedelta:
        return timedelta(days=self.retention_days)

    @property
    def report_topic_arn(self) -> str | None:
        """Where the report's summary goes: its own topic if set, else the alert topic."""
        return self.report_sns_topic_arn or self.sns_topic_arn

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
        if env.get(RotatorEnv.SNS_TOPIC_ARN):
            values["sns_topic_arn"] = env[RotatorEnv.SNS_TOPIC_ARN]
        if env.get(RotatorEnv.METRICS_NAMESPACE):
            values["metrics_namespace"] = env[RotatorEnv.METRICS_NAMESPACE]
        if env.get(RotatorEnv.REPORT_S3_URI):
            values["report_s3_uri"] = env[RotatorEnv.REPORT_S3_URI]
        if env.get(RotatorEnv.REPORT_SNS_TOPIC_ARN):
            values["report_sns_topic_arn"] = env[RotatorEnv.REPORT_SNS_TOPIC_ARN]
        if Env.LOG_LEVEL in env:
            values["log_level"] = env[Env.LOG_LEVEL].upper()
        for setting, field in (
            (RotatorEnv.KEY_SIZE, "key_size"),
            (RotatorEnv.VALIDITY_DAYS, "validity_days"),
            (RotatorEnv.RENEW_BEFORE_DAYS, "renew_before_days"),
            (RotatorEnv.CRYPTOPERIOD_DAYS, "cryptoperiod_days"),
            (RotatorEnv.GRACE_DAYS, "grace_days"),
            (RotatorEnv.RETENTION_DAYS, "retention_days"),
        ):
            if setting in env:
                values[field] = parse_number(setting, env[setting], int)
        values.update({k: v for k, v in explicit.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
