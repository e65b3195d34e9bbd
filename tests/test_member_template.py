"""deploy/member.yaml, the member account's stack (fleet mode): cfn-lint clean, StackSets-ready
(nothing account-specific), and least privilege across the account boundary: only the central
rotator role (and listed operators) with the external ID may assume the member role; the role
may do what the rotator's commands call on this account's keyring prefix, KMS key and Connect
instances, and nothing else; its decrypt Lambda is the main template's, SnapStart versions behind
the `live` alias included, which Connect invokes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rotator.domain.fleet import FUNCTION_NAME, MEMBER_DECRYPT_FUNCTION
from rotator.domain.lambda_functions import DECRYPT_ALIAS, parse_function, same_function
from rotator.entrypoints.bootstrap import MEMBER_KEYRING_KEY_ALIAS, ROLE_SESSION_NAME
from tests.cfn_policy import (
    ACCOUNT,
    BLOG,
    DECRYPT_FUNCTION_ARN,
    INSTANCE_ARN,
    KEY,
    KEY_ARN,
    OPERATOR_COMMANDS,
    REGION,
    ROTATION,
    Request,
    Stack,
    create,
    decide,
    kms,
    load_template,
    overwrite,
    resources,
    ssm,
)

ROOT = Path(__file__).resolve().parents[1]
MEMBER = ROOT / "deploy" / "member.yaml"
CENTRAL_ROLE = "arn:aws:iam::999988887777:role/connect-key-rotator-RotatorRole-AB12"
OPERATOR = "arn:aws:iam::999988887777:role/connect-key-operators"
EXTERNAL_ID = "fleet-external-id-0123"
PARAMETERS = {
    "CentralRotatorRoleArn": CENTRAL_ROLE,
    "ExternalId": EXTERNAL_ID,
    "DecryptCodeBucket": "connect-key-rotator-artifacts",
    "ConnectInstanceArns": "",
    "CentralOperatorRoleArns": "",
    # As CloudFormation hands it to conditions: a Ref of a Number parameter is a string.
    "DecryptProvisionedConcurrency": "0",
}
MEMBER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/connect-key-rotator-member-{REGION}"
# What the central rotator does in a member account: the rotation job, and the commands an
# operator runs through it (`rotator init --account NAME`, verify, report, ...). Adopting the
# blog's parameters (import --from-blog-parameters) is done in the account, not through it.
COMMANDS = ("init", "rotate", "verify", "status", "report", "retire", "destroy", "rollback")
# The member's decrypt function is named (DecryptFunctionName), where the main template's has a
# generated name: the fleet report reads it by the name the account's entry gives.
MEMBER_FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{MEMBER_DECRYPT_FUNCTION}"
MEMBER_ALIAS_ARN = f"{MEMBER_FUNCTION_ARN}:{DECRYPT_ALIAS}"
VERSION = "7"  # the number Lambda gave the version DecryptVersion published


class MemberStack(Stack):
    """The member template resolved as CloudFormation would: its function is named (Ref: the
    name, Arn: by the name), Ref of its version is the version ARN and GetAtt Version the
    number, Ref of its alias the alias ARN (with the template's alias name)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        name = self.values["DecryptFunctionName"]
        function = f"arn:aws:lambda:{self.region}:{self.account}:function:{name}"
        alias = resources(self.template)["DecryptAlias"]["Properties"]["Name"]
        self.physical_ids = {
            **self.physical_ids,
            "DecryptFunction": (name, function),
            "DecryptVersion": (f"{function}:{VERSION}", None),
            "DecryptAlias": (f"{function}:{self.resolve(alias)}", None),
        }

    def _function(self, function: str, argument: Any) -> Any:
        if function == "Fn::GetAtt" and list(argument) == ["DecryptVersion", "Version"]:
            return VERSION
        return super()._function(function, argument)


@pytest.fixture(scope="module")
def member() -> dict[str, Any]:
    return load_template(MEMBER)


@pytest.fixture(scope="module")
def stack(member: dict[str, Any]) -> Stack:
    return MemberStack(member, PARAMETERS)


def _as_member(request: Request) -> Request:
    # The commands' report reads the main stack's decrypt function; here it is the member's.
    resource = MEMBER_FUNCTION_ARN if request.resource == DECRYPT_FUNCTION_ARN else request.resource
    return Request(request.action, resource, request.context, MEMBER_ROLE)


def _member(stack: Stack, request: Request) -> str:
    return decide(stack.role_policies("MemberRole"), _as_member(request))


@pytest.mark.wire
def test_cfn_lint_reports_nothing() -> None:
    """Exit 0: no error, no warning (as tests/test_deploy_template.py runs it on the template)."""
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run(
        [str(cfn_lint), str(MEMBER)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_the_central_rotator_with_the_external_id_may_assume_the_member_role(
    stack: Stack, member: dict[str, Any]
) -> None:
    role = stack.resource("MemberRole")["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust == {
        "Sid": "CentralRotatorWithTheExternalId",
        "Effect": "Allow",
        "Principal": {"AWS": CENTRAL_ROLE},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}},
    }
    with_operators = MemberStack(member, {**PARAMETERS, "CentralOperatorRoleArns": OPERATOR})
    (trust,) = with_operators.resource("MemberRole")["Properties"]["AssumeRolePolicyDocument"][
        "Statement"
    ]
    assert trust["Principal"] == {"AWS": [CENTRAL_ROLE, OPERATOR]}
    assert trust["Condition"] == {"StringEquals": {"sts:ExternalId": EXTERNAL_ID}}
    assert member["Parameters"]["ExternalId"]["NoEcho"] is True
    # The role is named per region, as the accounts' role_arn names it with {region}.
    assert role["RoleName"] == f"connect-key-rotator-member-{REGION}"
    assert role["MaxSessionDuration"] == 3600
    assert ROLE_SESSION_NAME  # the central rotator's sessions name it (CloudTrail here)


def _allow_statements(stack: Stack, member: dict[str, Any]) -> list[dict[str, Any]]:
    statements = [
        s for role in ("MemberRole", "DecryptRole") for s in stack.role_policies(role)
    ] + stack.key_policy()
    assert statements
    return statements


def test_no_wildcard_action_anywhere(stack: Stack, member: dict[str, Any]) -> None:
    for statement in _allow_statements(stack, member):
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        assert not [a for a in actions if "*" in a], statement


def test_keyring_rights_stay_under_the_prefix_and_connect_in_this_account(stack: Stack) -> None:
    keyring = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/connect-keys/"
    for statement in stack.role_policies("MemberRole"):
        resources_ = (
            statement["Resource"]
            if isinstance(statement["Resource"], list)
            else [statement["Resource"]]
        )
        actions = json.dumps(statement["Action"]).lower()
        if statement["Action"] == "ssm:DescribeParameters":
            # No resource-level permission exists for it; it returns metadata, never a value.
            assert resources_ == ["*"]
        elif "ssm:" in actions:
            assert all(r.startswith(keyring) for r in resources_), statement
        elif "connect:" in actions:
            assert all(
                r.startswith(f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/") for r in resources_
            )
        elif statement.get("Sid") == "ReportEvidence":
            # Metadata of this account's own keyring key and decrypt function, nothing else.
            assert sorted(statement["Action"]) == [
                "kms:DescribeKey",
                "lambda:GetFunctionConfiguration",
            ]
            assert resources_ == [KEY_ARN, MEMBER_FUNCTION_ARN]
        elif "kms:" in actions:
            assert resources_ == [KEY_ARN]
            assert statement["Condition"]["StringEquals"] == {
                "kms:ViaService": f"ssm.{REGION}.amazonaws.com"
            }
        else:
            raise AssertionError(f"unexpected statement {statement}")
    outside = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/other-app/password"
    for action in ("GetParameter", "GetParameters", "PutParameter", "DeleteParameter"):
        assert _member(stack, Request(f"ssm:{action}", outside)) == "implicit deny"
    other = f"arn:aws:connect:{REGION}:444455556666:instance/0b2c3d4e-0000-4000-8000-000000000009"
    assert _member(stack, Request("connect:AssociateSecurityKey", other)) == "implicit deny"


@pytest.mark.parametrize("command", COMMANDS)
def test_the_member_role_may_make_every_call_of_the_rotators_commands(
    stack: Stack, command: str
) -> None:
    refused = [r for r in OPERATOR_COMMANDS[command] if _member(stack, r) != "allow"]
    assert refused == []


def test_the_member_role_never_overwrites_private_keys_nor_reads_the_blogs(stack: Stack) -> None:
    assert _member(stack, overwrite(f"/keys/{KEY}/private-key")) == "deny"
    assert _member(stack, overwrite(f"/staging/{ROTATION}/private-key")) == "deny"
    assert _member(stack, create(f"/keys/{KEY}/private-key")) == "allow"
    assert _member(stack, ssm("DeleteParameter", f"/keys/{KEY}/metadata")) == "deny"
    blog = Request("ssm:GetParameters", f"{BLOG}/CONNECT_INPUT_DECRYPTION_KEY")
    assert _member(stack, blog) == "implicit deny"
    # The key only through SSM, only for private keys.
    assert _member(stack, kms("Decrypt", f"/keys/{KEY}/private-key")) == "allow"
    assert _member(stack, kms("Decrypt", f"/keys/{KEY}/metadata")) == "implicit deny"
    direct = Request("kms:Decrypt", KEY_ARN)
    assert _member(stack, direct) == "implicit deny"


def test_only_the_two_roles_use_the_members_key(stack: Stack) -> None:
    users = {}
    for statement in stack.key_policy():
        actions = (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        used = {a for a in actions if a in ("kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey")}
        if used:
            users[statement["Principal"]["AWS"]] = used
            assert statement["Condition"]["StringEquals"] == {
                "kms:ViaService": f"ssm.{REGION}.amazonaws.com"
            }
    decrypt_role = stack.physical_ids["DecryptRole"][1]
    assert users == {
        decrypt_role: {"kms:Decrypt"},
        MEMBER_ROLE: {"kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"},
    }
    alias = stack.resource("KeyringKeyAlias")["Properties"]
    assert alias["AliasName"] == MEMBER_KEYRING_KEY_ALIAS


def test_nothing_account_specific_is_hard_coded() -> None:
    text = MEMBER.read_text()
    assert not re.findall(r"\b\d{12}\b", text.replace("[0-9]{12}", ""))
    assert not re.findall(r"\b[a-z]{2}-[a-z]+-\d\b", text)  # no region name
    assert "arn:aws:" not in text  # partitions through ${AWS::Partition}


def test_the_decrypt_lambda_is_the_main_templates(member: dict[str, Any]) -> None:
    main = load_template()
    mine, theirs = resources(member), resources(main)
    for name in ("DecryptRole", "DecryptKeyringKeyPolicy", "DecryptLogGroup"):
        assert mine[name]["Properties"] == theirs[name]["Properties"], name
    function, original = (
        mine["DecryptFunction"]["Properties"],
        theirs["DecryptFunction"]["Properties"],
    )
    for key in (
        "Handler",
        "Timeout",
        "MemorySize",
        "LoggingConfig",
        "Environment",
        "Role",
        "Description",
        "SnapStart",
    ):
        assert function[key] == original[key], key
    # SnapStart and provisioned concurrency decided as the main template decides them.
    for section, name in (
        ("Parameters", "DecryptProvisionedConcurrency"),
        ("Conditions", "DecryptHasProvisionedConcurrency"),
    ):
        assert member[section][name] == main[section][name], name
    runtime = main["Globals"]["Function"]
    assert (function["Runtime"], function["Architectures"]) == (
        runtime["Runtime"],
        runtime["Architectures"],
    )
    permission = MemberStack(member, PARAMETERS).resource("ConnectInvokesDecrypt")["Properties"]
    assert permission["Principal"] == "connect.amazonaws.com"
    assert permission["SourceAccount"] == ACCOUNT
    assert permission["SourceArn"] == f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/*"
    listed = MemberStack(member, {**PARAMETERS, "ConnectInstanceArns": INSTANCE_ARN})
    (keys,) = [s for s in listed.role_policies("MemberRole") if s.get("Sid") == "SecurityKeys"]
    assert keys["Resource"] == [INSTANCE_ARN]


# -- the decrypt function the fleet report scans (deploy/member.yaml's DecryptFunctionName) --------


def test_the_decrypt_function_is_named_by_a_parameter_whose_default_the_fleet_config_uses(
    member: dict[str, Any], stack: Stack
) -> None:
    parameter = member["Parameters"]["DecryptFunctionName"]
    assert parameter["Default"] == MEMBER_DECRYPT_FUNCTION  # an account entry's default
    function = member["Resources"]["DecryptFunction"]["Properties"]
    assert function["FunctionName"] == {"Ref": "DecryptFunctionName"}
    assert stack.resolve(function["FunctionName"]) == MEMBER_DECRYPT_FUNCTION
    # The template and the config accept the same names (a name, never an ARN or a qualifier).
    allowed = re.compile(parameter["AllowedPattern"])
    for name in ("connect-key-rotator-decrypt", "payments_decrypt-2", "x" * 64):
        assert allowed.fullmatch(name) and FUNCTION_NAME.fullmatch(name), name
    for name in ("", "x" * 65, f"{MEMBER_DECRYPT_FUNCTION}:live", MEMBER_FUNCTION_ARN, "a b"):
        assert not allowed.fullmatch(name) and not FUNCTION_NAME.fullmatch(name), name


def test_the_member_role_reads_only_its_decrypt_functions_configuration(
    stack: Stack, member: dict[str, Any]
) -> None:
    """Least privilege (PCI DSS 7.2.2): GetFunctionConfiguration on the named function, in this
    account and region, unqualified; no other Lambda action, function, alias or version."""
    read = Request("lambda:GetFunctionConfiguration", MEMBER_FUNCTION_ARN)
    assert _member(stack, read) == "allow"
    lambda_actions = sorted(
        action
        for statement in stack.role_policies("MemberRole")
        for action in (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
        if action.lower().startswith("lambda:")
    )
    assert lambda_actions == ["lambda:GetFunctionConfiguration"]
    function = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function"
    refused = [
        # Its code (GetFunction answers a download URL), invoking it, changing it.
        *(
            Request(f"lambda:{action}", MEMBER_FUNCTION_ARN)
            for action in (
                "GetFunction",
                "InvokeFunction",
                "UpdateFunctionConfiguration",
                "UpdateFunctionCode",
                "GetPolicy",
                "AddPermission",
                "DeleteFunction",
            )
        ),
        Request("lambda:ListFunctions", "*"),
        # The live alias or a version: not read by the scan, which reads $LATEST, from which
        # the stack publishes each version the alias names.
        Request("lambda:GetFunctionConfiguration", f"{MEMBER_FUNCTION_ARN}:live"),
        Request("lambda:GetFunctionConfiguration", f"{MEMBER_FUNCTION_ARN}:1"),
        # Any other function of the account, the same name elsewhere.
        Request("lambda:GetFunctionConfiguration", f"{function}:payroll"),
        Request("lambda:GetFunctionConfiguration", f"{function}:{MEMBER_DECRYPT_FUNCTION}-2"),
        Request(
            "lambda:GetFunctionConfiguration",
            f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{MEMBER_DECRYPT_FUNCTION}",
        ),
        Request(
            "lambda:GetFunctionConfiguration",
            f"arn:aws:lambda:{REGION}:444455556666:function:{MEMBER_DECRYPT_FUNCTION}",
        ),
    ]
    assert [r for r in refused if _member(stack, r) != "implicit deny"] == []
    # A stack set overriding the name moves the right with it: the default is refused then.
    renamed = MemberStack(member, {**PARAMETERS, "DecryptFunctionName": "payments-decrypt"})
    assert _member(renamed, Request(read.action, f"{function}:payments-decrypt")) == "allow"
    assert _member(renamed, read) == "implicit deny"
    assert renamed.resolve(renamed.resource("DecryptFunction")["Properties"]["FunctionName"]) == (
        "payments-decrypt"
    )


# -- SnapStart versions behind the live alias, as the main template's AutoPublishAlias ------------


def _of_type(member: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: body for name, body in resources(member).items() if body["Type"] == kind}


@pytest.mark.parametrize(
    ("provisioned", "snapstart", "config"),
    [
        ("0", "PublishedVersions", None),
        ("5", "None", {"ProvisionedConcurrentExecutions": "5"}),
    ],
)
def test_the_member_decrypt_function_runs_snapstart_unless_its_alias_is_provisioned(
    member: dict[str, Any], provisioned: str, snapstart: str, config: dict[str, str] | None
) -> None:
    """0 (the default): SnapStart on published versions, no provisioned concurrency; above 0:
    the alias is provisioned and SnapStart is off (Lambda allows one or the other), and the
    version is published without SnapStart."""
    spec = member["Parameters"]["DecryptProvisionedConcurrency"]
    assert (spec["Type"], spec["Default"], spec["MinValue"]) == ("Number", 0, 0)
    stack = MemberStack(member, {**PARAMETERS, "DecryptProvisionedConcurrency": provisioned})
    function = stack.resource("DecryptFunction")["Properties"]
    assert function["SnapStart"] == {"ApplyOn": snapstart}
    alias = stack.resource("DecryptAlias")["Properties"]
    assert alias.get("ProvisionedConcurrencyConfig") == config
    # Provisioned concurrency only on the alias: never on the function's versions or itself.
    assert "ProvisionedConcurrencyConfig" not in stack.resource("DecryptVersion")["Properties"]
    assert "ProvisionedConcurrencyConfig" not in function
    description = stack.resource("DecryptVersion")["Properties"]["Description"]
    assert description.endswith(f" SnapStart={snapstart}")


def _replaced_on_update(kind: str) -> list[str]:
    """The properties CloudFormation cannot update in place (the resource provider schema's
    createOnlyProperties, as cfn-lint ships it): changing one creates a new resource."""
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(REGION, kind).schema
    return [p.removeprefix("/properties/") for p in schema["createOnlyProperties"]]


def test_a_new_code_key_publishes_a_new_version(member: dict[str, Any]) -> None:
    """Plain CloudFormation publishes a version only when the Version resource is created or
    replaced. Its Description forces a replacement, and names the code: a new DecryptCodeKey
    (or bucket), response mode or SnapStart setting publishes a version for the alias; the same
    parameters publish nothing new."""
    (name,) = _of_type(member, "AWS::Lambda::Version")
    assert name == "DecryptVersion"
    version = member["Resources"][name]
    assert "Description" in _replaced_on_update("AWS::Lambda::Version")
    assert version["Properties"]["FunctionName"] == {"Ref": "DecryptFunction"}
    text = json.dumps(version["Properties"]["Description"])
    assert "${DecryptCodeKey}" in text and "${DecryptCodeBucket}" in text
    # Kept when replaced (as SAM keeps AutoPublishAlias's): Lambda answers a publish with
    # nothing changed with the same version, which deleting the old resource would delete.
    assert (version["DeletionPolicy"], version["UpdateReplacePolicy"]) == ("Retain", "Retain")

    def description(**changed: str) -> str:
        stack = MemberStack(member, {**PARAMETERS, **changed})
        resolved: str = stack.resource(name)["Properties"]["Description"]
        return resolved

    base = description()
    assert base == (
        "s3://connect-key-rotator-artifacts/connect-key-rotator/decrypt.zip "
        "RESPONSE_MODE=plaintext SnapStart=PublishedVersions"
    )
    assert description() == base  # a stack update that changes nothing republishes nothing
    for changed in (
        {"DecryptCodeKey": "connect-key-rotator/1.5.0/decrypt.zip"},
        {"DecryptCodeBucket": "other-artifacts"},
        {"DecryptResponseMode": "masked"},
        {"DecryptProvisionedConcurrency": "2"},
    ):
        assert description(**changed) != base, changed


def test_the_version_description_fits_for_every_allowed_parameter(member: dict[str, Any]) -> None:
    """Lambda refuses a version description over 256 characters: the longest bucket the
    pattern allows, the longest key MaxLength allows, and the longest settings fit."""
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(REGION, "AWS::Lambda::Version").schema
    limit = schema["properties"]["Description"]["maxLength"]
    parameters = member["Parameters"]
    bucket = "b" * 63
    assert re.fullmatch(parameters["DecryptCodeBucket"]["AllowedPattern"], bucket)
    assert not re.fullmatch(parameters["DecryptCodeBucket"]["AllowedPattern"], bucket + "b")
    key = "k" * parameters["DecryptCodeKey"]["MaxLength"]
    longest = max(parameters["DecryptResponseMode"]["AllowedValues"], key=len)
    for provisioned in ("0", "5"):
        stack = MemberStack(
            member,
            {
                **PARAMETERS,
                "DecryptCodeBucket": bucket,
                "DecryptCodeKey": key,
                "DecryptResponseMode": longest,
                "DecryptProvisionedConcurrency": provisioned,
            },
        )
        description = stack.resource("DecryptVersion")["Properties"]["Description"]
        assert bucket in description and key in description
        assert len(description) <= limit, len(description)


def test_the_alias_is_the_live_alias_on_the_published_version(
    member: dict[str, Any], stack: Stack
) -> None:
    (name,) = _of_type(member, "AWS::Lambda::Alias")
    alias = member["Resources"][name]["Properties"]
    assert alias["Name"] == DECRYPT_ALIAS  # what flows must name (flow-invokes-unqualified-decrypt)
    assert alias["FunctionName"] == {"Ref": "DecryptFunction"}
    assert alias["FunctionVersion"] == {"Fn::GetAtt": ["DecryptVersion", "Version"]}
    resolved = stack.resource(name)["Properties"]
    assert (resolved["FunctionName"], resolved["FunctionVersion"]) == (
        MEMBER_DECRYPT_FUNCTION,
        VERSION,
    )
    # No traffic split: the alias runs the one published version.
    assert "RoutingConfig" not in alias


def _as_resource_policy(permission: dict[str, Any]) -> dict[str, Any]:
    """The statement Lambda adds to the function's resource policy for an AWS::Lambda::Permission
    (AddPermission: SourceArn as ArnLike AWS:SourceArn, SourceAccount as StringEquals)."""
    assert set(permission) == {
        "Action",
        "FunctionName",
        "Principal",
        "SourceAccount",
        "SourceArn",
    }, permission
    return {
        "Effect": "Allow",
        "Action": permission["Action"],
        "Resource": permission["FunctionName"],
        "Condition": {
            "ArnLike": {"AWS:SourceArn": permission["SourceArn"]},
            "StringEquals": {"AWS:SourceAccount": permission["SourceAccount"]},
        },
    }


def test_connect_of_this_account_may_invoke_the_alias_only(
    member: dict[str, Any], stack: Stack
) -> None:
    """One invoke permission, for connect.amazonaws.com, on the alias: not the unqualified
    function ($LATEST, no SnapStart: fleet mode is unreleased, so no flow needs it kept
    through an upgrade), not a version, not another account's or region's instances."""
    permissions = _of_type(member, "AWS::Lambda::Permission")
    assert list(permissions) == ["ConnectInvokesDecrypt"]
    assert member["Resources"]["ConnectInvokesDecrypt"]["Properties"]["FunctionName"] == {
        "Ref": "DecryptAlias"
    }
    permission = stack.resource("ConnectInvokesDecrypt")["Properties"]
    assert permission["Principal"] == "connect.amazonaws.com"
    statements = [_as_resource_policy(permission)]

    def invoke(function: str, instance: str = INSTANCE_ARN) -> str:
        account = instance.split(":")[4]
        context = (("aws:SourceArn", instance), ("aws:SourceAccount", account))
        return decide(statements, Request("lambda:InvokeFunction", function, context))

    assert invoke(MEMBER_ALIAS_ARN) == "allow"
    other_account = f"arn:aws:connect:{REGION}:444455556666:instance/{INSTANCE_ARN[-36:]}"
    other_region = INSTANCE_ARN.replace(REGION, "us-east-1")
    refused = {
        "unqualified": invoke(MEMBER_FUNCTION_ARN),
        "$LATEST": invoke(f"{MEMBER_FUNCTION_ARN}:$LATEST"),
        "version": invoke(f"{MEMBER_FUNCTION_ARN}:{VERSION}"),
        "another alias": invoke(f"{MEMBER_FUNCTION_ARN}:staging"),
        "another account's instance": invoke(MEMBER_ALIAS_ARN, other_account),
        "another region's instance": invoke(MEMBER_ALIAS_ARN, other_region),
    }
    assert refused == dict.fromkeys(refused, "implicit deny")


def test_the_output_is_the_alias_arn_flows_must_name(member: dict[str, Any], stack: Stack) -> None:
    """A flow block pointed at DecryptFunctionArn invokes the live alias of the function the
    fleet report scans: no flow-invokes-unqualified-decrypt finding for it."""
    assert member["Outputs"]["DecryptFunctionArn"]["Value"] == {"Ref": "DecryptAlias"}
    output = stack.resolve(member["Outputs"]["DecryptFunctionArn"]["Value"])
    assert output == MEMBER_ALIAS_ARN
    invoked, scanned = parse_function(output), parse_function(MEMBER_DECRYPT_FUNCTION)
    assert invoked is not None and scanned is not None
    assert invoked.qualifier == DECRYPT_ALIAS and same_function(invoked, scanned)
    renamed = MemberStack(member, {**PARAMETERS, "DecryptFunctionName": "payments-decrypt"})
    assert renamed.resolve(member["Outputs"]["DecryptFunctionArn"]["Value"]) == (
        f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:payments-decrypt:{DECRYPT_ALIAS}"
    )


def test_the_version_and_alias_grant_nothing(member: dict[str, Any], stack: Stack) -> None:
    """Least privilege kept: the new resources carry no policy, the member role still reads
    only the unqualified function's configuration, and the decrypt role gains nothing."""
    for name in ("DecryptVersion", "DecryptAlias"):
        assert "Policy" not in member["Resources"][name]["Properties"], name
    for target in (MEMBER_ALIAS_ARN, f"{MEMBER_FUNCTION_ARN}:{VERSION}"):
        for action in ("GetFunctionConfiguration", "GetAlias", "UpdateAlias", "InvokeFunction"):
            assert _member(stack, Request(f"lambda:{action}", target)) == "implicit deny"
    decrypt_actions = {
        action.lower()
        for statement in stack.role_policies("DecryptRole")
        for action in (
            statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        )
    }
    assert not [a for a in decrypt_actions if a.startswith("lambda:")]
