"""The Connect emulator through a real boto3 client: Connect's limits and flow validation."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rotator.domain.keys import CONNECT_PUBLIC_KEY_PEM_LIMIT, KeyMaterial
from rotator.sandbox.connect_emulator import ERROR_STATUS, OPERATIONS, PEM_LIMIT, QUERY_MEMBERS
from rotator.sandbox.sample_flows import (
    CARD_INPUT_ACTION,
    payment_flow_content,
    payment_module_content,
)
from rotator.sandbox.server import Sandbox, start_sandbox

Client = Any  # mypy_boto3_connect's ConnectClient; tests stay free of stub-only imports


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox() as running:
        yield running


@pytest.fixture(scope="module")
def connect(sandbox: Sandbox) -> Client:
    return boto3.client(
        "connect",
        endpoint_url=sandbox.url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        # An emulator bug must show at once, not after retries.
        config=Config(retries={"total_max_attempts": 1}),
    )


@pytest.fixture(autouse=True)
def _empty(sandbox: Sandbox) -> None:
    sandbox.emulator.state.reset()


@pytest.fixture
def instance_id(connect: Client) -> str:
    created = connect.create_instance(
        IdentityManagementType="CONNECT_MANAGED",
        InstanceAlias="payments",
        InboundCallsEnabled=True,
        OutboundCallsEnabled=False,
    )
    return str(created["Id"])


@pytest.fixture(scope="module")
def rsa_8192_public_key_pem() -> str:
    """A genuine RSA-8192 public key PEM; a public key needs no private key, so none is made."""
    modulus = secrets.randbits(8192) | (1 << 8191) | 1
    public_key = rsa.RSAPublicNumbers(65537, modulus).public_key()
    return _spki_pem(public_key)


def _spki_pem(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _associate(connect: Client, instance_id: str, material: KeyMaterial, **kwargs: Any) -> str:
    response = connect.associate_security_key(
        InstanceId=instance_id, Key=material.public_key_pem, **kwargs
    )
    return str(response["AssociationId"])


def _flow(connect: Client, instance_id: str, content: str, name: str = "Payments") -> str:
    created = connect.create_contact_flow(
        InstanceId=instance_id, Name=name, Type="CONTACT_FLOW", Content=content
    )
    return str(created["ContactFlowId"])


# Security keys


def test_associated_key_is_listed_as_given(
    connect: Client, instance_id: str, material_a: KeyMaterial
) -> None:
    association_id = _associate(connect, instance_id, material_a)
    [key] = connect.list_security_keys(InstanceId=instance_id)["SecurityKeys"]
    assert key["AssociationId"] == association_id
    assert key["Key"] == material_a.public_key_pem
    assert key["CreationTime"].year >= 2024


def test_a_third_key_exceeds_the_quota_until_one_is_disassociated(
    connect: Client,
    instance_id: str,
    material_a: KeyMaterial,
    material_b: KeyMaterial,
    material_2048: KeyMaterial,
) -> None:
    first = _associate(connect, instance_id, material_a)
    _associate(connect, instance_id, material_b)
    with pytest.raises(connect.exceptions.ServiceQuotaExceededException) as raised:
        _associate(connect, instance_id, material_2048)
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 402
    connect.disassociate_security_key(InstanceId=instance_id, AssociationId=first)
    _associate(connect, instance_id, material_2048)
    assert len(connect.list_security_keys(InstanceId=instance_id)["SecurityKeys"]) == 2


def test_the_same_public_key_is_associated_once_whatever_its_line_endings(
    connect: Client, instance_id: str, material_a: KeyMaterial
) -> None:
    _associate(connect, instance_id, material_a)
    with pytest.raises(connect.exceptions.ResourceConflictException):
        connect.associate_security_key(
            InstanceId=instance_id, Key=material_a.public_key_pem.replace("\n", "\r\n")
        )


def test_client_token_makes_associate_idempotent(
    connect: Client, instance_id: str, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    first = _associate(connect, instance_id, material_a, ClientToken="rotation-1")
    again = _associate(connect, instance_id, material_a, ClientToken="rotation-1")
    assert again == first
    assert len(connect.list_security_keys(InstanceId=instance_id)["SecurityKeys"]) == 1
    with pytest.raises(connect.exceptions.ResourceConflictException):
        _associate(connect, instance_id, material_b, ClientToken="rotation-1")


def test_concurrent_associations_of_one_key_succeed_once(
    connect: Client, instance_id: str, material_a: KeyMaterial
) -> None:
    def attempt(token: str) -> str:
        try:
            return _associate(connect, instance_id, material_a, ClientToken=token)
        except connect.exceptions.ResourceConflictException:
            return "conflict"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(attempt, [f"token-{n}" for n in range(8)]))
    assert outcomes.count("conflict") == 7
    assert len(connect.list_security_keys(InstanceId=instance_id)["SecurityKeys"]) == 1


def test_disassociating_an_unknown_key_is_not_found(
    connect: Client, instance_id: str, material_a: KeyMaterial
) -> None:
    association_id = _associate(connect, instance_id, material_a)
    connect.disassociate_security_key(InstanceId=instance_id, AssociationId=association_id)
    with pytest.raises(connect.exceptions.ResourceNotFoundException):
        connect.disassociate_security_key(InstanceId=instance_id, AssociationId=association_id)
    assert connect.list_security_keys(InstanceId=instance_id)["SecurityKeys"] == []


def test_pem_limit_is_connects_and_the_domains(
    connect: Client, instance_id: str, material_a: KeyMaterial, rsa_8192_public_key_pem: str
) -> None:
    assert PEM_LIMIT == CONNECT_PUBLIC_KEY_PEM_LIMIT == 1024
    assert len(material_a.public_key_pem) == 800  # RSA-4096
    _associate(connect, instance_id, material_a)
    assert len(rsa_8192_public_key_pem) > PEM_LIMIT
    with pytest.raises(connect.exceptions.InvalidParameterException) as raised:
        connect.associate_security_key(InstanceId=instance_id, Key=rsa_8192_public_key_pem)
    assert "1024" in raised.value.response["Error"]["Message"]


def test_pem_limit_counts_characters_exactly(
    connect: Client, instance_id: str, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    # Text after the END line is ignored by PEM parsers, so only the length differs.
    at_limit = material_a.public_key_pem.ljust(PEM_LIMIT, "\n")
    over_limit = material_b.public_key_pem.ljust(PEM_LIMIT + 1, "\n")
    connect.associate_security_key(InstanceId=instance_id, Key=at_limit)
    with pytest.raises(connect.exceptions.InvalidParameterException):
        connect.associate_security_key(InstanceId=instance_id, Key=over_limit)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "ec-key", "private-key"])
def test_a_key_that_is_not_an_rsa_public_key_pem_is_refused(
    connect: Client, instance_id: str, material_2048: KeyMaterial, kind: str
) -> None:
    keys = {
        "garbage": "not a key",
        "truncated": material_2048.public_key_pem[:200],
        "ec-key": _spki_pem(ec.generate_private_key(ec.SECP384R1()).public_key()),
        "private-key": ec.generate_private_key(ec.SECP384R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode(),
    }
    with pytest.raises(connect.exceptions.InvalidParameterException):
        connect.associate_security_key(InstanceId=instance_id, Key=keys[kind])
    assert connect.list_security_keys(InstanceId=instance_id)["SecurityKeys"] == []


def test_security_keys_are_paginated(
    connect: Client, instance_id: str, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    first = _associate(connect, instance_id, material_a)
    second = _associate(connect, instance_id, material_b)
    page = connect.list_security_keys(InstanceId=instance_id, MaxResults=1)
    assert [k["AssociationId"] for k in page["SecurityKeys"]] == [first]
    last = connect.list_security_keys(
        InstanceId=instance_id, MaxResults=1, NextToken=page["NextToken"]
    )
    assert [k["AssociationId"] for k in last["SecurityKeys"]] == [second]
    assert "NextToken" not in last
    with pytest.raises(connect.exceptions.InvalidParameterException):
        connect.list_security_keys(InstanceId=instance_id, MaxResults=3)
    with pytest.raises(connect.exceptions.InvalidParameterException):
        connect.list_security_keys(InstanceId=instance_id, NextToken="not-a-token")


@pytest.mark.parametrize(
    ("operation", "arguments"),
    [
        ("associate_security_key", {"Key": "x"}),
        ("list_security_keys", {}),
        ("disassociate_security_key", {"AssociationId": "x"}),
        ("describe_instance", {}),
        ("list_contact_flows", {}),
        ("describe_contact_flow", {"ContactFlowId": "x"}),
        ("update_contact_flow_content", {"ContactFlowId": "x", "Content": "{}"}),
        ("list_contact_flow_modules", {}),
        ("describe_contact_flow_module", {"ContactFlowModuleId": "x"}),
        ("update_contact_flow_module_content", {"ContactFlowModuleId": "x", "Content": "{}"}),
    ],
)
def test_an_unknown_instance_is_not_found(
    connect: Client, operation: str, arguments: dict[str, str]
) -> None:
    with pytest.raises(connect.exceptions.ResourceNotFoundException):
        getattr(connect, operation)(InstanceId="no-such-instance", **arguments)


def test_instance_is_described(connect: Client, instance_id: str) -> None:
    instance = connect.describe_instance(InstanceId=instance_id)["Instance"]
    assert instance["Id"] == instance_id
    assert instance["Arn"] == f"arn:aws:connect:us-east-1:123456789012:instance/{instance_id}"
    assert (instance["InstanceAlias"], instance["InstanceStatus"]) == ("payments", "ACTIVE")
    assert (instance["InboundCallsEnabled"], instance["OutboundCallsEnabled"]) == (True, False)


def test_an_operation_the_emulator_does_not_serve_is_unknown(connect: Client) -> None:
    with pytest.raises(connect.exceptions.ClientError) as raised:
        connect.list_instances()
    assert raised.value.response["Error"]["Code"] == "UnknownOperationException"


# Contact flows


def test_flow_content_round_trips_byte_exact(
    connect: Client, instance_id: str, material_a: KeyMaterial
) -> None:
    key_id = _associate(connect, instance_id, material_a)
    content = payment_flow_content(key_id, material_a.certificate_pem)
    flow_id = _flow(connect, instance_id, content)
    flow = connect.describe_contact_flow(InstanceId=instance_id, ContactFlowId=flow_id)[
        "ContactFlow"
    ]
    assert flow["Content"] == content
    assert (flow["Name"], flow["Type"], flow["State"], flow["Status"]) == (
        "Payments",
        "CONTACT_FLOW",
        "ACTIVE",
        "PUBLISHED",
    )
    instance_arn = connect.describe_instance(InstanceId=instance_id)["Instance"]["Arn"]
    assert flow["Arn"] == f"{instance_arn}/contact-flow/{flow_id}"

    # Indentation, key order, non-ASCII text and a trailing newline all survive.
    document = json.loads(content)
    document["Actions"][0]["Parameters"]["Text"] = "Grüß Gott – bitte Karte eingeben ☎"
    rewritten = json.dumps(document, indent=3, ensure_ascii=False, sort_keys=True) + "\n"
    connect.update_contact_flow_content(
        InstanceId=instance_id, ContactFlowId=flow_id, Content=rewritten
    )
    described = connect.describe_contact_flow(InstanceId=instance_id, ContactFlowId=flow_id)
    assert described["ContactFlow"]["Content"] == rewritten


def test_a_flow_without_encryption_is_valid(connect: Client, instance_id: str) -> None:
    flow_id = _flow(connect, instance_id, payment_flow_content(None, None))
    flow = connect.describe_contact_flow(InstanceId=instance_id, ContactFlowId=flow_id)
    assert "InputEncryption" not in flow["ContactFlow"]["Content"]


def _mutated(content: str, change: str, material_b: KeyMaterial) -> str:
    """The payment flow content with one thing broken."""
    document = json.loads(content)
    actions = {action["Identifier"]: action for action in document["Actions"]}
    card_input = actions[CARD_INPUT_ACTION]["Parameters"]
    if change == "not-json":
        return content[:-1]
    if change == "not-an-object":
        return json.dumps(document["Actions"])
    if change == "wrong-version":
        document["Version"] = "2020-01-01"
    elif change == "start-action-unknown":
        document["StartAction"] = "nowhere"
    elif change == "actions-not-a-list":
        document["Actions"] = {}
    elif change == "action-without-parameters":
        del actions["greeting"]["Parameters"]
    elif change == "action-without-transitions":
        del actions["greeting"]["Transitions"]
    elif change == "duplicate-identifier":
        actions["thank-you"]["Identifier"] = "greeting"
    elif change == "next-action-unknown":
        actions["greeting"]["Transitions"]["NextAction"] = "nowhere"
    elif change == "error-branch-unknown":
        actions["greeting"]["Transitions"]["Errors"][0]["NextAction"] = "nowhere"
    elif change == "key-id-not-associated":
        card_input["InputEncryption"]["EncryptionKeyId"] = "5b4c3fd8-0000-4000-8000-000000000000"
    elif change == "certificate-of-another-key":
        card_input["InputEncryption"]["Key"] = material_b.certificate_pem
    elif change == "public-key-instead-of-certificate":
        card_input["InputEncryption"]["Key"] = material_b.public_key_pem
    elif change == "input-not-stored":
        card_input["StoreInput"] = "False"
    elif change == "encryption-not-an-object":
        card_input["InputEncryption"] = "yes"
    return json.dumps(document)


INVALID_CHANGES = [
    "not-json",
    "not-an-object",
    "wrong-version",
    "start-action-unknown",
    "actions-not-a-list",
    "action-without-parameters",
    "action-without-transitions",
    "duplicate-identifier",
    "next-action-unknown",
    "error-branch-unknown",
    "key-id-not-associated",
    "certificate-of-another-key",
    "public-key-instead-of-certificate",
    "input-not-stored",
    "encryption-not-an-object",
]


@pytest.mark.parametrize("change", INVALID_CHANGES)
def test_invalid_flow_content_is_refused_and_nothing_changes(
    connect: Client,
    instance_id: str,
    material_a: KeyMaterial,
    material_b: KeyMaterial,
    sandbox: Sandbox,
    change: str,
) -> None:
    key_id = _associate(connect, instance_id, material_a)
    content = payment_flow_content(key_id, material_a.certificate_pem)
    flow_id = _flow(connect, instance_id, content)
    broken = _mutated(content, change, material_b)
    with pytest.raises(connect.exceptions.InvalidContactFlowException) as raised:
        connect.update_contact_flow_content(
            InstanceId=instance_id, ContactFlowId=flow_id, Content=broken
        )
    assert raised.value.response["problems"][0]["message"]
    with pytest.raises(connect.exceptions.InvalidContactFlowException):
        _flow(connect, instance_id, broken, name="Broken")
    flow = connect.describe_contact_flow(InstanceId=instance_id, ContactFlowId=flow_id)
    assert flow["ContactFlow"]["Content"] == content
    assert sandbox.emulator.state.update_count(instance_id, flow_id) == 1
    assert [
        f["Name"]
        for f in connect.list_contact_flows(InstanceId=instance_id)["ContactFlowSummaryList"]
    ] == ["Payments"]


def test_problems_are_all_reported_without_key_material(
    connect: Client, instance_id: str, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    key_id = _associate(connect, instance_id, material_a)
    document = json.loads(payment_flow_content(key_id, material_b.certificate_pem))
    document["Version"] = "1"
    with pytest.raises(connect.exceptions.InvalidContactFlowException) as raised:
        _flow(connect, instance_id, json.dumps(document))
    problems = [p["message"] for p in raised.value.response["problems"]]
    assert len(problems) == 2
    assert any(key_id in problem for problem in problems)
    assert "BEGIN" not in str(raised.value.response)


def test_a_flow_pointing_at_a_disassociated_key_can_no_longer_be_written(
    connect: Client, instance_id: str, material_a: KeyMaterial
) -> None:
    key_id = _associate(connect, instance_id, material_a)
    content = payment_flow_content(key_id, material_a.certificate_pem)
    flow_id = _flow(connect, instance_id, content)
    connect.disassociate_security_key(InstanceId=instance_id, AssociationId=key_id)
    with pytest.raises(connect.exceptions.InvalidContactFlowException):
        connect.update_contact_flow_content(
            InstanceId=instance_id, ContactFlowId=flow_id, Content=content
        )


def test_update_count_counts_writes_not_reads(
    connect: Client, instance_id: str, sandbox: Sandbox
) -> None:
    content = payment_flow_content(None, None)
    flow_id = _flow(connect, instance_id, content)
    assert sandbox.emulator.state.update_count(instance_id, flow_id) == 0
    connect.describe_contact_flow(InstanceId=instance_id, ContactFlowId=flow_id)
    for _ in range(2):
        connect.update_contact_flow_content(
            InstanceId=instance_id, ContactFlowId=flow_id, Content=content
        )
    assert sandbox.emulator.state.update_count(instance_id, flow_id) == 2
    sandbox.emulator.state.reset()
    assert sandbox.emulator.state.update_count(instance_id, flow_id) == 0


def test_flows_are_listed_by_page_and_type(connect: Client, instance_id: str) -> None:
    content = payment_flow_content(None, None)
    names = ["one", "two", "three"]
    for name in names:
        _flow(connect, instance_id, content, name=name)
    connect.create_contact_flow(
        InstanceId=instance_id, Name="hold", Type="CUSTOMER_HOLD", Content=content
    )
    first = connect.list_contact_flows(
        InstanceId=instance_id, ContactFlowTypes=["CONTACT_FLOW"], MaxResults=2
    )
    rest = connect.list_contact_flows(
        InstanceId=instance_id,
        ContactFlowTypes=["CONTACT_FLOW"],
        MaxResults=2,
        NextToken=first["NextToken"],
    )
    listed = first["ContactFlowSummaryList"] + rest["ContactFlowSummaryList"]
    assert [summary["Name"] for summary in listed] == names
    assert "NextToken" not in rest
    assert {s["ContactFlowType"] for s in listed} == {"CONTACT_FLOW"}
    assert {(s["ContactFlowState"], s["ContactFlowStatus"]) for s in listed} == {
        ("ACTIVE", "PUBLISHED")
    }
    everything = connect.list_contact_flows(InstanceId=instance_id)["ContactFlowSummaryList"]
    assert len(everything) == 4


def test_flow_names_are_unique_and_flow_types_known(connect: Client, instance_id: str) -> None:
    content = payment_flow_content(None, None)
    _flow(connect, instance_id, content)
    with pytest.raises(connect.exceptions.DuplicateResourceException):
        _flow(connect, instance_id, content)
    with pytest.raises(connect.exceptions.InvalidParameterException):
        connect.create_contact_flow(
            InstanceId=instance_id, Name="other", Type="NOT_A_TYPE", Content=content
        )


def test_an_unknown_flow_is_not_found(connect: Client, instance_id: str) -> None:
    with pytest.raises(connect.exceptions.ResourceNotFoundException):
        connect.describe_contact_flow(InstanceId=instance_id, ContactFlowId="missing")
    with pytest.raises(connect.exceptions.ResourceNotFoundException):
        connect.update_contact_flow_content(
            InstanceId=instance_id, ContactFlowId="missing", Content="{}"
        )


# Flow modules


def test_module_content_round_trips_and_is_validated(
    connect: Client,
    instance_id: str,
    material_a: KeyMaterial,
    material_b: KeyMaterial,
    sandbox: Sandbox,
) -> None:
    key_a = _associate(connect, instance_id, material_a)
    key_b = _associate(connect, instance_id, material_b)
    content = payment_module_content(key_a, material_a.certificate_pem)
    created = connect.create_contact_flow_module(
        InstanceId=instance_id, Name="Card capture", Content=content, Description="PCI"
    )
    module_id = created["Id"]
    assert created["Arn"].endswith(f"/flow-module/{module_id}")
    module = connect.describe_contact_flow_module(
        InstanceId=instance_id, ContactFlowModuleId=module_id
    )["ContactFlowModule"]
    assert (module["Content"], module["Name"], module["Description"]) == (
        content,
        "Card capture",
        "PCI",
    )
    assert (module["State"], module["Status"]) == ("ACTIVE", "PUBLISHED")

    rotated = payment_module_content(key_b, material_b.certificate_pem)
    connect.update_contact_flow_module_content(
        InstanceId=instance_id, ContactFlowModuleId=module_id, Content=rotated
    )
    mismatched = payment_module_content(key_a, material_b.certificate_pem)
    with pytest.raises(connect.exceptions.InvalidContactFlowModuleException) as raised:
        connect.update_contact_flow_module_content(
            InstanceId=instance_id, ContactFlowModuleId=module_id, Content=mismatched
        )
    assert raised.value.response["Problems"][0]["message"]
    described = connect.describe_contact_flow_module(
        InstanceId=instance_id, ContactFlowModuleId=module_id
    )
    assert described["ContactFlowModule"]["Content"] == rotated
    assert sandbox.emulator.state.update_count(instance_id, module_id) == 2


def test_modules_are_listed_found_and_named_once(connect: Client, instance_id: str) -> None:
    content = payment_module_content(None, None)
    ids = [
        connect.create_contact_flow_module(InstanceId=instance_id, Name=name, Content=content)["Id"]
        for name in ("first", "second")
    ]
    page = connect.list_contact_flow_modules(InstanceId=instance_id, MaxResults=1)
    rest = connect.list_contact_flow_modules(
        InstanceId=instance_id, MaxResults=1, NextToken=page["NextToken"]
    )
    listed = page["ContactFlowModulesSummaryList"] + rest["ContactFlowModulesSummaryList"]
    assert [m["Id"] for m in listed] == ids
    assert {m["State"] for m in listed} == {"ACTIVE"}
    archived = connect.list_contact_flow_modules(
        InstanceId=instance_id, ContactFlowModuleState="ARCHIVED"
    )
    assert archived["ContactFlowModulesSummaryList"] == []
    with pytest.raises(connect.exceptions.DuplicateResourceException):
        connect.create_contact_flow_module(InstanceId=instance_id, Name="first", Content=content)
    with pytest.raises(connect.exceptions.InvalidContactFlowModuleException):
        connect.create_contact_flow_module(InstanceId=instance_id, Name="bad", Content="[]")
    with pytest.raises(connect.exceptions.ResourceNotFoundException):
        connect.describe_contact_flow_module(InstanceId=instance_id, ContactFlowModuleId="missing")


def test_sample_flows_follow_the_payment_ivr(material_a: KeyMaterial) -> None:
    document = json.loads(payment_flow_content("key-1", material_a.certificate_pem))
    actions = {action["Identifier"]: action for action in document["Actions"]}
    card_input = actions[CARD_INPUT_ACTION]["Parameters"]
    assert card_input["StoreInput"] == "True"
    assert card_input["InputValidation"] == {"CustomValidation": {"MaximumLength": "19"}}
    assert card_input["DTMFConfiguration"] == {"InputTerminationSequence": "#"}
    assert card_input["InputEncryption"] == {
        "EncryptionKeyId": "key-1",
        "Key": material_a.certificate_pem,
    }
    types = [action["Type"] for action in document["Actions"]]
    assert types[:3] == ["MessageParticipant", "GetParticipantInput", "InvokeLambdaFunction"]
    assert types[-1] == "DisconnectParticipant"
    assert actions["decrypt-card"]["Parameters"]["InvocationTimeLimitSeconds"] == "8"
    module = json.loads(payment_module_content(None, None))
    assert module["Actions"][-1]["Type"] == "EndFlowModuleExecution"
    assert "InputEncryption" not in json.dumps(module)
    with pytest.raises(ValueError, match="certificate"):
        payment_flow_content("key-1", None)


def test_routes_and_errors_are_the_models() -> None:
    model = botocore.session.get_session().get_service_model("connect")
    for name, method, path in OPERATIONS:
        operation = model.operation_model(name)
        uri = path.replace("<", "{").replace(">", "}")
        assert (operation.http["method"], operation.http["requestUri"]) == (method, uri)
        members = operation.input_shape.members if operation.input_shape else {}
        query = {
            member.serialization["name"]: member_name
            for member_name, member in members.items()
            if member.serialization.get("location") == "querystring"
        }
        assert query.items() <= QUERY_MEMBERS.items()
    for code, status in ERROR_STATUS.items():
        if code != "UnknownOperationException":
            assert model.shape_for(code).metadata["error"]["httpStatusCode"] == status
