"""One sandbox, many accounts and regions: moto's and the Connect emulator's state is partitioned
by the credentials' account (an assumed role's) and the request's region, as AWS's is."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from rotator.domain.keys import KeyMaterial
from rotator.sandbox.connect_emulator import DEFAULT_ACCOUNT, ConnectError, ConnectState
from rotator.sandbox.sample_flows import payment_flow_content
from rotator.sandbox.server import (
    DUMMY_CREDENTIALS,
    INSTANCES_PATH,
    REGION,
    Sandbox,
    start_sandbox,
)

pytestmark = pytest.mark.wire  # boto3 over HTTP to one sandbox

MEMBER = "111111111111"
MEMBER_REGION = "eu-west-2"
ROLE = "rotator-member"
EXTERNAL_ID = "fleet-external-id"
# botocore's Connect model: an instance ARN is arn:aws:connect:REGION:ACCOUNT:instance/ID.
INSTANCE_ARN = re.compile(r"arn:aws:connect:([a-z0-9-]+):(\d{12}):instance/([0-9a-f-]{36})")
ONE_ATTEMPT = Config(retries={"total_max_attempts": 1})  # an emulator bug shows at once

Client = Any


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox() as running:
        yield running


@pytest.fixture(autouse=True)
def _empty_connect(sandbox: Sandbox) -> None:
    # moto is not reset (other modules' session sandbox shares it); names here are unique.
    sandbox.emulator.reset()


@pytest.fixture(scope="module")
def member_credentials(sandbox: Sandbox) -> dict[str, str]:
    """The fleet's way in: a role created in the member account, trusting the central (default)
    account with an external ID, assumed with the default account's credentials."""
    iam = _client(sandbox, "iam", DUMMY_CREDENTIALS, REGION)
    # moto's server-mode header acts in another account; it is how the member's admin is played.
    iam.meta.events.register(
        "before-sign.iam.*",
        lambda request, **_: request.headers.add_header("x-moto-account-id", MEMBER),
    )
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{DEFAULT_ACCOUNT}:root"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}},
            }
        ],
    }
    role = iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    assert role["Arn"] == f"arn:aws:iam::{MEMBER}:role/{ROLE}"
    sts = _client(sandbox, "sts", DUMMY_CREDENTIALS, REGION)
    assumed = sts.assume_role(
        RoleArn=role["Arn"], RoleSessionName="central-rotator", ExternalId=EXTERNAL_ID
    )["Credentials"]
    return {
        "AWS_ACCESS_KEY_ID": assumed["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": assumed["SecretAccessKey"],
        "AWS_SESSION_TOKEN": assumed["SessionToken"],
    }


def _client(sandbox: Sandbox, service: str, credentials: dict[str, str], region: str) -> Client:
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=sandbox.url,
        region_name=region,
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=credentials.get("AWS_SESSION_TOKEN"),
        config=ONE_ATTEMPT,
    )


class Partitions:
    """Connect clients for the four (account, region) pairs the tests look from."""

    def __init__(self, sandbox: Sandbox, member: dict[str, str]) -> None:
        self.member = _client(sandbox, "connect", member, MEMBER_REGION)
        self.member_home = _client(sandbox, "connect", member, REGION)
        self.central = _client(sandbox, "connect", DUMMY_CREDENTIALS, REGION)
        self.central_away = _client(sandbox, "connect", DUMMY_CREDENTIALS, MEMBER_REGION)

    def others(self) -> list[Client]:
        return [self.member_home, self.central, self.central_away]


@pytest.fixture
def partitions(sandbox: Sandbox, member_credentials: dict[str, str]) -> Partitions:
    return Partitions(sandbox, member_credentials)


def _instance(connect: Client, alias: str) -> str:
    return str(
        connect.create_instance(
            IdentityManagementType="CONNECT_MANAGED",
            InstanceAlias=alias,
            InboundCallsEnabled=True,
            OutboundCallsEnabled=False,
        )["Id"]
    )


def _listed(connect: Client) -> list[str]:
    return [i["Id"] for i in connect.list_instances()["InstanceSummaryList"]]


