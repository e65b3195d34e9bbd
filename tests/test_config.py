"""Settings: explicit arguments > environment > defaults; bad values name the setting."""

from __future__ import annotations

from datetime import timedelta

import pytest

from lambda_decrypt.config import DEFAULT_KEYRING_PREFIX, DecryptConfig, Env, split_names
from lambda_decrypt.errors import ConfigError
from rotator.config import RotatorEnv, Settings
from rotator.domain.policy import RotationPolicy
from rotator.errors import ConfigError as RotatorConfigError

BAD_PREFIXES = ["connect-keys", "/x/", "//a", "/a//b", "", "/"]


def test_one_config_error_class() -> None:
    assert RotatorConfigError is ConfigError


# -- DecryptConfig -----------------------------------------------------------------------------


def test_decrypt_defaults() -> None:
    config = DecryptConfig.from_env({})
    assert config == DecryptConfig()
    assert config.keyring_prefix == DEFAULT_KEYRING_PREFIX == "/connect-keys"
    assert config.encrypted_parameters is None
    assert config.decrypt_attributes == ()
    assert config.response_mode == "plaintext"
    assert config.key_cache_ttl_seconds == 900.0
    assert config.key_check_seconds == 60.0
    assert config.ssm_timeout_seconds is None  # derived from the function's timeout
    assert config.negative_cache_ttl_seconds == 60.0
    assert config.max_key_lookups_per_minute == 30
    assert config.max_message_bytes == 8192
    assert config.log_level == "INFO"


def test_decrypt_from_env_values() -> None:
    config = DecryptConfig.from_env(
        {
            "KEYRING_PREFIX": "/org/payments",
            "ENCRYPTED_PARAMETERS": "CardNumber,Ssn",
            "DECRYPT_ATTRIBUTES": "EncryptedCreditCard",
            "RESPONSE_MODE": " Masked ",
            "KEY_CACHE_TTL_SECONDS": "120.5",
            "NEGATIVE_CACHE_TTL_SECONDS": "7",
            "MAX_KEY_LOOKUPS_PER_MINUTE": "5",
            "MAX_MESSAGE_BYTES": "4096",
            "LOG_LEVEL": " debug ",
        }
    )
    assert config == DecryptConfig(
        keyring_prefix="/org/payments",
        encrypted_parameters=("CardNumber", "Ssn"),
        decrypt_attributes=("EncryptedCreditCard",),
        response_mode="masked",
        key_cache_ttl_seconds=120.5,
        negative_cache_ttl_seconds=7.0,
        max_key_lookups_per_minute=5,
        max_message_bytes=4096,
        log_level="DEBUG",
    )
    assert isinstance(config.max_key_lookups_per_minute, int)


def test_decrypt_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYRING_PREFIX", "/from-os")
    monkeypatch.setenv("MAX_MESSAGE_BYTES", "2048")
    config = DecryptConfig.from_env()
    assert config.keyring_prefix == "/from-os"
    assert config.max_message_bytes == 2048


def test_decrypt_explicit_overrides_beat_env() -> None:
    env = {
        "KEYRING_PREFIX": "/from-env",
        "RESPONSE_MODE": "masked",
        "MAX_KEY_LOOKUPS_PER_MINUTE": "5",
        "ENCRYPTED_PARAMETERS": "CardNumber",
    }
    config = DecryptConfig.from_env(
        env,
        keyring_prefix="/explicit",
        response_mode="plaintext",
        max_key_lookups_per_minute=9,
        encrypted_parameters=("Pin",),
    )
    assert config.keyring_prefix == "/explicit"
    assert config.response_mode == "plaintext"
    assert config.max_key_lookups_per_minute == 9
    assert config.encrypted_parameters == ("Pin",)
    # what is not overridden still comes from the environment
    assert DecryptConfig.from_env(env, keyring_prefix="/explicit").response_mode == "masked"


