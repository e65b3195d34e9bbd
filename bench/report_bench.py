"""Report bench: the compliance report over 200 instances with 2 keys each; time and AWS calls."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import boto3
from cryptography.hazmat.primitives.asymmetric import rsa
from result_table import Row, Target, format_table, markdown_table

from lambda_decrypt.keyring import KeyringLayout
from lambda_decrypt.logs import configure_logging
from rotator.config import Settings
from rotator.domain.keys import KeyMaterial, self_signed_material
from rotator.domain.lifecycle import KeyRecord, KeyState, Transition
from rotator.domain.rotation import ManagedInstance, RotationState, RotationStep
from rotator.entrypoints.bootstrap import RETRY_CONFIG, build_adapters
from rotator.sandbox.sample_flows import payment_flow_content, payment_module_content
from rotator.sandbox.server import start_sandbox
from rotator.services.report import build_report, gather
from rotator.services.report_render import ReportFormat, render

PREFIX = "/bench-report"
ACTOR = "report-bench"
REFS_PER_INSTANCE = 2  # a payment flow and its card-capture module
# Settings that would send calls anywhere but the sandbox, or sign them differently.
FOREIGN_AWS_SETTINGS = (
    "AWS_ENDPOINT_URL_SSM",
    "AWS_ENDPOINT_URL_CONNECT",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
)
WALL_TARGET_S = 10.0
ParameterType = Literal["String", "SecureString"]
MOTO_PAGE_SIZE = 10  # moto's DescribeParameters ignores MaxResults


@dataclass(frozen=True)
class Plan:
    name: str
    instances: int
    call_samples: int


FULL_PLAN = Plan("full", instances=200, call_samples=50)
QUICK_PLAN = Plan("quick", instances=10, call_samples=20)


class CallCounter:
    """AWS calls by service:operation on the clients it is attached to (botocore events)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-call", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[f"{model.service_model.service_name}:{model.name}"] += 1

    def total(self, service: str = "") -> int:
        return sum(n for op, n in self.calls.items() if op.startswith(service))


@dataclass(frozen=True)
class Pool:
    """Two key pairs, certified once each: every instance's previous and active key."""

    previous: KeyMaterial
    active: KeyMaterial


def make_pool(now: datetime) -> Pool:
    keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]
    return Pool(
        previous=self_signed_material(keys[0], now=now - timedelta(days=370), subject="CN=old"),
        active=self_signed_material(keys[1], now=now - timedelta(days=5), subject="CN=new"),
    )


def seed(count: int, pool: Pool, now: datetime) -> None:
    """Connect instances and their keyring written directly: what `count` inits and one
    rotation each would leave, without the 2 x `count` rotations (set-up, not measured)."""
    connect, ssm = boto3.client("connect"), boto3.client("ssm")
    layout = KeyringLayout(PREFIX)

    def put(name: str, value: str, kind: ParameterType = "String") -> None:
        ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)

    for number in range(count):
        instance_id = connect.create_instance(
            IdentityManagementType="CONNECT_MANAGED",
            InstanceAlias=f"bench-report-{number}",
            InboundCallsEnabled=True,
            OutboundCallsEnabled=False,
        )["Id"]
        key_ids = [
            connect.associate_security_key(InstanceId=instance_id, Key=m.public_key_pem)[
                "AssociationId"
            ]
            for m in (pool.previous, pool.active)
        ]
        flow_id = connect.create_contact_flow(
            InstanceId=instance_id,
            Name="Payment IVR",
            Type="CONTACT_FLOW",
            Content=payment_flow_content(key_ids[1], pool.active.certificate_pem),
        )["ContactFlowId"]
        module_id = connect.create_contact_flow_module(
            InstanceId=instance_id,
            Name="Card capture",
            Content=payment_module_content(key_ids[1], pool.active.certificate_pem),
        )["Id"]
        # Every tenth instance's previous key is past its grace period: an info finding.
        rotated = now - timedelta(days=10 if number % 10 == 0 else 3)
        for key_id, material, state in (
            (key_ids[0], pool.previous, KeyState.PREVIOUS),
            (key_ids[1], pool.active, KeyState.ACTIVE),
        ):
            put(layout.private_key(key_id), material.private_key_pem, "SecureString")
            put(layout.certificate(key_id), material.certificate_pem)
            put(layout.metadata(key_id), record(key_id, instance_id, material, state, rotated))
        managed = ManagedInstance(instance_id, (flow_id,), (module_id,))
        put(layout.instance_config(instance_id), managed.to_json())
        put(layout.current(instance_id), key_ids[1])
        rotation = RotationState(
            f"bench-{number}",
            instance_id,
            RotationStep.DONE,
            rotated,
            ACTOR,
            key_ids[0],
            key_ids[1],
        )
        put(layout.rotation(instance_id), rotation.to_json())


def record(
    key_id: str, instance_id: str, material: KeyMaterial, state: KeyState, rotated: datetime
) -> str:
    created = material.not_before
    history = [
        Transition(KeyState.PENDING, created, ACTOR, "init"),
        Transition(KeyState.ACTIVE, created, ACTOR, "init"),
    ]
    if state is KeyState.PREVIOUS:
        history.append(Transition(KeyState.PREVIOUS, rotated, ACTOR, "rotated"))
    return KeyRecord(
        key_id=key_id,
        instance_id=instance_id,
        state=state,
        key_size=material.key_size,
        public_key_sha256=material.public_key_sha256,
        certificate_sha256=material.certificate_sha256,
        subject=material.subject,
        not_before=material.not_before,
        not_after=material.not_after,
        created_at=created,
        source="generated",
        kms_key_id=None,
        history=tuple(history),
    ).to_json()


