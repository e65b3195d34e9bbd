"""A managed flow or module that invokes the decrypt function off its `live` alias (unqualified,
$LATEST, a version) is a `flow-invokes-unqualified-decrypt` warning that the report lists; the
alias, another function, a JSONPath or an unset setting are not. It still decrypts, so `verify`
(contacts decrypt, keys are where they must be) passes."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import timedelta

import pytest

from rotator.config import Settings
from rotator.domain.findings import Finding, FindingCode, RunbookName, Severity
from rotator.domain.flows import FlowRef, LambdaInvocation, lambda_invocations
from rotator.domain.lambda_functions import (
    DECRYPT_ALIAS,
    FunctionReference,
    parse_function,
    same_function,
)
from rotator.entrypoints.cli import main
from rotator.sandbox.sample_flows import (
    decrypt_lambda_arn,
    payment_flow_content,
)
from rotator.services.report import EvidenceSources, ReportOptions, make_report
from rotator.services.rotation import RotationService
from rotator.services.verify import InvariantChecker
from tests.conftest import NOW
from tests.fakes import FakeClock, FakeConnect, FakeKeyring, FakeLock, init_payment_instance
from tests.world import KeyPool, World

AT = NOW + timedelta(days=1)
SETTINGS = Settings(keyring_prefix="/unqualified", key_size=2048)
ACCOUNT, REGION = "123456789012", "us-east-1"
NAME = "connect-key-rotator-DecryptFunction-AB12"
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{NAME}"
ALIAS_ARN = f"{FUNCTION_ARN}:{DECRYPT_ALIAS}"
DECRYPT_BLOCK = "decrypt-card"  # the sample flows' Invoke AWS Lambda function block


@dataclass
class Managed:
    """An instance initialised at NOW: its payment flow and module on one key, and the flow's
    decrypt block naming the decrypt function's alias, as after the SnapStart upgrade."""

    keyring: FakeKeyring
    connect: FakeConnect
    lock: FakeLock
    instance_id: str
    flow: FlowRef
    module: FlowRef

    def invoke(self, ref: FlowRef, function: str, block: str = DECRYPT_BLOCK) -> None:
        """A flow author's edit: the block's LambdaFunctionARN."""
        document = json.loads(self.connect.flow_content(self.instance_id, ref))
        (action,) = [a for a in document["Actions"] if a["Identifier"] == block]
        action["Parameters"]["LambdaFunctionARN"] = function
        self.connect.update_flow_content(self.instance_id, ref, json.dumps(document))

    def verify_holds(self) -> bool:
        checker = InvariantChecker(self.keyring, self.connect, self.lock)
        return all(check.ok for check in checker.check(None, AT))

    def report_findings(self, setting: str | None) -> list[Finding]:
        evidence = EvidenceSources(decrypt_function=setting)
        report = make_report(
            self.keyring, self.connect, self.lock, ReportOptions(), AT, evidence=evidence
        )
        return [
            f for f in report.findings if f.code is FindingCode.FLOW_INVOKES_UNQUALIFIED_DECRYPT
        ]


@pytest.fixture
def managed(key_pool: KeyPool) -> Managed:
    keyring, connect, clock = FakeKeyring(), FakeConnect(), FakeClock(NOW)
    lock = FakeLock(clock.now)
    service = RotationService(
        keyring, connect, lock, SETTINGS, actor="test", generate=key_pool.generator()
    )
    made = init_payment_instance(service, connect, NOW, lambda_arn=ALIAS_ARN)
    return Managed(keyring, connect, lock, made.instance_id, made.flow, made.module)


# What a block off the alias costs, by what it names instead.
IMPACT = {
    "unqualified": "without SnapStart or the provisioned concurrency, through the invoke "
    "permission on the unqualified function",
    "$LATEST": "Connect runs $LATEST, without SnapStart",
    "version": "a fixed version that deployments do not update",
    "alias": f"not the {DECRYPT_ALIAS} alias, which the template deploys to",
}


