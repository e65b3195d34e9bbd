"""deploy/member.yaml, the member account's stack (fleet mode): cfn-lint clean, StackSets-ready
(nothing account-specific), and least privilege across the account boundary: only the central
rotator role (and listed operators) with the external ID may assume the member role; the role
may do what the rotator's commands call on this account's keyring prefix, KMS key and Connect
instances, and nothing else; its decrypt Lambda is the main template's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rotator.entrypoints.bootstrap import MEMBER_KEYRING_KEY_ALIAS, ROLE_SESSION_NAME
from tests.cfn_policy import (
    ACCOUNT,
    BLOG,
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
}
MEMBER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/connect-key-rotator-member-{REGION}"
# What the central rotator does in a member account: the rotation job, and the commands an
# operator runs through it (`rotator init --account NAME`, verify, report, ...). Adopting the
# blog's parameters (import --from-blog-parameters) is done in the account, not through it.
COMMANDS = ("init", "rotate", "verify", "status", "report", "retire", "destroy", "rollback")


@pytest.fixture(scope="module")
def member() -> dict[str, Any]:
    return load_template(MEMBER)


@pytest.fixture(scope="module")
def stack(member: dict[str, Any]) -> Stack:
    return Stack(member, PARAMETERS)


def _as_member(request: Request) -> Request:
    return Request(request.action, request.resource, request.context, MEMBER_ROLE)


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
    with_operators = Stack(member, {**PARAMETERS, "CentralOperatorRoleArns": OPERATOR})
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
            assert len(resources_) == 2 and KEY_ARN in resources_
            assert [r for r in resources_ if r != KEY_ARN][0].startswith(
                f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:"
            )
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
    ):
        assert function[key] == original[key], key
    runtime = main["Globals"]["Function"]
    assert (function["Runtime"], function["Architectures"]) == (
        runtime["Runtime"],
        runtime["Architectures"],
    )
    permission = Stack(member, PARAMETERS).resource("ConnectInvokesDecrypt")["Properties"]
    assert permission["Principal"] == "connect.amazonaws.com"
    assert permission["SourceAccount"] == ACCOUNT
    assert permission["SourceArn"] == f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/*"
    listed = Stack(member, {**PARAMETERS, "ConnectInstanceArns": INSTANCE_ARN})
    (keys,) = [s for s in listed.role_policies("MemberRole") if s.get("Sid") == "SecurityKeys"]
    assert keys["Resource"] == [INSTANCE_ARN]
