"""The template's IAM, evaluated: every call each command makes, and what no principal may do."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cfn_policy import (
    ACCOUNT,
    ADMIN_ROLE_ARN,
    BLOG,
    EXPIRY_EVENT,
    FLOW_ARN,
    INSTANCE_ARN,
    INSTANCE_ID,
    KEY,
    KEY_ARN,
    KEYRING,
    MODULE_ARN,
    OPERATOR_COMMANDS,
    OPERATOR_ROLE_ARN,
    PHYSICAL_IDS,
    REGION,
    ROTATION,
    ROTATOR_LAMBDA_EXTRA,
    STAMP,
    Request,
    Stack,
    connect,
    decide,
    kms,
    load_template,
    ssm,
)

ROTATOR_ROLE_ARN = str(PHYSICAL_IDS["RotatorRole"][1])
DECRYPT_ROLE_ARN = str(PHYSICAL_IDS["DecryptRole"][1])
OTHER_INSTANCE = f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/0b2c3d4e-0000-4000-8000-0000000000ff"
# IAM's size limit for a managed policy, whitespace not counted.
MANAGED_POLICY_LIMIT = 6144


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def stack(template: dict[str, Any]) -> Stack:
    return Stack(template)


def as_(principal: str, request: Request) -> Request:
    """The request as `principal` makes it (IAM adds aws:PrincipalArn to every request)."""
    context = (*request.context, ("aws:PrincipalArn", principal))
    return Request(request.action, request.resource, context, principal)


def operator(stack: Stack, request: Request) -> str:
    return decide(stack.policy("OperatorPolicy"), as_(OPERATOR_ROLE_ARN, request))


def rotator(stack: Stack, request: Request) -> str:
    return decide(stack.role_policies("RotatorRole"), as_(ROTATOR_ROLE_ARN, request))


@pytest.mark.parametrize("command", sorted(OPERATOR_COMMANDS))
def test_operators_may_make_every_call_of_each_command(stack: Stack, command: str) -> None:
    refused = [r for r in OPERATOR_COMMANDS[command] if operator(stack, r) != "allow"]
    assert refused == []


def test_operator_policy_allows_no_action_that_no_command_calls(stack: Stack) -> None:
    called = {r.action.lower() for calls in OPERATOR_COMMANDS.values() for r in calls}
    allowed = {
        a.lower()
        for s in stack.policy("OperatorPolicy")
        if s["Effect"] == "Allow"
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert allowed == called


def test_the_rotator_lambda_rotates_and_reports_with_the_same_policy(stack: Stack) -> None:
    for command in ("rotate", "report", "retire", "destroy"):
        refused = [r for r in OPERATOR_COMMANDS[command] if rotator(stack, r) != "allow"]
        assert refused == [], command
    granted = {
        a.lower()
        for s in stack.role_policies("RotatorRole")
        if s["Effect"] == "Allow"
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    called = {r.action.lower() for calls in OPERATOR_COMMANDS.values() for r in calls}
    assert granted - called == ROTATOR_LAMBDA_EXTRA


def test_the_rotator_lambda_puts_only_its_expiry_events_on_the_default_bus(
    stack: Stack,
) -> None:
    assert rotator(stack, EXPIRY_EVENT) == "allow"
    assert operator(stack, EXPIRY_EVENT) == "implicit deny"  # people do not put events
    assert decide(stack.policy("OperatorPolicy"), as_(DECRYPT_ROLE_ARN, EXPIRY_EVENT)) != "allow"
    other_bus = Request(
        EXPIRY_EVENT.action,
        f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/payments",
        EXPIRY_EVENT.context,
    )
    assert rotator(stack, other_bus) == "implicit deny"
    for key, value in (
        ("events:source", "aws.kms"),  # no forged AWS events that the key rules would match
        ("events:detail-type", "AWS API Call via CloudTrail"),
    ):
        forged = dict(EXPIRY_EVENT.context) | {key: value}
        request = Request(EXPIRY_EVENT.action, EXPIRY_EVENT.resource, tuple(forged.items()))
        assert rotator(stack, request) == "implicit deny", key


def test_only_people_read_the_blog_parameters(stack: Stack) -> None:
    blog_key = Request("ssm:GetParameters", f"{BLOG}/CONNECT_INPUT_DECRYPTION_KEY")
    assert operator(stack, blog_key) == "allow"
    assert rotator(stack, blog_key) == "implicit deny"
    assert operator(stack, Request("ssm:PutParameter", blog_key.resource)) == "implicit deny"
    other = Request("ssm:GetParameters", f"{BLOG}/some-other-secret")
    assert operator(stack, other) == "implicit deny"


PROTECTED = [f"/keys/{KEY}/private-key", f"/staging/{ROTATION}/private-key"]
HISTORY = [f"/history/{INSTANCE_ID}/{STAMP}", f"/history/runbooks/{STAMP}"]


@pytest.mark.parametrize("name", PROTECTED + HISTORY)
@pytest.mark.parametrize(
    ("overwrite", "expected"),
    [
        ("false", "allow"),
        (None, "allow"),  # left out: the API default, Overwrite=false, replaces nothing
        ("true", "deny"),
        ("True", "deny"),  # any present value but "false" is refused
        ("", "deny"),
    ],
)
def test_private_keys_and_history_can_be_created_but_never_overwritten(
    stack: Stack, name: str, overwrite: str | None, expected: str
) -> None:
    context = () if overwrite is None else (("ssm:Overwrite", overwrite),)
    request = ssm("PutParameter", name, *context)
    assert operator(stack, request) == expected
    assert rotator(stack, request) == expected


@pytest.mark.parametrize(
    "name",
    [
        f"/keys/{KEY}/metadata",
        f"/keys/{KEY}/certificate",
        f"/instances/{INSTANCE_ID}/current",
        f"/locks/{INSTANCE_ID}",
        f"/staging/{ROTATION}/certificate",
    ],
)
def test_records_are_versioned_by_overwriting(stack: Stack, name: str) -> None:
    assert operator(stack, ssm("PutParameter", name, ("ssm:Overwrite", "true"))) == "allow"
    assert operator(stack, ssm("PutParameter", name)) == "allow"


@pytest.mark.parametrize(
    ("policies", "expected"), [(None, "allow"), ("false", "allow"), ("true", "deny")]
)
@pytest.mark.parametrize("name", [f"/keys/{KEY}/metadata", f"/keys/{KEY}/private-key"])
def test_no_parameter_policy_on_the_keyring(
    stack: Stack, name: str, policies: str | None, expected: str
) -> None:
    context = [("ssm:Overwrite", "false")]
    if policies is not None:
        context.append(("ssm:Policies", policies))
    request = ssm("PutParameter", name, *context)
    assert operator(stack, request) == expected
    assert rotator(stack, request) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (f"/staging/{ROTATION}/private-key", "allow"),
        (f"/staging/{ROTATION}/certificate", "allow"),
        (f"/locks/{INSTANCE_ID}", "allow"),
        (f"/keys/{KEY}/private-key", "allow"),  # destroy
        (f"/keys/{KEY}/metadata", "deny"),
        (f"/keys/{KEY}/certificate", "deny"),
        (f"/instances/{INSTANCE_ID}/current", "deny"),
        (f"/instances/{INSTANCE_ID}/config", "deny"),
        (f"/history/{INSTANCE_ID}/{STAMP}", "deny"),
        ("/audit/runbook-runs", "deny"),
    ],
)
@pytest.mark.parametrize("action", ["DeleteParameter", "DeleteParameters"])
def test_only_what_the_lifecycle_deletes_is_deleted(
    stack: Stack, action: str, name: str, expected: str
) -> None:
    assert operator(stack, ssm(action, name)) == expected
    assert rotator(stack, ssm(action, name)) == expected


def test_nothing_outside_the_keyring(stack: Stack) -> None:
    outside = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/other-app/password"
    for action in ("GetParameter", "GetParameters", "PutParameter", "DeleteParameter"):
        request = Request(f"ssm:{action}", outside, (("ssm:Overwrite", "false"),))
        assert operator(stack, request) == "implicit deny", action
        assert rotator(stack, request) == "implicit deny", action
    assert operator(stack, ssm("LabelParameterVersion", f"/keys/{KEY}/private-key")) == (
        "implicit deny"
    )
    assert operator(stack, ssm("PutParameter", "/audit/runbook-runs")) == "implicit deny"


def test_connect_calls_stay_on_the_listed_instances(stack: Stack) -> None:
    other_flow = f"{OTHER_INSTANCE}/contact-flow/0f000000-0000-4000-8000-00000000f10a"
    assert operator(stack, connect("UpdateContactFlowContent", other_flow)) == "implicit deny"
    assert operator(stack, connect("AssociateSecurityKey", OTHER_INSTANCE)) == "implicit deny"
    assert operator(stack, connect("DeleteContactFlow", FLOW_ARN)) == "implicit deny"
    any_flow = f"{INSTANCE_ARN}/contact-flow/0f000000-0000-4000-8000-000000000123"
    assert operator(stack, connect("UpdateContactFlowContent", any_flow)) == "allow"


def test_managed_flow_arns_narrow_flow_updates_to_those_flows(template: dict[str, Any]) -> None:
    narrowed = Stack(template, {"ManagedFlowArns": [FLOW_ARN, MODULE_ARN]})
    assert operator(narrowed, connect("UpdateContactFlowContent", FLOW_ARN)) == "allow"
    assert operator(narrowed, connect("UpdateContactFlowModuleContent", MODULE_ARN)) == "allow"
    another = f"{INSTANCE_ARN}/contact-flow/0f000000-0000-4000-8000-000000000123"
    for action in ("DescribeContactFlow", "UpdateContactFlowContent"):
        assert operator(narrowed, connect(action, another)) == "implicit deny", action
    another_module = f"{INSTANCE_ARN}/flow-module/0f000000-0000-4000-8000-000000000123"
    assert operator(narrowed, connect("UpdateContactFlowModuleContent", another_module)) == (
        "implicit deny"
    )
    # The security keys stay per instance.
    assert operator(narrowed, connect("AssociateSecurityKey", INSTANCE_ARN)) == "allow"


def test_the_keyring_key_only_through_ssm_and_only_for_private_keys(stack: Stack) -> None:
    private = kms("Decrypt", f"/keys/{KEY}/private-key")
    assert operator(stack, private) == "allow"
    direct = Request("kms:Decrypt", KEY_ARN)  # not through SSM
    assert operator(stack, direct) == "implicit deny"
    other_secure_string = kms("Decrypt", f"/instances/{INSTANCE_ID}/current")
    assert operator(stack, other_secure_string) == "implicit deny"
    assert operator(stack, Request("kms:CreateGrant", KEY_ARN)) == "implicit deny"


def test_key_policy_gives_administrators_no_use_and_no_grant(stack: Stack) -> None:
    key_policy = stack.key_policy()
    via_ssm = kms("Decrypt", f"/keys/{KEY}/private-key")
    for action in (
        "Encrypt",
        "Decrypt",
        "ReEncryptFrom",
        "ReEncryptTo",
        "GenerateDataKey",
        "GenerateDataKeyWithoutPlaintext",
        "CreateGrant",
    ):
        request = Request(f"kms:{action}", KEY_ARN, via_ssm.context, ADMIN_ROLE_ARN)
        assert decide(key_policy, request) == "implicit deny", action
    for action in ("ScheduleKeyDeletion", "DisableKey", "PutKeyPolicy", "CancelKeyDeletion"):
        request = Request(f"kms:{action}", KEY_ARN, (), ADMIN_ROLE_ARN)
        assert decide(key_policy, request) == "allow", action


@pytest.mark.parametrize(
    ("principal", "action", "name", "expected"),
    [
        (DECRYPT_ROLE_ARN, "Decrypt", f"/keys/{KEY}/private-key", "allow"),
        (DECRYPT_ROLE_ARN, "Decrypt", f"/staging/{ROTATION}/private-key", "implicit deny"),
        (DECRYPT_ROLE_ARN, "Encrypt", f"/keys/{KEY}/private-key", "implicit deny"),
        (ROTATOR_ROLE_ARN, "Encrypt", f"/staging/{ROTATION}/private-key", "allow"),
        (ROTATOR_ROLE_ARN, "Decrypt", f"/keys/{KEY}/private-key", "allow"),
        (ROTATOR_ROLE_ARN, "Decrypt", f"/instances/{INSTANCE_ID}/config", "implicit deny"),
        (OPERATOR_ROLE_ARN, "Decrypt", f"/keys/{KEY}/private-key", "allow"),
        (OPERATOR_ROLE_ARN, "GenerateDataKey", f"/keys/{KEY}/private-key", "allow"),
    ],
)
def test_key_policy_lets_the_roles_use_the_key_through_ssm(
    stack: Stack, principal: str, action: str, name: str, expected: str
) -> None:
    request = kms(action, name).with_principal(principal)
    assert decide(stack.key_policy(), request) == expected
    direct = Request(f"kms:{action}", KEY_ARN, (), principal)
    assert decide(stack.key_policy(), direct) == "implicit deny"


def test_decrypt_role_lists_key_ids_and_reads_keys_only(stack: Stack) -> None:
    statements = stack.role_policies("DecryptRole")

    def decrypt_role(request: Request) -> str:
        return decide(statements, as_(DECRYPT_ROLE_ARN, request))

    assert decrypt_role(ssm("GetParametersByPath", "/keys")) == "allow"
    assert decrypt_role(ssm("GetParameters", f"/keys/{KEY}/private-key")) == "allow"
    assert decrypt_role(ssm("GetParameters", f"/keys/{KEY}/metadata")) == "allow"
    assert decrypt_role(kms("Decrypt", f"/keys/{KEY}/private-key")) == "allow"
    for refused in (
        ssm("GetParametersByPath", "/instances"),
        ssm("GetParametersByPath", ""),
        ssm("GetParameters", f"/staging/{ROTATION}/private-key"),
        ssm("GetParameters", f"/instances/{INSTANCE_ID}/current"),
        ssm("PutParameter", f"/keys/{KEY}/metadata", ("ssm:Overwrite", "false")),
        ssm("DeleteParameter", f"/locks/{INSTANCE_ID}"),
        kms("Decrypt", f"/staging/{ROTATION}/private-key"),
        connect("ListSecurityKeys", INSTANCE_ARN),
    ):
        assert decrypt_role(refused) == "implicit deny", refused


@pytest.mark.parametrize(("instances", "flows"), [(10, 0), (3, 10)])
def test_operator_policy_fits_iams_size_limit(
    template: dict[str, Any], instances: int, flows: int
) -> None:
    arns = [f"{INSTANCE_ARN[:-2]}{n:02d}" for n in range(instances)]
    managed = [
        f"{arns[0]}/contact-flow/0f000000-0000-4000-8000-0000000{n:05d}" for n in range(flows)
    ]
    stack = Stack(template, {"ConnectInstanceArns": arns, "ManagedFlowArns": managed or [""]})
    document = stack.resource("OperatorPolicy")["Properties"]["PolicyDocument"]
    assert len(json.dumps(document, separators=(",", ":"))) < MANAGED_POLICY_LIMIT
    for arn in arns:
        assert operator(stack, connect("ListSecurityKeys", arn)) == "allow"


def test_requests_name_the_keyring_of_the_template(stack: Stack) -> None:
    """The call list and the template agree on the prefix (else every check above is moot)."""
    assert stack.values["KeyringPrefix"] == KEYRING.rsplit("parameter", 1)[1]


# -- dual control --------------------------------------------------------------------------------

DECISION = "/requests/req-0123456789ab/decision"


def test_a_request_s_decision_is_created_once_and_never_replaced_nor_deleted(stack: Stack) -> None:
    """Least privilege for dual control: its events are history records (created once), and its
    one other parameter, the decision claim, can be created but never overwritten (so a second
    approver is refused by SSM itself) nor deleted (so it cannot be decided again)."""
    for who in (operator, rotator):
        assert who(stack, ssm("PutParameter", DECISION, ("ssm:Overwrite", "false"))) == "allow"
        assert who(stack, ssm("PutParameter", DECISION)) == "allow"
        assert who(stack, ssm("PutParameter", DECISION, ("ssm:Overwrite", "true"))) == "deny"
        assert who(stack, ssm("DeleteParameter", DECISION)) == "deny"
        assert who(stack, ssm("PutParameter", f"/history/requests/{STAMP}")) == "allow"
        # Nothing else under /requests is writable.
        for name in ("/requests/req-0123456789ab/other", "/requests/x"):
            assert who(stack, ssm("PutParameter", name)) == "implicit deny"