def test_decrypt_override_does_not_rescue_a_bad_env_number() -> None:
    # the environment is parsed before overrides apply: a broken value is reported anyway
    with pytest.raises(ConfigError) as caught:
        DecryptConfig.from_env({"MAX_MESSAGE_BYTES": "lots"}, max_message_bytes=10)
    assert caught.value.setting == "MAX_MESSAGE_BYTES"


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_decrypt_bad_prefix(prefix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        DecryptConfig.from_env({"KEYRING_PREFIX": prefix})
    assert caught.value.setting == "KEYRING_PREFIX"
    assert "KEYRING_PREFIX" in str(caught.value)
    with pytest.raises(ConfigError, match="KEYRING_PREFIX"):
        DecryptConfig(keyring_prefix=prefix)


@pytest.mark.parametrize("prefix", ["/connect-keys", "/a", "/org/team/connect-keys"])
def test_decrypt_good_prefix(prefix: str) -> None:
    assert DecryptConfig.from_env({"KEYRING_PREFIX": prefix}).keyring_prefix == prefix


@pytest.mark.parametrize(
    ("setting", "raw"),
    [
        ("KEY_CACHE_TTL_SECONDS", "ten"),
        ("KEY_CACHE_TTL_SECONDS", ""),
        ("KEY_CACHE_TTL_SECONDS", "nan"),
        ("NEGATIVE_CACHE_TTL_SECONDS", "1m"),
        ("NEGATIVE_CACHE_TTL_SECONDS", "NaN"),
        ("MAX_KEY_LOOKUPS_PER_MINUTE", "2.5"),
        ("MAX_KEY_LOOKUPS_PER_MINUTE", "thirty"),
        ("MAX_MESSAGE_BYTES", "8 KB"),
        ("MAX_MESSAGE_BYTES", "1e4"),
        ("KEY_CHECK_SECONDS", "1m"),
        ("SSM_TIMEOUT_SECONDS", "inf"),
    ],
)
def test_decrypt_bad_numbers_name_the_setting(setting: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        DecryptConfig.from_env({setting: raw})
    assert caught.value.setting == setting
    assert setting in str(caught.value)


@pytest.mark.parametrize(
    "setting",
    [
        "KEY_CACHE_TTL_SECONDS",
        "NEGATIVE_CACHE_TTL_SECONDS",
        "MAX_KEY_LOOKUPS_PER_MINUTE",
        "MAX_MESSAGE_BYTES",
        "KEY_CHECK_SECONDS",
        "SSM_TIMEOUT_SECONDS",
    ],
)
@pytest.mark.parametrize("raw", ["0", "-1"])
def test_decrypt_numbers_must_be_positive(setting: str, raw: str) -> None:
    with pytest.raises(ConfigError, match="greater than zero") as caught:
        DecryptConfig.from_env({setting: raw})
    assert caught.value.setting == setting


@pytest.mark.parametrize("mode", ["plaintext", "masked", "MASKED", " plaintext"])
def test_response_mode_accepted(mode: str) -> None:
    assert DecryptConfig.from_env({"RESPONSE_MODE": mode}).response_mode == mode.strip().lower()


@pytest.mark.parametrize("mode", ["clear", "", "mask", "plain text", "none"])
def test_response_mode_refused(mode: str) -> None:
    with pytest.raises(ConfigError, match="plaintext, masked") as caught:
        DecryptConfig.from_env({"RESPONSE_MODE": mode})
    assert caught.value.setting == "RESPONSE_MODE"
    with pytest.raises(ConfigError, match="RESPONSE_MODE"):
        DecryptConfig(response_mode=mode)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("CardNumber", ("CardNumber",)),
        ("CardNumber,Ssn", ("CardNumber", "Ssn")),
        (" CardNumber , Ssn ", ("CardNumber", "Ssn")),
        ("CardNumber,,Ssn,", ("CardNumber", "Ssn")),
        (",CardNumber, ,\tSsn\t,", ("CardNumber", "Ssn")),
    ],
)
def test_comma_lists_ignore_blanks(raw: str, expected: tuple[str, ...]) -> None:
    assert split_names(raw) == expected
    config = DecryptConfig.from_env({"ENCRYPTED_PARAMETERS": raw, "DECRYPT_ATTRIBUTES": raw})
    assert config.encrypted_parameters == expected
    assert config.decrypt_attributes == expected


