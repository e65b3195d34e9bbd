"""Composition root: builds AWS clients and adapters from settings; entrypoints call only this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.config import Settings

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

# Throttling and transient errors are retried by botocore itself, with client-side rate limiting.
RETRY_CONFIG = Config(retries={"mode": "adaptive", "max_attempts": 8})


@dataclass(frozen=True)
class Adapters:
    settings: Settings
    ssm: SSMClient
    keyring: SsmKeyring


def build_adapters(settings: Settings, *, ssm: SSMClient | None = None) -> Adapters:
    """Real clients unless given; AWS_ENDPOINT_URL(_SSM) points them at a sandbox."""
    ssm_client = ssm if ssm is not None else boto3.client("ssm", config=RETRY_CONFIG)
    keyring = SsmKeyring(ssm_client, settings.keyring_prefix, kms_key_id=settings.kms_key_id)
    return Adapters(settings=settings, ssm=ssm_client, keyring=keyring)
