"""Connect's Lambda: a ContactFlowEvent in, a flat map of strings out, never an exception."""

from __future__ import annotations

import gc
import math
import random
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

# Init phase: everything the first invocation would otherwise import (the Encryption SDK and
# cryptography through `decrypt`, boto3 and botocore for the keyring's client). Under SnapStart
# they are in the snapshot; without it they are paid before the first event, not during it.
import boto3  # noqa: F401
import botocore.config  # noqa: F401
import botocore.exceptions  # noqa: F401
import botocore.session  # noqa: F401

# The Encryption SDK imports cryptography's OpenSSL backend on its first decryption only.
import cryptography.hazmat.backends.openssl  # noqa: F401

# The keyring's botocore model loader, imported at init like botocore itself.
import lambda_decrypt.model_loader  # noqa: F401
from lambda_decrypt import snapstart
from lambda_decrypt.config import DecryptConfig, Env
from lambda_decrypt.decrypt import Decryptor
from lambda_decrypt.errors import (
    ConfigError,
    ConnectKeyRotatorError,
    DecryptError,
    KeyringAccessDenied,
    MalformedMessage,
)
from lambda_decrypt.keyring import (
    DEFAULT_SSM_TIMEOUT_SECONDS,
    KeyringReader,
    keyring_reader,
    renew_default_session,
    ssm_time_limit,
)
from lambda_decrypt.logs import clip, configure_logging, get_logger
from lambda_decrypt.message import looks_like_sdk_message

RESERVED_NAMES = frozenset({"status", "error"})
# Kept back from the function's remaining time for the answer and its log line.
DEADLINE_MARGIN_SECONDS = 0.25
MIN_SSM_TIMEOUT_SECONDS = 0.1
# At most this many parameter names in a log line (each clipped like every event field).
LOGGED_NAMES = 16
REASON_LIMIT = 512
# What the after-restore hook may spend on SSM: Lambda fails a restore whose hooks take more
# than 10 s (SnapStartTimeoutException); keys it could not load in time load on first use.
RESTORE_SSM_SECONDS = 4.0


class _Container:
    """Built once per execution environment: at init under Lambda, else on the first
    invocation. Keys load once (after a SnapStart restore, or on first use) and stay cached;
    the logger is bound once (after configuration) instead of resolved on every call."""

    def __init__(self, seconds_left: float | None) -> None:
        try:
            config = DecryptConfig.from_env()
        except ConfigError:
            # JSON whatever the broken setting: the error line must reach the metric filter.
            configure_logging()
            raise
        configure_logging(config.log_level)
        self.settings = config
        self.config = replace(config, ssm_timeout_seconds=ssm_timeout(config, seconds_left))
        # Built at init, the SSM timeout could not be checked against the function's time yet.
        self.timing_checked = seconds_left is not None
        self.reader: KeyringReader = keyring_reader(self.config)
        self.decryptor = Decryptor(self.reader, max_message_bytes=self.config.max_message_bytes)
        self.log = get_logger("lambda_decrypt.handler").bind()

    def check_timing(self, seconds_left: float | None) -> None:
        """On the first invocation of a container built at init: the SSM timeout must fit."""
        if not self.timing_checked and seconds_left is not None:
            ssm_timeout(self.settings, seconds_left)
            self.timing_checked = True


_container: _Container | None = None
# Used only when the container cannot be built (a configuration error).
_fallback_log = get_logger("lambda_decrypt.handler")


