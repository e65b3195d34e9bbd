"""Invariant 5: no plaintext and no private key in any log line or CLI output, for every vector."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest

from lambda_decrypt.handler import lambda_handler
from lambda_decrypt.logs import configure_logging
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.keys import KeyMaterial
from rotator.entrypoints.cli import main as cli
from tests.conftest import TEST_CARD, Vector, make_record

KEY_A = "11111111-1111-4111-8111-111111111111"


def pem_fragments(pem: str) -> list[str]:
    """Every base64 line of a PEM body: any one of them in the output is a leak."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


@pytest.fixture
def all_output(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Any:
    """Everything written: stdlib log records at DEBUG, stdout and stderr of the process."""
    caplog.set_level(logging.DEBUG)
    configure_logging("DEBUG", force=True)

    def collect() -> str:
        captured = capfd.readouterr()
        records = "\n".join(
            f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
        )
        return "\n".join([captured.out, captured.err, records])

    yield collect
    configure_logging("INFO", force=True)


def test_handler_logs_carry_no_plaintext_and_no_key(
    ssm: Any,
    material_a: KeyMaterial,
    real_vector: Vector,
    blog_truncated: str,
    fresh_container: None,
    monkeypatch: pytest.MonkeyPatch,
    all_output: Any,
) -> None:
    monkeypatch.setenv("KEYRING_PREFIX", "/connect-keys")
    store = SsmKeyring(ssm, "/connect-keys")
    store.store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    store.create_private_key(real_vector.key_id, real_vector.private_key_pem)
    card = encrypt_like_connect(
        TEST_CARD.encode(), key_id=KEY_A, certificate_pem=material_a.certificate_pem
    )
    answers = [
        lambda_handler(_event({"Card": card}), None),
        lambda_handler(_event({"Card": real_vector.ciphertext}), None),
        lambda_handler(_event({"Card": card, "Bad": card[:-8]}), None),
        lambda_handler(_event({"Card": blog_truncated}), None),
        lambda_handler(_event({"Card": card.replace("A", "B", 1)}), None),
    ]
    assert [a["status"] for a in answers] == ["ok", "ok", "error", "error", "error"]

    output = all_output()
    assert '"outcome": "ok"' in output  # the logs were really captured
    for secret in [TEST_CARD, "112344567789"]:
        assert secret not in output
    for fragment in pem_fragments(material_a.private_key_pem) + pem_fragments(
        real_vector.private_key_pem
    ):
        assert fragment not in output


def test_cli_import_and_status_print_no_key(
    ssm: Any, real_vector: Vector, tmp_path: Path, all_output: Any
) -> None:
    key_file = tmp_path / "key.pem"
    cert_file = tmp_path / "cert.pem"
    key_file.write_text(real_vector.private_key_pem)
    cert_file.write_text(real_vector.certificate_pem)
    out = io.StringIO()
    argv = ["--log-level", "DEBUG", "import", "--key-id", real_vector.key_id]
    assert cli([*argv, "--private-key", str(key_file), "--certificate", str(cert_file)], out) == 0
    assert cli(["--log-level", "DEBUG", "status", "--json"], out) == 0
    printed = out.getvalue() + all_output()
    assert real_vector.key_id in printed
    for fragment in pem_fragments(real_vector.private_key_pem):
        assert fragment not in printed
    assert "112344567789" not in printed


def _event(parameters: dict[str, str]) -> dict[str, Any]:
    return {"Details": {"ContactData": {"ContactId": "c-1"}, "Parameters": parameters}}