@pytest.mark.parametrize("raw", ["", "   "])
def test_blank_encrypted_parameters_means_automatic(raw: str) -> None:
    config = DecryptConfig.from_env({"ENCRYPTED_PARAMETERS": raw, "DECRYPT_ATTRIBUTES": raw})
    assert config.encrypted_parameters is None
    assert config.decrypt_attributes == ()


def test_env_names_are_the_documented_ones() -> None:
    assert {e.value for e in Env} == {
        "KEYRING_PREFIX",
        "ENCRYPTED_PARAMETERS",
        "DECRYPT_ATTRIBUTES",
        "RESPONSE_MODE",
        "KEY_CACHE_TTL_SECONDS",
        "KEY_CHECK_SECONDS",
        "NEGATIVE_CACHE_TTL_SECONDS",
        "MAX_KEY_LOOKUPS_PER_MINUTE",
        "MAX_MESSAGE_BYTES",
        "SSM_TIMEOUT_SECONDS",
        "LOG_LEVEL",
    }


# -- rotator Settings --------------------------------------------------------------------------


def test_rotator_defaults() -> None:
    settings = Settings.load({})
    assert settings == Settings()
    assert settings.keyring_prefix == "/connect-keys"
    assert settings.kms_key_id is None
    assert settings.key_size == 4096
    assert settings.validity_days == 730
    assert settings.subject == "CN=connect-key-rotator"
    assert settings.renew_before_days == 30
    assert settings.cryptoperiod_days == 365
    assert settings.policy == RotationPolicy(
        renew_before=timedelta(days=30), cryptoperiod=timedelta(days=365)
    )


def test_rotator_env_values() -> None:
    settings = Settings.load(
        {
            "KEYRING_PREFIX": "/org/keys",
            "ROTATOR_KMS_KEY_ID": "alias/connect-keys",
            "ROTATOR_KEY_SIZE": "3072",
            "ROTATOR_VALIDITY_DAYS": "365",
            "ROTATOR_SUBJECT": "CN=pay,O=Example",
            "ROTATOR_RENEW_BEFORE_DAYS": "45",
            "ROTATOR_CRYPTOPERIOD_DAYS": "180",
            "LOG_LEVEL": "info",
        }
    )
    assert settings.keyring_prefix == "/org/keys"
    assert settings.kms_key_id == "alias/connect-keys"
    assert settings.key_size == 3072
    assert settings.validity_days == 365
    assert settings.subject == "CN=pay,O=Example"
    assert settings.renew_before_days == 45
    assert settings.cryptoperiod_days == 180
    assert settings.log_level == "INFO"
    assert settings.policy == RotationPolicy(
        renew_before=timedelta(days=45), cryptoperiod=timedelta(days=180)
    )


def test_rotator_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROTATOR_VALIDITY_DAYS", "400")
    monkeypatch.setenv("KEYRING_PREFIX", "/os-env")
    settings = Settings.load()
    assert settings.validity_days == 400
    assert settings.keyring_prefix == "/os-env"


def test_rotator_empty_kms_key_id_means_default_key() -> None:
    assert Settings.load({"ROTATOR_KMS_KEY_ID": ""}).kms_key_id is None


