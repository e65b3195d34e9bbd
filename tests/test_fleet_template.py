"""deploy/template.yaml's fleet mode and its state machine (deploy/statemachine/fleet.asl.json):
the Map runs over the evaluation's output, one rotator invocation per due instance, bounded by
the template's parameters; the tasks invoke the rotator function and the job names are the
Lambda's; least privilege across the account boundary; no fleet parameter, no fleet resource."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rotator.domain.fleet import Target
from rotator.entrypoints.scheduled import FLEET_JOBS
from rotator.services.jobs import rotate_target_job
from rotator.services.rotation import InstanceResult, Outcome
from tests.cfn_policy import ACCOUNT, REGION, Request, Stack, decide, load_template, resources
from tests.conftest import NOW

ROOT = Path(__file__).resolve().parents[1]
DEFINITION = ROOT / "deploy" / "statemachine" / "fleet.asl.json"
MEMBER_ROLES = [
    "arn:aws:iam::111111111111:role/connect-key-rotator-member",
    "arn:aws:iam::222222222222:role/connect-key-rotator-member",
]
EXTERNAL_ID = "fleet-external-id-0123"
FLEET = {
    "FleetAccounts": json.dumps(
        [
            {
                "name": "prod",
                "role_arn": MEMBER_ROLES[0],
                "external_id": EXTERNAL_ID,
                "regions": [REGION],
            },
            {
                "name": "test",
                "role_arn": MEMBER_ROLES[1],
                "external_id": EXTERNAL_ID,
                "regions": [REGION],
            },
        ]
    ),
    "FleetMemberRoleArns": MEMBER_ROLES,
    "FleetExternalId": EXTERNAL_ID,
    "FleetConcurrency": 3,
    "FleetPartitionConcurrency": 7,
}
FLEET_RESOURCES = {
    "FleetAssumeMemberRoles",
    "FleetStateMachineRole",
    "FleetStateMachine",
    "FleetSchedulerRole",
    "FleetRotationSchedule",
}
ROTATOR_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:rot"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def definition() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DEFINITION.read_text())
    return loaded


def _tasks(states: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every Task state, nested Maps included."""
    found = {}
    for name, state in states.items():
        if state["Type"] == "Task":
            found[name] = state
        if state["Type"] == "Map":
            found |= _tasks(state["ItemProcessor"]["States"])
    return found


def test_the_map_runs_over_the_evaluations_output(definition: dict[str, Any]) -> None:
    states = definition["States"]
    assert definition["StartAt"] == "Evaluate"
    evaluate = states["Evaluate"]
    assert evaluate["Parameters"]["Payload"] == {"job": "evaluate"}
    assert evaluate["ResultPath"] == "$.fleet"
    assert evaluate["ResultSelector"]["units.$"] == "$.Payload.units"
    assert evaluate["Next"] == "RotatePartitions"
    partitions = states["RotatePartitions"]
    assert partitions["Type"] == "Map" and partitions["ItemsPath"] == "$.fleet.units"
    assert partitions["ItemSelector"]["targets.$"] == "$$.Map.Item.Value"
    inner = partitions["ItemProcessor"]["States"][partitions["ItemProcessor"]["StartAt"]]
    assert inner["Type"] == "Map" and inner["ItemsPath"] == "$.targets"
    unit = inner["ItemProcessor"]["States"][inner["ItemProcessor"]["StartAt"]]
    assert unit["Parameters"]["Payload"] == {"job": "rotate-target", "target.$": "$"}
    # The units' results replace the units: the state stays small (256 KB at most).
    assert partitions["ResultPath"] == "$.fleet.units" and partitions["Next"] == "Aggregate"
    aggregate = states["Aggregate"]
    assert aggregate["Parameters"]["Payload"] == {
        "job": "aggregate",
        "evaluation": {
            "errors.$": "$.fleet.errors",
            "min_days_to_expiry.$": "$.fleet.min_days_to_expiry",
        },
        "results.$": "$.fleet.units",
    }
    assert aggregate.get("End") is True
    # A failed invocation is a failed result, not a failed execution.
    (catch,) = unit["Catch"]
    assert catch["ErrorEquals"] == ["States.ALL"]
    failed = inner["ItemProcessor"]["States"][catch["Next"]]
    assert failed["Parameters"]["outcome"] == "failed"