def lambda_handler(event: Any, context: Any) -> dict[str, str]:
    """Decrypt the encrypted values of a Connect event; answer {"status": "ok"|"error", ...}."""
    started = time.perf_counter()
    seconds_left = _seconds_left(context)
    contact_id = _contact_id(event)
    log = _fallback_log
    try:
        container = _container_state(seconds_left)
        log = container.log
        container.check_timing(seconds_left)
        values = _encrypted_values(event, container.config)
        response: dict[str, str] = {"status": "ok"}
        key_ids = []
        with ssm_time_limit(seconds_left):
            for name, ciphertext in values.items():
                decrypted = container.decryptor.decrypt(ciphertext)
                key_ids.append(decrypted.key_id)
                response.update(_answer(name, decrypted.text(), container.config.response_mode))
    except ConfigError as error:
        return _fail(log, "internal", str(error), contact_id, started, setting=error.setting)
    except KeyringAccessDenied as error:
        # The role may not read the keyring: the deployment is misconfigured, not SSM down.
        return _fail(log, "internal", str(error), contact_id, started, config=True)
    except DecryptError as error:
        return _fail(log, error.code, str(error), contact_id, started)
    except ConnectKeyRotatorError as error:
        return _fail(log, "internal", str(error), contact_id, started)
    except Exception as error:  # noqa: BLE001 - Connect must get an answer, never a trace
        return _fail(log, "internal", f"unexpected {type(error).__name__}", contact_id, started)
    log.info(
        "decrypt",
        outcome="ok",
        contact_id=contact_id,
        key_ids=sorted(set(key_ids)),
        parameters=_logged_names(values),
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
    )
    return response


def ssm_timeout(config: DecryptConfig, seconds_left: float | None) -> float:
    """The connect and read timeout of one SSM attempt.

    Unset, it is a quarter of the time the first invocation has (at most 1 s), so two attempts
    on a silent endpoint fit in the function's timeout; set, it must fit once at least.
    """
    chosen = config.ssm_timeout_seconds
    if chosen is None:
        if seconds_left is None:
            return DEFAULT_SSM_TIMEOUT_SECONDS
        return min(DEFAULT_SSM_TIMEOUT_SECONDS, max(MIN_SSM_TIMEOUT_SECONDS, seconds_left / 4))
    if seconds_left is not None and 2 * chosen > seconds_left:
        raise ConfigError(
            Env.SSM_TIMEOUT_SECONDS,
            f"an SSM attempt may take {2 * chosen:g} s (connect + read timeout) and the "
            f"function has {seconds_left:g} s for it: lower it or raise the function's timeout",
        )
    return chosen


def reset_container() -> None:
    """Forget the per-container state (a new container): for tests and benchmarks."""
    global _container
    _container = None


def _container_state(seconds_left: float | None) -> _Container:
    global _container
    if _container is None:
        _container = _Container(seconds_left)
    return _container


def init_phase() -> None:
    """The init phase's work that needs the settings but no secret: the container and its SSM
    client (botocore's models parsed, the client class built). Never raises: a configuration
    error is answered, and logged, by the first invocation."""
    global _container
    try:
        container = _Container(None)
        container.reader.connect()
    except Exception:  # noqa: BLE001 - the first invocation builds it again and reports why
        _container = None
        return
    _container = container


def before_snapshot() -> None:
    """SnapStart, before the snapshot: nothing secret or stale may be in it. No key should
    have been loaded in the init phase; whatever was (an invocation before the snapshot) is
    dropped, with the SSM client and the credentials it resolved."""
    container = _container
    if container is not None:
        container.reader.forget()
        container.reader.disconnect()
    renew_default_session()  # no credentials until a client is built, after the restore
    # Key objects freed now, not at some later collection, before memory is captured.
    gc.collect()


def after_restore() -> None:
    """SnapStart, after a restore: new randomness, a new SSM client (this environment's
    credentials), then the keys in use, so that the first contact waits for no SSM call.
    Never raises: what fails here is retried, and reported, by the first invocation."""
    # Every environment restored from one snapshot starts with the same PRNG state; the
    # keyring's retry jitter must differ between them.
    random.seed()
    started = time.perf_counter()
    global _container
    try:
        container = _container_state(None)
    except Exception:  # noqa: BLE001 - a configuration error: the first invocation answers it
        _container = None
        return
    try:
        container.reader.disconnect()
        container.reader.connect()
        with ssm_time_limit(RESTORE_SSM_SECONDS):
            loaded = container.reader.preload()
    except Exception as error:  # noqa: BLE001 - keys load on first use instead
        container.log.warning("snapstart_restore", outcome="error", reason=clip(str(error)))
        return
    container.log.info(
        "snapstart_restore",
        outcome="ok",
        key_ids=loaded,
        restore_ms=round((time.perf_counter() - started) * 1000, 3),
    )


