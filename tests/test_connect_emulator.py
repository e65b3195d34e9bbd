"""The Connect emulator through a real boto3 client: Connect's limits, flow rules, its model."""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.model import Shape
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rotator.domain.keys import CONNECT_PUBLIC_KEY_PEM_LIMIT, KeyMaterial
from rotator.sandbox.connect_emulator import (
    PEM_LIMIT,
    ConnectState,
    Operation,
    connect_model,
)
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
    return _client(sandbox)


def _client(sandbox: Sandbox) -> Client:
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
def test_an_unknown_instance_is_not_found_and_named(
    connect: Client, operation: str, arguments: dict[str, str]
) -> None:
    with pytest.raises(connect.exceptions.ResourceNotFoundException) as raised:
        getattr(connect, operation)(InstanceId="no-such-instance", **arguments)
    assert raised.value.response["Error"]["Message"] == "Instance not found: no-such-instance"


def test_instance_is_described(connect: Client, instance_id: str) -> None:
    instance = connect.describe_instance(InstanceId=instance_id)["Instance"]
    assert instance["Id"] == instance_id
    assert instance["Arn"] == f"arn:aws:connect:us-east-1:123456789012:instance/{instance_id}"
    assert (instance["InstanceAlias"], instance["InstanceStatus"]) == ("payments", "ACTIVE")
    assert (instance["InboundCallsEnabled"], instance["OutboundCallsEnabled"]) == (True, False)


def test_an_operation_the_emulator_does_not_serve_is_unknown(
    connect: Client, instance_id: str
) -> None:
    with pytest.raises(connect.exceptions.ClientError) as raised:
        connect.list_queues(InstanceId=instance_id)
    assert raised.value.response["Error"]["Code"] == "UnknownOperationException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


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
    elif change == "encryption-with-phone-number-validation":
        card_input["InputValidation"] = {
            "PhoneNumberValidation": {"NumberFormat": "Local", "CountryCode": "US"}
        }
    elif change == "encryption-without-validation":
        del card_input["InputValidation"]
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
    "encryption-with-phone-number-validation",
    "encryption-without-validation",
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


def test_an_unknown_flow_is_not_found_and_named(connect: Client, instance_id: str) -> None:
    flow_id = str(uuid.uuid4())
    expected = f"Contact flow not found: {flow_id} in instance {instance_id}"
    with pytest.raises(connect.exceptions.ResourceNotFoundException) as raised:
        connect.describe_contact_flow(InstanceId=instance_id, ContactFlowId=flow_id)
    assert raised.value.response["Error"]["Message"] == expected
    with pytest.raises(connect.exceptions.ResourceNotFoundException) as raised:
        connect.update_contact_flow_content(
            InstanceId=instance_id, ContactFlowId=flow_id, Content="{}"
        )
    assert raised.value.response["Error"]["Message"] == expected


def test_a_flow_of_another_instance_or_a_module_id_is_not_a_flow_here(
    connect: Client, instance_id: str
) -> None:
    other = connect.create_instance(
        IdentityManagementType="SAML", InboundCallsEnabled=True, OutboundCallsEnabled=False
    )["Id"]
    elsewhere = _flow(connect, other, payment_flow_content(None, None))
    module_id = connect.create_contact_flow_module(
        InstanceId=instance_id, Name="m", Content=payment_module_content(None, None)
    )["Id"]
    for flow_id in (elsewhere, module_id):
        with pytest.raises(connect.exceptions.ResourceNotFoundException) as raised:
            connect.describe_contact_flow(InstanceId=instance_id, ContactFlowId=flow_id)
        assert flow_id in raised.value.response["Error"]["Message"]
    with pytest.raises(connect.exceptions.ResourceNotFoundException) as raised:
        connect.describe_contact_flow_module(InstanceId=instance_id, ContactFlowModuleId=elsewhere)
    message = raised.value.response["Error"]["Message"]
    assert message == f"Flow module not found: {elsewhere} in instance {instance_id}"


