"""Copy inventory (PCI DSS 3.6.1.4): PEM text in the decrypt function's environment is a finding
naming the variable; the value reaches no output, log or report."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from lambda_decrypt.logs import configure_logging
from rotator.domain.keys import KeyMaterial
from rotator.entrypoints.cli import main
from tests.conftest import REGION

FUNCTION = "connect-key-rotator-DecryptFunction-AB12"


def pem_fragments(pem: str) -> list[str]:
    """Every base64 line of a PEM body: any one of them anywhere is a leak."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


@pytest.fixture
def decrypt_function(aws: None) -> Callable[[dict[str, str]], str]:
    """A decrypt function in moto with the environment the test gives it; its name."""
    role = boto3.client("iam", region_name=REGION).create_role(
        RoleName="decrypt", AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]
    client = boto3.client("lambda", region_name=REGION)

    def create(variables: dict[str, str]) -> str:
        code = io.BytesIO()
        with zipfile.ZipFile(code, "w") as archive:
            archive.writestr("handler.py", "def handler(event, context):\n    return {}\n")
        client.create_function(
            FunctionName=FUNCTION,
            Runtime="python3.11",
            Role=role,
            Handler="handler.handler",
            Code={"ZipFile": code.getvalue()},
            Environment={"Variables": variables},
        )
        return FUNCTION

    return create


@pytest.fixture
def all_output(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> Iterator[Callable[[], str]]:
    """Everything written: log records at DEBUG, the process's stdout and stderr."""
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


def report(*argv: str) -> str:
    out = io.StringIO()
    code = main(["report", *argv], out)
    assert code in (0, 1), out.getvalue()
    return out.getvalue()


def copies(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [f for f in document["findings"] if f["code"] == "private-key-copy"]


def test_pem_in_an_environment_variable_is_a_copy_naming_the_variable_never_the_value(
    decrypt_function: Callable[[dict[str, str]], str],
    material_a: KeyMaterial,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    all_output: Callable[[], str],
) -> None:
    pem = material_a.private_key_pem
    name = decrypt_function(
        {"CONNECT_PRIVATE_KEY": pem, "KEYRING_PREFIX": "/connect-keys", "LOG_LEVEL": "INFO"}
    )
    monkeypatch.setenv("ROTATOR_DECRYPT_FUNCTION", name)

    document = json.loads(report("--format", "json"))
    assert copies(document) == [
        {
            "severity": "warning",
            "code": "private-key-copy",
            "title": "an adopted private key is still stored outside the keyring",
            "instance_id": None,
            "key_id": None,
            "message": f"environment variable CONNECT_PRIVATE_KEY of the decrypt function {name} "
            "holds a private key: the keyring is its one home; remove the variable",
            "runbook": "adopt-blog-deployment",
        }
    ]
    checked = document["cryptographic_architecture"]["decrypt_function"]
    assert (checked["checked"], checked["private_key_variables"]) == (True, ["CONNECT_PRIVATE_KEY"])

    html_file = tmp_path / "report.html"
    summary = report("--format", "html", "--output", str(html_file))
    markdown = report("--format", "md")
    html = html_file.read_text()
    assert "CONNECT_PRIVATE_KEY" in html and "CONNECT_PRIVATE_KEY" in markdown
    everything = "\n".join([json.dumps(document), html, summary, markdown, all_output()])
    assert "PRIVATE KEY-----" not in everything
    for fragment in pem_fragments(pem):
        assert fragment not in everything


def test_a_clean_environment_gives_no_copy_and_an_unset_function_is_not_checked(
    decrypt_function: Callable[[dict[str, str]], str],
    material_a: KeyMaterial,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = decrypt_function(
        {"KEYRING_PREFIX": "/connect-keys", "CERTIFICATE": material_a.certificate_pem}
    )
    unset = json.loads(report("--format", "json"))
    assert copies(unset) == []
    status = unset["cryptographic_architecture"]["decrypt_function"]
    assert (status["checked"], status["function"]) == (False, None)
    assert status["status"].startswith("not checked")

    monkeypatch.setenv("ROTATOR_DECRYPT_FUNCTION", name)
    clean = json.loads(report("--format", "json"))
    assert copies(clean) == []
    checked = clean["cryptographic_architecture"]["decrypt_function"]
    assert (checked["checked"], checked["private_key_variables"]) == (True, [])
    assert checked["function_arn"].endswith(f":function:{name}")


def test_a_function_that_cannot_be_read_is_said_not_checked(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROTATOR_DECRYPT_FUNCTION", "no-such-function")
    status = json.loads(report("--format", "json"))["cryptographic_architecture"]
    assert status["decrypt_function"]["checked"] is False
    assert status["decrypt_function"]["status"] == (
        "not checked: no-such-function could not be read: function not found"
    )