def _seconds_left(context: Any) -> float | None:
    """What this invocation may still spend on SSM, from the Lambda context; None outside one."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if not callable(remaining):
        return None
    try:
        millis = float(remaining())
    except (TypeError, ValueError):
        return None
    if not math.isfinite(millis):
        return None
    return millis / 1000 - DEADLINE_MARGIN_SECONDS


def _encrypted_values(event: Any, config: DecryptConfig) -> dict[str, str]:
    details = event.get("Details") if isinstance(event, Mapping) else None
    if not isinstance(details, Mapping):
        raise MalformedMessage("event has no Details: not a Connect ContactFlowEvent")
    parameters = _mapping(details.get("Parameters"))
    attributes = _mapping(_mapping(details.get("ContactData")).get("Attributes"))
    values: dict[str, str] = {}
    if config.encrypted_parameters is None:
        values.update({k: v for k, v in parameters.items() if looks_like_sdk_message(v)})
    else:
        values.update(_named(parameters, config.encrypted_parameters, "parameter"))
    values.update(_named(attributes, config.decrypt_attributes, "attribute"))
    values = {k: v for k, v in values.items() if k not in RESERVED_NAMES}
    if not values:
        raise MalformedMessage("event carries no encrypted value")
    return values


def _named(source: Mapping[str, Any], names: tuple[str, ...], kind: str) -> dict[str, str]:
    found = {}
    for name in names:
        value = source.get(name)
        if not isinstance(value, str) or not value:
            raise MalformedMessage(f"configured {kind} {name!r} is missing or empty")
        found[name] = value
    return found


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _answer(name: str, plaintext: str, mode: str) -> dict[str, str]:
    if mode == "plaintext":
        return {name: plaintext}
    digits = "".join(c for c in plaintext if c.isdigit())
    return {
        f"{name}Last4": digits[-4:],
        f"{name}Length": str(len(plaintext)),
        f"{name}LuhnValid": "true" if luhn_valid(digits) else "false",
    }


def luhn_valid(digits: str) -> bool:
    """The Luhn check of a card number (digits only); False for fewer than 2 digits."""
    if len(digits) < 2 or not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _contact_id(event: Any) -> str | None:
    try:
        contact_id = event["Details"]["ContactData"]["ContactId"]
    except (KeyError, TypeError):
        return None
    return clip(contact_id) if isinstance(contact_id, str) else None


def _logged_names(values: Mapping[str, str]) -> list[str]:
    names = [clip(name) for name in sorted(values)[:LOGGED_NAMES]]
    if len(values) > LOGGED_NAMES:
        names.append(f"...[truncated, {len(values)} names]")
    return names


def _fail(
    log: Any,
    code: str,
    reason: str,
    contact_id: str | None,
    started: float,
    *,
    config: bool = False,
    setting: str | None = None,
) -> dict[str, str]:
    """Log the failure and answer it. A failure caused by configuration (a `setting`, or the
    role's permissions) is logged as error "config", the field the deployment's alarm counts."""
    fields: dict[str, Any] = {"error": code}
    if config or setting is not None:
        fields = {"error": "config", "answer": code}
    if setting is not None:
        fields["setting"] = setting
    log.warning(
        "decrypt",
        outcome="error",
        **fields,
        reason=clip(reason, REASON_LIMIT),
        contact_id=contact_id,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
    )
    return {"status": "error", "error": code}


# Registered only where the runtime's hook library exists (Lambda's Python 3.12+ runtimes); it
# runs them only for a SnapStart version. There the container is built now, in the init phase.
if snapstart.register(before_snapshot, after_restore):
    init_phase()
