"""Per-account adapters (entrypoints/bootstrap.py): built on a member role assumed with its
external ID, they write to that account's keyring only (moto partitions SSM by the account of
assumed-role credentials), and their identity is the assumed role."""

from __future__ import annotations

import json
from typing import Any

import boto3
import botocore.session
import pytest

from rotator.config import Settings
from rotator.domain.fleet import Account, Partition
from rotator.domain.rotation import ManagedInstance
from rotator.entrypoints.bootstrap import (
    MEMBER_KEYRING_KEY_ALIAS,
    ROLE_SESSION_NAME,
    assumed_role_session,
    build_account_adapters,
    build_fleet_adapters,
)
from tests.conftest import REGION

CENTRAL = "123456789012"  # moto's default account: the credentials' own
MEMBER = "111111111111"
OTHER = "222222222222"
INSTANCE = "aaaaaaaa-1111-4222-8333-444444444444"
FLOW = "bbbbbbbb-1111-4222-8333-444444444444"


def _account(account_id: str, name: str) -> Account:
    return Account(
        name, f"arn:aws:iam::{account_id}:role/connect-key-rotator-member", f"ext-{name}", (REGION,)
    )


def _instance_parameters(ssm: Any) -> list[str]:
    pages = ssm.get_paginator("get_parameters_by_path").paginate(
        Path="/connect-keys", Recursive=True
    )
    return [p["Name"] for page in pages for p in page["Parameters"]]


def test_member_adapters_write_to_the_member_accounts_keyring_only(aws: None) -> None:
    settings = Settings.load({})
    adapters = build_account_adapters(settings, _account(MEMBER, "prod"), REGION)
    adapters.keyring.put_instance(ManagedInstance(INSTANCE, (FLOW,), ()))

    assert adapters.identity.caller_arn().startswith(
        f"arn:aws:sts::{MEMBER}:assumed-role/connect-key-rotator-member/{ROLE_SESSION_NAME}"
    )
    member_ssm = assumed_role_session(_account(MEMBER, "prod"), REGION).client("ssm")
    assert any(INSTANCE in name for name in _instance_parameters(member_ssm))
    # Neither the central account (the credentials' own) nor another member sees it.
    assert _instance_parameters(boto3.client("ssm", region_name=REGION)) == []
    other_ssm = assumed_role_session(_account(OTHER, "test"), REGION).client("ssm")
    assert _instance_parameters(other_ssm) == []
    # The member's keyring encrypts with the member's own key (an alias resolves there).
    assert adapters.keyring.kms_key_id == MEMBER_KEYRING_KEY_ALIAS
    assert adapters.settings.kms_key_id == MEMBER_KEYRING_KEY_ALIAS


def test_assume_role_names_the_rotator_and_passes_the_external_id(aws: None) -> None:
    calls: list[dict[str, Any]] = []
    source = botocore.session.get_session()

    def record(**kwargs: Any) -> None:
        calls.append(dict(kwargs["params"]))

    source.register("provide-client-params.sts.AssumeRole", record)
    session = assumed_role_session(_account(MEMBER, "prod"), REGION, source=source)
    assert calls == []  # deferred: nothing is assumed until a call needs credentials
    session.client("ssm").describe_parameters()
    session.client("connect").list_instances()
    assert calls == [
        {
            "RoleArn": f"arn:aws:iam::{MEMBER}:role/connect-key-rotator-member",
            "RoleSessionName": ROLE_SESSION_NAME,
            "ExternalId": "ext-prod",
        }
    ]  # once: the refreshable credentials are shared by the session's clients
    credentials = session.get_credentials()
    assert credentials is not None
    assert type(credentials).__name__ == "DeferredRefreshableCredentials"
    assert credentials.method == "assume-role"


def test_fleet_adapters_are_one_per_partition(aws: None) -> None:
    prod, test = _account(MEMBER, "prod"), _account(OTHER, "test")
    settings = Settings.load({"ROTATOR_ACCOUNTS": f"[{_json(prod)},{_json(test)}]"})
    built: list[tuple[str, str]] = []

    def build(account: Account, region: str) -> Any:
        built.append((account.name, region))
        return object()

    partitions = [Partition("prod", REGION), Partition("test", REGION)]
    adapters = build_fleet_adapters(settings, partitions, build=build)
    assert list(adapters) == partitions and built == [("prod", REGION), ("test", REGION)]
    real = build_fleet_adapters(settings, partitions[:1])
    assert real[partitions[0]].identity.caller_arn().startswith(f"arn:aws:sts::{MEMBER}:")


def _json(account: Account) -> str:
    return json.dumps(account.to_dict())


@pytest.fixture(autouse=True)
def _no_sandbox_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_CONNECT"):
        monkeypatch.delenv(name, raising=False)


def test_a_region_placeholder_assumes_each_regions_role(aws: None) -> None:
    account = Account(
        "prod",
        f"arn:aws:iam::{MEMBER}:role/connect-key-rotator-member-{{region}}",
        "ext-prod",
        (REGION, "eu-west-2"),
    )
    adapters = build_account_adapters(Settings.load({}), account, "eu-west-2")
    assert adapters.identity.caller_arn().startswith(
        f"arn:aws:sts::{MEMBER}:assumed-role/connect-key-rotator-member-eu-west-2/"
    )
