"""`rotator demo`: the decrypt path end to end on an embedded sandbox (moto in this process)."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

DEMO_CARD = "4111111111111111"  # the well-known Visa test number, not a real card
DEMO_INSTANCE = "demo-instance"
SANDBOX_ENV = {
    "AWS_ACCESS_KEY_ID": "sandbox",
    "AWS_SECRET_ACCESS_KEY": "sandbox",  # noqa: S105 - moto's dummy credentials
    "AWS_DEFAULT_REGION": "us-east-1",
    "KEYRING_PREFIX": "/connect-keys",
}
VECTORS = Path(__file__).resolve().parents[2] / "tests" / "vectors"


@contextmanager
def embedded_sandbox() -> Iterator[None]:
    """moto in this process, with dummy credentials; nothing can reach real AWS."""
    try:
        from moto import mock_aws
    except ImportError:
        raise SystemExit(
            "the demo needs the sandbox extra: pip install 'connect-key-rotator[sandbox]'"
        ) from None
    saved = {name: os.environ.get(name) for name in (*SANDBOX_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(SANDBOX_ENV)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    try:
        with mock_aws():
            yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_demo(out: TextIO) -> int:
    from lambda_decrypt import handler
    from rotator.domain.connect_cipher import encrypt_like_connect
    from rotator.domain.keys import generate_key_material
    from rotator.entrypoints.cli import main as cli

    def say(step: str, text: str) -> None:
        out.write(f"\n[{step}] {text}\n")

    with embedded_sandbox(), tempfile.TemporaryDirectory() as workdir:
        import boto3

        kms_key = boto3.client("kms").create_key(Description="connect-keys demo")["KeyMetadata"]
        os.environ["ROTATOR_KMS_KEY_ID"] = kms_key["KeyId"]
        say("sandbox", "an embedded AWS (SSM Parameter Store + KMS) is running in this process")

        material = generate_key_material(now=datetime.now(UTC), subject="CN=demo-payments-ivr")
        key_id = str(uuid.uuid4())
        private_file = Path(workdir) / "private.key.pem"
        cert_file = Path(workdir) / "certificate.pem"
        private_file.write_text(material.private_key_pem)
        private_file.chmod(0o600)
        cert_file.write_text(material.certificate_pem)
        say(
            "keys",
            f"made an RSA-{material.key_size} key pair and a self-signed certificate "
            f"valid until {material.not_after:%Y-%m-%d}, like the blog's openssl command",
        )
        say("import", f"rotator import --key-id {key_id} ... --instance-id {DEMO_INSTANCE}")
        cli(
            [
                "import",
                "--key-id",
                key_id,
                "--private-key",
                str(private_file),
                "--certificate",
                str(cert_file),
                "--instance-id",
                DEMO_INSTANCE,
            ],
            out,
        )
        old_key_id = "a5ecd749-4bd8-4a94-bfde-27eefe4f12b1"
        say(
            "import",
            "adopting an older key, certificate expired in 2022 (the real Connect vector)",
        )
        cli(
            [
                "import",
                "--key-id",
                old_key_id,
                "--private-key",
                str(VECTORS / "connect-real" / "private.key.pem"),
                "--certificate",
                str(VECTORS / "connect-real" / "certificate.pem"),
            ],
            out,
        )

        ciphertext = encrypt_like_connect(
            DEMO_CARD.encode(), key_id=key_id, certificate_pem=material.certificate_pem
        )
        say(
            "caller",
            f"a caller types the test card {DEMO_CARD}; Connect encrypts it with the "
            f"flow's certificate ({len(ciphertext)} base64 characters, key ID in the header)",
        )
        handler.reset_container()
        event = _connect_event({"EncryptedCreditCard": ciphertext})
        first, first_ms = _timed(handler.lambda_handler, event)
        again, warm_ms = _timed(handler.lambda_handler, event)
        say("lambda", f"first call, key loaded from SSM once: {first}  ({first_ms:.1f} ms)")
        say("lambda", f"warm call, no SSM call:             {again}  ({warm_ms:.1f} ms)")

        old_message = (VECTORS / "connect-real" / "ciphertext.b64").read_text().strip()
        old, _ = _timed(handler.lambda_handler, _connect_event({"EncryptedInput": old_message}))
        say(
            "lambda",
            "a real Connect message made with the old key, same container: "
            f"status {old['status']}, {len(old.get('EncryptedInput', ''))} digits decrypted "
            "(not shown: not demo data)",
        )

        os.environ["RESPONSE_MODE"] = "masked"
        handler.reset_container()
        masked, _ = _timed(handler.lambda_handler, event)
        os.environ.pop("RESPONSE_MODE")
        say("lambda", f"RESPONSE_MODE=masked answers without the number: {masked}")

        blog_message = (VECTORS / "blog-truncated.b64").read_text().strip()
        bad, _ = _timed(
            handler.lambda_handler, _connect_event({"EncryptedCreditCard": blog_message})
        )
        say("lambda", f"the blog's truncated ciphertext gets a stable error, not a crash: {bad}")

        say("status", "rotator status")
        code = cli(["status"], out)
        handler.reset_container()
        os.environ.pop("ROTATOR_KMS_KEY_ID", None)
        ok = first.get("EncryptedCreditCard") == DEMO_CARD and old["status"] == "ok"
        out.write("\nDemo finished: every message decrypted with the key its header names.\n")
        out.flush()
        return code if ok else 1


def _connect_event(parameters: dict[str, str]) -> dict[str, Any]:
    return {
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {"ContactId": str(uuid.uuid4()), "Attributes": {}},
            "Parameters": parameters,
        },
    }


def _timed(function: Any, event: dict[str, Any]) -> tuple[dict[str, str], float]:
    started = time.perf_counter()
    result: dict[str, str] = function(event, None)
    return result, (time.perf_counter() - started) * 1000
