"""The rotator's Lambda: an EventBridge Scheduler event in, a run summary out.

Three jobs share the function: the rotation (the default), the weekly compliance report
(`{"job": "report"}`) and `rotator verify`'s checks (`{"job": "verify"}`, which the CloudTrail
rule on a Connect key or flow change made by anyone but the rotator sends at once); all are
`rotator.services.jobs`, which `rotator serve` runs too. In fleet mode (ROTATOR_ACCOUNTS set)
the state machine (deploy/statemachine/fleet.asl.json) invokes it for its steps: `evaluate`,
one `rotate-target` per due instance, then `aggregate`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from lambda_decrypt.logs import configure_logging
from rotator.clock import clock_from_environment
from rotator.config import RotatorEnv, Settings
from rotator.domain.fleet import Partition, Target, select_partitions
from rotator.entrypoints.bootstrap import (
    Adapters,
    build_adapters,
    build_fleet_adapters,
    build_publisher,
)
from rotator.entrypoints.invocation import on_clock, requested_time
from rotator.errors import ConfigError
from rotator.ports import Publisher
from rotator.services.fleet_report import FleetReport, PartitionSources, make_fleet_report
from rotator.services.jobs import (
    ReportDestinations,
    aggregate_job,
    evaluate_job,
    report_job,
    report_maker,
    rotate_target_job,
    rotation_job,
    verify_job,
)

REPORT_DESTINATIONS = (
    f"{RotatorEnv.REPORT_S3_URI}, {RotatorEnv.REPORT_SNS_TOPIC_ARN} or {RotatorEnv.SNS_TOPIC_ARN}"
)


class Job(StrEnum):
    ROTATION = "rotation"
    REPORT = "report"
    VERIFY = "verify"
    # Fleet mode: the steps of deploy/statemachine/fleet.asl.json.
    EVALUATE = "evaluate"
    ROTATE_TARGET = "rotate-target"
    AGGREGATE = "aggregate"


FLEET_JOBS = (Job.EVALUATE, Job.ROTATE_TARGET, Job.AGGREGATE)


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The input may carry {"job": "rotation" | "report" | "verify"} (no job: the rotation; fleet
    mode's state machine sends "evaluate", "rotate-target" and "aggregate") and
    {"now": ISO 8601} for a what-if run that evaluates at that time and changes, publishes and
    delivers nothing; otherwise the clock. Never raises for a bad input or a failure of AWS
    calls: the summary's "ok" and "error", the metrics and the notices carry it."""
    try:
        job = _job(event)
        requested = _requested_now(event)
        settings = Settings.load()
    except ConfigError as error:
        return {"ok": False, "error": str(error)}
    configure_logging(settings.log_level)
    clock = clock_from_environment()
    what_if = requested is not None
    now = requested if requested is not None else clock.now()
    if job in FLEET_JOBS:
        return fleet_run(job, event, settings, now, what_if=what_if, simulated=clock.simulated)
    if job is Job.REPORT and settings.fleet:
        built = build_fleet_adapters(
            settings, select_partitions(settings.fleet), simulated_clock=clock.simulated
        )
        make = report_for_fleet(built, settings)
        destinations = lambda_destinations(settings)
        publisher = build_publisher(settings)
        return report_job(make, publisher, destinations, now, what_if=what_if).to_dict()
    adapters = build_adapters(settings, simulated_clock=clock.simulated)
    publisher = build_publisher(settings)
    if job is Job.REPORT:
        return report_run(adapters, publisher, now, what_if=what_if)
    if job is Job.VERIFY:
        return verify_job(adapters.invariants(), publisher, now, what_if=what_if).to_dict()
    function = getattr(context, "function_name", None) or "rotator"
    actor = f"eventbridge-scheduler ({function})"
    rotation = adapters.rotation(on_clock(actor, simulated=clock.simulated))
    run = rotation_job(rotation, adapters.keyring, publisher, settings.policy, now, what_if=what_if)
    return run.to_dict()


def report_run(
    adapters: Adapters, publisher: Publisher, now: datetime, *, what_if: bool = False
) -> dict[str, Any]:
    """The report job at `now`, delivered to ROTATOR_REPORT_S3_URI and the report topic."""
    settings = adapters.settings
    make = report_maker(
        adapters.keyring,
        adapters.connect,
        adapters.lock,
        settings.report_options(),
        evidence=adapters.evidence(),
    )
    destinations = lambda_destinations(settings)
    return report_job(make, publisher, destinations, now, what_if=what_if).to_dict()