def test_rotator_explicit_beats_env() -> None:
    env = {
        "KEYRING_PREFIX": "/from-env",
        "ROTATOR_KEY_SIZE": "2048",
        "ROTATOR_KMS_KEY_ID": "alias/env",
        "ROTATOR_RENEW_BEFORE_DAYS": "60",
    }
    settings = Settings.load(
        env, keyring_prefix="/explicit", key_size=4096, kms_key_id="alias/explicit"
    )
    assert settings.keyring_prefix == "/explicit"
    assert settings.key_size == 4096
    assert settings.kms_key_id == "alias/explicit"
    assert settings.renew_before_days == 60  # not given explicitly: from the environment
    # None means "not given": the environment value stays
    assert Settings.load(env, key_size=None, keyring_prefix=None).key_size == 2048
    assert Settings.load(env, key_size=None, keyring_prefix=None).keyring_prefix == "/from-env"


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_rotator_bad_prefix(prefix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load({"KEYRING_PREFIX": prefix})
    assert caught.value.setting == "KEYRING_PREFIX"
    assert "KEYRING_PREFIX" in str(caught.value)
    with pytest.raises(ConfigError, match="KEYRING_PREFIX"):
        Settings.load({}, keyring_prefix=prefix)


@pytest.mark.parametrize(
    "setting",
    [
        "ROTATOR_KEY_SIZE",
        "ROTATOR_VALIDITY_DAYS",
        "ROTATOR_RENEW_BEFORE_DAYS",
        "ROTATOR_CRYPTOPERIOD_DAYS",
    ],
)
@pytest.mark.parametrize("raw", ["many", "", "4096.0", "30d"])
def test_rotator_bad_numbers_name_the_setting(setting: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load({setting: raw})
    assert caught.value.setting == setting
    assert setting in str(caught.value)
    assert repr(raw) in str(caught.value)


@pytest.mark.parametrize("size", ["1024", "8192", "4000", "0"])
def test_rotator_key_size_refused(size: str) -> None:
    with pytest.raises(ConfigError, match="not allowed") as caught:
        Settings.load({"ROTATOR_KEY_SIZE": size})
    assert caught.value.setting == "ROTATOR_KEY_SIZE"
    with pytest.raises(ConfigError, match="ROTATOR_KEY_SIZE"):
        Settings.load({}, key_size=int(size))


@pytest.mark.parametrize("size", ["2048", "3072", "4096"])
def test_rotator_key_size_accepted(size: str) -> None:
    assert Settings.load({"ROTATOR_KEY_SIZE": size}).key_size == int(size)


@pytest.mark.parametrize(
    "setting", ["ROTATOR_VALIDITY_DAYS", "ROTATOR_RENEW_BEFORE_DAYS", "ROTATOR_CRYPTOPERIOD_DAYS"]
)
@pytest.mark.parametrize("raw", ["0", "-5"])
def test_rotator_days_must_be_positive(setting: str, raw: str) -> None:
    with pytest.raises(ConfigError, match="positive") as caught:
        Settings.load({setting: raw})
    assert caught.value.setting == setting


@pytest.mark.parametrize(("renew", "validity"), [("730", "730"), ("800", "730"), ("90", "30")])
def test_rotator_renew_before_must_be_shorter_than_validity(renew: str, validity: str) -> None:
    with pytest.raises(ConfigError, match="shorter than the certificate validity") as caught:
        Settings.load({"ROTATOR_RENEW_BEFORE_DAYS": renew, "ROTATOR_VALIDITY_DAYS": validity})
    assert caught.value.setting == "ROTATOR_RENEW_BEFORE_DAYS"


def test_rotator_renew_before_one_day_under_validity_is_fine() -> None:
    settings = Settings.load({"ROTATOR_RENEW_BEFORE_DAYS": "729"})
    assert settings.renew_before_days == 729
    with pytest.raises(ConfigError, match="ROTATOR_RENEW_BEFORE_DAYS"):
        Settings.load({"ROTATOR_RENEW_BEFORE_DAYS": "729"}, validity_days=700)


def test_rotator_env_names() -> None:
    assert {e.value for e in RotatorEnv} >= {
        "ROTATOR_KMS_KEY_ID",
        "ROTATOR_KEY_SIZE",
        "ROTATOR_VALIDITY_DAYS",
        "ROTATOR_SUBJECT",
        "ROTATOR_RENEW_BEFORE_DAYS",
        "ROTATOR_CRYPTOPERIOD_DAYS",
    }
