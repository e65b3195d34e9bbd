"""Rotator settings: one declaration of every setting; flags > environment > config file > default.

`SETTINGS` is the one place a setting is declared: its `Settings` field, environment variable,
key in the `rotator serve` TOML file, type, default, the `deploy/template.yaml` parameter that
sets it (if any), a one-line description and its check. `Settings.load` (environment) and
`rotator.config_file` (TOML) are derived from it; `tests/test_settings_declaration.py` checks
the code, the TOML example, the template and the README's settings table against it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

from lambda_decrypt.config import (
    DEFAULT_KEYRING_PREFIX,
    Env,
    parse_number,
    validate_log_level,
    validate_prefix,
)
from rotator.domain.approval import DEFAULT_REQUEST_EXPIRY_HOURS
from rotator.domain.checks import DEFAULT_MIN_KEY_SIZE, ReportOptions
from rotator.domain.expiry import DEFAULT_EXPIRY_EVENT_DAYS_TEXT, parse_thresholds
from rotator.domain.fleet import Account, parse_accounts_json
from rotator.domain.keys import (
    DEFAULT_KEY_SIZE,
    DEFAULT_SUBJECT,
    DEFAULT_VALIDITY_DAYS,
    check_key_size,
    parse_subject,
)
from rotator.domain.policy import RotationPolicy
from rotator.domain.stored_ciphertext import stores_from_text
from rotator.domain.window import (
    FREEZE_EXAMPLE,
    WINDOW_EXAMPLE,
    RotationSchedule,
    parse_freezes,
    parse_window,
    schedule_from,
)
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
    EXPIRY_EVENT_DAYS = "ROTATOR_EXPIRY_EVENT_DAYS"
    EVENT_BUS = "ROTATOR_EVENT_BUS"
    ROTATION_WINDOW = "ROTATOR_ROTATION_WINDOW"
    FREEZE = "ROTATOR_FREEZE"
    RENEW_BEFORE_MINIMUM_DAYS = "ROTATOR_RENEW_BEFORE_MINIMUM_DAYS"
    CIPHERTEXT_STORES = "ROTATOR_CIPHERTEXT_STORES"
    DUAL_CONTROL = "ROTATOR_DUAL_CONTROL"
    REQUEST_EXPIRY_HOURS = "ROTATOR_REQUEST_EXPIRY_HOURS"
    DECRYPT_FUNCTION = "ROTATOR_DECRYPT_FUNCTION"
    ACCOUNTS = "ROTATOR_ACCOUNTS"


# s3://bucket[/prefix]: an S3 bucket name (3-63 lowercase letters, digits, dots, hyphens).
S3_URI = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?")
SNS_TOPIC_ARN = re.compile(r"arn:aws(-[a-z]+)*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?")

V = TypeVar("V")


@dataclass(frozen=True)
class Setting(Generic[V]):
    """One setting of the rotator, declared once; every source of it is derived from this."""

    name: str  # the `Settings` field
    env: str  # the environment variable
    toml: tuple[str, str]  # (table, key) in the `rotator serve` config file
    kind: type[int] | type[str]  # its type in TOML, and what the environment's text becomes
    default: V
    doc: str  # one line, for the README's settings table
    parameter: str | None = None  # the deploy/template.yaml parameter that sets `env`
    # Raises ValueError or KeyMaterialError saying what is wrong (or a ConfigError naming env).
    check: Callable[[Any], object] | None = None
    empty_is_unset: bool = False  # an empty variable means "not set", as an unset one
    upper: bool = False  # the value is upper-cased (log levels)
    # The file holds it as an array of tables (`[[accounts]]`, toml = ("accounts", "")), the
    # environment as that array in JSON; the value is the JSON text.
    array_of_tables: bool = False

    @property
    def where(self) -> str:
        """How an error names the setting's place in the config file: `[settings] key_size`."""
        table, key = self.toml
        return f"[[{table}]]" if self.array_of_tables else f"[{table}] {key}"

    def is_set_in(self, environ: Mapping[str, str]) -> bool:
        return bool(environ.get(self.env)) if self.empty_is_unset else self.env in environ

    def parse(self, raw: str) -> int | str:
        """The environment's text as a value (numbers are checked for being numbers)."""
        if self.kind is int:
            return int(parse_number(self.env, raw, int))
        return raw.upper() if self.upper else raw

    def validate(self, value: object) -> None:
        """Raise ConfigError naming the environment variable if `value` cannot be used."""
        if value is None or self.check is None:
            return
        try:
            self.check(value)
        except (KeyMaterialError, ValueError) as error:
            raise ConfigError(self.env, str(error)) from None


