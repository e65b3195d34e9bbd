"""The decrypt Lambda in operation: many keys, a silent SSM, bad settings, oversized events."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from lambda_decrypt import keyring, logs
from lambda_decrypt.config import DecryptConfig
from lambda_decrypt.errors import ConfigError
from lambda_decrypt.handler import DEADLINE_MARGIN_SECONDS, lambda_handler, ssm_timeout
from lambda_decrypt.keyring import default_ssm_client
from lambda_decrypt.logs import FIELD_LIMIT, configure_logging
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.keys import KeyMaterial
from tests.conftest import REGION, TEST_CARD, make_record

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "/connect-keys"
KEY_A = "11111111-1111-4111-8111-111111111111"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


class LambdaContext:
    """The part of Lambda's context object the handler reads."""

    def __init__(self, remaining_ms: int) -> None:
        self._deadline = time.monotonic() + remaining_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def event(parameters: dict[str, Any], contact_id: str = "contact-1") -> dict[str, Any]:
    return {
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {"ContactId": contact_id, "Attributes": {}},
            "Parameters": parameters,
        },
    }


def encrypt(material: KeyMaterial, key_id: str, plaintext: str = TEST_CARD) -> str:
    return encrypt_like_connect(
        plaintext.encode(), key_id=key_id, certificate_pem=material.certificate_pem
    )


@pytest.fixture(autouse=True)
def lambda_logging() -> None:
    """The Lambda's own logging (JSON on stdout), whatever an earlier test configured: in a
    container the handler is the only thing that configures it."""
    configure_logging("INFO", force=True)


def json_lines(output: str) -> list[dict[str, Any]]:
    """Every line of the output, each of which must be one JSON object."""
    return [json.loads(line) for line in output.splitlines() if line.strip()]


class SsmCalls:
    """Counts the SSM calls of the clients the keyring reader builds; can refuse them."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.deny = False

    def factory(self, timeout_seconds: float = 1.0) -> Any:
        client = default_ssm_client(timeout_seconds)
        client.meta.events.register("before-call.ssm.*", self._before_call)
        return client

    def _before_call(self, model: Any, **_: Any) -> tuple[Any, dict[str, Any]] | None:
        self.calls.append(model.name)
        if not self.deny:
            return None
        return _Denied(), {
            "Error": {"Code": "AccessDeniedException", "Message": "not authorized"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }


class _Denied:
    status_code = 400
    headers: dict[str, str] = {}
    content = b""


@pytest.fixture
def ssm_calls(monkeypatch: pytest.MonkeyPatch) -> SsmCalls:
    calls = SsmCalls()
    monkeypatch.setattr(keyring, "default_ssm_client", calls.factory)
    return calls


@pytest.fixture
def keyring_env(ssm: Any, fresh_container: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("KEYRING_PREFIX", PREFIX)
    return ssm


# -- a keyring larger than the lookup budget ---------------------------------------------------


def test_a_cold_container_decrypts_a_contact_for_each_of_60_keys(
    keyring_env: Any, material_a: KeyMaterial, material_b: KeyMaterial, ssm_calls: SsmCalls
) -> None:
    """15 instances sharing one keyring meet 60 keys: none is refused by the lookup budget (30)."""
    store = SsmKeyring(keyring_env, PREFIX)
    contacts: dict[str, tuple[str, str]] = {}
    for index in range(60):
        key_id = f"{index:08d}-2222-4222-8222-222222222222"
        material = material_a if index % 2 else material_b
        store.store_key(key_id, material, make_record(key_id, material, instance_id=f"i-{index}"))
        card = f"4000{index:012d}"
        contacts[key_id] = (encrypt(material, key_id, card), card)

    for key_id, (ciphertext, card) in contacts.items():
        answer = lambda_handler(event({"Card": ciphertext}), LambdaContext(3000))
        assert answer == {"status": "ok", "Card": card}, key_id
    # 30 lookups on the budget, one listing (10 private keys a page), 30 listed lookups
    assert ssm_calls.calls.count("GetParameters") == 60
    listing = ssm_calls.calls[30:-30]
    assert set(listing) == {"GetParametersByPath"}
    assert 6 <= len(listing) <= 7  # an empty last page may follow a full one
    ssm_calls.calls.clear()

    for ciphertext, card in contacts.values():  # warm: no SSM call at all
        assert lambda_handler(event({"Card": ciphertext}), LambdaContext(3000))["Card"] == card
    invented = encrypt(material_a, "99999999-9999-4999-8999-999999999999")
    answer = lambda_handler(event({"Card": invented}), LambdaContext(3000))
    assert answer == {"status": "error", "error": "unknown_key"}  # the budget still holds
    assert ssm_calls.calls == []


# -- every SSM call ends within the function's time ---------------------------------------------


class SilentServer:
    """A loopback TCP endpoint that accepts every connection and never answers a byte."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            self.connections.append(connection)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for connection in self.connections:
            connection.close()
        self._socket.close()


