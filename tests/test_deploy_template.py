"""deploy/template.yaml: least privilege (invariant 7), schedule, alarms, cfn-lint clean."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambda_decrypt.config import Env
from rotator.config import RotatorEnv
from rotator.domain.expiry import EXPIRY_EVENT_DETAIL_TYPE, EXPIRY_EVENT_SOURCE
from rotator.domain.lambda_functions import DECRYPT_ALIAS
from rotator_build.lambda_zips import DEFAULT_TEMPLATE, Target, read_target
from tests.cfn_policy import TEMPLATE, load_template, resources

DECRYPT_ALLOWED = {
    "ssm:getparameters",
    "ssm:getparametersbypath",
    "kms:decrypt",
    "logs:createlogstream",
    "logs:putlogevents",
}
KEYRING_WRITES = ("ssm:put*", "ssm:delete*", "ssm:label*", "ssm:addtags*", "ssm:removetags*")
PARAMETER = "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${KeyringPrefix}"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def roles(template: dict[str, Any]) -> list[str]:
    return [n for n, r in resources(template).items() if r["Type"] == "AWS::IAM::Role"]


def role_statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """Inline policies of the role plus every policy resource attached to it."""
    all_resources = resources(template)
    documents = [p["PolicyDocument"] for p in all_resources[role]["Properties"].get("Policies", [])]
    for resource in all_resources.values():
        properties = resource.get("Properties", {})
        attached = [properties.get("RoleName"), *properties.get("Roles", [])]
        if resource["Type"].startswith("AWS::IAM::") and {"Ref": role} in attached:
            documents.append(properties["PolicyDocument"])
    return [s for document in documents for s in document["Statement"]]


def actions(statement: dict[str, Any]) -> list[str]:
    raw = statement["Action"]
    return [a.lower() for a in ([raw] if isinstance(raw, str) else raw)]


def allowed_actions(template: dict[str, Any], role: str) -> set[str]:
    return {
        action
        for statement in role_statements(template, role)
        if statement["Effect"] == "Allow"
        for action in actions(statement)
    }


def resource_strings(statement: dict[str, Any]) -> Iterator[str]:
    raw = statement["Resource"]
    for item in raw if isinstance(raw, list) else [raw]:
        yield item["Fn::Sub"] if isinstance(item, dict) and "Fn::Sub" in item else str(item)


def test_decrypt_role_can_only_read_private_keys_and_metadata(template: dict[str, Any]) -> None:
    granted = allowed_actions(template, "DecryptRole")
    assert granted == DECRYPT_ALLOWED
    by_sid = {s.get("Sid"): s for s in role_statements(template, "DecryptRole")}
    read = by_sid["ReadKeyringKeys"]
    assert actions(read) == ["ssm:getparameters"]
    assert list(resource_strings(read)) == [
        f"{PARAMETER}/keys/*/private-key",
        f"{PARAMETER}/keys/*/metadata",
    ]
    # Which key IDs the keyring holds, past the lookup budget: a listing of {prefix}/keys only.
    listing = by_sid["ListKeyringKeyIds"]
    assert actions(listing) == ["ssm:getparametersbypath"]
    assert list(resource_strings(listing)) == [f"{PARAMETER}/keys", f"{PARAMETER}/keys/*"]
    ssm_statements = [
        s for s in role_statements(template, "DecryptRole") if actions(s)[0].startswith("ssm:")
    ]
    assert [s["Sid"] for s in ssm_statements] == ["ReadKeyringKeys", "ListKeyringKeyIds"]


def test_decrypt_role_has_no_write_permission_on_the_keyring(template: dict[str, Any]) -> None:
    granted = allowed_actions(template, "DecryptRole")
    assert not any("*" in action.split(":", 1)[-1] for action in granted)
    assert "*" not in granted
    for pattern in KEYRING_WRITES:
        assert not fnmatch.filter(granted, pattern), pattern
    assert not [a for a in granted if a.startswith("kms:") and a != "kms:decrypt"]
    assert not [a for a in granted if a.startswith("connect:")]


def test_only_the_rotator_writes_the_keyring_or_calls_connect(template: dict[str, Any]) -> None:
    writers = {
        role
        for role in roles(template)
        if any(
            fnmatch.filter([a], p) or a.startswith("connect:")
            for a in allowed_actions(template, role)
            for p in KEYRING_WRITES
        )
    }
    assert writers == {"RotatorRole"}
    assert {
        "ssm:putparameter",
        "ssm:deleteparameters",
        "connect:associatesecuritykey",
        "connect:updatecontactflowcontent",
    } <= allowed_actions(template, "RotatorRole")
    # Its keyring and Connect rights are OperatorPolicy's, attached to it (one place).
    operator = resources(template)["OperatorPolicy"]
    assert operator["Type"] == "AWS::IAM::ManagedPolicy"
    assert operator["Properties"]["Roles"] == [{"Ref": "RotatorRole"}]
    inline = {
        a
        for policy in resources(template)["RotatorRole"]["Properties"]["Policies"]
        for s in policy["PolicyDocument"]["Statement"]
        for a in actions(s)
    }
    assert not [a for a in inline if a.startswith(("ssm:", "connect:", "kms:"))]


def test_connect_permissions_are_scoped_to_the_instances(template: dict[str, Any]) -> None:
    connect = [
        s
        for s in role_statements(template, "RotatorRole")
        if any(a.startswith("connect:") for a in actions(s))
    ]
    assert {a for s in connect for a in actions(s)} == {
        "connect:listsecuritykeys",
        "connect:associatesecuritykey",
        "connect:disassociatesecuritykey",
        "connect:describecontactflow",
        "connect:updatecontactflowcontent",
        "connect:describecontactflowmodule",
        "connect:updatecontactflowmodulecontent",
    }
    for statement in connect:
        assert statement["Resource"] != "*"
        assert "ConnectInstanceArns" in str(statement["Resource"])
    flows = operator_statements(template)["ManagedFlows"]
    condition, listed, every_flow = flows["Resource"]["Fn::If"]
    assert (condition, listed) == ("HasManagedFlows", {"Ref": "ManagedFlowArns"})
    # instance/ID/*: the flows and modules of each instance (the only resource types of these
    # four actions), one ARN per instance.
    assert every_flow == {
        "Fn::Split": [
            ",",
            {"Fn::Join": ["", [{"Fn::Join": ["/*,", {"Ref": "ConnectInstanceArns"}]}, "/*"]]},
        ]
    }
    parameter = template["Parameters"]["ManagedFlowArns"]
    assert (parameter["Type"], parameter["Default"]) == ("CommaDelimitedList", "")
    assert "(contact-flow|flow-module)" in parameter["AllowedPattern"]


def test_metrics_permission_is_limited_to_the_namespace(template: dict[str, Any]) -> None:
    (metrics,) = [
        s
        for s in role_statements(template, "RotatorRole")
        if "cloudwatch:putmetricdata" in actions(s)
    ]
    condition = metrics["Condition"]["StringEquals"]["cloudwatch:namespace"]
    assert condition == {"Ref": "MetricsNamespace"}


KEY_ADMINISTRATION = {
    "kms:describekey",
    "kms:getkeypolicy",
    "kms:getkeyrotationstatus",
    "kms:listkeypolicies",
    "kms:listkeyrotations",
    "kms:listgrants",
    "kms:listresourcetags",
    "kms:putkeypolicy",
    "kms:updatekeydescription",
    "kms:createalias",
    "kms:updatealias",
    "kms:deletealias",
    "kms:tagresource",
    "kms:untagresource",
    "kms:enablekey",
    "kms:disablekey",
    "kms:enablekeyrotation",
    "kms:rotatekeyondemand",
    "kms:revokegrant",
    "kms:schedulekeydeletion",
    "kms:cancelkeydeletion",
}
KEY_USE = (
    "kms:encrypt",
    "kms:decrypt",
    "kms:reencryptfrom",
    "kms:reencryptto",
    "kms:generatedatakey",
    "kms:generatedatakeywithoutplaintext",
    "kms:generatedatakeypair",
    "kms:creategrant",
)


def test_key_administrators_cannot_use_the_key_or_grant_its_use(template: dict[str, Any]) -> None:
    statements = resources(template)["KeyringKey"]["Properties"]["KeyPolicy"]["Statement"]
    (admin,) = [s for s in statements if s.get("Sid") == "KeyAdministration"]
    granted = actions(admin)
    assert len(granted) == len(set(granted))
    assert set(granted) == KEY_ADMINISTRATION  # an explicit list: no wildcard at all
    for use in KEY_USE:
        assert not [g for g in granted if fnmatch.fnmatch(use, g)], use
    root = "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"
    for statement in statements:
        if statement.get("Sid") != "KeyAdministration":
            assert statement.get("Principal") != {"AWS": {"Fn::Sub": root}}


def test_key_policy_lets_only_the_two_roles_use_the_key(template: dict[str, Any]) -> None:
    statements = resources(template)["KeyringKey"]["Properties"]["KeyPolicy"]["Statement"]
    by_sid = {s["Sid"]: s for s in statements if "Sid" in s}
    crypto = {"kms:encrypt", "kms:decrypt", "kms:generatedatakey", "kms:*"}
    assert not crypto & set(actions(by_sid["KeyAdministration"]))
    decrypt = by_sid["DecryptLambdaReadsPrivateKeysThroughSsm"]
    assert decrypt["Principal"] == {"AWS": {"Fn::GetAtt": ["DecryptRole", "Arn"]}}
    assert actions(decrypt) == ["kms:decrypt"]
    assert "kms:ViaService" in decrypt["Condition"]["StringEquals"]
    rotator = by_sid["RotatorWritesAndReadsKeyringThroughSsm"]
    assert rotator["Principal"] == {"AWS": {"Fn::GetAtt": ["RotatorRole", "Arn"]}}
    assert set(actions(rotator)) == {"kms:encrypt", "kms:decrypt", "kms:generatedatakey"}
    key = resources(template)["KeyringKey"]
    assert key["DeletionPolicy"] == key["UpdateReplacePolicy"] == "Retain"


def test_schedule_invokes_the_rotator_with_a_role_that_can_do_nothing_else(
    template: dict[str, Any],
) -> None:
    found = resources(template)
    schedule = found["RotationSchedule"]["Properties"]
    assert schedule["Target"]["Arn"] == {"Fn::GetAtt": ["RotatorFunction", "Arn"]}
    assert schedule["Target"]["RoleArn"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}
    assert schedule["ScheduleExpression"] == {"Ref": "ScheduleExpression"}
    assert template["Parameters"]["ScheduleExpression"]["Default"] == "rate(1 day)"
    (statement,) = role_statements(template, "SchedulerRole")
    assert actions(statement) == ["lambda:invokefunction"]
    assert statement["Resource"] == {"Fn::GetAtt": ["RotatorFunction", "Arn"]}


def test_functions_match_the_code(template: dict[str, Any]) -> None:
    found = resources(template)
    decrypt = found["DecryptFunction"]["Properties"]
    rotator = found["RotatorFunction"]["Properties"]
    assert decrypt["Handler"] == "lambda_decrypt.handler.lambda_handler"
    assert rotator["Handler"] == "rotator.entrypoints.scheduled.handler"
    assert decrypt["CodeUri"] == "../build/decrypt.zip"
    assert rotator["CodeUri"] == "../build/rotator.zip"
    assert decrypt["Timeout"] <= 8  # Connect's Invoke-Lambda limit
    known = {e.value for e in Env} | {e.value for e in RotatorEnv}
    assert set(decrypt["Environment"]["Variables"]) <= {e.value for e in Env}
    assert set(rotator["Environment"]["Variables"]) <= known
    assert decrypt["Role"] == {"Fn::GetAtt": ["DecryptRole", "Arn"]}
    assert rotator["Role"] == {"Fn::GetAtt": ["RotatorRole", "Arn"]}


def test_runtime_is_declared_once_and_packaging_reads_it(template: dict[str, Any]) -> None:
    assert DEFAULT_TEMPLATE == TEMPLATE
    globals_ = template["Globals"]["Function"]
    assert read_target(TEMPLATE) == Target(
        globals_["Runtime"].removeprefix("python"), globals_["Architectures"][0]
    )
    for resource in resources(template).values():
        assert "Runtime" not in resource.get("Properties", {})
        assert "Architectures" not in resource.get("Properties", {})


def test_connect_may_invoke_the_decrypt_function_per_instance(template: dict[str, Any]) -> None:
    (loop,) = [v for k, v in template["Resources"].items() if k.startswith("Fn::ForEach::")]
    assert loop[1] == {"Ref": "ConnectInstanceArns"}
    permissions = [r for r in loop[2].values() if r["Type"] == "AWS::Lambda::Permission"]
    assert len(permissions) == 2  # the alias, and the function while flows are repointed
    for permission in permissions:
        properties = permission["Properties"]
        assert properties["Action"] == "lambda:InvokeFunction"
        assert properties["Principal"] == "connect.amazonaws.com"
        assert properties["SourceArn"] == {"Ref": loop[0]}
        assert properties["SourceAccount"] == {"Ref": "AWS::AccountId"}


def _alarm(
    template: dict[str, Any], metric: str, namespace: Any, function: str | None = None
) -> dict[str, Any]:
    """The one alarm on this metric (of this function, for AWS/Lambda metrics)."""
    dimensions = [{"Name": "FunctionName", "Value": {"Ref": function}}] if function else None
    (alarm,) = [
        r["Properties"]
        for r in resources(template).values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        and (r["Properties"]["MetricName"], r["Properties"]["Namespace"]) == (metric, namespace)
        and r["Properties"].get("Dimensions") == dimensions
    ]
    assert {"Ref": "AlertTopic"} in alarm["AlarmActions"]
    return alarm


def test_alarms_cover_expiry_rotation_failures_and_decrypt_errors(
    template: dict[str, Any],
) -> None:
    namespace = {"Ref": "MetricsNamespace"}
    expiry = _alarm(template, "DaysToExpiry", namespace)
    assert expiry["Statistic"] == "Minimum"
    assert expiry["ComparisonOperator"] == "LessThanThreshold"
    assert expiry["Threshold"] == {"Ref": "DaysToExpiryAlarmThreshold"}
    assert template["Parameters"]["DaysToExpiryAlarmThreshold"]["Default"] == 30
    failure = _alarm(template, "RotationFailure", namespace)
    assert (failure["ComparisonOperator"], failure["Threshold"]) == ("GreaterThanThreshold", 0)
    assert _alarm(template, "Errors", "AWS/Lambda", "DecryptFunction")["Threshold"] == 0
    assert _alarm(template, "Errors", "AWS/Lambda", "RotatorFunction")["Threshold"] == 0
    decrypt_failures = _alarm(template, "DecryptFailures", namespace)
    assert decrypt_failures["Statistic"] == "Sum"
    (metric_filter,) = [
        r["Properties"]
        for r in resources(template).values()
        if r["Type"] == "AWS::Logs::MetricFilter"
        and r["Properties"]["MetricTransformations"][0]["MetricName"] == "DecryptFailures"
    ]
    assert metric_filter["FilterPattern"] == '{ $.outcome = "error" }'
    assert metric_filter["LogGroupName"] == {"Ref": "DecryptLogGroup"}
    assert metric_filter["MetricTransformations"][0]["MetricName"] == "DecryptFailures"


@pytest.mark.wire
def test_cfn_lint_reports_nothing() -> None:
    """Exit 0: no error, no warning (cfn-lint exits 2 on errors, 4 on warnings)."""
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run(
        [str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_report_schedule_invokes_the_rotator_with_the_report_job(
    template: dict[str, Any],
) -> None:
    schedule = resources(template)["ReportSchedule"]["Properties"]
    assert schedule["Target"]["Arn"] == {"Fn::GetAtt": ["RotatorFunction", "Arn"]}
    assert schedule["Target"]["RoleArn"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}
    assert json.loads(schedule["Target"]["Input"]) == {"job": "report"}
    assert schedule["ScheduleExpression"] == {"Ref": "ReportScheduleExpression"}
    assert template["Parameters"]["ReportScheduleExpression"]["Default"] == "cron(0 6 ? * MON *)"
    rotation = resources(template)["RotationSchedule"]["Properties"]["Target"]["Input"]
    assert "job" not in json.loads(rotation)  # the rotation stays the default job


def test_rotator_writes_reports_only_under_the_bucket_prefix(template: dict[str, Any]) -> None:
    statements = role_statements(template, "RotatorRole")
    s3 = [s for s in statements if any(a.startswith("s3:") for a in actions(s))]
    assert [actions(s) for s in s3] == [["s3:putobject"]]
    assert list(resource_strings(s3[0])) == ["${ReportBucket.Arn}/reports/*"]
    (describe,) = [s for s in statements if "ssm:describeparameters" in actions(s)]
    assert actions(describe) == ["ssm:describeparameters"]  # the one "*" SSM action: read-only
    assert describe["Resource"] == "*"
    star = [s for s in statements if s["Resource"] == "*" and s["Effect"] == "Allow"]
    assert {a for s in star for a in actions(s)} == {
        "ssm:describeparameters",
        "cloudwatch:putmetricdata",  # limited to the namespace by its condition
    }
    rotator = resources(template)["RotatorFunction"]["Properties"]["Environment"]["Variables"]
    assert rotator[RotatorEnv.REPORT_S3_URI] == {"Fn::Sub": "s3://${ReportBucket}/reports/"}


def test_report_bucket_is_private_encrypted_versioned_and_expires(
    template: dict[str, Any],
) -> None:
    bucket = resources(template)["ReportBucket"]
    assert bucket["DeletionPolicy"] == bucket["UpdateReplacePolicy"] == "Retain"
    properties = bucket["Properties"]
    (encryption,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert properties["VersioningConfiguration"]["Status"] == "Enabled"
    assert set(properties["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(properties["PublicAccessBlockConfiguration"]) == 4
    (rule,) = properties["LifecycleConfiguration"]["Rules"]
    retention = {"Ref": "ReportRetentionDays"}
    assert rule["ExpirationInDays"] == retention
    assert rule["NoncurrentVersionExpiration"]["NoncurrentDays"] == retention
    assert template["Parameters"]["ReportRetentionDays"]["Default"] == 400


def test_decrypt_role_has_no_s3_access_or_ssm_write(template: dict[str, Any]) -> None:
    granted = allowed_actions(template, "DecryptRole")
    assert not [a for a in granted if a.startswith("s3:")]
    assert {a for a in granted if a.startswith("ssm:")} == {
        "ssm:getparameters",
        "ssm:getparametersbypath",
    }


def test_critical_report_findings_raise_an_alarm(template: dict[str, Any]) -> None:
    (alarm,) = [
        r["Properties"]
        for r in resources(template).values()
        if r["Type"] == "AWS::CloudWatch::Alarm"
        and r["Properties"]["MetricName"] == "ReportFindings"
    ]
    assert alarm["Namespace"] == {"Ref": "MetricsNamespace"}
    assert alarm["Dimensions"] == [{"Name": "Severity", "Value": "critical"}]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    assert alarm["AlarmActions"] == [{"Ref": "AlertTopic"}]


# -- OperatorPolicy, statement by statement -------------------------------------------------


def operator_statements(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    document = resources(template)["OperatorPolicy"]["Properties"]["PolicyDocument"]
    by_sid = {s["Sid"]: s for s in document["Statement"]}
    assert len(by_sid) == len(document["Statement"])  # every statement has its own Sid
    return by_sid


def suffixes(statement: dict[str, Any]) -> list[str]:
    """The keyring-relative part of each resource ("/keys/*/metadata")."""
    found = []
    for resource in resource_strings(statement):
        assert resource.startswith(PARAMETER), resource
        found.append(resource.removeprefix(PARAMETER))
    return found


PROTECTED = [
    "/keys/*/private-key",
    "/staging/*/private-key",
    "/history/*",
    "/requests/*/decision",  # dual control's claim: one decision per request
]
OVERWRITE_ABSENT_OR_FALSE = {"StringEqualsIfExists": {"ssm:Overwrite": "false"}}
PRESENT_AND_NOT_FALSE = {
    "Null": {"ssm:Overwrite": "false"},
    "StringNotEquals": {"ssm:Overwrite": "false"},
}


def test_operator_policy_reads_the_keyring_and_describes_parameters(
    template: dict[str, Any],
) -> None:
    by_sid = operator_statements(template)
    read = by_sid["ReadKeyring"]
    assert (read["Effect"], suffixes(read)) == ("Allow", ["/*"])
    assert set(actions(read)) == {
        "ssm:getparameter",
        "ssm:getparameters",
        "ssm:getparametersbypath",
        "ssm:getparameterhistory",
    }
    describe = by_sid["ReportParameterProtection"]
    assert (actions(describe), describe["Resource"]) == (["ssm:describeparameters"], "*")


def test_private_keys_and_history_are_created_once_never_overwritten(
    template: dict[str, Any],
) -> None:
    by_sid = operator_statements(template)
    create = by_sid["CreateOnce"]
    assert (create["Effect"], actions(create)) == ("Allow", ["ssm:putparameter"])
    assert suffixes(create) == PROTECTED
    assert create["Condition"] == OVERWRITE_ABSENT_OR_FALSE
    never = by_sid["NeverOverwrite"]
    assert (never["Effect"], actions(never)) == ("Deny", ["ssm:putparameter"])
    assert suffixes(never) == PROTECTED
    assert never["Condition"] == PRESENT_AND_NOT_FALSE
    records = by_sid["WriteKeyringRecords"]
    assert (records["Effect"], actions(records), "Condition" in records) == (
        "Allow",
        ["ssm:putparameter"],
        False,
    )
    assert suffixes(records) == [
        "/keys/*/metadata",
        "/keys/*/certificate",
        "/instances/*",
        "/staging/*/certificate",
        "/locks/*",
    ]
    # No other statement lets a parameter be written, and no path is both.
    writers = [s for s in by_sid.values() if "ssm:putparameter" in actions(s)]
    assert {s["Sid"] for s in writers} == {
        "CreateOnce",
        "NeverOverwrite",
        "NoParameterPolicies",
        "WriteKeyringRecords",
    }
    assert not set(suffixes(records)) & set(PROTECTED)
    assert not [s for s in suffixes(records) if s.startswith(("/audit", "/history"))]


def test_no_parameter_policy_can_be_attached(template: dict[str, Any]) -> None:
    deny = operator_statements(template)["NoParameterPolicies"]
    assert (deny["Effect"], actions(deny), suffixes(deny)) == ("Deny", ["ssm:putparameter"], ["/*"])
    assert deny["Condition"] == {
        "Null": {"ssm:Policies": "false"},
        "StringNotEquals": {"ssm:Policies": "false"},
    }
    granted = {a for s in operator_statements(template).values() for a in actions(s)}
    assert not [a for a in granted if a.startswith(("ssm:label", "ssm:addtags", "ssm:putres"))]


def test_only_what_the_lifecycle_deletes_can_be_deleted(template: dict[str, Any]) -> None:
    by_sid = operator_statements(template)
    delete = by_sid["LifecycleDeletes"]
    assert delete["Effect"] == "Allow" and "Condition" not in delete
    assert set(actions(delete)) == {"ssm:deleteparameter", "ssm:deleteparameters"}
    assert suffixes(delete) == ["/staging/*", "/locks/*", "/keys/*/private-key"]
    evidence = by_sid["NeverDeleteEvidence"]
    assert evidence["Effect"] == "Deny" and "Condition" not in evidence
    assert set(actions(evidence)) == {"ssm:deleteparameter", "ssm:deleteparameters"}
    assert suffixes(evidence) == [
        "/keys/*/metadata",
        "/keys/*/certificate",
        "/instances/*",
        "/history/*",
        "/requests/*/decision",
        "/audit/*",
    ]
    deleters = [
        s["Sid"] for s in by_sid.values() if any(a.startswith("ssm:delete") for a in actions(s))
    ]
    assert deleters == ["LifecycleDeletes", "NeverDeleteEvidence"]


def test_blog_parameters_are_read_only_and_never_by_the_rotator_lambda(
    template: dict[str, Any],
) -> None:
    blog = operator_statements(template)["ReadBlogToAdopt"]
    assert (blog["Effect"], actions(blog)) == ("Allow", ["ssm:getparameters"])
    base = "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter/"
    assert list(resource_strings(blog)) == [
        f"{base}CONNECT_INPUT_DECRYPTION_KEY",
        f"{base}CONNECT_INPUT_KEY_ID",
    ]
    assert blog["Condition"] == {
        "ArnNotEquals": {"aws:PrincipalArn": {"Fn::GetAtt": ["RotatorRole", "Arn"]}}
    }


def test_operator_policy_uses_the_key_only_through_ssm_for_private_keys(
    template: dict[str, Any],
) -> None:
    key = operator_statements(template)["KeyringKeyThroughSsm"]
    assert set(actions(key)) == {"kms:encrypt", "kms:decrypt", "kms:generatedatakey"}
    assert key["Resource"] == {"Fn::GetAtt": ["KeyringKey", "Arn"]}
    assert key["Condition"]["StringEquals"] == {
        "kms:ViaService": {"Fn::Sub": "ssm.${AWS::Region}.amazonaws.com"}
    }
    contexts = key["Condition"]["StringLike"]["kms:EncryptionContext:PARAMETER_ARN"]
    assert [c["Fn::Sub"].removeprefix(PARAMETER) for c in contexts] == [
        "/keys/*/private-key",
        "/staging/*/private-key",
    ]
    security = operator_statements(template)["SecurityKeys"]
    assert security["Resource"] == {"Ref": "ConnectInstanceArns"}


def test_operator_policy_is_an_output(template: dict[str, Any]) -> None:
    output = template["Outputs"]["OperatorPolicyArn"]
    assert output["Value"] == {"Ref": "OperatorPolicy"}  # a managed policy's Ref is its ARN
    rotator = resources(template)["RotatorFunction"]
    assert rotator["DependsOn"] == "OperatorPolicy"


# -- the keyring key and the decrypt Lambda raise alarms ------------------------------------


def _rule(template: dict[str, Any], name: str) -> dict[str, Any]:
    rule = resources(template)[name]
    assert rule["Type"] == "AWS::Events::Rule"
    properties: dict[str, Any] = rule["Properties"]
    assert properties["State"] == "ENABLED"
    pattern = properties["EventPattern"]
    assert pattern["source"] == ["aws.kms"]
    assert pattern["detail-type"] == ["AWS API Call via CloudTrail"]
    assert pattern["detail"]["eventSource"] == ["kms.amazonaws.com"]
    key_arn = {"Fn::GetAtt": ["KeyringKey", "Arn"]}
    assert pattern["detail"]["$or"] == [
        {"resources": {"ARN": [key_arn]}},
        {"requestParameters": {"keyId": [{"Ref": "KeyringKey"}, key_arn]}},
    ]
    (target,) = properties["Targets"]
    assert target["Arn"] == {"Ref": "AlertTopic"}
    paths = target["InputTransformer"]["InputPathsMap"]
    assert paths["event"] == "$.detail.eventName"
    assert paths["caller"] == "$.detail.userIdentity.arn"
    message = target["InputTransformer"]["InputTemplate"]["Fn::Sub"]
    assert message.startswith('"') and message.endswith('"')  # one JSON string for SNS
    assert "<event>" in message and "<caller>" in message and "${KeyringKey.Arn}" in message
    return properties


def test_disabling_or_scheduling_deletion_of_the_keyring_key_alerts(
    template: dict[str, Any],
) -> None:
    loss = _rule(template, "KeyringKeyLossRule")
    assert loss["EventPattern"]["detail"]["eventName"] == ["ScheduleKeyDeletion", "DisableKey"]
    policy = _rule(template, "KeyringKeyPolicyRule")
    assert policy["EventPattern"]["detail"]["eventName"] == ["PutKeyPolicy", "CreateGrant"]
    rules = [n for n, r in resources(template).items() if r["Type"] == "AWS::Events::Rule"]
    assert sorted(rules) == [
        "ConnectChangeRule",
        "ExpiryEventsRule",
        "KeyringKeyLossRule",
        "KeyringKeyPolicyRule",
    ]


def test_expiry_events_go_to_the_alert_topic(template: dict[str, Any]) -> None:
    rule = resources(template)["ExpiryEventsRule"]
    assert rule["Type"] == "AWS::Events::Rule"
    properties = rule["Properties"]
    assert properties["State"] == "ENABLED"
    assert "EventBusName" not in properties  # the default bus, where the rotator puts them
    assert properties["EventPattern"] == {
        "source": [EXPIRY_EVENT_SOURCE],
        "detail-type": [EXPIRY_EVENT_DETAIL_TYPE],
    }
    (target,) = properties["Targets"]
    assert target["Arn"] == {"Ref": "AlertTopic"}
    paths = target["InputTransformer"]["InputPathsMap"]
    assert paths == {
        "key": "$.detail.keyId",
        "instance": "$.detail.instanceId",
        "notAfter": "$.detail.notAfter",
        "days": "$.detail.daysToExpiry",
        "threshold": "$.detail.threshold",
    }
    message = target["InputTransformer"]["InputTemplate"]
    assert message.startswith('"') and message.endswith('"')  # one JSON string for SNS
    assert all(f"<{name}>" in message for name in paths)
    assert "runbooks/certificate-expiry.md" in message
    assert (TEMPLATE.parents[1] / "runbooks" / "certificate-expiry.md").is_file()
    # The rotation job's thresholds are the stack's parameter.
    function = resources(template)["RotatorFunction"]["Properties"]
    variables = function["Environment"]["Variables"]
    assert variables[RotatorEnv.EXPIRY_EVENT_DAYS] == {"Ref": "ExpiryEventDays"}
    assert RotatorEnv.EVENT_BUS not in variables  # the default bus, which the rule is on


def test_the_rotator_role_puts_events_on_the_default_bus_with_its_source_only(
    template: dict[str, Any],
) -> None:
    granting = [
        s for s in role_statements(template, "RotatorRole") if "events:putevents" in actions(s)
    ]
    (statement,) = granting
    assert (statement["Effect"], actions(statement)) == ("Allow", ["events:putevents"])
    assert list(resource_strings(statement)) == [
        "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/default"
    ]
    assert statement["Condition"] == {
        "StringEquals": {
            "events:source": EXPIRY_EVENT_SOURCE,
            "events:detail-type": EXPIRY_EVENT_DETAIL_TYPE,
        }
    }
    others = [r for r in roles(template) if r != "RotatorRole"]
    assert all(
        not any(a.startswith("events:") for a in allowed_actions(template, r)) for r in others
    )


def test_alert_topic_lets_the_rules_and_the_alarms_publish(template: dict[str, Any]) -> None:
    (policy,) = [
        r["Properties"]
        for r in resources(template).values()
        if r["Type"] == "AWS::SNS::TopicPolicy"
    ]
    assert policy["Topics"] == [{"Ref": "AlertTopic"}]
    by_sid = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert set(by_sid) == {
        "AlarmsOfThisAccount",
        "KeyringKeyRules",
        "ExpiryEvents",
        "ConnectChangeRule",
    }
    for statement in by_sid.values():
        assert (statement["Effect"], actions(statement)) == ("Allow", ["sns:publish"])
        assert statement["Resource"] == {"Ref": "AlertTopic"}
    rules = by_sid["KeyringKeyRules"]
    assert rules["Principal"] == {"Service": "events.amazonaws.com"}
    assert rules["Condition"] == {
        "ArnEquals": {
            "aws:SourceArn": [
                {"Fn::GetAtt": ["KeyringKeyLossRule", "Arn"]},
                {"Fn::GetAtt": ["KeyringKeyPolicyRule", "Arn"]},
            ]
        }
    }
    expiry = by_sid["ExpiryEvents"]
    assert expiry["Principal"] == {"Service": "events.amazonaws.com"}
    assert expiry["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ExpiryEventsRule", "Arn"]}}
    }
    connect_changes = by_sid["ConnectChangeRule"]
    assert connect_changes["Principal"] == {"Service": "events.amazonaws.com"}
    assert connect_changes["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["ConnectChangeRule", "Arn"]}}
    }
    alarms = by_sid["AlarmsOfThisAccount"]
    assert alarms["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert alarms["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}


def test_a_decrypt_configuration_error_raises_an_alarm(template: dict[str, Any]) -> None:
    found = resources(template)
    metric_filter = found["DecryptConfigErrorMetricFilter"]["Properties"]
    assert metric_filter["FilterPattern"] == '{ $.error = "config" }'
    assert metric_filter["LogGroupName"] == {"Ref": "DecryptLogGroup"}
    (transformation,) = metric_filter["MetricTransformations"]
    assert transformation["MetricName"] == "DecryptConfigErrors"
    assert transformation["MetricNamespace"] == {"Ref": "MetricsNamespace"}
    alarm = _alarm(template, "DecryptConfigErrors", {"Ref": "MetricsNamespace"})
    assert (alarm["Statistic"], alarm["ComparisonOperator"], alarm["Threshold"]) == (
        "Sum",
        "GreaterThanThreshold",
        0,
    )
    # The filter watches the log group the function really writes to.
    log_group = found["DecryptLogGroup"]["Properties"]
    assert log_group["LogGroupName"] == {"Fn::Sub": "/aws/lambda/${AWS::StackName}-decrypt"}
    logging = found["DecryptFunction"]["Properties"]["LoggingConfig"]
    assert logging["LogGroup"] == {"Ref": "DecryptLogGroup"}


# -- drift and substitution (3.7.7): a Connect change by anyone but the rotator -----------------


def test_a_connect_key_or_flow_change_not_by_the_rotator_alerts_and_starts_a_verify_run(
    template: dict[str, Any],
) -> None:
    found = resources(template)
    rule = found["ConnectChangeRule"]
    assert rule["Type"] == "AWS::Events::Rule"
    properties = rule["Properties"]
    assert properties["State"] == "ENABLED" and "EventBusName" not in properties
    pattern = properties["EventPattern"]
    assert pattern["source"] == ["aws.connect"]
    assert pattern["detail-type"] == ["AWS API Call via CloudTrail"]
    detail = pattern["detail"]
    assert detail["eventSource"] == ["connect.amazonaws.com"]
    assert detail["eventName"] == [
        "AssociateSecurityKey",
        "DisassociateSecurityKey",
        "UpdateContactFlowContent",
        "UpdateContactFlowModuleContent",
    ]
    # Any caller whose session was not issued by the rotator's role, or that has no session
    # issuer at all (an IAM user, the root user): anything-but does not match a missing field.
    not_the_rotator, no_issuer = detail["$or"]
    issuer = not_the_rotator["userIdentity"]["sessionContext"]["sessionIssuer"]
    assert issuer == {"arn": [{"anything-but": [{"Fn::GetAtt": ["RotatorRole", "Arn"]}]}]}
    issuer = no_issuer["userIdentity"]["sessionContext"]["sessionIssuer"]
    assert issuer == {"arn": [{"exists": False}]}

    alert, verify = properties["Targets"]
    assert alert["Arn"] == {"Ref": "AlertTopic"}
    paths = alert["InputTransformer"]["InputPathsMap"]
    assert paths["event"] == "$.detail.eventName"
    assert paths["caller"] == "$.detail.userIdentity.arn"
    assert paths["instance"] == "$.detail.requestParameters.InstanceId"
    message = alert["InputTransformer"]["InputTemplate"]
    assert message.startswith('"') and message.endswith('"')  # one JSON string for SNS
    assert all(f"<{name}>" in message for name in paths)
    assert "runbooks/flow-drift.md" in message
    assert (TEMPLATE.parents[1] / "runbooks" / "flow-drift.md").is_file()

    assert verify["Arn"] == {"Fn::GetAtt": ["RotatorFunction", "Arn"]}
    assert json.loads(verify["Input"]) == {"job": "verify"}
    assert "InputTransformer" not in verify and "InputPath" not in verify
    (permission,) = [
        r["Properties"]
        for r in found.values()
        if r["Type"] == "AWS::Lambda::Permission"
        and r["Properties"].get("Principal") == "events.amazonaws.com"
    ]
    assert permission["Action"] == "lambda:InvokeFunction"
    assert permission["FunctionName"] == {"Fn::GetAtt": ["RotatorFunction", "Arn"]}
    assert permission["SourceArn"] == {"Fn::GetAtt": ["ConnectChangeRule", "Arn"]}


def test_the_verify_input_is_a_job_the_lambda_knows() -> None:
    from rotator.entrypoints.scheduled import Job

    assert Job("verify") is Job.VERIFY


def test_the_decrypt_function_publishes_snapstart_versions_behind_the_live_alias(
    template: dict[str, Any],
) -> None:
    decrypt = resources(template)["DecryptFunction"]["Properties"]
    assert decrypt["AutoPublishAlias"] == DECRYPT_ALIAS  # what `verify` expects flows to name
    # SnapStart on published versions, unless provisioned concurrency (Lambda allows one).
    assert decrypt["SnapStart"] == {
        "ApplyOn": {"Fn::If": ["DecryptHasProvisionedConcurrency", "None", "PublishedVersions"]}
    }
    # A runtime SnapStart supports for Python (3.12 and later), the one packaging builds for.
    major, minor = read_target(TEMPLATE).python_version.split(".")
    assert (int(major), int(minor)) >= (3, 12)


def test_connect_is_associated_with_the_alias_and_may_still_invoke_the_function(
    template: dict[str, Any],
) -> None:
    """The alias is what Connect is given; the unqualified function stays invocable so that
    flows not yet repointed keep decrypting through the upgrade (no contact lost)."""
    (loop,) = [v for k, v in template["Resources"].items() if k.startswith("Fn::ForEach::")]
    alias = {"Ref": "DecryptFunction.Alias"}
    invoked = sorted(
        json.dumps(r["Properties"]["FunctionName"])
        for r in loop[2].values()
        if r["Type"] == "AWS::Lambda::Permission"
    )
    assert invoked == sorted([json.dumps(alias), json.dumps({"Ref": "DecryptFunction"})])
    (association,) = [
        r["Properties"]
        for r in loop[2].values()
        if r["Type"] == "AWS::Connect::IntegrationAssociation"
    ]
    assert association["IntegrationArn"] == alias
    assert template["Outputs"]["DecryptFunctionArn"]["Value"] == alias
    # No other permission lets anything invoke the decrypt function, qualified or not.
    others = [
        r["Properties"]["FunctionName"]
        for name, r in resources(template).items()
        if r["Type"] == "AWS::Lambda::Permission" and not name.startswith("ConnectInvokesDecrypt")
    ]
    assert all("Decrypt" not in json.dumps(target) for target in others)


@pytest.mark.parametrize(
    ("provisioned", "snapstart", "config"),
    [
        ("0", "PublishedVersions", None),
        ("5", "None", {"ProvisionedConcurrentExecutions": "5"}),
    ],
)
def test_provisioned_concurrency_is_optional_and_replaces_snapstart(
    template: dict[str, Any], provisioned: str, snapstart: str, config: dict[str, str] | None
) -> None:
    """Parameters reach conditions as strings (CloudFormation's Ref of a Number)."""
    from tests.cfn_policy import Stack

    spec = template["Parameters"]["DecryptProvisionedConcurrency"]
    assert (spec["Type"], spec["Default"], spec["MinValue"]) == ("Number", 0, 0)
    stack = Stack(template, {"DecryptProvisionedConcurrency": provisioned})
    decrypt = stack.resolve(
        {
            key: resources(template)["DecryptFunction"]["Properties"][key]
            for key in ("SnapStart", "ProvisionedConcurrencyConfig")
        }
    )
    assert decrypt["SnapStart"] == {"ApplyOn": snapstart}
    assert decrypt.get("ProvisionedConcurrencyConfig") == config


def test_the_report_describes_the_keyring_key_and_reads_only_the_decrypt_functions_config(
    template: dict[str, Any],
) -> None:
    """Evidence (issue 11): kms:DescribeKey on the keyring key and lambda:GetFunctionConfiguration
    on the decrypt function, nothing else on either; and the rotator told which function."""
    found = resources(template)
    statements = found["OperatorPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    granting = [
        s
        for s in statements
        if s["Effect"] == "Allow"
        and any(a.startswith(("lambda:", "kms:describekey")) for a in actions(s))
    ]
    assert [s["Sid"] for s in granting] == ["ReportEvidence"]
    (evidence,) = granting
    assert sorted(actions(evidence)) == ["kms:describekey", "lambda:getfunctionconfiguration"]
    assert evidence["Resource"] == [
        {"Fn::GetAtt": ["KeyringKey", "Arn"]},
        {"Fn::GetAtt": ["DecryptFunction", "Arn"]},
    ]
    assert "Condition" not in evidence
    environment = found["RotatorFunction"]["Properties"]["Environment"]["Variables"]
    assert environment["ROTATOR_DECRYPT_FUNCTION"] == {"Ref": "DecryptFunction"}
    for parameter, default in (
        ("RotationWindow", ""),
        ("Freeze", ""),
        ("RenewBeforeMinimumDays", 7),
    ):
        assert template["Parameters"][parameter]["Default"] == default


# -- the rewrap function (issue 13): S3 Batch Operations' job function, least privilege --------


def test_the_rewrap_function_runs_the_rotator_code_with_least_privilege(
    template: dict[str, Any],
) -> None:
    found = resources(template)
    function = found["RewrapFunction"]
    assert function["Condition"] == "HasRewrapStores"
    properties = function["Properties"]
    assert properties["Handler"] == "rotator.entrypoints.batch_rewrap.handler"
    assert properties["CodeUri"] == "../build/rotator.zip"  # the same code as the CLI's
    assert properties["Role"] == {"Fn::GetAtt": ["RewrapRole", "Arn"]}
    assert properties["Environment"]["Variables"]["ROTATOR_CIPHERTEXT_STORES"] == {
        "Ref": "RewrapStores"
    }
    assert allowed_actions(template, "RewrapRole") == {
        "s3:getobject",
        "s3:putobject",
        "s3:getbucketversioning",
        "ssm:getparameter",
        "ssm:getparameters",
        "kms:decrypt",
        "logs:createlogstream",
        "logs:putlogevents",
    }
    by_sid = {s["Sid"]: s for s in role_statements(template, "RewrapRole")}
    # Objects of the registered buckets only: ARNs made of the parameter, never a wildcard.
    for sid in ("RewriteStoredObjects", "CheckVersioning"):
        text = json.dumps(by_sid[sid]["Resource"])
        assert '"Ref": "RewrapStoreBuckets"' in text and ":::*" not in text
    keyring = list(resource_strings(by_sid["ReadKeyring"]))
    assert keyring == [f"{PARAMETER}/keys/*", f"{PARAMETER}/instances/*/current"]
    decrypt = by_sid["DecryptPrivateKeysThroughSsm"]
    assert decrypt["Resource"] == {"Fn::GetAtt": ["KeyringKey", "Arn"]}
    assert "kms:ViaService" in decrypt["Condition"]["StringEquals"]
    statements = found["KeyringKey"]["Properties"]["KeyPolicy"]["Statement"]
    (conditional,) = [
        s for s in statements if "Fn::If" in s and s["Fn::If"][0] == "HasRewrapStores"
    ]
    granted = conditional["Fn::If"][1]
    assert granted["Principal"] == {"AWS": {"Fn::GetAtt": ["RewrapRole", "Arn"]}}
    assert actions(granted) == ["kms:decrypt"]
    assert granted["Condition"] == decrypt["Condition"]


def test_the_rewrap_batch_job_may_only_invoke_the_rewrap_function(
    template: dict[str, Any],
) -> None:
    role = resources(template)["RewrapBatchRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "batchoperations.s3.amazonaws.com"}
    by_sid = {s["Sid"]: s for s in role_statements(template, "RewrapBatchRole")}
    assert actions(by_sid["InvokeRewrap"]) == ["lambda:invokefunction"]
    assert by_sid["InvokeRewrap"]["Resource"] == {"Fn::GetAtt": ["RewrapFunction", "Arn"]}
    assert list(resource_strings(by_sid["ManifestAndReport"])) == ["${ReportBucket.Arn}/rewrap/*"]
    assert template["Parameters"]["RewrapStoreBuckets"]["Default"] == ""