def test_an_unknown_security_key_is_not_found_and_named(connect: Client, instance_id: str) -> None:
    association_id = str(uuid.uuid4())
    with pytest.raises(connect.exceptions.ResourceNotFoundException) as raised:
        connect.disassociate_security_key(InstanceId=instance_id, AssociationId=association_id)
    message = raised.value.response["Error"]["Message"]
    assert message == f"Security key not found: {association_id} in instance {instance_id}"


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


# Instances


def test_instances_are_listed_by_page_with_botocores_summary(connect: Client) -> None:
    ids = [
        connect.create_instance(
            IdentityManagementType="CONNECT_MANAGED",
            InstanceAlias=f"site-{n}",
            InboundCallsEnabled=True,
            OutboundCallsEnabled=n == 2,
        )["Id"]
        for n in range(3)
    ]
    first = connect.list_instances(MaxResults=2)
    rest = connect.list_instances(MaxResults=2, NextToken=first["NextToken"])
    assert "NextToken" not in rest
    listed = first["InstanceSummaryList"] + rest["InstanceSummaryList"]
    assert [summary["Id"] for summary in listed] == ids
    pages = connect.get_paginator("list_instances").paginate(PaginationConfig={"PageSize": 1})
    assert [s["Id"] for page in pages for s in page["InstanceSummaryList"]] == ids

    summary = listed[2]
    assert set(summary) == set(connect_model().shape_for("InstanceSummary").members)
    assert summary["Arn"] == f"arn:aws:connect:us-east-1:123456789012:instance/{ids[2]}"
    assert (summary["InstanceAlias"], summary["InstanceAccessUrl"]) == (
        "site-2",
        "https://site-2.my.connect.aws",
    )
    assert (summary["IdentityManagementType"], summary["InstanceStatus"]) == (
        "CONNECT_MANAGED",
        "ACTIVE",
    )
    assert (summary["InboundCallsEnabled"], summary["OutboundCallsEnabled"]) == (True, True)
    assert summary["ServiceRole"].startswith(
        "arn:aws:iam::123456789012:role/aws-service-role/connect.amazonaws.com/"
    )
    described = connect.describe_instance(InstanceId=ids[2])["Instance"]
    assert described == summary


def test_list_instances_refuses_a_page_over_ten_as_an_invalid_request(connect: Client) -> None:
    # ListInstances models no InvalidParameterException; MaxResult10 is its limit.
    assert connect.list_instances(MaxResults=10)["InstanceSummaryList"] == []
    for arguments in ({"MaxResults": 11}, {"NextToken": "not-a-token"}):
        with pytest.raises(connect.exceptions.InvalidRequestException):
            connect.list_instances(**arguments)


# Flows shaped like the Connect console's exports


def _ids(*names: str) -> dict[str, str]:
    """Console exports name actions by UUID; these are stable per name for readable tests."""
    return {name: str(uuid.uuid5(uuid.NAMESPACE_URL, name)) for name in names}


ACTION = _ids("logging", "greeting", "card", "decrypt", "queue", "transfer", "sorry", "hang-up")