def _not_found(call: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as raised:
        call(**kwargs)
    assert raised.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    return str(raised.value.response["Error"]["Message"])


def test_the_assumed_role_acts_in_the_member_account(
    sandbox: Sandbox, member_credentials: dict[str, str]
) -> None:
    identity = _client(sandbox, "sts", member_credentials, MEMBER_REGION).get_caller_identity()
    assert identity["Account"] == MEMBER
    assert identity["Arn"] == f"arn:aws:sts::{MEMBER}:assumed-role/{ROLE}/central-rotator"
    central = _client(sandbox, "sts", DUMMY_CREDENTIALS, REGION).get_caller_identity()
    assert central["Account"] == DEFAULT_ACCOUNT
    # The role was made in the member account: the central account's IAM does not hold it.
    with pytest.raises(ClientError, match="NoSuchEntity"):
        _client(sandbox, "iam", DUMMY_CREDENTIALS, REGION).get_role(RoleName=ROLE)
    member_iam = _client(sandbox, "iam", member_credentials, MEMBER_REGION)
    assert member_iam.get_role(RoleName=ROLE)["Role"]["Arn"].startswith(f"arn:aws:iam::{MEMBER}:")


def test_an_instance_is_listed_only_with_its_accounts_credentials_and_region(
    partitions: Partitions,
) -> None:
    member_instance = _instance(partitions.member, "member-payments")
    central_instance = _instance(partitions.central, "central-payments")

    assert _listed(partitions.member) == [member_instance]
    assert _listed(partitions.central) == [central_instance]
    assert _listed(partitions.member_home) == []
    assert _listed(partitions.central_away) == []

    described = partitions.member.describe_instance(InstanceId=member_instance)["Instance"]
    match = INSTANCE_ARN.fullmatch(described["Arn"])
    assert match is not None and match.groups() == (MEMBER_REGION, MEMBER, member_instance)
    assert described["ServiceRole"].startswith(f"arn:aws:iam::{MEMBER}:role/aws-service-role/")
    central = partitions.central.describe_instance(InstanceId=central_instance)["Instance"]
    assert INSTANCE_ARN.fullmatch(central["Arn"]) is not None
    assert (
        central["Arn"] == f"arn:aws:connect:{REGION}:{DEFAULT_ACCOUNT}:instance/{central_instance}"
    )
    for other in partitions.others():
        assert member_instance in _not_found(other.describe_instance, InstanceId=member_instance)


def test_keys_and_flows_of_one_partition_are_not_seen_from_another(
    partitions: Partitions, material_2048: KeyMaterial
) -> None:
    member_instance = _instance(partitions.member, "member-payments")
    association = partitions.member.associate_security_key(
        InstanceId=member_instance, Key=material_2048.public_key_pem
    )["AssociationId"]
    flow = partitions.member.create_contact_flow(
        InstanceId=member_instance,
        Name="Payment IVR",
        Type="CONTACT_FLOW",
        Content=payment_flow_content(None, None),
    )["ContactFlowId"]

    for other in partitions.others():
        _not_found(other.list_security_keys, InstanceId=member_instance)
        _not_found(
            other.disassociate_security_key, InstanceId=member_instance, AssociationId=association
        )
        _not_found(
            other.associate_security_key,
            InstanceId=member_instance,
            Key=material_2048.public_key_pem,
        )
        _not_found(other.describe_contact_flow, InstanceId=member_instance, ContactFlowId=flow)
        _not_found(
            other.update_contact_flow_content,
            InstanceId=member_instance,
            ContactFlowId=flow,
            Content=payment_flow_content(None, None),
        )
        _not_found(other.list_contact_flows, InstanceId=member_instance)

    # Nothing the other partitions tried reached the member's instance.
    [held] = partitions.member.list_security_keys(InstanceId=member_instance)["SecurityKeys"]
    assert held["AssociationId"] == association
    assert _listed(partitions.member) == [member_instance]

    # The same public key is the member's alone: the central account may associate it too.
    central_instance = _instance(partitions.central, "central-payments")
    partitions.central.associate_security_key(
        InstanceId=central_instance, Key=material_2048.public_key_pem
    )
    assert (
        len(partitions.member.list_security_keys(InstanceId=member_instance)["SecurityKeys"]) == 1
    )


def test_ssm_parameters_are_partitioned_by_account_and_region_too(
    sandbox: Sandbox, member_credentials: dict[str, str]
) -> None:
    name = "/sandbox-accounts/keyring/probe"
    member = _client(sandbox, "ssm", member_credentials, MEMBER_REGION)
    member.put_parameter(Name=name, Value="member", Type="String", Overwrite=True)
    assert member.get_parameter(Name=name)["Parameter"]["Value"] == "member"
    for credentials, region in [
        (member_credentials, REGION),
        (DUMMY_CREDENTIALS, REGION),
        (DUMMY_CREDENTIALS, MEMBER_REGION),
    ]:
        with pytest.raises(ClientError, match="ParameterNotFound"):
            _client(sandbox, "ssm", credentials, region).get_parameter(Name=name)


def test_moto_and_the_emulator_agree_on_the_account_of_a_request(
    sandbox: Sandbox, partitions: Partitions
) -> None:
    """moto's server-mode header names the account for the emulator as for moto."""
    member_instance = _instance(partitions.member, "member-payments")
    connect = _client(sandbox, "connect", DUMMY_CREDENTIALS, MEMBER_REGION)
    connect.meta.events.register(
        "before-sign.connect.*",
        lambda request, **_: request.headers.add_header("x-moto-account-id", MEMBER),
    )
    assert _listed(connect) == [member_instance]


def test_add_instance_seeds_a_payment_instance_in_any_account_and_region(
    sandbox: Sandbox,
) -> None:
    seeded = sandbox.add_instance("fleet-b", account="222222222222", region="ap-southeast-2")
    home = sandbox.add_instance("fleet-home")

    away = sandbox.session(account="222222222222", region="ap-southeast-2").client(
        "connect", endpoint_url=sandbox.url, config=ONE_ATTEMPT
    )
    assert _listed(away) == [seeded.instance_id]
    [flow] = away.list_contact_flows(InstanceId=seeded.instance_id)["ContactFlowSummaryList"]
    assert flow["Id"] == seeded.flow_id
    assert flow["Arn"].startswith(
        f"arn:aws:connect:ap-southeast-2:222222222222:instance/{seeded.instance_id}/contact-flow/"
    )
    [module] = away.list_contact_flow_modules(InstanceId=seeded.instance_id)[
        "ContactFlowModulesSummaryList"
    ]
    assert module["Id"] == seeded.module_id
    content = away.describe_contact_flow(InstanceId=seeded.instance_id, ContactFlowId=flow["Id"])[
        "ContactFlow"
    ]["Content"]
    # The flow invokes its own account's decrypt Lambda, not the central account's.
    assert "arn:aws:lambda:ap-southeast-2:222222222222:function:connect-decrypt" in content

    central = sandbox.session().client("connect", endpoint_url=sandbox.url, config=ONE_ATTEMPT)
    assert _listed(central) == [home.instance_id]
    _not_found(central.describe_instance, InstanceId=seeded.instance_id)
    # Another region of the same account is another partition.
    same_account = sandbox.session(account="222222222222", region=REGION).client(
        "connect", endpoint_url=sandbox.url, config=ONE_ATTEMPT
    )
    assert _listed(same_account) == []


def test_environment_for_another_account_reaches_its_partition(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seeded = sandbox.add_instance("fleet-c", account="333333333333", region=MEMBER_REGION)
    environment = sandbox.environment(account="333333333333", region=MEMBER_REGION)
    assert environment["AWS_DEFAULT_REGION"] == MEMBER_REGION
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    # A new session, as a child process has: boto3's default one keeps the first credentials.
    session = boto3.session.Session()
    assert session.client("sts").get_caller_identity()["Account"] == "333333333333"
    assert _listed(session.client("connect")) == [seeded.instance_id]
    # The default account's environment is unchanged: dummy keys, moto's default region.
    assert sandbox.environment() == {
        "AWS_ENDPOINT_URL": sandbox.url,
        "AWS_DEFAULT_REGION": REGION,
        **DUMMY_CREDENTIALS,
    }
    with pytest.raises(ValueError, match="12 digits"):
        sandbox.environment(account="central")


def test_the_instances_endpoint_seeds_and_lists_over_http(sandbox: Sandbox) -> None:
    created = _post(sandbox, {"alias": "fleet-d", "account": MEMBER, "region": MEMBER_REGION})
    default = _post(sandbox, {"alias": "fleet-e"})
    assert INSTANCE_ARN.fullmatch(created["InstanceArn"]) is not None
    assert created["InstanceArn"].split(":")[3:5] == [MEMBER_REGION, MEMBER]
    assert (default["Account"], default["Region"]) == (DEFAULT_ACCOUNT, REGION)

    with urllib.request.urlopen(sandbox.url + INSTANCES_PATH, timeout=10) as response:  # noqa: S310
        listed = json.loads(response.read())["Instances"]
    assert sorted((i["Account"], i["Region"], i["InstanceId"], i["Alias"]) for i in listed) == [
        (MEMBER, MEMBER_REGION, created["InstanceId"], "fleet-d"),
        (DEFAULT_ACCOUNT, REGION, default["InstanceId"], "fleet-e"),
    ]
    member = sandbox.session(account=MEMBER, region=MEMBER_REGION).client(
        "connect", endpoint_url=sandbox.url, config=ONE_ATTEMPT
    )
    assert _listed(member) == [created["InstanceId"]]

    for refused in (
        {"account": MEMBER},
        {"alias": "x", "account": "1111"},
        {"alias": "x", "region": "mars"},
    ):
        with pytest.raises(urllib.error.HTTPError) as raised:
            _post(sandbox, refused)
        assert raised.value.code == 400
    assert len(sandbox.emulator.state.instances()) == 2


def test_a_reset_empties_every_partition(sandbox: Sandbox) -> None:
    sandbox.add_instance("fleet-f", account=MEMBER, region=MEMBER_REGION)
    sandbox.add_instance("fleet-g")
    assert len(sandbox.emulator.state.instances()) == 2
    sandbox.emulator.reset()
    assert sandbox.emulator.state.instances() == []


def test_invoke_runs_the_wire_handlers_in_a_partition_without_http() -> None:
    state = ConnectState()
    created = state.invoke(
        "CreateInstance",
        {"IdentityManagementType": "SAML"},
        account=MEMBER,
        region=MEMBER_REGION,
    )
    assert created["Arn"] == f"arn:aws:connect:{MEMBER_REGION}:{MEMBER}:instance/{created['Id']}"
    listed = state.invoke("ListInstances", {}, account=MEMBER, region=MEMBER_REGION)
    assert [i["Id"] for i in listed["InstanceSummaryList"]] == [created["Id"]]
    assert state.invoke("ListInstances", {})["InstanceSummaryList"] == []
    with pytest.raises(ConnectError) as raised:
        state.invoke("DescribeInstance", {"InstanceId": created["Id"]}, region=MEMBER_REGION)
    assert raised.value.code == "ResourceNotFoundException"
    # The same checks as the wire: a request the model would refuse is refused here too.
    with pytest.raises(ConnectError) as refused:
        state.invoke("CreateInstance", {"IdentityManagementType": "LDAP"}, account=MEMBER)
    assert refused.value.code == "InvalidRequestException"
    with pytest.raises(ConnectError) as unknown:
        state.invoke("DeleteInstance", {"InstanceId": created["Id"]})
    assert unknown.value.code == "UnknownOperationException"


def _post(sandbox: Sandbox, body: dict[str, str]) -> dict[str, str]:
    request = urllib.request.Request(  # noqa: S310 - the sandbox's own loopback URL
        sandbox.url + INSTANCES_PATH, data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        answer: dict[str, str] = json.loads(response.read())
    return answer