def fleet_run(
    job: Job,
    event: dict[str, Any],
    settings: Settings,
    now: datetime,
    *,
    what_if: bool,
    simulated: bool,
) -> dict[str, Any]:
    """A step of the fleet's state machine: `evaluate` (every partition's keyring), one
    `rotate-target` ({"target": {"account", "region", "instance_id"}}: that partition's adapters
    only), or `aggregate` ({"evaluation": ..., "results": [...]}: the Map's output)."""
    try:
        if not settings.fleet:
            raise ConfigError(
                str(RotatorEnv.ACCOUNTS), f"the {job} job is fleet mode's: no accounts are set"
            )
        if job is Job.AGGREGATE:
            evaluation, results = _aggregate_input(event)
            built = build_fleet_adapters(
                settings, select_partitions(settings.fleet), simulated_clock=simulated
            )
            rotations = {
                partition: adapters.rotation(
                    on_clock(f"step-functions ({partition})", simulated=simulated)
                )
                for partition, adapters in built.items()
            }
            return aggregate_job(
                evaluation,
                results,
                build_publisher(settings),
                now,
                partitions=rotations,
                report=report_for_fleet(built, settings),
                destinations=lambda_destinations(settings),
                what_if=what_if,
            ).to_dict()
        if job is Job.EVALUATE:
            partitions = select_partitions(settings.fleet)
            built = build_fleet_adapters(settings, partitions, simulated_clock=simulated)
            keyrings = {partition: adapters.keyring for partition, adapters in built.items()}
            return evaluate_job(
                keyrings, settings.policy, now, schedule=settings.schedule, what_if=what_if
            )
        target = _target(event, settings)
        (adapters,) = build_fleet_adapters(
            settings, [target.partition], simulated_clock=simulated
        ).values()
        actor = f"step-functions ({target.account}/{target.region})"
        rotation = adapters.rotation(on_clock(actor, simulated=simulated))
        return rotate_target_job(rotation, target, now, what_if=what_if)
    except ConfigError as error:
        return {"ok": False, "job": str(job), "error": str(error)}


def report_for_fleet(
    built: Mapping[Partition, Adapters], settings: Settings
) -> Callable[[datetime], FleetReport]:
    """The fleet report's maker (one report, a section per account and region) over every
    partition's adapters, which `report_job` delivers: ReportFindings, S3, the report topic.
    Each member's keyring key is described, and its decrypt function's environment scanned
    (the account's decrypt_function), through its own role."""
    sources = {
        partition: PartitionSources(
            adapters.keyring, adapters.connect, adapters.lock, adapters.evidence()
        )
        for partition, adapters in built.items()
    }
    options = settings.report_options()
    return lambda now: make_fleet_report(sources, options, now)


def _target(event: dict[str, Any], settings: Settings) -> Target:
    try:
        target = Target.from_dict(event.get("target"))
        select_partitions(settings.fleet, account=target.account, region=target.region)
    except ValueError as error:
        raise ConfigError("event.target", str(error)) from None
    return target


def _aggregate_input(event: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    evaluation = event.get("evaluation") or {}
    results = event.get("results") or []
    if not isinstance(evaluation, dict) or not isinstance(results, list):
        raise ConfigError("event", "aggregate takes {evaluation: {...}, results: [...]}")
    # The Map's output is one list per partition (the inner Map's); each item a unit's summary,
    # or what a Catch recorded for a failed invocation.
    flat = [item for r in results for item in (r if isinstance(r, list) else [r])]
    items = [r if isinstance(r, dict) else {"outcome": "failed", "error": str(r)} for r in flat]
    return evaluation, items


def lambda_destinations(settings: Settings) -> ReportDestinations:
    """The Lambda's report destinations: all from the environment."""
    return ReportDestinations(
        REPORT_DESTINATIONS, s3_uri=settings.report_s3_uri, topic_arn=settings.report_topic_arn
    )


def _job(event: Any) -> Job:
    raw = event.get("job") if isinstance(event, dict) else None
    if raw is None:
        return Job.ROTATION
    expected = [job.value for job in Job]
    if isinstance(raw, str) and raw in expected:
        return Job(raw)
    raise ConfigError("event.job", f"{raw!r} is not one of {', '.join(expected)}")


def _requested_now(event: Any) -> datetime | None:
    """The what-if time the event asks for (None: a real run at the clock's time)."""
    raw = event.get("now") if isinstance(event, dict) else None
    if raw is None:
        return None
    try:
        return requested_time(raw)
    except ValueError as error:
        raise ConfigError("event.now", str(error)) from None
