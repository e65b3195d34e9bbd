"""A Connect instance with a payment flow and module on the sandbox, and the rotator wired to it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from lambda_decrypt import handler
from rotator.config import Settings
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.flows import EncryptingBlock, encrypting_blocks
from rotator.domain.keys import KeyMaterial, load_private_key, self_signed_material
from rotator.entrypoints.bootstrap import Adapters, build_adapters
from rotator.sandbox.sample_flows import (
    CARD_INPUT_ACTION,
    card_blocks,
    create_payment_instance,
)
from rotator.sandbox.server import Sandbox, start_sandbox
from rotator.services.rotation import InstanceResult, RotationService
from tests.conftest import TEST_CARD

_worlds = itertools.count(1)


class KeyPool:
    """Pre-made private keys, certified afresh at whatever time a rotation asks for.

    RSA generation is the slow part (up to 0.8 s for 4096 bits); certifying is cheap."""

    def __init__(self, private_keys: list[rsa.RSAPrivateKey]) -> None:
        self.private_keys = private_keys

    def generator(self) -> Callable[[datetime], KeyMaterial]:
        cycle = itertools.cycle(self.private_keys)
        return lambda now: self_signed_material(next(cycle), now=now, subject="CN=pool")


@dataclass
class Payments:
    """A Connect instance with the payment flow and module, and a keyring prefix of its own, seen
    through boto3 clients: what every rotation test looks at, whoever runs the rotator (the
    in-process `World`, or `rotator` commands against `rotator sandbox` in tests/test_cli_e2e)."""

    prefix: str
    ssm: Any
    connect: Any
    instance_id: str
    flow_id: str
    module_id: str

    # -- Amazon Connect: what the console shows, and a caller reaching the encrypting block --

    def flow_content(self) -> str:
        return str(
            self.connect.describe_contact_flow(
                InstanceId=self.instance_id, ContactFlowId=self.flow_id
            )["ContactFlow"]["Content"]
        )

    def module_content(self) -> str:
        return str(
            self.connect.describe_contact_flow_module(
                InstanceId=self.instance_id, ContactFlowModuleId=self.module_id
            )["ContactFlowModule"]["Content"]
        )

    def flow_block(self) -> EncryptingBlock:
        """The flow's one encrypting block."""
        (block,) = encrypting_blocks(self.flow_content())
        return block

    def module_block(self) -> EncryptingBlock:
        """The module's one encrypting block."""
        (block,) = encrypting_blocks(self.module_content())
        return block

    def flow_key_id(self) -> str | None:
        return encrypting_blocks(self.flow_content())[0].key_id

    def caller_types(self, digits: str = TEST_CARD) -> str:
        """What Connect does when a caller reaches the flow's block now: encrypt with its key."""
        block = self.flow_block()
        assert block.key_id is not None and block.certificate_pem is not None
        return encrypt_like_connect(
            digits.encode("ascii"), key_id=block.key_id, certificate_pem=block.certificate_pem
        )

    def associations(self) -> list[str]:
        keys = self.connect.list_security_keys(InstanceId=self.instance_id)["SecurityKeys"]
        return sorted(k["AssociationId"] for k in keys)

    def init_argv(self) -> tuple[str, ...]:
        """`rotator init` of the payment flow and module, their card-number blocks named."""
        return (
            "init",
            "--instance-id",
            self.instance_id,
            "--flow-id",
            self.flow_id,
            "--flow-module-id",
            self.module_id,
            "--encrypt-block",
            f"{self.flow_id}:{CARD_INPUT_ACTION}",
            "--encrypt-block",
            f"{self.module_id}:{CARD_INPUT_ACTION}",
        )

    # -- the keyring, and what "nothing changed" compares -------------------------------------

    def parameter_versions(self) -> dict[str, int]:
        paginator = self.ssm.get_paginator("get_parameters_by_path")
        return {
            p["Name"]: p["Version"]
            for page in paginator.paginate(Path=self.prefix, Recursive=True)
            for p in page["Parameters"]
        }

    def parameter_names(self) -> list[str]:
        return sorted(self.parameter_versions())

    def snapshot(self) -> tuple[Any, ...]:
        return (
            self.flow_content(),
            self.module_content(),
            self.associations(),
            self.parameter_versions(),
        )


def create_payments(prefix: str, ssm: Any, connect: Any, alias: str) -> Payments:
    """The console set-up of a payment instance (see `create_payment_instance`) on `connect`."""
    payments = create_payment_instance(connect, alias)
    return Payments(
        prefix, ssm, connect, payments.instance_id, payments.flow_id, payments.module_id
    )


@dataclass
class World(Payments):
    """Payments on the in-process sandbox, and the rotator wired to it in this process."""

    sandbox: Sandbox
    adapters: Adapters
    service: RotationService

    def init(self, now: datetime) -> InstanceResult:
        """`rotator init` of the payment flow and module, their card-number blocks named."""
        return self.service.init(
            self.instance_id,
            [self.flow_id],
            [self.module_id],
            now,
            encrypt_blocks=card_blocks(self.flow_id, self.module_id),
        )

    def lambda_decrypts(self, ciphertext: str) -> dict[str, str]:
        event = {"Details": {"ContactData": {"ContactId": "c"}, "Parameters": {"Card": ciphertext}}}
        return handler.lambda_handler(event, None)

    def new_service(
        self, generate: Callable[[datetime], KeyMaterial] | None = None
    ) -> RotationService:
        """A second rotator (another process), with its own clients."""
        adapters = make_adapters(self.adapters.settings)
        return unattributed(adapters.rotation("test-2", generate=generate or self.service.generate))


def unattributed(service: RotationService) -> RotationService:
    """The world's own setup records no principal (no custodian to acknowledge in every test's
    report): the CLI, the jobs and tests/test_custodian.py record and judge principals."""
    service.identity = None
    return service


def make_adapters(settings: Settings) -> Adapters:
    return build_adapters(settings, ssm=boto3.client("ssm"), connect=boto3.client("connect"))


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox() as box:
        yield box


@pytest.fixture(scope="session")
def key_pool(material_2048: KeyMaterial) -> KeyPool:
    """RSA-2048 keeps the many rotations of these tests fast; RSA-4096 is exercised by the
    key-material, handler and CLI tests."""
    extra = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
    return KeyPool([load_private_key(material_2048.private_key_pem), *extra])


def build_world(box: Sandbox, key_pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> World:
    """A new Connect (the emulator is reset) and a keyring of its own under a new prefix.

    moto is not reset: rebuilding its SSM backend costs about a second, a prefix costs nothing.
    """
    box.emulator.reset()
    box.clock.reset()
    handler.reset_container()
    prefix = f"/connect-keys-{next(_worlds)}"
    monkeypatch.setenv("KEYRING_PREFIX", prefix)
    adapters = make_adapters(Settings(keyring_prefix=prefix))
    payments = create_payments(prefix, adapters.ssm, adapters.connect_client, "payments")
    service = unattributed(adapters.rotation("test", generate=key_pool.generator()))
    return World(**vars(payments), sandbox=box, adapters=adapters, service=service)


@pytest.fixture
def world(sandbox: Sandbox, key_pool: KeyPool, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A fresh Connect and keyring; the Lambda handler in a fresh container pointed at them."""
    for name, value in sandbox.environment().items():
        monkeypatch.setenv(name, value)
    yield build_world(sandbox, key_pool, monkeypatch)
    handler.reset_container()
