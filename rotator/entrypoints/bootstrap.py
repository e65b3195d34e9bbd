"""Composition root: builds AWS clients and adapters from settings; entrypoints call only this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from rotator.adapters.connect import ConnectGateway
from rotator.adapters.lock import SsmLock
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.config import Settings
from rotator.domain.history import Clock
from rotator.services.invariants import InvariantChecker
from rotator.services.rotation import KeyGenerator, RotationService

if TYPE_CHECKING:
    from mypy_boto3_connect import ConnectClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_ssm import SSMClient

# Throttling and transient errors are retried by botocore itself, with client-side rate limiting.
RETRY_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 8})


@dataclass(frozen=True)
class Adapters:
    settings: Settings
    ssm: SSMClient
    connect_client: ConnectClient
    keyring: SsmKeyring
    connect: ConnectGateway
    lock: SsmLock

    def rotation(self, actor: str, generate: KeyGenerator | None = None) -> RotationService:
        return RotationService(
            self.keyring, self.connect, self.lock, self.settings, actor=actor, generate=generate
        )

    def invariants(self) -> InvariantChecker:
        return InvariantChecker(self.keyring, self.connect, self.lock)

    def s3(self) -> S3Client:
        """Made on demand: only the report job's S3 destination needs it."""
        return boto3.client("s3", config=RETRY_CONFIG)

    def sns(self) -> SNSClient:
        return boto3.client("sns", config=RETRY_CONFIG)


def build_adapters(
    settings: Settings,
    *,
    ssm: SSMClient | None = None,
    connect: ConnectClient | None = None,
    simulated_clock: bool = False,
) -> Adapters:
    """Real clients unless given; AWS_ENDPOINT_URL(_<SERVICE>) points them at a sandbox.
    `simulated_clock`: the times passed in come from the sandbox's clock (the history says so)."""
    ssm_client = ssm if ssm is not None else boto3.client("ssm", config=RETRY_CONFIG)
    connect_client = (
        connect if connect is not None else boto3.client("connect", config=RETRY_CONFIG)
    )
    return Adapters(
        settings=settings,
        ssm=ssm_client,
        connect_client=connect_client,
        keyring=SsmKeyring(
            ssm_client,
            settings.keyring_prefix,
            kms_key_id=settings.kms_key_id,
            clock=Clock.SIMULATED if simulated_clock else Clock.REAL,
        ),
        connect=ConnectGateway(connect_client),
        lock=SsmLock(ssm_client, settings.keyring_prefix),
    )