def _positive_days(days: int) -> None:
    if days <= 0:
        raise ValueError("must be a positive number of days")


def _s3_uri(uri: str) -> None:
    if not S3_URI.fullmatch(uri):
        raise ValueError(f"{uri!r} is not like s3://bucket/prefix/")


def _sns_topic_arn(arn: str) -> None:
    if not SNS_TOPIC_ARN.fullmatch(arn):
        raise ValueError(f"{arn!r} is not an SNS topic ARN (arn:aws:sns:region:account:name)")


def _on_off(value: str) -> None:
    if value not in ("true", "false"):
        raise ValueError(f"{value!r} is not true or false")


def _positive_hours(hours: int) -> None:
    if hours <= 0:
        raise ValueError("must be a positive number of hours")


def _days(name: str, env: str, default: int, doc: str, parameter: str) -> Setting[int]:
    return Setting(
        name, env, ("settings", name), int, default, doc, parameter, check=_positive_days
    )


SETTINGS: tuple[Setting[Any], ...] = (
    Setting(
        "keyring_prefix",
        Env.KEYRING_PREFIX,
        ("settings", "keyring_prefix"),
        str,
        DEFAULT_KEYRING_PREFIX,
        "SSM path of the keyring; must match the decrypt Lambda's",
        "KeyringPrefix",
        check=lambda prefix: validate_prefix(prefix, Env.KEYRING_PREFIX),
    ),
    Setting[str | None](
        "kms_key_id",
        RotatorEnv.KMS_KEY_ID,
        ("settings", "kms_key_id"),
        str,
        None,
        "KMS key (ID, ARN or alias) that encrypts the private keys in SSM; none: SSM's aws/ssm",
        empty_is_unset=True,
    ),
    Setting(
        "key_size",
        RotatorEnv.KEY_SIZE,
        ("settings", "key_size"),
        int,
        DEFAULT_KEY_SIZE,
        "RSA key size of new keys: 2048, 3072 or 4096",
        "KeySize",
        check=check_key_size,
    ),
    _days(
        "validity_days",
        RotatorEnv.VALIDITY_DAYS,
        DEFAULT_VALIDITY_DAYS,
        "validity of a new key's self-signed certificate, in days",
        "ValidityDays",
    ),
    Setting(
        "subject",
        RotatorEnv.SUBJECT,
        ("settings", "subject"),
        str,
        DEFAULT_SUBJECT,
        "subject of new certificates (an RFC 4514 name with a CN)",
        check=parse_subject,
    ),
    _days(
        "renew_before_days",
        RotatorEnv.RENEW_BEFORE_DAYS,
        30,
        "rotate when the certificate has fewer days left than this (less than the validity)",
        "RenewBeforeDays",
    ),
    _days(
        "cryptoperiod_days",
        RotatorEnv.CRYPTOPERIOD_DAYS,
        365,
        "or when the key is older than this many days (PCI DSS 3.6.4)",
        "CryptoperiodDays",
    ),
    _days(
        "grace_days",
        RotatorEnv.GRACE_DAYS,
        7,
        "previous -> retired: days the old key stays associated for contacts still in flight",
        "GraceDays",
    ),
    _days(
        "retention_days",
        RotatorEnv.RETENTION_DAYS,
        90,
        "retired -> destroyed: days stored ciphertexts made with a retired key stay decryptable",
        "RetentionDays",
    ),
    Setting[str | None](
        "sns_topic_arn",
        RotatorEnv.SNS_TOPIC_ARN,
        ("settings", "sns_topic_arn"),
        str,
        None,
        "SNS topic of the scheduled runs' failure notices; none: no notice",
        check=_sns_topic_arn,
        empty_is_unset=True,
    ),
    Setting(
        "metrics_namespace",
        RotatorEnv.METRICS_NAMESPACE,
        ("settings", "metrics_namespace"),
        str,
        "ConnectKeyRotator",
        "CloudWatch namespace of the scheduled runs' metrics",
        "MetricsNamespace",
        empty_is_unset=True,
    ),
    Setting[str | None](
        "report_s3_uri",
        RotatorEnv.REPORT_S3_URI,
        ("report", "s3_uri"),
        str,
        None,
        "where the report job stores the HTML report (s3://bucket/prefix/); none: not stored",
        check=_s3_uri,
        empty_is_unset=True,
    ),
    Setting[str | None](
        "report_sns_topic_arn",
        RotatorEnv.REPORT_SNS_TOPIC_ARN,
        ("report", "sns_topic_arn"),
        str,
        None,
        "SNS topic of the report's summary; none: the failure-notice topic",
        check=_sns_topic_arn,
        empty_is_unset=True,
    ),
    Setting[str | None](
        "rotation_window",
        RotatorEnv.ROTATION_WINDOW,
        ("settings", "rotation_window"),
        str,
        None,
        f"when due rotations may run: cron, duration, time zone (`{WINDOW_EXAMPLE}`); "
        "none: whenever due",
        "RotationWindow",
        check=parse_window,
        empty_is_unset=True,
    ),
    Setting[str | None](
        "freeze",
        RotatorEnv.FREEZE,
        ("settings", "freeze"),
        str,
        None,
        "dates on which no due rotation runs, ends included, in the window's time zone "
        f"(`{FREEZE_EXAMPLE}`)",
        "Freeze",
        check=parse_freezes,
        empty_is_unset=True,
    ),
    Setting(
        "renew_before_minimum_days",
        RotatorEnv.RENEW_BEFORE_MINIMUM_DAYS,
        ("settings", "renew_before_minimum_days"),
        int,
        7,
        "a due key never waits for a window or freeze once this close (in days) to expiry",
        "RenewBeforeMinimumDays",
        check=_positive_days,
    ),
    Setting(
        "expiry_event_days",
        RotatorEnv.EXPIRY_EVENT_DAYS,
        ("settings", "expiry_event_days"),
        str,
        DEFAULT_EXPIRY_EVENT_DAYS_TEXT,
        "days before NotAfter at which the rotation job puts an expiry event (empty: none)",
        "ExpiryEventDays",
        check=parse_thresholds,
    ),
    Setting(
        "event_bus",
        RotatorEnv.EVENT_BUS,
        ("settings", "event_bus"),
        str,
        "default",
        "EventBridge bus (name or ARN) of the expiry events",
        empty_is_unset=True,
    ),
    Setting(
        "log_level",
        Env.LOG_LEVEL,
        ("settings", "log_level"),
        str,
        "WARNING",
        "JSON logs on stderr: DEBUG, INFO, WARNING or ERROR",
        check=lambda level: validate_log_level(level, Env.LOG_LEVEL),
        upper=True,
    ),
    Setting[str | None](
        "ciphertext_stores",
        RotatorEnv.CIPHERTEXT_STORES,
        ("settings", "ciphertext_stores"),
        str,
        None,
        "stores of Connect ciphertexts (`s3://bucket/prefix dynamodb://table`, space or comma "
        "separated): `destroy` refuses while they hold ciphertexts of the key",
        check=stores_from_text,
        empty_is_unset=True,
    ),
    Setting(
        "dual_control",
        RotatorEnv.DUAL_CONTROL,
        ("settings", "dual_control"),
        str,
        "true",
        "true: destroy, rollback, import and the overrides wait for a second principal's "
        "`rotator approve` (off against the local sandbox unless set)",
        "DualControl",
        check=_on_off,
    ),
    Setting(
        "request_expiry_hours",
        RotatorEnv.REQUEST_EXPIRY_HOURS,
        ("settings", "request_expiry_hours"),
        int,
        DEFAULT_REQUEST_EXPIRY_HOURS,
        "hours a dual-control request waits for its approval before it expires",
        check=_positive_hours,
    ),
    Setting[str | None](
        "decrypt_function",
        RotatorEnv.DECRYPT_FUNCTION,
        ("settings", "decrypt_function"),
        str,
        None,
        "the decrypt Lambda (name or ARN) whose environment the report's copy inventory scans "
        "for private keys; none: not checked",
        empty_is_unset=True,
    ),
    # Fleet mode (issue 12): empty = today's one account, the credentials' own.
    Setting(
        "accounts",
        RotatorEnv.ACCOUNTS,
        ("accounts", ""),
        str,
        "",
        "fleet mode: the member accounts, a JSON array of {name, role_arn, external_id, "
        "regions} and optional decrypt_function (the member's decrypt Lambda the report scans; "
        "default connect-key-rotator-decrypt); empty: this account only",
        "FleetAccounts",
        check=lambda text: parse_accounts_json(text) if text else (),
        empty_is_unset=True,
        array_of_tables=True,
    ),
)
SETTING_BY_NAME: Mapping[str, Setting[Any]] = {setting.name: setting for setting in SETTINGS}