# -- the finding ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("invoked", "setting", "described"),
    [
        (FUNCTION_ARN, NAME, "unqualified"),
        (f"{FUNCTION_ARN}:$LATEST", NAME, "$LATEST"),
        (f"{FUNCTION_ARN}:7", NAME, "version 7"),
        (f"{FUNCTION_ARN}:staging", NAME, "alias staging"),
        # The setting as a full ARN, a partial ARN, or the alias ARN itself (the stack output).
        (FUNCTION_ARN, FUNCTION_ARN, "unqualified"),
        (FUNCTION_ARN, f"{ACCOUNT}:function:{NAME}", "unqualified"),
        (FUNCTION_ARN, ALIAS_ARN, "unqualified"),
        # A flow naming the function by its bare name.
        (NAME, NAME, "unqualified"),
        (NAME, FUNCTION_ARN, "unqualified"),
    ],
    ids=[
        "unqualified",
        "latest",
        "version",
        "other-alias",
        "setting-arn",
        "setting-partial-arn",
        "setting-alias-arn",
        "bare-name",
        "bare-name-setting-arn",
    ],
)
def test_a_flow_off_the_alias_is_a_warning_the_report_lists_and_verify_passes(
    managed: Managed, invoked: str, setting: str, described: str
) -> None:
    managed.invoke(managed.flow, invoked)

    (finding,) = managed.report_findings(setting)  # the module still names the alias
    assert finding.code is FindingCode.FLOW_INVOKES_UNQUALIFIED_DECRYPT
    assert finding.severity is Severity.WARNING
    assert finding.rule.runbook is RunbookName.DECRYPT_FAILURES
    assert finding.instance_id == managed.instance_id and finding.key_id is None
    assert f"{managed.flow} block {DECRYPT_BLOCK}" in finding.message
    assert f"{invoked} ({described})" in finding.message
    assert IMPACT[described.split()[0]] in finding.message
    assert f"{DECRYPT_ALIAS} alias" in finding.rule.title
    assert managed.verify_holds()  # it still decrypts


def test_the_finding_names_the_alias_arn_to_point_the_block_at(managed: Managed) -> None:
    managed.invoke(managed.module, f"{FUNCTION_ARN}:$LATEST")
    (finding,) = managed.report_findings(NAME)
    assert str(managed.module) in finding.message
    assert f"point the block at the alias ARN {ALIAS_ARN} " in finding.message


def test_each_block_off_the_alias_is_its_own_finding(managed: Managed) -> None:
    managed.invoke(managed.flow, FUNCTION_ARN)
    managed.invoke(managed.module, f"{FUNCTION_ARN}:3")
    found = managed.report_findings(NAME)
    assert len(found) == 2
    assert {str(managed.flow) in f.message for f in found} == {True, False}


