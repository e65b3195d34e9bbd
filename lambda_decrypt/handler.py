"""Connect's Lambda: a ContactFlowEvent in, a flat map of strings out, never an exception."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from lambda_decrypt.config import DecryptConfig
from lambda_decrypt.decrypt import Decryptor
from lambda_decrypt.errors import ConnectKeyRotatorError, DecryptError, MalformedMessage
from lambda_decrypt.logs import configure_logging, get_logger
from lambda_decrypt.message import looks_like_sdk_message

RESERVED_NAMES = frozenset({"status", "error"})


class _Container:
    """Built on the first invocation and kept for the container's life: keys load once, and
    the logger is bound once (after configuration) instead of resolved on every call."""

    def __init__(self) -> None:
        self.config = DecryptConfig.from_env()
        configure_logging(self.config.log_level)
        self.decryptor = Decryptor.from_config(self.config)
        self.log = get_logger("lambda_decrypt.handler").bind()


_container: _Container | None = None
# Used only when the container cannot be built (a configuration error).
_fallback_log = get_logger("lambda_decrypt.handler")


def lambda_handler(event: Any, context: Any) -> dict[str, str]:
    """Decrypt the encrypted values of a Connect event; answer {"status": "ok"|"error", ...}."""
    started = time.perf_counter()
    contact_id = _contact_id(event)
    log = _fallback_log
    try:
        container = _container_state()
        log = container.log
        values = _encrypted_values(event, container.config)
        response: dict[str, str] = {"status": "ok"}
        key_ids = []
        for name, ciphertext in values.items():
            decrypted = container.decryptor.decrypt(ciphertext)
            key_ids.append(decrypted.key_id)
            response.update(_answer(name, decrypted.text(), container.config.response_mode))
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
        parameters=sorted(values),
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
    )
    return response


def reset_container() -> None:
    """Forget the per-container state (a new container): for tests and benchmarks."""
    global _container
    _container = None


def _container_state() -> _Container:
    global _container
    if _container is None:
        _container = _Container()
    return _container


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
    return contact_id if isinstance(contact_id, str) else None


def _fail(
    log: Any, code: str, reason: str, contact_id: str | None, started: float
) -> dict[str, str]:
    log.warning(
        "decrypt",
        outcome="error",
        error=code,
        reason=reason,
        contact_id=contact_id,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
    )
    return {"status": "error", "error": code}