def test_max_concurrency_is_the_templates_parameters(
    template: dict[str, Any], definition: dict[str, Any]
) -> None:
    partitions = definition["States"]["RotatePartitions"]
    inner = partitions["ItemProcessor"]["States"]["RotateTargets"]
    assert partitions["MaxConcurrencyPath"] == "$.concurrency.partitions"
    assert partitions["ItemSelector"]["per_partition.$"] == "$.concurrency.per_partition"
    assert inner["MaxConcurrencyPath"] == "$.per_partition"
    assert "MaxConcurrency" not in partitions and "MaxConcurrency" not in inner
    # The execution input is the schedule's, made of the two parameters.
    stack = Stack(template, FLEET)
    schedule = stack.resource("FleetRotationSchedule")["Properties"]
    assert json.loads(schedule["Target"]["Input"]) == {
        "concurrency": {"partitions": 7, "per_partition": 3}
    }
    assert schedule["Target"]["Arn"] == stack.physical_ids["FleetStateMachine"][0]
    assert schedule["State"] == "ENABLED"
    assert (
        schedule["ScheduleExpression"]
        == stack.resource("RotationSchedule")["Properties"]["ScheduleExpression"]
    )
    # The direct schedule stands down: the rotation runs once a day, through the state machine.
    assert stack.resource("RotationSchedule")["Properties"]["State"] == "DISABLED"
    bounds = template["Parameters"]
    assert bounds["FleetConcurrency"]["MaxValue"] <= 5  # Connect's burst per account region


def test_the_tasks_invoke_the_rotator_function_with_its_jobs(
    template: dict[str, Any], definition: dict[str, Any]
) -> None:
    tasks = _tasks(definition["States"])
    assert set(tasks) == {"Evaluate", "RotateTarget", "Aggregate"}
    for task in tasks.values():
        assert task["Resource"] == "arn:aws:states:::lambda:invoke"
        assert task["Parameters"]["FunctionName"] == "${RotatorFunctionArn}"
    assert {t["Parameters"]["Payload"]["job"] for t in tasks.values()} == {
        j.value for j in FLEET_JOBS
    }
    machine = resources(template)["FleetStateMachine"]
    assert machine["Condition"] == "IsFleet"
    properties = machine["Properties"]
    assert (ROOT / "deploy" / properties["DefinitionUri"]).resolve() == DEFINITION
    assert properties["DefinitionSubstitutions"] == {
        "RotatorFunctionArn": {"Fn::GetAtt": ["RotatorFunction", "Arn"]}
    }


def test_the_units_summary_has_what_the_map_selects(definition: dict[str, Any]) -> None:
    unit = _tasks(definition["States"])["RotateTarget"]

    class Rotation:
        def rotate(self, instance_id: str, now: object, **_: object) -> list[InstanceResult]:
            return [InstanceResult(instance_id, Outcome.ROTATED, "rotated")]

    summary = rotate_target_job(Rotation(), Target("prod", REGION, "i-1"), NOW)  # type: ignore[arg-type]
    selected = {path.removeprefix("$.Payload.") for path in unit["ResultSelector"].values()}
    assert selected <= set(summary)