def _export(card_parameters: dict[str, Any]) -> dict[str, Any]:
    """A payment flow as the flow designer exports it: UUID identifiers, Metadata, and the
    actions that take no parameters (transfer to queue, disconnect) without a Parameters member."""
    a = ACTION

    def action(name: str, kind: str, parameters: dict[str, Any] | None, **transitions: Any) -> Any:
        exported: dict[str, Any] = {"Identifier": a[name], "Type": kind, "Transitions": transitions}
        if parameters is not None:
            exported["Parameters"] = parameters
        return exported

    on_error = [{"NextAction": a["sorry"], "ErrorType": "NoMatchingError"}]
    actions = [
        action("logging", "UpdateFlowLoggingBehavior", {"FlowLoggingBehavior": "Enabled"},
               NextAction=a["greeting"]),
        action("greeting", "MessageParticipant", {"Text": "Welcome to card payments."},
               NextAction=a["card"], Errors=on_error),
        action("card", "GetParticipantInput", card_parameters, NextAction=a["decrypt"],
               Errors=on_error),
        action("decrypt", "InvokeLambdaFunction",
               {"LambdaFunctionARN": "arn:aws:lambda:us-east-1:123456789012:function:decrypt",
                "InvocationTimeLimitSeconds": "8",
                "ResponseValidation": {"ResponseType": "STRING_MAP"}},
               NextAction=a["queue"], Errors=on_error),
        action("queue", "UpdateContactTargetQueue",
               {"QueueId": "arn:aws:connect:us-east-1:123456789012:instance/i/queue/q"},
               NextAction=a["transfer"], Errors=on_error),
        action("transfer", "TransferContactToQueue", None, NextAction=a["hang-up"],
               Errors=[{"NextAction": a["hang-up"], "ErrorType": "QueueAtCapacity"}, *on_error]),
        action("sorry", "MessageParticipant", {"Text": "Sorry."}, NextAction=a["hang-up"],
               Errors=[{"NextAction": a["hang-up"], "ErrorType": "NoMatchingError"}]),
        action("hang-up", "DisconnectParticipant", None),
    ]  # fmt: skip
    return {
        "Version": "2019-10-30",
        "StartAction": a["logging"],
        "Metadata": {
            "entryPointPosition": {"x": 40, "y": 40},
            "ActionMetadata": {
                a[n]: {"position": {"x": 200 * i, "y": 40}} for i, n in enumerate(a)
            },
            "Annotations": [],
            "name": "Payment IVR",
            "type": "contactFlow",
            "status": "published",
            "hash": {},
        },
        "Actions": actions,
    }


def _store_card(encryption: dict[str, Any] | None, **changes: Any) -> dict[str, Any]:
    """The console's Store customer input block for a card number (custom validation), with
    `encryption` as its InputEncryption; `changes` replace parameters (None removes one)."""
    parameters: dict[str, Any] = {
        "StoreInput": "True",
        "InputTimeLimitSeconds": "5",
        "Text": "Please enter your card number, then press the pound key.",
        "InputValidation": {"CustomValidation": {"MaximumLength": "16"}},
        "DTMFConfiguration": {"InputTerminationSequence": "#", "DisableCancelKey": "False"},
    }
    if encryption is not None:
        parameters["InputEncryption"] = encryption
    parameters.update(changes)
    return {name: value for name, value in parameters.items() if value is not None}


@dataclass(frozen=True)
class Keys:
    key_id: str
    certificate: str
    other_certificate: str
    public_key: str


@pytest.fixture
def keys(
    connect: Client, instance_id: str, material_a: KeyMaterial, material_b: KeyMaterial
) -> Keys:
    key_id = _associate(connect, instance_id, material_a)
    return Keys(
        key_id, material_a.certificate_pem, material_b.certificate_pem, material_a.public_key_pem
    )


ACCEPTED: dict[str, Callable[[Keys], dict[str, Any]]] = {
    "static-key-transfer-and-hang-up-without-parameters": lambda k: _store_card(
        {"EncryptionKeyId": k.key_id, "Key": k.certificate}
    ),
    "store-input-in-lower-case": lambda k: _store_card(
        {"EncryptionKeyId": k.key_id, "Key": k.certificate}, StoreInput="true"
    ),
    "touchtone-buffer-stop-and-clear": lambda k: {
        "EnableDTMFBuffer": "false",
        "StoreInput": "true",
        "InputEncryption": {"EncryptionKeyId": k.key_id, "Key": k.certificate},
    },
    "dynamic-key-id-static-certificate": lambda k: _store_card(
        {"EncryptionKeyId": "$.Attributes.KeyId", "Key": k.other_certificate}
    ),
    "static-key-id-dynamic-certificate": lambda k: _store_card(
        {"EncryptionKeyId": k.key_id, "Key": "$.External['Key Certificate']"}
    ),
    "dynamic-key-id-and-certificate": lambda k: _store_card(
        {"EncryptionKeyId": "$.External.KeyId", "Key": "$.External.Certificate"}
    ),
    "callback-number-stored-unencrypted": lambda k: _store_card(
        None,
        InputValidation={"PhoneNumberValidation": {"NumberFormat": "E164"}},
    ),
    "menu-choice-not-stored": lambda k: {"Text": "Press 1 to pay.", "StoreInput": "False"},
}