def loopback_call_ms(samples: int) -> float:
    """Median of a trivial SSM call (GetParameters of one name) through the sandbox."""
    ssm = boto3.client("ssm")
    name = "/bench-probe/parameter"
    ssm.put_parameter(Name=name, Value="probe", Type="String", Overwrite=True)
    timings = []
    for _ in range(samples):
        started = time.perf_counter()
        ssm.get_parameters(Names=[name])
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def call_bound(instances: int, keys: int) -> int:
    """Connect: one list per instance and one read per managed flow or module. SSM: paginated
    sweeps of the keys (3 parameters each) and the instances (3 each), 10 a page, of the locks,
    of the history (none seeded: one page), and of the SecureStrings (50 a page on AWS; moto
    serves 10). A page more per sweep for the empty last page moto sends after a full one."""
    connect = instances * (1 + REFS_PER_INSTANCE)
    ssm = (3 * keys // 10 + 1) + (3 * instances // 10 + 1) + 1 + 1 + (keys // MOTO_PAGE_SIZE + 1)
    return connect + ssm


def run(plan: Plan) -> tuple[list[Row], list[tuple[str, ...]]]:
    for name in FOREIGN_AWS_SETTINGS:
        os.environ.pop(name, None)
    now = datetime.now(UTC).replace(microsecond=0)
    with start_sandbox() as sandbox:
        os.environ.update(sandbox.environment())
        call_ms = loopback_call_ms(plan.call_samples)
        started = time.perf_counter()
        seed(plan.instances, make_pool(now), now)
        seed_s = time.perf_counter() - started
        print_header(plan, sandbox.url, call_ms, seed_s)
        counter = CallCounter()
        ssm, connect = (
            boto3.client("ssm", config=RETRY_CONFIG),
            boto3.client("connect", config=RETRY_CONFIG),
        )
        for client in (ssm, connect):
            counter.attach(client)
        adapters = build_adapters(Settings(keyring_prefix=PREFIX), ssm=ssm, connect=connect)
        options = adapters.settings.report_options()
        started = time.perf_counter()
        facts = gather(adapters.keyring, adapters.connect, adapters.lock, now)
        gather_s = time.perf_counter() - started
    started = time.perf_counter()
    report = build_report(facts, options, now)
    findings_s = time.perf_counter() - started
    timings, sizes = {}, {}
    for fmt in (ReportFormat.JSON, ReportFormat.HTML):
        started = time.perf_counter()
        sizes[fmt] = len(render(report, fmt).encode("utf-8"))
        timings[fmt] = time.perf_counter() - started
    keys = len(report.keys)
    if (len(report.instances), keys) != (plan.instances, 2 * plan.instances):
        raise SystemExit(f"seeded {plan.instances} instances, the report saw {keys} keys")
    total_s = gather_s + findings_s + sum(timings.values())
    calls, bound = counter.total(), call_bound(plan.instances, keys)
    floor_s = calls * call_ms / 1000
    rows = [
        Row(
            f"report wall s, {plan.instances} instances x 2 keys, json + html",
            total_s,
            floor_s,
            total_s / floor_s,
            Target("ours", "<=", WALL_TARGET_S),
        ),
        Row(
            "report: gather s vs its calls at loopback cost",
            gather_s,
            floor_s,
            gather_s / floor_s,
            None,
        ),
        Row(
            "report: findings ms (pure) vs gather",
            1000 * findings_s,
            1000 * gather_s,
            findings_s / gather_s,
            None,
        ),
        Row(
            "report: render json ms vs gather",
            1000 * timings[ReportFormat.JSON],
            1000 * gather_s,
            timings[ReportFormat.JSON] / gather_s,
            None,
        ),
        Row(
            "report: render html ms vs gather",
            1000 * timings[ReportFormat.HTML],
            1000 * gather_s,
            timings[ReportFormat.HTML] / gather_s,
            None,
        ),
        Row(
            "report: html KB vs json KB",
            sizes[ReportFormat.HTML] / 1024,
            sizes[ReportFormat.JSON] / 1024,
            sizes[ReportFormat.HTML] / sizes[ReportFormat.JSON],
            None,
        ),
        Row("report: AWS calls vs bound", calls, bound, calls / bound, Target("ratio", "<=", 1.0)),
        Row("report: AWS calls per key", calls / keys, bound / keys, calls / bound, None),
    ]
    operations: list[tuple[str, ...]] = [(op, str(n)) for op, n in sorted(counter.calls.items())]
    return rows, operations


def print_header(plan: Plan, url: str, call_ms: float, seed_s: float) -> None:
    print(
        f"report bench ({plan.name}): Python {platform.python_version()}, boto3 "
        f"{boto3.__version__}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"
    )
    print(
        f"AWS: sandbox at {url} (moto SSM + Connect emulator), {call_ms:.2g} ms for a trivial "
        f"call; seeded {plan.instances} instances (a flow and a module each, 2 associated keys: "
        f"previous + active, 3 parameters each) directly in {seed_s:.1f} s (set-up)"
    )
    print(
        "measured: gather (the report's every AWS call, counted by botocore events), findings, "
        "rendering json and html; baseline of the wall rows: the calls made x the loopback "
        f"call cost; target: report wall <= {WALL_TARGET_S:g} s, calls <= the bound formula"
    )
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_PLAN.instances} instances (a smoke test)"
    )
    args = parser.parse_args(argv)
    configure_logging("WARNING", stream="stderr")
    rows, operations = run(QUICK_PLAN if args.quick else FULL_PLAN)
    print(format_table(rows))
    print()
    print(markdown_table(("AWS calls by operation", "calls"), operations))
    return 0 if all(row.status() != "MISS" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
