"""Rotation bench: wall time and AWS calls of one rotation and of a 50-instance run vs keygen."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import cryptography
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives.asymmetric import rsa
from result_table import markdown_table

from lambda_decrypt.logs import configure_logging
from rotator.config import Settings
from rotator.domain.keys import (
    KeyMaterial,
    generate_key_material,
    load_private_key,
    self_signed_material,
)
from rotator.domain.rotation import STEP_ORDER, RotationState, RotationStep, StepDone
from rotator.entrypoints.bootstrap import RETRY_CONFIG, Adapters, build_adapters
from rotator.sandbox.sample_flows import PaymentInstance, card_blocks, create_payment_instance
from rotator.sandbox.server import Sandbox, start_sandbox
from rotator.services.rotation import WRITTEN_AFTER, InstanceResult, Outcome, RotationService

COLUMNS = ("metric", "measured", "floor/baseline", "ratio", "note")
ACTOR = "rotation-bench"
INIT_KEY_SIZE = 2048
# Past the default 365-day cryptoperiod (and short of the 730-day certificate): every key is due.
DUE_AFTER = timedelta(days=366)
# Settings that would send calls anywhere but the sandbox, or sign them differently.
FOREIGN_AWS_SETTINGS = (
    "AWS_ENDPOINT_URL_SSM",
    "AWS_ENDPOINT_URL_CONNECT",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
)
SERVICES = ("ssm", "connect")
KeyGenerator = Callable[[datetime], KeyMaterial]
# Calls made after the rotation's last write: the staging's delete, the retires left to finish,
# the lock's release, and the run's sweep for orphaned staging.
AFTER_DONE = "after done"
PHASES = (*(str(step) for step in STEP_ORDER), AFTER_DONE)
# A step's calls: from the end of the step before it to its own end, and the write that follows
# it when one does (the steps are written together: WRITTEN_AFTER); "started" holds the run's
# listing, the decision, the lock and the first write.
STEP_METHODS = ("_stage", "_associate", "_store", "_point_flows", "_promote", "_finish")
STEP_COLUMNS = ("step", "ssm", "connect", "calls", "baseline", "operations")
OPERATION_COLUMNS = ("operation", "calls", "baseline")
# One single rotation (a fresh instance with a payment flow and module, init, then one due
# rotate(None)) measured with this bench at f253200, before the calls were cut: 73 calls,
# SSM 63 + Connect 10, when each step wrote its own history and rotation record.
BASELINE_STEP_CALLS: Mapping[str, int] = {
    "started": 16,
    "staged": 7,
    "associated": 6,
    "stored": 13,
    "flows_updated": 9,
    "promoted": 12,
    "done": 4,
    AFTER_DONE: 6,
}
BASELINE_OPERATION_CALLS: Mapping[str, int] = {
    "connect:AssociateSecurityKey": 1,
    "connect:DescribeContactFlow": 1,
    "connect:DescribeContactFlowModule": 1,
    "connect:ListSecurityKeys": 5,
    "connect:UpdateContactFlowContent": 1,
    "connect:UpdateContactFlowModuleContent": 1,
    "ssm:DeleteParameter": 1,
    "ssm:DeleteParameters": 1,
    "ssm:GetParameter": 9,
    "ssm:GetParameters": 24,
    "ssm:GetParametersByPath": 2,
    "ssm:PutParameter": 26,
}
BASELINE_CALLS = sum(BASELINE_STEP_CALLS.values())


class BenchError(Exception):
    """A measurement went wrong (a rotation that did not rotate): the figures are void."""


@dataclass(frozen=True)
class Plan:
    """How much to measure; each single rotation is paired with one floor key generation."""

    name: str
    single_rotations: int
    fleet_size: int
    key_size: int
    call_samples: int


FULL_PLAN = Plan("full", single_rotations=7, fleet_size=50, key_size=4096, call_samples=50)
QUICK_PLAN = Plan("quick", single_rotations=2, fleet_size=3, key_size=2048, call_samples=20)


@dataclass(frozen=True)
class CallTally:
    """API calls per service, and the seconds spent in them (sign, HTTP round trip, parse)."""

    calls: Mapping[str, int]
    seconds: Mapping[str, float]
    steps: Mapping[tuple[str, str, str], int] = field(default_factory=dict)

    def step_calls(self, phase: str, service: str | None = None) -> int:
        return sum(n for (p, s, _), n in self.steps.items() if p == phase and service in (None, s))

    def operation_calls(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for (_, service, operation), n in self.steps.items():
            found[f"{service}:{operation}"] += n
        return found

    def step_operations(self, phase: str) -> str:
        found: Counter[str] = Counter()
        for (p, _, operation), n in self.steps.items():
            if p == phase:
                found[operation] += n
        return ", ".join(f"{op} {n}" for op, n in sorted(found.items())) or "-"

    def total_calls(self) -> int:
        return sum(self.calls.values())

    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def mean_call_ms(self, service: str) -> float:
        return 1000 * self.seconds.get(service, 0.0) / max(self.calls.get(service, 0), 1)


class CallMeter:
    """Counts and times every API call made by the clients it is attached to (botocore events)."""

    _STARTED = "rotation_bench_started_ns"

    def __init__(self) -> None:
        self._calls: Counter[str] = Counter()
        self._nanoseconds: Counter[str] = Counter()
        self._steps: Counter[tuple[str, str, str]] = Counter()  # (phase, service, operation)
        self.phase = PHASES[0]

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-call", self._started)
        client.meta.events.register("after-call", self._finished)

    def reset(self) -> None:
        self._calls.clear()
        self._nanoseconds.clear()
        self._steps.clear()
        self.phase = PHASES[0]

    def tally(self) -> CallTally:
        seconds = {service: ns / 1e9 for service, ns in self._nanoseconds.items()}
        return CallTally(dict(self._calls), seconds, dict(self._steps))

    def step_recorded(self, step: RotationStep) -> None:
        """`step` is done and written: what follows is the next step's work."""
        index = PHASES.index(str(step)) + 1
        self.phase = PHASES[min(index, len(PHASES) - 1)]

    def _started(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        # Counted before the call is sent, as the tests count: a call that fails still costs.
        self._steps[(self.phase, model.service_model.service_name, model.name)] += 1
        context[self._STARTED] = time.perf_counter_ns()

    def _finished(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        service = model.service_model.service_name
        self._calls[service] += 1
        self._nanoseconds[service] += time.perf_counter_ns() - context[self._STARTED]


@dataclass
class TimedGenerator:
    """Wraps the rotator's own key generator and records how long each generation took."""

    generate: KeyGenerator
    seconds: list[float] = field(default_factory=list)

    def __call__(self, now: datetime) -> KeyMaterial:
        started = time.perf_counter()
        material = self.generate(now)
        self.seconds.append(time.perf_counter() - started)
        return material


@dataclass(frozen=True)
class RotationRun:
    """One `rotate` call: its wall time, the key generation inside it and its AWS calls."""

    wall_s: float
    generation_s: float
    tally: CallTally

    def other_s(self) -> float:
        return self.wall_s - self.generation_s - self.tally.total_seconds()


@dataclass(frozen=True)
class FleetRun:
    size: int
    init_s: float
    rotation: RotationRun


@dataclass(frozen=True)
class Floor:
    """Key generation alone (generate_key_material) and one fully checked load of each key."""

    generation_s: list[float]
    checked_load_s: list[float]


@dataclass(frozen=True)
class Line:
    """One table row; the ratio is always measured / baseline."""

    metric: str
    measured: float
    baseline: float | None = None
    note: str = ""

    def cells(self) -> tuple[str, ...]:
        baseline = "-" if self.baseline is None else f"{self.baseline:.4g}"
        ratio = "-" if not self.baseline else f"{self.measured / self.baseline:.3g}"
        return (self.metric, f"{self.measured:.4g}", baseline, ratio, self.note or "-")


class Bench:
    """The sandbox, the rotator's two metered clients, and an unmetered client for set-up."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.meter = CallMeter()
        self.ssm = boto3.client("ssm", config=RETRY_CONFIG)
        self.connect = boto3.client("connect", config=RETRY_CONFIG)
        for client in (self.ssm, self.connect):
            self.meter.attach(client)
        self.setup_connect = boto3.client("connect")
        self.init_generator = premade_key_generator()
        self.now = datetime.now(UTC).replace(microsecond=0)

    def adapters(self, prefix: str) -> Adapters:
        settings = Settings(keyring_prefix=prefix, key_size=self.plan.key_size)
        return build_adapters(settings, ssm=self.ssm, connect=self.connect)

    def create_payment_instance(self, alias: str) -> PaymentInstance:
        return create_payment_instance(self.setup_connect, alias)

    def init_all(self, adapters: Adapters, instances: list[PaymentInstance]) -> float:
        """Put the instances under management with pre-made keys; returns the wall seconds."""
        service = adapters.rotation(ACTOR, generate=self.init_generator)
        started = time.perf_counter()
        for instance in instances:
            result = service.init(
                instance.instance_id,
                [instance.flow_id],
                [instance.module_id],
                self.now,
                encrypt_blocks=card_blocks(instance.flow_id, instance.module_id),
            )
            expect_rotated([result], 1)
        return time.perf_counter() - started

    def rotate_all_due(self, adapters: Adapters, expected: int) -> RotationRun:
        """One scheduled run (`rotate` of every managed instance) with real key generation."""
        service = adapters.rotation(ACTOR)
        generator = TimedGenerator(service.generate)
        service.generate = generator
        track_steps(service, self.meter)
        self.meter.reset()
        started = time.perf_counter()
        results = service.rotate(None, self.now + DUE_AFTER)
        wall_s = time.perf_counter() - started
        expect_rotated(results, expected)
        return RotationRun(wall_s, sum(generator.seconds), self.meter.tally())

    def single_rotation(self, number: int) -> RotationRun:
        """A fresh instance under a fresh keyring prefix: init, then one due rotation."""
        adapters = self.adapters(f"/bench-single-{number}")
        self.init_all(adapters, [self.create_payment_instance(f"bench-single-{number}")])
        return self.rotate_all_due(adapters, expected=1)

    def floor_generation(self) -> tuple[float, float]:
        """generate_key_material as the rotator calls it, then a fully checked load of the key."""
        started = time.perf_counter()
        material = generate_key_material(now=self.now, key_size=self.plan.key_size)
        generation_s = time.perf_counter() - started
        started = time.perf_counter()
        load_private_key(material.private_key_pem)
        return generation_s, time.perf_counter() - started

    def singles_and_floor(self) -> tuple[list[RotationRun], Floor]:
        """Single rotations interleaved with floor generations, so drift hits both alike."""
        runs, generation_s, checked_load_s = [], [], []
        for number in range(1, self.plan.single_rotations + 1):
            runs.append(self.single_rotation(number))
            generation, checked_load = self.floor_generation()
            generation_s.append(generation)
            checked_load_s.append(checked_load)
        return runs, Floor(generation_s, checked_load_s)

    def fleet(self) -> FleetRun:
        adapters = self.adapters("/bench-fleet")
        instances = [
            self.create_payment_instance(f"bench-fleet-{number}")
            for number in range(1, self.plan.fleet_size + 1)
        ]
        init_s = self.init_all(adapters, instances)
        return FleetRun(self.plan.fleet_size, init_s, self.rotate_all_due(adapters, len(instances)))

    def loopback_call_ms(self) -> float:
        """Median of a trivial SSM call (GetParameters of one name) through the sandbox."""
        name = "/bench-probe/parameter"
        self.ssm.put_parameter(Name=name, Value="probe", Type="String", Overwrite=True)
        samples = []
        for _ in range(self.plan.call_samples):
            started = time.perf_counter()
            self.ssm.get_parameters(Names=[name])
            samples.append((time.perf_counter() - started) * 1000)
        return statistics.median(samples)


def track_steps(service: RotationService, meter: CallMeter) -> None:
    """Tell the meter where each rotation step ends: when its method returns, or, when a write
    follows it, once the write is made (see PHASES)."""
    keyring: Any = service.keyring
    put_rotation = keyring.put_rotation

    def recorded(steps: Sequence[StepDone], **kwargs: Any) -> None:
        put_rotation(steps, **kwargs)
        meter.step_recorded(steps[-1].state.step)

    keyring.put_rotation = recorded
    for name in STEP_METHODS:
        step = getattr(service, name)

        def ended(state: RotationState, now: datetime, run: Any, step: Any = step) -> Any:
            done: RotationState = step(state, now, run)
            if done.step not in WRITTEN_AFTER:
                meter.step_recorded(done.step)
            return done

        setattr(service, name, ended)


def premade_key_generator() -> KeyGenerator:
    """Init is set-up here, not what is measured: one RSA-2048 key, certified afresh per init."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=INIT_KEY_SIZE)
    return lambda now: self_signed_material(private_key, now=now, subject="CN=bench-init")


def expect_rotated(results: list[InstanceResult], expected: int) -> None:
    if len(results) != expected:
        raise BenchError(f"expected {expected} rotation result(s), got {len(results)}")
    for result in results:
        if result.outcome is not Outcome.ROTATED:
            raise BenchError(f"{result.instance_id}: {result.outcome} ({result.detail})")


def median_of(runs: list[RotationRun], figure: Callable[[RotationRun], float]) -> float:
    return statistics.median(figure(run) for run in runs)


def calls_note(tally: CallTally) -> str:
    return " + ".join(f"{service} {tally.calls.get(service, 0)}" for service in SERVICES)


def single_lines(runs: list[RotationRun], floor: Floor, call_ms: float) -> list[Line]:
    wall_ms = 1000 * median_of(runs, lambda run: run.wall_s)
    tally = runs[0].tally
    if any(run.tally.calls != tally.calls for run in runs):
        raise BenchError("single rotations of identical instances made different calls")
    mean_ms = {service: tally.mean_call_ms(service) for service in SERVICES}
    checked_load_ms = 1000 * statistics.median(floor.checked_load_s)
    return [
        Line(
            "rotation wall ms (median) vs key generation",
            wall_ms,
            1000 * statistics.median(floor.generation_s),
            f"floor: generate_key_material x{len(floor.generation_s)}, same run",
        ),
        Line(
            "rotation: key generation inside it, ms",
            1000 * median_of(runs, lambda run: run.generation_s),
            wall_ms,
            "share of the rotation's wall time",
        ),
        Line(
            "rotation: time in AWS calls, ms",
            1000 * median_of(runs, lambda run: run.tally.total_seconds()),
            wall_ms,
            f"sandbox: ssm {mean_ms['ssm']:.2g} ms, connect {mean_ms['connect']:.2g} ms a call",
        ),
        Line(
            "rotation: other local work, ms",
            1000 * median_of(runs, RotationRun.other_s),
            wall_ms,
            f"mostly OpenSSL RSA checks on full key loads ({checked_load_ms:.0f} ms each)",
        ),
        Line(
            "RSA key load with full checks, ms",
            checked_load_ms,
            None,
            "load_private_key of each floor key",
        ),
        Line(
            "AWS calls per rotation",
            tally.total_calls(),
            BASELINE_CALLS,
            f"{calls_note(tally)}; baseline: before the calls were cut",
        ),
        Line("SSM calls per rotation", tally.calls.get("ssm", 0)),
        Line("Connect calls per rotation", tally.calls.get("connect", 0)),
        Line(
            "loopback AWS call ms (median)",
            call_ms,
            None,
            "ssm GetParameters of one name: sandbox cost a call",
        ),
    ]


def fleet_lines(fleet: FleetRun, single_wall_s: float, single_calls: int) -> list[Line]:
    run, size = fleet.rotation, fleet.size
    return [
        Line(
            "fleet: init wall s",
            fleet.init_s,
            None,
            f"{size} inits, pre-made RSA-{INIT_KEY_SIZE} key (no generation)",
        ),
        Line(
            "fleet: rotate run wall s vs N x single rotation",
            run.wall_s,
            size * single_wall_s,
            f"one rotate of all {size} instances; 1 = linear",
        ),
        Line(
            "fleet: wall ms per instance vs its key generation",
            1000 * run.wall_s / size,
            1000 * run.generation_s / size,
            f"floor: the run's own {size} key generations",
        ),
        Line(
            "fleet: key generation s",
            run.generation_s,
            run.wall_s,
            "share of the run's wall time",
        ),
        Line(
            "fleet: time in AWS calls s",
            run.tally.total_seconds(),
            run.wall_s,
            "share of the run's wall time (sandbox)",
        ),
        Line("fleet: AWS calls", run.tally.total_calls(), None, calls_note(run.tally)),
        Line(
            "fleet: AWS calls per instance vs single",
            run.tally.total_calls() / size,
            single_calls,
            "a run lists the managed instances once, 10 a page",
        ),
    ]


def print_header(plan: Plan, sandbox: Sandbox, call_ms: float) -> None:
    print(
        f"rotation bench ({plan.name}): Python {platform.python_version()}, "
        f"cryptography {cryptography.__version__} ({openssl_backend.openssl_version_text()}), "
        f"boto3 {boto3.__version__}, {os.cpu_count()} CPUs, {platform.system()} "
        f"{platform.machine()}"
    )
    print(
        f"keys: every measured rotation generates a real RSA-{plan.key_size} key (the "
        "rotator's own generator, timed); floor: generate_key_material, same key size, "
        f"same run; init uses one pre-made RSA-{INIT_KEY_SIZE} key certified afresh (set-up)"
    )
    print(
        f"AWS: sandbox at {sandbox.url} (moto SSM + Connect emulator), every call a loopback "
        f"HTTP request, {call_ms:.2g} ms for a trivial one; calls counted and timed by botocore "
        "events on the rotator's clients. On real AWS: wall - time in AWS calls + AWS calls x "
        "real per-call latency"
    )
    print(
        f"single: {plan.single_rotations} rotations, each a fresh instance (payment flow + "
        f"module) under its own keyring prefix, init then rotate(None, now + "
        f"{DUE_AFTER.days} d); fleet: {plan.fleet_size} such instances under one prefix, "
        "init each, then one rotate(None) of all; logs at WARNING to stderr"
    )
    print(flush=True)


def step_rows(tally: CallTally) -> list[tuple[str, ...]]:
    """One single rotation's calls per step, the baseline's beside them, and the total."""
    rows = [
        (
            phase,
            str(tally.step_calls(phase, "ssm")),
            str(tally.step_calls(phase, "connect")),
            str(tally.step_calls(phase)),
            str(BASELINE_STEP_CALLS.get(phase, 0)),
            tally.step_operations(phase),
        )
        for phase in PHASES
    ]
    total = ("total", *(str(tally.calls.get(service, 0)) for service in SERVICES))
    return [*rows, (*total, str(tally.total_calls()), str(BASELINE_CALLS), calls_note(tally))]


def operation_rows(tally: CallTally) -> list[tuple[str, ...]]:
    """One single rotation's calls per API operation, the baseline's beside them."""
    measured = tally.operation_calls()
    names = sorted(set(measured) | set(BASELINE_OPERATION_CALLS))
    return [
        (name, str(measured.get(name, 0)), str(BASELINE_OPERATION_CALLS.get(name, 0)))
        for name in names
    ]


def run(plan: Plan) -> tuple[list[Line], RotationRun]:
    for name in FOREIGN_AWS_SETTINGS:
        os.environ.pop(name, None)
    with start_sandbox() as sandbox:
        os.environ.update(sandbox.environment())
        bench = Bench(plan)
        call_ms = bench.loopback_call_ms()
        print_header(plan, sandbox, call_ms)
        singles, floor = bench.singles_and_floor()
        fleet = bench.fleet()
    lines = single_lines(singles, floor, call_ms)
    single_wall_s = median_of(singles, lambda run: run.wall_s)
    return lines + fleet_lines(fleet, single_wall_s, singles[0].tally.total_calls()), singles[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_PLAN.single_rotations} single rotations, {QUICK_PLAN.fleet_size} "
        f"instances, RSA-{QUICK_PLAN.key_size} keys (a smoke test)",
    )
    args = parser.parse_args(argv)
    configure_logging("WARNING", stream="stderr")
    try:
        lines, single = run(QUICK_PLAN if args.quick else FULL_PLAN)
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    print(markdown_table(COLUMNS, [line.cells() for line in lines]))
    print()
    print("AWS calls of one single rotation per step (baseline: before the calls were cut)")
    print(markdown_table(STEP_COLUMNS, step_rows(single.tally)))
    print()
    print("AWS calls of one single rotation per operation")
    print(markdown_table(OPERATION_COLUMNS, operation_rows(single.tally)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