@pytest.mark.parametrize("case", ACCEPTED)
def test_connect_flows_are_accepted(
    connect: Client, instance_id: str, keys: Keys, case: str
) -> None:
    content = json.dumps(_export(ACCEPTED[case](keys)), indent=2)
    flow_id = _flow(connect, instance_id, content)
    connect.update_contact_flow_content(
        InstanceId=instance_id, ContactFlowId=flow_id, Content=content
    )
    described = connect.describe_contact_flow(InstanceId=instance_id, ContactFlowId=flow_id)
    assert described["ContactFlow"]["Content"] == content


REFUSED: dict[str, tuple[Callable[[Keys], dict[str, Any]], str]] = {
    "encryption-with-phone-number-validation": (
        lambda k: _store_card(
            {"EncryptionKeyId": k.key_id, "Key": k.certificate},
            InputValidation={"PhoneNumberValidation": {"NumberFormat": "E164"}},
        ),
        "only be given with InputValidation.CustomValidation",
    ),
    "encryption-with-both-validations": (
        lambda k: _store_card(
            {"EncryptionKeyId": k.key_id, "Key": k.certificate},
            InputValidation={
                "CustomValidation": {"MaximumLength": "16"},
                "PhoneNumberValidation": {"NumberFormat": "E164"},
            },
        ),
        "only be given with InputValidation.CustomValidation",
    ),
    "encryption-without-validation": (
        lambda k: _store_card(
            {"EncryptionKeyId": k.key_id, "Key": k.certificate}, InputValidation=None
        ),
        "only be given with InputValidation.CustomValidation",
    ),
    "touchtone-buffer-enabled-with-encryption-but-no-validation": (
        lambda k: {
            "EnableDTMFBuffer": "true",
            "StoreInput": "true",
            "InputEncryption": {"EncryptionKeyId": k.key_id, "Key": k.certificate},
        },
        "only be given with InputValidation.CustomValidation",
    ),
    "store-input-false-with-encryption": (
        lambda k: _store_card(
            {"EncryptionKeyId": k.key_id, "Key": k.certificate}, StoreInput="false"
        ),
        'needs StoreInput "True"',
    ),
    "dynamic-key-id-with-a-public-key-not-a-certificate": (
        lambda k: _store_card({"EncryptionKeyId": "$.Attributes.KeyId", "Key": k.public_key}),
        "Key is not a PEM X.509 certificate",
    ),
    "unknown-static-key-id-with-dynamic-certificate": (
        lambda k: _store_card(
            {"EncryptionKeyId": str(uuid.uuid4()), "Key": "$.Attributes.Certificate"}
        ),
        "is not a security key of this instance",
    ),
    "key-id-that-is-not-a-jsonpath": (
        lambda k: _store_card({"EncryptionKeyId": "$ Attributes.KeyId", "Key": k.certificate}),
        "is not a security key of this instance",
    ),
    "static-key-id-with-another-keys-certificate": (
        lambda k: _store_card({"EncryptionKeyId": k.key_id, "Key": k.other_certificate}),
        "Key is not a certificate for security key",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_connect_refuses_flows_it_does_not_accept(
    connect: Client, instance_id: str, keys: Keys, case: str
) -> None:
    build, problem = REFUSED[case]
    content = json.dumps(_export(build(keys)))
    with pytest.raises(connect.exceptions.InvalidContactFlowException) as raised:
        _flow(connect, instance_id, content)
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    [message] = [p["message"] for p in error["problems"]]
    assert message.startswith(f"action {ACTION['card']!r}: ")
    assert problem in message
    assert "BEGIN" not in json.dumps(error, default=str)
    with pytest.raises(connect.exceptions.InvalidContactFlowModuleException) as module_error:
        connect.create_contact_flow_module(InstanceId=instance_id, Name="m", Content=content)
    assert [p["message"] for p in module_error.value.response["Problems"]] == [message]
    assert connect.list_contact_flows(InstanceId=instance_id)["ContactFlowSummaryList"] == []


@pytest.mark.parametrize("action_type", ["MessageParticipant", "GetParticipantInput", "Loop"])
def test_actions_that_take_parameters_may_not_leave_them_out(
    connect: Client, instance_id: str, action_type: str
) -> None:
    document = _export(_store_card(None))
    [card] = [a for a in document["Actions"] if a["Identifier"] == ACTION["card"]]
    card["Type"] = action_type
    del card["Parameters"]
    with pytest.raises(connect.exceptions.InvalidContactFlowException) as raised:
        _flow(connect, instance_id, json.dumps(document))
    assert raised.value.response["problems"] == [
        {"message": f"action {ACTION['card']!r}: Parameters must be an object"}
    ]


def test_modules_end_without_parameters(connect: Client, instance_id: str, keys: Keys) -> None:
    document = _export(_store_card({"EncryptionKeyId": keys.key_id, "Key": keys.certificate}))
    [hang_up] = [a for a in document["Actions"] if a["Identifier"] == ACTION["hang-up"]]
    hang_up["Type"] = "EndFlowModuleExecution"
    content = json.dumps(document)
    module_id = connect.create_contact_flow_module(
        InstanceId=instance_id, Name="Card capture", Content=content
    )["Id"]
    module = connect.describe_contact_flow_module(
        InstanceId=instance_id, ContactFlowModuleId=module_id
    )
    assert module["ContactFlowModule"]["Content"] == content


def test_a_long_problem_is_cut_to_the_models_length(connect: Client, instance_id: str) -> None:
    key_id = "k" * 400  # echoed in the problem; ProblemMessageString allows 256 characters
    content = json.dumps(_export(_store_card({"EncryptionKeyId": key_id, "Key": "$.A.B"})))
    with pytest.raises(connect.exceptions.InvalidContactFlowException) as raised:
        _flow(connect, instance_id, content)
    [problem] = raised.value.response["problems"]
    assert len(problem["message"]) == 256
    assert problem["message"].startswith(f"action {ACTION['card']!r}: EncryptionKeyId 'kkk")


# Every answer against botocore's model


@dataclass(frozen=True)
class Answer:
    """One HTTP answer of the emulator, as botocore received it before parsing."""

    operation: str
    status: int
    headers: dict[str, str]
    body: bytes


@pytest.fixture(scope="module")
def answers(
    sandbox: Sandbox, material_a: KeyMaterial, material_b: KeyMaterial, material_2048: KeyMaterial
) -> list[Answer]:
    """A tour of every supported operation, answered and refused, recorded off the wire."""
    client = _client(sandbox)
    recorded: list[Answer] = []

    def record(operation_model: Any, response_dict: dict[str, Any], **_: Any) -> None:
        recorded.append(
            Answer(
                operation_model.name,
                response_dict["status_code"],
                {k.lower(): v for k, v in response_dict["headers"].items()},
                response_dict["body"],
            )
        )

    client.meta.events.register("before-parse.connect", record)

    def refused(call: Callable[..., Any], **arguments: Any) -> None:
        with pytest.raises(ClientError):
            call(**arguments)

    sandbox.emulator.state.reset()
    c = client
    create = {
        "IdentityManagementType": "CONNECT_MANAGED",
        "InboundCallsEnabled": True,
        "OutboundCallsEnabled": True,
    }
    instance = c.create_instance(InstanceAlias="tour", **create)["Id"]
    c.create_instance(**create)
    refused(c.create_instance, **{**create, "IdentityManagementType": "NOPE"})
    c.list_instances(MaxResults=1)
    refused(c.list_instances, MaxResults=11)
    c.describe_instance(InstanceId=instance)
    refused(c.describe_instance, InstanceId="missing")

    key_a = _associate(c, instance, material_a, ClientToken="tour")
    _associate(c, instance, material_b)
    refused(c.associate_security_key, InstanceId=instance, Key=material_2048.public_key_pem)
    refused(c.associate_security_key, InstanceId=instance, Key=material_a.public_key_pem)
    refused(c.associate_security_key, InstanceId=instance, Key="not a key")
    refused(c.associate_security_key, InstanceId="missing", Key="x")
    c.list_security_keys(InstanceId=instance, MaxResults=1)
    refused(c.list_security_keys, InstanceId=instance, MaxResults=3)
    refused(c.list_security_keys, InstanceId="missing")
    key_b = c.list_security_keys(InstanceId=instance)["SecurityKeys"][1]["AssociationId"]
    c.disassociate_security_key(InstanceId=instance, AssociationId=key_b)
    refused(c.disassociate_security_key, InstanceId=instance, AssociationId="missing")

    good = json.dumps(
        _export(_store_card({"EncryptionKeyId": key_a, "Key": material_a.certificate_pem}))
    )
    bad = json.dumps(_export(_store_card({"EncryptionKeyId": "k" * 400, "Key": "x"})))
    flow = c.create_contact_flow(
        InstanceId=instance, Name="tour", Type="CONTACT_FLOW", Content=good, Description="d"
    )["ContactFlowId"]
    for arguments in ({"Content": bad}, {"Name": "tour"}, {"Type": "NOPE"}, {"InstanceId": "x"}):
        flow_arguments = {
            "InstanceId": instance,
            "Name": "other",
            "Type": "CONTACT_FLOW",
            "Content": good,
            **arguments,
        }
        refused(c.create_contact_flow, **flow_arguments)
    c.list_contact_flows(InstanceId=instance, ContactFlowTypes=["CONTACT_FLOW"])
    refused(c.list_contact_flows, InstanceId=instance, MaxResults=1001)
    c.describe_contact_flow(InstanceId=instance, ContactFlowId=flow)
    refused(c.describe_contact_flow, InstanceId=instance, ContactFlowId="missing")
    c.update_contact_flow_content(InstanceId=instance, ContactFlowId=flow, Content=good)
    refused(c.update_contact_flow_content, InstanceId=instance, ContactFlowId=flow, Content=bad)
    refused(c.update_contact_flow_content, InstanceId=instance, ContactFlowId="x", Content=good)

    module = c.create_contact_flow_module(
        InstanceId=instance, Name="tour", Content=good, Description="PCI"
    )["Id"]
    refused(c.create_contact_flow_module, InstanceId=instance, Name="other", Content=bad)
    refused(c.create_contact_flow_module, InstanceId=instance, Name="tour", Content=good)
    c.list_contact_flow_modules(InstanceId=instance)
    refused(c.list_contact_flow_modules, InstanceId=instance, MaxResults=1001)
    c.describe_contact_flow_module(InstanceId=instance, ContactFlowModuleId=module)
    refused(c.describe_contact_flow_module, InstanceId=instance, ContactFlowModuleId="x")
    c.update_contact_flow_module_content(
        InstanceId=instance, ContactFlowModuleId=module, Content=good
    )
    refused(
        c.update_contact_flow_module_content,
        InstanceId=instance,
        ContactFlowModuleId=module,
        Content=bad,
    )
    refused(
        c.update_contact_flow_module_content,
        InstanceId=instance,
        ContactFlowModuleId="x",
        Content=good,
    )
    sandbox.emulator.state.reset()
    return recorded


def conformance(value: Any, shape: Shape | None, path: str = "$") -> list[str]:
    """What in a JSON value botocore's shape does not allow: a missing required member, a
    member the shape lacks, a wrong type, an enum value, length, range or pattern it refuses."""
    if shape is None:
        return [] if value in ({}, None) else [f"{path}: the operation has no output"]
    kind, meta = shape.type_name, shape.metadata
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        wire = {m.serialization.get("name", name): m for name, m in shape.members.items()}
        problems = [
            f"{path}.{name}: required member missing"
            for name in shape.required_members
            if shape.members[name].serialization.get("name", name) not in value
        ]
        for name, member_value in value.items():
            if name in wire:
                problems += conformance(member_value, wire[name], f"{path}.{name}")
            else:
                problems.append(f"{path}.{name}: not a member of {shape.name}")
        return problems
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        problems = _bounds(len(value), meta, path)
        for index, item in enumerate(value):
            problems += conformance(item, shape.member, f"{path}[{index}]")  # type: ignore[attr-defined]
        return problems
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: not a map"]
        problems = _bounds(len(value), meta, path)
        for key, item in value.items():
            problems += conformance(key, shape.key, f"{path} key")  # type: ignore[attr-defined]
            problems += conformance(item, shape.value, f"{path}[{key!r}]")  # type: ignore[attr-defined]
        return problems
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: not a string"]
        problems = _bounds(len(value), meta, path)
        if "enum" in meta and value not in meta["enum"]:
            problems.append(f"{path}: {value!r} is not one of {shape.name}'s values")
        if "pattern" in meta and re.search(meta["pattern"], value) is None:
            problems.append(f"{path}: {value!r} does not match {meta['pattern']}")
        return problems
    if kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{path}: not an integer"]
        return _bounds(value, meta, path)
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{path}: not a boolean"]
    if kind == "timestamp":
        # REST-JSON's default timestamp format is epoch seconds.
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if number else [f"{path}: not epoch seconds"]
    return [f"{path}: {kind} is not checked"]


def _bounds(size: int, meta: dict[str, Any], path: str) -> list[str]:
    low, high = meta.get("min", size), meta.get("max", size)
    return [] if low <= size <= high else [f"{path}: {size} is outside {low}..{high}"]


def test_conformance_finds_what_the_model_refuses() -> None:
    model = connect_model()
    assert conformance({"Type": "URL"}, model.shape_for("Reference")) == []
    assert conformance({"Value": "v"}, model.shape_for("Reference")) == [
        "$.Type: required member missing"
    ]
    instance = model.shape_for("InstanceSummary")
    assert conformance({"Id": "i", "Extra": 1}, instance) == [
        "$.Extra: not a member of InstanceSummary"
    ]
    assert conformance({"InstanceStatus": "GONE"}, instance) == [
        "$.InstanceStatus: 'GONE' is not one of InstanceStatus's values"
    ]
    assert conformance({"InstanceAlias": "d-x"}, instance)[0].startswith("$.InstanceAlias: 'd-x'")
    assert conformance({"InboundCallsEnabled": "true"}, instance) == [
        "$.InboundCallsEnabled: not a boolean"
    ]
    assert conformance({"CreatedTime": "2026-01-01"}, instance) == [
        "$.CreatedTime: not epoch seconds"
    ]
    problems = model.shape_for("InvalidContactFlowException")
    assert conformance({"problems": [{"message": "m" * 257}]}, problems) == [
        "$.problems[0].message: 257 is outside 1..256"
    ]
    assert conformance({"Id": 7}, model.operation_model("CreateInstance").output_shape) == [
        "$.Id: not a string"
    ]


SUPPORTED = sorted(ConnectState().operations)


def test_the_supported_operations_are_served_where_the_model_says(sandbox: Sandbox) -> None:
    served = {rule.endpoint: rule for rule in sandbox.emulator._routes.iter_rules()}
    assert sorted(served) == SUPPORTED == sorted(sandbox.emulator.operations)
    for name in SUPPORTED:
        model = connect_model().operation_model(name)
        operation = sandbox.emulator.operations[name]
        assert operation == Operation.from_model(name)
        assert served[name].methods is not None and model.http["method"] in served[name].methods
        uri = re.sub(r"<(\w+)>", r"{\1}", served[name].rule)
        assert uri == model.http["requestUri"]


@pytest.mark.parametrize("operation", SUPPORTED)
def test_every_answer_parses_against_the_model(answers: list[Answer], operation: str) -> None:
    model = connect_model().operation_model(operation)
    mine = [answer for answer in answers if answer.operation == operation]
    assert any(a.status == 200 for a in mine), "no successful answer recorded"
    assert any(a.status != 200 for a in mine), "no error answer recorded"
    modelled = {shape.name: shape for shape in model.error_shapes}
    for answer in mine:
        body = json.loads(answer.body) if answer.body else {}
        if answer.status == 200:
            assert conformance(body, model.output_shape) == []
            continue
        code = answer.headers["x-amzn-errortype"]
        assert code in modelled, f"{code} is not an error of {operation}"
        assert answer.status == modelled[code].metadata["error"]["httpStatusCode"]
        # Every error says what went wrong; REST-JSON carries that as Message, which botocore
        # reads into Error.Message for any error, modelled as a member or not.
        assert isinstance(body.get("Message"), str) and body["Message"]
        if "Message" not in modelled[code].members:
            del body["Message"]
        assert conformance(body, modelled[code]) == []