# -- no finding ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("invoked", "setting"),
    [
        (ALIAS_ARN, NAME),
        (ALIAS_ARN, FUNCTION_ARN),
        (f"{NAME}:{DECRYPT_ALIAS}", NAME),
        # Another function, by name, and the same name in another account or region.
        (f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:charge-card", NAME),
        (f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{NAME}-old", NAME),
        (f"arn:aws:lambda:{REGION}:210987654321:function:{NAME}", FUNCTION_ARN),
        (f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:{NAME}", FUNCTION_ARN),
        (f"arn:aws:lambda:{REGION}:210987654321:function:{NAME}", f"{ACCOUNT}:function:{NAME}"),
        # A JSONPath: the function is known only when the flow runs.
        ("$.Attributes.DecryptFunction", NAME),
        ("$.External.DecryptFunctionArn", FUNCTION_ARN),
    ],
    ids=[
        "alias-arn",
        "alias-arn-setting-arn",
        "alias-by-name",
        "another-function",
        "a-longer-name",
        "another-account",
        "another-region",
        "another-account-partial-setting",
        "dynamic",
        "dynamic-external",
    ],
)
def test_no_finding_for_the_alias_another_function_or_a_jsonpath(
    managed: Managed, invoked: str, setting: str
) -> None:
    managed.invoke(managed.flow, invoked)
    assert managed.report_findings(setting) == []


def test_without_the_setting_nothing_is_judged(managed: Managed) -> None:
    managed.invoke(managed.flow, FUNCTION_ARN)
    managed.invoke(managed.module, f"{FUNCTION_ARN}:$LATEST")
    assert managed.report_findings(None) == []
    assert len(managed.report_findings(NAME)) == 2  # with it, both blocks are findings


def test_an_unmanaged_flow_is_not_read(managed: Managed) -> None:
    """Only managed flows and modules are read (one read each): another flow is not judged."""
    managed.connect.create_flow(
        managed.instance_id, payment_flow_content(None, None, lambda_arn=FUNCTION_ARN)
    )
    assert managed.report_findings(NAME) == []


# -- the parts ------------------------------------------------------------------------------------


def test_the_flow_language_invocations_are_read_in_order_with_jsonpaths_kept() -> None:
    document = json.loads(payment_flow_content(None, None, lambda_arn=FUNCTION_ARN))
    document["Actions"].append(
        {
            "Identifier": "lookup",
            "Type": "InvokeLambdaFunction",
            "Parameters": {"LambdaFunctionARN": " $.Attributes.Lookup "},
            "Transitions": {},
        }
    )
    document["Actions"].append(
        {
            "Identifier": "no-arn",
            "Type": "InvokeLambdaFunction",
            "Parameters": {},
            "Transitions": {},
        }
    )
    found = lambda_invocations(json.dumps(document))
    assert found == [
        LambdaInvocation(DECRYPT_BLOCK, FUNCTION_ARN),
        LambdaInvocation("lookup", "$.Attributes.Lookup"),
    ]
    assert [i.dynamic for i in found] == [False, True]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (NAME, FunctionReference(NAME, NAME)),
        (f"{NAME}:live", FunctionReference(NAME, NAME, qualifier="live")),
        (
            f"{ACCOUNT}:function:{NAME}:$LATEST",
            FunctionReference(f"{ACCOUNT}:function:{NAME}", NAME, ACCOUNT, qualifier="$LATEST"),
        ),
        (FUNCTION_ARN, FunctionReference(FUNCTION_ARN, NAME, ACCOUNT, REGION)),
        (f"{FUNCTION_ARN}:12", FunctionReference(FUNCTION_ARN, NAME, ACCOUNT, REGION, "12")),
        (
            f"arn:aws-us-gov:lambda:us-gov-west-1:{ACCOUNT}:function:{NAME}",
            FunctionReference(
                f"arn:aws-us-gov:lambda:us-gov-west-1:{ACCOUNT}:function:{NAME}",
                NAME,
                ACCOUNT,
                "us-gov-west-1",
            ),
        ),
        ("$.Attributes.Function", None),
        (f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{NAME}", None),
        (f"{FUNCTION_ARN}:live:extra", None),
        ("", None),
    ],
)
def test_a_function_is_a_name_a_partial_or_a_full_arn(
    text: str, expected: FunctionReference | None
) -> None:
    assert parse_function(text) == expected


def test_functions_compare_by_name_and_by_account_and_region_where_both_give_them() -> None:
    def same(a: str, b: str) -> bool:
        left, right = parse_function(a), parse_function(b)
        assert left is not None and right is not None
        return same_function(left, right) and same_function(right, left)

    assert same(NAME, FUNCTION_ARN) and same(f"{ACCOUNT}:function:{NAME}", ALIAS_ARN)
    assert not same(NAME, f"{FUNCTION_ARN}-2")
    assert not same(f"210987654321:function:{NAME}", FUNCTION_ARN)
    assert not same(f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:{NAME}", FUNCTION_ARN)
    assert same(f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:{NAME}", f"{ACCOUNT}:function:{NAME}")


# -- on the wire: `rotator verify` and `rotator report` over the sandbox --------------------------


def test_rotator_verify_and_report_on_the_sandbox_name_the_module_off_the_alias(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox's flows name the placeholder decrypt Lambda's alias; a module repointed to
    $LATEST is the report's finding, read through the Connect API, and verify still passes."""
    world.init(NOW)
    unqualified = decrypt_lambda_arn(ACCOUNT, REGION).removesuffix(f":{DECRYPT_ALIAS}")
    document = json.loads(world.module_content())
    (action,) = [a for a in document["Actions"] if a["Identifier"] == DECRYPT_BLOCK]
    action["Parameters"]["LambdaFunctionARN"] = f"{unqualified}:$LATEST"
    world.connect.update_contact_flow_module_content(
        InstanceId=world.instance_id,
        ContactFlowModuleId=world.module_id,
        Content=json.dumps(document),
    )
    code = FindingCode.FLOW_INVOKES_UNQUALIFIED_DECRYPT.value

    monkeypatch.setenv("ROTATOR_DECRYPT_FUNCTION", "connect-decrypt")
    out = io.StringIO()
    assert main(["verify", "--json"], out) == 0, out.getvalue()

    out = io.StringIO()
    assert main(["report", "--format", "json"], out) == 0, out.getvalue()
    (listed,) = [f for f in json.loads(out.getvalue())["findings"] if f["code"] == code]
    assert listed["severity"] == "warning" and listed["runbook"] == "decrypt-failures"
    assert f"module {world.module_id} block {DECRYPT_BLOCK}" in listed["message"]
    assert f"{unqualified}:$LATEST ($LATEST)" in listed["message"]
