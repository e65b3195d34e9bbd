"""Fleet mode scans each member's decrypt function (PCI DSS 3.5/3.6: no key copy outside the
keyring): through the member's own role, by the name its account entry gives (default: the
member template's), each section says which variables hold a private key (names, never values),
or why the function could not be read ("function not found", "access denied"); one function
that cannot be read never costs the section nor the fleet's report."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from lambda_decrypt.logs import configure_logging
from rotator.config import Settings
from rotator.domain.checks import ReportOptions
from rotator.domain.findings import FindingCode
from rotator.domain.fleet import MEMBER_DECRYPT_FUNCTION, Account, Partition
from rotator.domain.key_protection import FunctionEnvironment
from rotator.domain.keys import KeyMaterial
from rotator.domain.rotation import ManagedInstance
from rotator.entrypoints import cli
from rotator.entrypoints.bootstrap import assumed_role_session, build_account_adapters
from rotator.errors import AwsCallError
from rotator.exit_codes import ExitCode
from rotator.services.crypto_architecture import EvidenceSources
from rotator.services.fleet_report import (
    FleetReport,
    PartitionSources,
    build_fleet_report,
    make_fleet_report,
)
from rotator.services.fleet_report_render import render_fleet
from rotator.services.report_render import ReportFormat
from tests.conftest import NOW, REGION
from tests.fakes import FakeFunctionEnvironments, HeldKeys
from tests.test_fleet_report import PARTITIONS, fake_partition, validate

PROD_EU, PROD_DE, TEST_EU, TEST_US = PARTITIONS
VARIABLE = "CONNECT_PRIVATE_KEY"


def pem_lines(pem: str) -> list[str]:
    """Every line of a PEM: any one of them anywhere is a leak."""
    return [line for line in pem.splitlines() if line.strip()]


def assert_no_key_text(text: str, pem: str) -> None:
    assert "PRIVATE KEY-----" not in text
    leaked = [line for line in pem_lines(pem) if line in text]
    assert leaked == []


@dataclass
class DeniedFunctions:
    """A member role whose policy does not allow lambda:GetFunctionConfiguration (as the
    adapter reports it: the call, the function, AWS's error code; no value)."""

    def private_key_variables(self, function_name: str) -> FunctionEnvironment:
        call = "lambda:GetFunctionConfiguration"
        raise AwsCallError(call, function_name, "AccessDeniedException")


@dataclass
class CrashingFunctions:
    """A port failing in a way nobody planned for, its message holding key text."""

    pem: str

    def private_key_variables(self, function_name: str) -> FunctionEnvironment:
        raise RuntimeError(f"boom {self.pem}")


def with_function(source: PartitionSources, functions: Any, name: str) -> PartitionSources:
    return replace(source, evidence=EvidenceSources(functions=functions, decrypt_function=name))


def decrypt_status(report: FleetReport, partition: Partition) -> dict[str, Any]:
    (section,) = [
        s
        for s in report.to_dict()["partitions"]
        if (s["account"], s["region"]) == (partition.account, partition.region)
    ]
    status: dict[str, Any] = section["report"]["cryptographic_architecture"]["decrypt_function"]
    return status


def copy_messages(report: FleetReport, partition: Partition) -> list[str]:
    (section,) = [s for s in report.sections if s.partition == partition]
    assert section.report is not None
    return [f.message for f in section.report.findings if f.code is FindingCode.PRIVATE_KEY_COPY]


@pytest.fixture
def fleet_with_functions(
    material_2048: KeyMaterial, material_a: KeyMaterial
) -> dict[Partition, PartitionSources]:
    """prod/eu-west-2: PEM in an environment variable; prod/eu-central-1: clean; test/eu-west-2:
    no such function; test/us-east-1: the member role may not read it."""
    pem = material_a.private_key_pem
    clean = {"KEYRING_PREFIX": "/connect-keys", "CERTIFICATE": material_a.certificate_pem}
    leaky = FakeFunctionEnvironments({MEMBER_DECRYPT_FUNCTION: {**clean, VARIABLE: pem}})
    sources = {p: fake_partition(p, material_2048, instances=1) for p in PARTITIONS}
    return {
        PROD_EU: with_function(sources[PROD_EU], leaky, MEMBER_DECRYPT_FUNCTION),
        PROD_DE: with_function(
            sources[PROD_DE],
            FakeFunctionEnvironments({MEMBER_DECRYPT_FUNCTION: clean}),
            MEMBER_DECRYPT_FUNCTION,
        ),
        TEST_EU: with_function(
            sources[TEST_EU], FakeFunctionEnvironments({}), MEMBER_DECRYPT_FUNCTION
        ),
        TEST_US: with_function(sources[TEST_US], DeniedFunctions(), "payments-test-decrypt"),
    }


def test_each_section_says_what_its_own_decrypt_function_holds_or_why_it_was_not_read(
    fleet_with_functions: dict[Partition, PartitionSources], material_a: KeyMaterial
) -> None:
    report = make_fleet_report(fleet_with_functions, ReportOptions(), NOW)
    assert report.unreadable == ()  # a function that cannot be read costs no section
    assert [f.finding.code for f in report.findings] == []

    leaky = decrypt_status(report, PROD_EU)
    assert (leaky["checked"], leaky["private_key_variables"]) == (True, [VARIABLE])
    assert leaky["status"] == f"{MEMBER_DECRYPT_FUNCTION}: private key text in {VARIABLE}"
    assert copy_messages(report, PROD_EU) == [
        f"environment variable {VARIABLE} of the decrypt function {MEMBER_DECRYPT_FUNCTION} "
        "holds a private key: the keyring is its one home; remove the variable"
    ]

    clean = decrypt_status(report, PROD_DE)
    assert (clean["checked"], clean["private_key_variables"]) == (True, [])
    assert clean["status"] == (
        f"{MEMBER_DECRYPT_FUNCTION}: no environment variable holds a private key"
    )
    for partition in (PROD_DE, TEST_EU, TEST_US):
        assert copy_messages(report, partition) == []  # the copy is prod/eu-west-2's alone

    missing = decrypt_status(report, TEST_EU)
    assert (missing["checked"], missing["function"]) == (False, MEMBER_DECRYPT_FUNCTION)
    assert missing["status"] == (
        f"not checked: {MEMBER_DECRYPT_FUNCTION} could not be read: function not found"
    )
    denied = decrypt_status(report, TEST_US)
    assert (denied["checked"], denied["function"]) == (False, "payments-test-decrypt")
    assert denied["status"] == (
        "not checked: payments-test-decrypt could not be read: access denied "
        "(lambda:GetFunctionConfiguration: AccessDeniedException)"
    )
    validate(report.to_dict())

    rendered = {fmt: render_fleet(report, fmt) for fmt in ReportFormat}
    for text in rendered.values():
        assert_no_key_text(text, material_a.private_key_pem)
    assert VARIABLE in rendered[ReportFormat.JSON] and VARIABLE in rendered[ReportFormat.HTML]
    assert VARIABLE in rendered[ReportFormat.MD]  # the section's finding names it
    html = rendered[ReportFormat.HTML]
    for status in (leaky, clean, missing, denied):
        assert f"Decrypt function: {status['status']}" in html.replace("&#39;", "'")


def test_a_crashing_scan_is_said_by_its_type_and_the_section_stands(
    material_2048: KeyMaterial, material_a: KeyMaterial
) -> None:
    pem = material_a.private_key_pem
    source = with_function(
        fake_partition(PROD_EU, material_2048, instances=1),
        CrashingFunctions(pem),
        MEMBER_DECRYPT_FUNCTION,
    )
    report = make_fleet_report({PROD_EU: source}, ReportOptions(), NOW)
    (section,) = report.sections
    assert section.report is not None and section.error is None
    assert section.decrypt_function == (
        f"not checked: {MEMBER_DECRYPT_FUNCTION} could not be read: unexpected RuntimeError"
    )
    for fmt in ReportFormat:
        assert_no_key_text(render_fleet(report, fmt), pem)


def test_an_unread_section_has_no_decrypt_function_line() -> None:
    report = build_fleet_report({PROD_EU: "sts:AssumeRole: AccessDenied"}, ReportOptions(), NOW)
    (section,) = report.sections
    assert section.decrypt_function is None
    assert "Decrypt function:" not in render_fleet(report, ReportFormat.HTML)


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        ("ResourceNotFoundException", 404, "function not found"),
        (
            "AccessDeniedException",
            403,
            "access denied (lambda:GetFunctionConfiguration: AccessDeniedException)",
        ),
        (
            "TooManyRequestsException",
            429,
            f"lambda:GetFunctionConfiguration failed for {MEMBER_DECRYPT_FUNCTION}: "
            "TooManyRequestsException",
        ),
    ],
)
def test_lambdas_answers_become_the_sections_reason(
    material_2048: KeyMaterial, code: str, status: int, reason: str
) -> None:
    """The adapter over botocore (Lambda's own error codes): what the member role's policy or
    a missing function answers is said in those words."""
    from rotator.adapters.evidence_reads import LambdaFunctionEnvironments

    client = boto3.client(
        "lambda",
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with Stubber(client) as stub:
        stub.add_client_error(
            "get_function_configuration",
            service_error_code=code,
            http_status_code=status,
            expected_params={"FunctionName": MEMBER_DECRYPT_FUNCTION},
        )
        source = with_function(
            fake_partition(PROD_EU, material_2048, instances=1),
            LambdaFunctionEnvironments(client),
            MEMBER_DECRYPT_FUNCTION,
        )
        report = make_fleet_report({PROD_EU: source}, ReportOptions(), NOW)
        stub.assert_no_pending_responses()
    (section,) = report.sections
    assert section.decrypt_function == (
        f"not checked: {MEMBER_DECRYPT_FUNCTION} could not be read: {reason}"
    )


# -- over moto: each member's function read through its assumed role ------------------------------

PROD = Account("prod", "arn:aws:iam::111111111111:role/member", "ext-prod", (REGION,))
TEST = Account(
    "test",
    "arn:aws:iam::222222222222:role/member",
    "ext-test",
    (REGION, "eu-west-2"),
    decrypt_function="payments-test-decrypt",
)
INSTANCE = "aaaaaaaa-1111-4222-8333-444444444444"


def create_function(account: Account, region: str, variables: dict[str, str]) -> str:
    """The member's decrypt function, made in its account and region (moto keeps each account's
    Lambda apart, by the assumed role's credentials): its ARN."""
    session = assumed_role_session(account, region)
    role = session.client("iam").create_role(
        RoleName=f"decrypt-{region}", AssumeRolePolicyDocument="{}"
    )["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return {}\n")
    created = session.client("lambda", region_name=region).create_function(
        FunctionName=account.decrypt_function,
        Runtime="python3.12",
        Role=role,
        Handler="handler.handler",
        Code={"ZipFile": code.getvalue()},
        Environment={"Variables": variables},
    )
    return str(created["FunctionArn"])


@pytest.fixture
def member_fleet(monkeypatch: pytest.MonkeyPatch, aws: None) -> Iterator[Settings]:
    monkeypatch.setenv("ROTATOR_ACCOUNTS", json.dumps([PROD.to_dict(), TEST.to_dict()]))
    settings = Settings.load()
    for account, region in ((PROD, REGION), (TEST, REGION), (TEST, "eu-west-2")):
        build_account_adapters(settings, account, region).keyring.put_instance(
            ManagedInstance(INSTANCE, (), ())
        )
    real = cli.build_fleet_adapters

    def no_connect(*args: Any, **kwargs: Any) -> Any:
        # moto has no Connect security keys: each partition's Connect holds none.
        return {p: replace(a, connect=HeldKeys()) for p, a in real(*args, **kwargs).items()}

    monkeypatch.setattr(cli, "build_fleet_adapters", no_connect)
    yield settings


def _report(*argv: str) -> str:
    out = io.StringIO()
    code = cli.main(["report", *argv], out)
    assert code == ExitCode.OK, out.getvalue()
    return out.getvalue()


def test_over_moto_the_pem_in_one_members_function_is_that_partitions_alone(
    member_fleet: Settings,
    material_a: KeyMaterial,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """prod (us-east-1): PEM in the default-named function's environment; test (us-east-1):
    a clean function under the name its entry gives; test (eu-west-2): none deployed. The
    central account has no function at all: what is found was read through each member role."""
    pem = material_a.private_key_pem
    base = {"KEYRING_PREFIX": "/connect-keys", "RESPONSE_MODE": "plaintext"}
    prod_arn = create_function(PROD, REGION, {**base, VARIABLE: pem})
    test_arn = create_function(TEST, REGION, base)
    assert ":111111111111:" in prod_arn and ":222222222222:" in test_arn
    central = boto3.client("lambda", region_name=REGION).list_functions()["Functions"]
    assert central == []

    # From here on, everything the report run writes, logs at DEBUG included (the project's
    # logging: botocore's wire logs stay at WARNING, lambda_decrypt.logs.QUIET_LIBRARIES).
    capfd.readouterr()
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    configure_logging("DEBUG", force=True)
    try:
        output = _report("--format", "json")
        html = _report("--format", "html")
        markdown = _report("--format", "md")
        csv = _report("--format", "csv")
    finally:
        configure_logging("INFO", force=True)
    sections = {(s["account"], s["region"]): s["report"] for s in json.loads(output)["partitions"]}
    statuses = {k: v["cryptographic_architecture"]["decrypt_function"] for k, v in sections.items()}
    assert statuses[("prod", REGION)] == {
        "function": MEMBER_DECRYPT_FUNCTION,
        "function_arn": prod_arn,
        "checked": True,
        "private_key_variables": [VARIABLE],
        "status": f"{MEMBER_DECRYPT_FUNCTION}: private key text in {VARIABLE}",
    }
    assert statuses[("test", REGION)] == {
        "function": "payments-test-decrypt",
        "function_arn": test_arn,
        "checked": True,
        "private_key_variables": [],
        "status": "payments-test-decrypt: no environment variable holds a private key",
    }
    assert statuses[("test", "eu-west-2")]["checked"] is False
    assert statuses[("test", "eu-west-2")]["status"] == (
        "not checked: payments-test-decrypt could not be read: function not found"
    )
    copies = {
        k: [f["message"] for f in v["findings"] if f["code"] == "private-key-copy"]
        for k, v in sections.items()
    }
    assert copies == {
        ("prod", REGION): [
            f"environment variable {VARIABLE} of the decrypt function "
            f"{MEMBER_DECRYPT_FUNCTION} holds a private key: the keyring is its one home; "
            "remove the variable"
        ],
        ("test", REGION): [],
        ("test", "eu-west-2"): [],
    }

    assert f"Decrypt function: {MEMBER_DECRYPT_FUNCTION}: private key text in {VARIABLE}" in html
    captured = capfd.readouterr()
    records = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    everything = "\n".join([output, html, markdown, csv, captured.out, captured.err, records])
    assert_no_key_text(everything, pem)
