"""`rotator demo`: a key's life on an in-process sandbox, a contact in flight across a rotation."""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, TextIO

from rotator.exit_codes import ExitCode

if TYPE_CHECKING:
    from rotator.sandbox.server import Sandbox

DEMO_CARD = "4111111111111111"  # the well-known Visa test number, not a real card
SECOND_CARD = "5555555555554444"  # the well-known Mastercard test number
# Package data, so that the demo runs from an installed wheel as well as from a checkout.
DATA = resources.files("rotator.sandbox") / "data"
DEMO_ENV = ("KEYRING_PREFIX", "ROTATOR_KMS_KEY_ID", "RESPONSE_MODE")
# `rotator ARGV` printing to a stream, its exit code back: the CLI passes its command runner, so
# that the demo runs the real commands without importing the CLI.
Rotator = Callable[[Sequence[str], TextIO], int]


@contextmanager
def demo_environment(environment: dict[str, str]) -> Iterator[None]:
    """Point every AWS client at the sandbox for the demo's duration, then restore."""
    names = (*environment, *DEMO_ENV, "AWS_PROFILE")
    saved = {name: os.environ.get(name) for name in names}
    for name in (*DEMO_ENV, "AWS_PROFILE"):
        os.environ.pop(name, None)
    os.environ.update(environment)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_demo(out: TextIO, rotator: Rotator) -> int:
    try:
        from rotator.sandbox.server import start_sandbox
    except ImportError:
        out.write("the demo needs the sandbox extra: pip install 'connect-key-rotator[sandbox]'\n")
        return ExitCode.FAILURE
    from lambda_decrypt.logs import configure_logging

    # The story is told on stdout; log lines (the Lambda's warning for the bad ciphertext)
    # would interleave with it, so only errors are logged during the demo.
    configure_logging("ERROR", stream="stderr", force=True)
    with start_sandbox() as sandbox, demo_environment(sandbox.environment()):
        return _story(sandbox, out, rotator)


def _story(sandbox: Sandbox, out: TextIO, rotator: Rotator) -> int:
    import boto3

    from lambda_decrypt import handler
    from rotator.domain.connect_cipher import encrypt_like_connect
    from rotator.domain.flows import encrypting_blocks
    from rotator.sandbox.sample_flows import create_payment_instance

    day0 = datetime.now(UTC).replace(microsecond=0)

    def say(when: int | None, text: str) -> None:
        stamp = "      " if when is None else f"day {when:<3}"
        out.write(f"\n{stamp} {text}\n")

    def run(*argv: str) -> int:
        out.write(f"        $ rotator {' '.join(argv)}\n")
        printed = io.StringIO()
        code = rotator(list(argv), printed)
        out.writelines(f"          {line}\n" for line in printed.getvalue().splitlines())
        return code

    def at(days: int) -> None:
        """Move the sandbox's simulated clock; the rotator runs at its time and says so."""
        sandbox.clock.stand_at(day0 + timedelta(days=days))

    say(None, f"A local sandbox is running at {sandbox.url}: SSM, KMS and the rest by moto,")
    out.write("        Amazon Connect's security-key and flow APIs by this project's emulator.\n")
    out.write("        Its clock is simulated, so that a key's year fits in seconds: every\n")
    out.write("        rotator line printed under simulated time says so.\n")
    kms_key = boto3.client("kms").create_key(Description="connect-keys demo")["KeyMetadata"]
    os.environ["ROTATOR_KMS_KEY_ID"] = kms_key["KeyId"]
    connect = boto3.client("connect")
    payments = create_payment_instance(connect, "demo-payments")
    instance, flow, module = payments.instance_id, payments.flow_id, payments.module_id
    say(0, "A Connect instance with a payment flow and a card-capture module, both with a")
    out.write("        'Store customer input' block that has no encryption key yet.\n")

    say(0, "init: make an RSA-4096 key, store it in SSM (KMS-encrypted), read it back, prove")
    out.write("        it decrypts, associate it with Connect, point the two card-number blocks\n")
    out.write("        at it (named with --encrypt-block: nothing else in a flow is touched).\n")
    at(0)
    blocks = payments.encrypt_block_args()
    if run("init", "--instance-id", instance, "--flow-id", flow, "--flow-module-id", module,
           *blocks) != 0:  # fmt: skip
        return ExitCode.FAILURE

    def caller_types(digits: str) -> tuple[str, str]:
        content = connect.describe_contact_flow(InstanceId=instance, ContactFlowId=flow)
        block = encrypting_blocks(content["ContactFlow"]["Content"])[0]
        assert block.key_id is not None and block.certificate_pem is not None
        ciphertext = encrypt_like_connect(
            digits.encode(), key_id=block.key_id, certificate_pem=block.certificate_pem
        )
        return ciphertext, block.key_id

    def lambda_answer(ciphertext: str) -> dict[str, str]:
        event = {
            "Name": "ContactFlowEvent",
            "Details": {
                "ContactData": {"ContactId": str(uuid.uuid4()), "Attributes": {}},
                "Parameters": {"CardNumber": ciphertext},
            },
        }
        return handler.lambda_handler(event, None)

    handler.reset_container()
    first_call, first_key = caller_types(DEMO_CARD)
    say(0, f"Caller 1 types the test card {DEMO_CARD}. Connect encrypts it with the flow's")
    out.write(f"        certificate; the message header names key {first_key}.\n")
    out.write(f"        Decrypt Lambda answers: {lambda_answer(first_call)}\n")

    say(366, "A year on, caller 1's contact is still in flight (say, queued for an agent).")
    out.write("        The key is past its 365-day cryptoperiod, so the daily run rotates it:\n")
    at(366)
    if run("rotate") != 0:
        return ExitCode.FAILURE

    second_call, second_key = caller_types(SECOND_CARD)
    say(366, f"Caller 2 types {SECOND_CARD}; the flow now encrypts with key {second_key}.")
    old, new = lambda_answer(first_call), lambda_answer(second_call)
    out.write(f"        Same Lambda container, caller 1 (old key): {old}\n")
    out.write(f"        Same Lambda container, caller 2 (new key): {new}\n")

    say(374, "The 7-day grace period is over: retire the old key. Connect forgets it; the")
    out.write(
        "        keyring keeps it, so stored ciphertexts still decrypt until it is destroyed.\n"
    )
    at(374)
    if run("retire", first_key) != 0:
        return ExitCode.FAILURE
    late = lambda_answer(first_call)
    out.write(f"        Caller 1's ciphertext after retirement: {late}\n")

    blog = (DATA / "blog-truncated.b64").read_text(encoding="ascii").strip()
    say(374, "Bad input gets a stable error code, never a stack trace: the AWS blog's")
    out.write(f"        truncated ciphertext -> {lambda_answer(blog)}\n")

    say(374, "Every promise checked against the live state, then the keyring:")
    verified = run("verify")
    run("status")
    handler.reset_container()

    ok = (
        old.get("CardNumber") == DEMO_CARD
        and new.get("CardNumber") == SECOND_CARD
        and late.get("CardNumber") == DEMO_CARD
        and verified == 0
    )
    out.write(
        "\nDemo finished: no contact was lost to the rotation."
        if ok
        else "\nDemo FAILED: see above."
    )
    out.write("\n")
    return ExitCode.OK if ok else ExitCode.FAILURE