@pytest.fixture
def silent_ssm(monkeypatch: pytest.MonkeyPatch, fresh_container: None) -> Iterator[SilentServer]:
    """SSM at an endpoint that hangs (no moto here: it would answer instead)."""
    server = SilentServer()
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    # Load botocore's SSM model now: the timings below are about the hang, not about loading.
    default_ssm_client()
    yield server
    server.close()


@pytest.mark.parametrize("timeout", [None, "0.5"])  # derived (~0.31 s), or 3 x 0.5 s > 1.5 s
def test_a_silent_ssm_answers_internal_before_the_function_times_out(
    silent_ssm: SilentServer,
    material_a: KeyMaterial,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    timeout: str | None,
) -> None:
    if timeout is not None:
        monkeypatch.setenv("SSM_TIMEOUT_SECONDS", timeout)
    contact = event({"Card": encrypt(material_a, KEY_A)})
    started = time.monotonic()
    answer = lambda_handler(contact, LambdaContext(1500))
    elapsed = time.monotonic() - started
    assert answer == {"status": "error", "error": "internal"}
    assert elapsed < 1.5 - DEADLINE_MARGIN_SECONDS  # the margin for the answer is still there
    assert len(silent_ssm.connections) >= 1  # SSM was asked, and did not answer
    (line,) = [r for r in json_lines(capsys.readouterr().out) if r.get("event") == "decrypt"]
    assert "ssm:GetParameters" in line["reason"]
    assert "ReadTimeoutError" in line["reason"]


