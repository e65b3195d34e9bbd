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
import yaml

from lambda_decrypt.config import Env
from rotator.config import RotatorEnv
from rotator.packaging import DEFAULT_TEMPLATE, Target, read_target

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "template.yaml"
DECRYPT_ALLOWED = {
    "ssm:getparameter",
    "ssm:getparameters",
    "kms:decrypt",
    "logs:createlogstream",
    "logs:putlogevents",
}
KEYRING_WRITES = ("ssm:put*", "ssm:delete*", "ssm:label*", "ssm:addtags*", "ssm:removetags*")


class CfnLoader(yaml.SafeLoader):
    """PyYAML with CloudFormation's short tags (!Ref, !Sub, !GetAtt, ...) as plain mappings."""


def _intrinsic(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)  # noqa: S506
    return loaded


def resources(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every resource, the ones inside Fn::ForEach loops under their logical ID templates."""
    found: dict[str, dict[str, Any]] = {}
    for name, body in template["Resources"].items():
        if name.startswith("Fn::ForEach::"):
            found.update(body[2])
        else:
            found[name] = body
    return found


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
    assert granted <= DECRYPT_ALLOWED
    assert "ssm:getparameters" in granted and "kms:decrypt" in granted
    for statement in role_statements(template, "DecryptRole"):
        if any(a.startswith("ssm:") for a in actions(statement)):
            for resource in resource_strings(statement):
                assert "parameter${KeyringPrefix}/keys/" in resource
                assert resource.endswith(("/private-key", "/metadata"))


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


def test_metrics_permission_is_limited_to_the_namespace(template: dict[str, Any]) -> None:
    (metrics,) = [
        s
        for s in role_statements(template, "RotatorRole")
        if "cloudwatch:putmetricdata" in actions(s)
    ]
    condition = metrics["Condition"]["StringEquals"]["cloudwatch:namespace"]
    assert condition == {"Ref": "MetricsNamespace"}


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
    (permission,) = [r for r in loop[2].values() if r["Type"] == "AWS::Lambda::Permission"]
    properties = permission["Properties"]
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
    ]
    assert metric_filter["FilterPattern"] == '{ $.outcome = "error" }'
    assert metric_filter["LogGroupName"] == {"Ref": "DecryptLogGroup"}
    assert metric_filter["MetricTransformations"][0]["MetricName"] == "DecryptFailures"


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
    assert {a for a in granted if a.startswith("ssm:")} <= {"ssm:getparameter", "ssm:getparameters"}


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