def _default(name: str) -> Any:
    return SETTING_BY_NAME[name].default


@dataclass(frozen=True)
class Settings:
    """The values of `SETTINGS` (field for field, same names); defaults come from there."""

    keyring_prefix: str = _default("keyring_prefix")
    kms_key_id: str | None = _default("kms_key_id")
    key_size: int = _default("key_size")
    validity_days: int = _default("validity_days")
    subject: str = _default("subject")
    renew_before_days: int = _default("renew_before_days")
    cryptoperiod_days: int = _default("cryptoperiod_days")
    grace_days: int = _default("grace_days")
    retention_days: int = _default("retention_days")
    sns_topic_arn: str | None = _default("sns_topic_arn")
    metrics_namespace: str = _default("metrics_namespace")
    report_s3_uri: str | None = _default("report_s3_uri")
    report_sns_topic_arn: str | None = _default("report_sns_topic_arn")
    rotation_window: str | None = _default("rotation_window")
    freeze: str | None = _default("freeze")
    renew_before_minimum_days: int = _default("renew_before_minimum_days")
    expiry_event_days: str = _default("expiry_event_days")
    event_bus: str = _default("event_bus")
    log_level: str = _default("log_level")
    ciphertext_stores: str | None = _default("ciphertext_stores")
    dual_control: str = _default("dual_control")
    request_expiry_hours: int = _default("request_expiry_hours")
    decrypt_function: str | None = _default("decrypt_function")
    accounts: str = _default("accounts")

    def __post_init__(self) -> None:
        for setting in SETTINGS:
            setting.validate(getattr(self, setting.name))
        if self.renew_before_days >= self.validity_days:
            raise ConfigError(
                RotatorEnv.RENEW_BEFORE_DAYS, "must be shorter than the certificate validity"
            )

    @property
    def stores(self) -> tuple[str, ...]:
        """`ciphertext_stores` as store URIs."""
        return stores_from_text(self.ciphertext_stores or "")

    @property
    def dual_control_on(self) -> bool:
        return self.dual_control == "true"

    @property
    def request_expiry(self) -> timedelta:
        return timedelta(hours=self.request_expiry_hours)

    @property
    def fleet(self) -> tuple[Account, ...]:
        """The member accounts (none: single-account mode, the credentials' own account)."""
        return parse_accounts_json(self.accounts) if self.accounts else ()

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
    def expiry_thresholds(self) -> tuple[int, ...]:
        """`expiry_event_days` as days, widest first."""
        return parse_thresholds(self.expiry_event_days)

    @property
    def policy(self) -> RotationPolicy:
        return RotationPolicy(
            renew_before=timedelta(days=self.renew_before_days),
            cryptoperiod=timedelta(days=self.cryptoperiod_days),
        )

    @property
    def schedule(self) -> RotationSchedule | None:
        """When due rotations may run; None (no window, no freeze): whenever they are due."""
        return schedule_from(
            self.rotation_window,
            self.freeze,
            timedelta(days=self.renew_before_minimum_days),
        )

    def report_options(self, *, min_key_size: int = DEFAULT_MIN_KEY_SIZE) -> ReportOptions:
        """The policy the report and `verify` hold the keys against."""
        return ReportOptions(
            self.policy,
            self.grace,
            min_key_size,
            self.kms_key_id,
            schedule=self.schedule,
            stores=self.stores,
        )

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **explicit: object) -> Settings:
        """`explicit` values (None = not given) win over the environment, which beats defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {
            setting.name: setting.parse(env[setting.env])
            for setting in SETTINGS
            if setting.is_set_in(env)
        }
        values.update({k: v for k, v in explicit.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