def test_without_a_lambda_context_the_attempts_are_capped(
    silent_ssm: SilentServer, material_a: KeyMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSM_TIMEOUT_SECONDS", "0.2")
    started = time.monotonic()
    answer = lambda_handler(event({"Card": encrypt(material_a, KEY_A)}), None)
    elapsed = time.monotonic() - started
    assert answer == {"status": "error", "error": "internal"}
    assert len(silent_ssm.connections) == 3  # three attempts of 0.2 s read timeout each
    assert elapsed < 3 * (2 * 0.2) + 0.3


@pytest.mark.parametrize(
    ("setting", "seconds_left", "expected"),
    [
        (None, None, 1.0),  # outside Lambda
        (None, 2.75, 0.6875),  # a 3 s function: a quarter of its time
        (None, 29.75, 1.0),  # capped at 1 s
        (None, 0.2, 0.1),  # floor
        (0.5, 2.75, 0.5),  # set, and an attempt (1 s at worst) fits
    ],
)
def test_ssm_timeout_follows_the_functions_time(
    setting: float | None, seconds_left: float | None, expected: float
) -> None:
    config = DecryptConfig(ssm_timeout_seconds=setting)
    assert ssm_timeout(config, seconds_left) == pytest.approx(expected)


def test_an_ssm_timeout_that_cannot_fit_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SSM_TIMEOUT_SECONDS") as caught:
        ssm_timeout(DecryptConfig(ssm_timeout_seconds=2.0), 2.75)
    assert caught.value.setting == "SSM_TIMEOUT_SECONDS"


# -- a bad setting fails loudly, in JSON -------------------------------------------------------


@pytest.fixture
def unconfigured_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process in which nothing has configured logging yet, as a new Lambda container."""
    structlog.reset_defaults()
    monkeypatch.setattr(logs, "_configured", False)
    yield
    configure_logging("INFO", force=True)


@pytest.mark.parametrize(
    ("setting", "value", "remaining_ms"),
    [
        ("LOG_LEVEL", "verbose", 3000),
        ("RESPONSE_MODE", "mask", 3000),
        ("KEY_CHECK_SECONDS", "0", 3000),
        ("MAX_MESSAGE_BYTES", "8 KB", 3000),
        ("SSM_TIMEOUT_SECONDS", "5", 3000),  # an attempt of 10 s in a 3 s function
    ],
)
def test_a_bad_setting_answers_internal_and_logs_a_config_error_in_json(
    keyring_env: Any,
    material_a: KeyMaterial,
    unconfigured_logging: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
    value: str,
    remaining_ms: int,
) -> None:
    SsmKeyring(keyring_env, PREFIX).store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    monkeypatch.setenv(setting, value)
    contact = event({"Card": encrypt(material_a, KEY_A)})
    for _ in range(2):  # every invocation, not just the first: the alarm counts them
        assert lambda_handler(contact, LambdaContext(remaining_ms)) == {
            "status": "error",
            "error": "internal",
        }
    output = capsys.readouterr().out
    lines = json_lines(output)  # JSON, whatever LOG_LEVEL says
    assert len(lines) == 2
    for line in lines:
        assert line["error"] == "config"
        assert line["setting"] == setting
        assert line["answer"] == "internal"
        assert line["outcome"] == "error"
        assert setting in line["reason"]
        assert line["contact_id"] == "contact-1"
    assert SECRET_ACCESS_KEY not in output
    assert TEST_CARD not in output


@pytest.mark.wire
def test_a_bad_log_level_logs_json_in_a_new_process(material_a: KeyMaterial) -> None:
    """Nothing configured beforehand: exactly what a Lambda container starts with."""
    contact = event({"Card": encrypt(material_a, KEY_A)})
    probe = (
        "import json, sys\n"
        "from lambda_decrypt.handler import lambda_handler\n"
        "print(json.dumps(lambda_handler(json.loads(sys.argv[1]), None)), file=sys.stderr)\n"
    )
    env = {**os.environ, "LOG_LEVEL": "verbose", "KEYRING_PREFIX": PREFIX}
    result = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(contact)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stderr.strip().splitlines()[-1]) == {
        "status": "error",
        "error": "internal",
    }
    (line,) = json_lines(result.stdout)
    assert (line["error"], line["setting"], line["level"]) == ("config", "LOG_LEVEL", "warning")


def test_a_role_denied_the_keyring_logs_a_config_error(
    keyring_env: Any,
    material_a: KeyMaterial,
    ssm_calls: SsmCalls,
    capsys: pytest.CaptureFixture[str],
) -> None:
    SsmKeyring(keyring_env, PREFIX).store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    ssm_calls.deny = True
    answer = lambda_handler(event({"Card": encrypt(material_a, KEY_A)}), LambdaContext(3000))
    assert answer == {"status": "error", "error": "internal"}
    (line,) = [r for r in json_lines(capsys.readouterr().out) if r.get("event") == "decrypt"]
    assert (line["error"], line["answer"]) == ("config", "internal")
    assert "AccessDeniedException" in line["reason"]
    assert "setting" not in line  # the role's permissions, not a setting
    assert ssm_calls.calls == ["GetParameters"]  # a denial is not retried


# -- oversized event fields are cut in the logs ------------------------------------------------


def test_a_huge_contact_id_and_parameter_names_are_truncated_in_the_log(
    keyring_env: Any,
    material_a: KeyMaterial,
    capsys: pytest.CaptureFixture[str],
) -> None:
    SsmKeyring(keyring_env, PREFIX).store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    contact_id = "c" * 1_000_000
    ciphertext = encrypt(material_a, KEY_A)
    parameters = {f"{index:02d}" + "n" * 200_000: ciphertext for index in range(20)}
    capsys.readouterr()

    answer = lambda_handler(event(parameters, contact_id), LambdaContext(3000))
    assert answer["status"] == "ok"
    failed = lambda_handler(event({"Card": "x"}, contact_id), LambdaContext(3000))
    assert failed == {"status": "error", "error": "malformed"}

    output = capsys.readouterr().out
    assert len(output) < 10_000
    ok, error = [r for r in json_lines(output) if r.get("event") == "decrypt"]
    for line in (ok, error):
        assert line["contact_id"].startswith("c" * FIELD_LIMIT + "...[truncated, 1000000 chars]")
        assert len(line["contact_id"]) < FIELD_LIMIT + 40
    names = ok["parameters"]
    assert len(names) == 17  # 16 names, then how many there were
    assert names[-1] == "...[truncated, 20 names]"
    assert all(len(name) < FIELD_LIMIT + 40 and "truncated" in name for name in names)