def test_the_evaluations_output_has_what_the_map_selects(definition: dict[str, Any]) -> None:
    from rotator.domain.fleet import Partition
    from rotator.services.fleet import DueTarget, Evaluation, PartitionEvaluation

    due = DueTarget(Target("prod", REGION, "i-1"), "first key")
    evaluation = Evaluation(
        NOW,
        (
            PartitionEvaluation(Partition("prod", REGION), (due,), 1, min_days_to_expiry=40.0),
            PartitionEvaluation(Partition("test", REGION), (), 3, min_days_to_expiry=12.5),
        ),
    ).to_dict()
    selector = definition["States"]["Evaluate"]["ResultSelector"]
    assert {path.removeprefix("$.Payload.") for path in selector.values()} <= set(evaluation)
    # A list of targets per partition that has any: each a Map iteration of its own.
    assert evaluation["units"] == [[{"account": "prod", "region": REGION, "instance_id": "i-1"}]]
    assert evaluation["min_days_to_expiry"] == 12.5


def test_the_state_machine_may_invoke_only_the_rotator(template: dict[str, Any]) -> None:
    stack = Stack(template, FLEET)
    role = stack.resource("FleetStateMachineRole")["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "states.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}
    (statement,) = stack.role_policies("FleetStateMachineRole")
    assert statement == {
        "Effect": "Allow",
        "Action": "lambda:InvokeFunction",
        "Resource": ROTATOR_ARN,
    }
    assert stack.resource("FleetStateMachine")["Properties"]["Role"].endswith("FleetSm-EF56")
    (start,) = stack.role_policies("FleetSchedulerRole")
    assert start["Action"] == "states:StartExecution"
    assert start["Resource"] == stack.physical_ids["FleetStateMachine"][0]


def test_the_rotator_may_assume_only_the_member_roles_with_the_external_id(
    template: dict[str, Any],
) -> None:
    stack = Stack(template, FLEET)
    statements = stack.role_policies("RotatorRole")
    with_id = (("sts:ExternalId", EXTERNAL_ID),)
    for role in MEMBER_ROLES:
        assert decide(statements, Request("sts:AssumeRole", role, with_id)) == "allow"
        assert decide(statements, Request("sts:AssumeRole", role)) == "implicit deny"
        wrong = (("sts:ExternalId", "guess"),)
        assert decide(statements, Request("sts:AssumeRole", role, wrong)) == "implicit deny"
    other = "arn:aws:iam::333333333333:role/connect-key-rotator-member"
    assert decide(statements, Request("sts:AssumeRole", other, with_id)) == "implicit deny"
    assume = [s for s in statements if "sts:" in str(s["Action"]).lower()]
    assert [s["Action"] for s in assume] == ["sts:AssumeRole"]
    assert "*" not in json.dumps([s["Resource"] for s in assume])


def test_no_fleet_no_fleet_resource_and_no_cross_account_right(template: dict[str, Any]) -> None:
    found = resources(template)
    assert {
        name
        for name, body in found.items()
        if body.get("Condition")
        in (
            "IsFleet",
            "MayAssumeMemberRoles",
        )
    } == FLEET_RESOURCES
    single = Stack(template)
    assert not single.condition("IsFleet")
    assert not [
        s for s in single.role_policies("RotatorRole") if "sts:" in str(s["Action"]).lower()
    ]
    assert single.resource("RotationSchedule")["Properties"]["State"] == "ENABLED"
    # Fleet accounts without member roles: nothing to assume (fail closed).
    unroled = Stack(template, {**FLEET, "FleetMemberRoleArns": ""})
    assert unroled.condition("IsFleet") and not unroled.condition("MayAssumeMemberRoles")
    assert template["Outputs"]["FleetStateMachineArn"]["Condition"] == "IsFleet"
    assert template["Parameters"]["FleetExternalId"]["NoEcho"] is True
    variables = single.resource("RotatorFunction")["Properties"]["Environment"]["Variables"]
    assert variables["ROTATOR_ACCOUNTS"] == ""
    fleet = Stack(template, FLEET).resource("RotatorFunction")["Properties"]["Environment"]
    assert json.loads(fleet["Variables"]["ROTATOR_ACCOUNTS"])[1]["name"] == "test"
