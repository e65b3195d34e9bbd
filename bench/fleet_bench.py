"""Fleet bench: 1,000 instances, 10 accounts x 2 regions, one sandbox: evaluate, rotate, report.

Against one in-process sandbox (moto + the Connect emulator, state per account and region), a
fleet configured as `[[accounts]]` is reached the way `rotator` reaches it: each account region
through its member role, assumed with its external ID (moto's assumed-role credentials act in
the role's account). Measured, side by side:

- the daily evaluation (`services.fleet.evaluate` over every partition, fresh adapters as a
  Lambda invocation builds them): wall time and AWS calls, at a quarter of the fleet and at the
  whole fleet, so that the calls per instance show they do not grow;
- an emergency rotation of a spread of instances through `run_units` + `rotate_target` (what
  `rotator rotate --concurrency N` runs), at concurrency 1 and at 16: wall time, the ratio, and
  AWS calls per rotation;
- the fleet report: `make_fleet_report` over every account region (what `rotator report`
  runs with accounts configured), rendered as JSON and HTML.

What is real and what is seeded: one instance per account region is put under management by
`RotationService.init` (the real code, every AWS call over HTTP); every other instance is a
replica of it, written in-process into moto's SSM backend and the emulator (the same parameters
with its own instance, flows, key ID, key pair, certificate, fingerprints and rotation ID; the
latest version of each parameter only), and `verify`'s invariants are checked on the replicas
before anything is measured. Keys are RSA-2048, not the default 4096, to keep generation
time reasonable: every measured rotation generates a real one; the seeded instances each have
their own key pair, made from pairs of a few dozen generated primes (see `KeyPool`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import botocore.session
from cryptography.hazmat.primitives.asymmetric import rsa
from result_table import Row, Target, format_table, markdown_table

from lambda_decrypt.logs import configure_logging
from rotator.adapters.evidence_reads import KmsKeyEncryptionKeys
from rotator.config import Settings
from rotator.domain.fleet import Account, Partition, accounts_json
from rotator.domain.fleet import Target as Unit
from rotator.domain.keys import KeyMaterial, self_signed_material
from rotator.entrypoints.bootstrap import (
    MEMBER_KEYRING_KEY_ALIAS,
    RETRY_CONFIG,
    Adapters,
    assumed_role_session,
    build_account_adapters,
    build_fleet_adapters,
)
from rotator.sandbox.sample_flows import card_blocks
from rotator.sandbox.server import Sandbox, start_sandbox
from rotator.services.crypto_architecture import EvidenceSources
from rotator.services.fleet import Evaluation, TargetResult, evaluate, rotate_target, run_units
from rotator.services.fleet_report import PartitionSources, make_fleet_report
from rotator.services.fleet_report_render import render_fleet
from rotator.services.report_render import ReportFormat
from rotator.services.rotation import Outcome

KEY_SIZE = 2048
PUBLIC_EXPONENT = 65537
ACTOR = "fleet-bench"
EXTERNAL_ID = "fleet-bench-external-id"
ROLE_ARN = "arn:aws:iam::{account_id}:role/connect-key-rotator-member-{{region}}"
EMERGENCY_REASON = "fleet bench: emergency rotation"
# Settings that would send calls anywhere but the sandbox, or sign them differently.
FOREIGN_AWS_SETTINGS = (
    "AWS_ENDPOINT_URL_SSM",
    "AWS_ENDPOINT_URL_CONNECT",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_KMS",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "ROTATOR_ACCOUNTS",
)
# The evaluation's two sweeps page through 10 parameters a call (GetParametersByPath's most):
# an instance's 3 (config, current, rotation) and its key's 3 (private key, certificate,
# metadata): 0.6 calls per instance, plus a few per partition.
PAGE_SIZE = 10
PARAMETERS_PER_INSTANCE = 6
MARGINAL_BOUND = PARAMETERS_PER_INSTANCE / PAGE_SIZE


class BenchError(Exception):
    """A measurement or the seeding went wrong: the figures are void."""


@dataclass(frozen=True)
class Plan:
    name: str
    accounts: int
    regions: tuple[str, ...]
    per_partition: int
    first_stage: int  # instances seeded when the first evaluation is measured
    rotations: int
    concurrency: int
    call_samples: int

    @property
    def partitions(self) -> int:
        return self.accounts * len(self.regions)

    @property
    def instances(self) -> int:
        return self.partitions * self.per_partition


REGIONS = ("eu-west-2", "eu-central-1")
FULL_PLAN = Plan("full", 10, REGIONS, 50, 250, 100, 16, 50)
QUICK_PLAN = Plan("quick", 1, REGIONS, 4, 4, 2, 2, 10)


# -- counting AWS calls ---------------------------------------------------------------------------


class CallMeter:
    """AWS calls by service:operation on every client it is attached to (botocore events),
    counted before each is sent, as the tests count; thread-safe (the pool's units share it)."""

    def __init__(self, latency_ms: float = 0.0) -> None:
        self._calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        # `--aws-latency-ms`: each call waits this long first, as a real AWS round trip would
        # (a sleep: other threads run meanwhile, as they would while a request is in flight).
        self.latency_s = latency_ms / 1000

    def attach(self, emitter: Any) -> None:
        """A client's `meta.events`, or a botocore session (its clients inherit the handler)."""
        emitter.register("before-call", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        with self._lock:
            self._calls[f"{model.service_model.service_name}:{model.name}"] += 1
        if self.latency_s:
            time.sleep(self.latency_s)

    def reset(self) -> None:
        with self._lock:
            self._calls.clear()

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self._calls)


def total(calls: Counter[str], service: str = "") -> int:
    return sum(n for op, n in calls.items() if op.startswith(service))


def by_service(calls: Counter[str]) -> str:
    services = sorted({op.partition(":")[0] for op in calls})
    return ", ".join(f"{s} {total(calls, s + ':')}" for s in services)


# -- the fleet ------------------------------------------------------------------------------------


def fleet_accounts(plan: Plan) -> tuple[Account, ...]:
    """Accounts 100000000001..: the role ARN per region, as deploy/member.yaml names it."""
    return tuple(
        Account(
            f"bu-{number:02d}",
            ROLE_ARN.format(account_id=f"1000000000{number:02d}"),
            EXTERNAL_ID,
            plan.regions,
        )
        for number in range(1, plan.accounts + 1)
    )


class Fleet:
    """The sandbox, the fleet's settings, and adapters built as `rotator` builds them."""

    def __init__(self, plan: Plan, sandbox: Sandbox, meter: CallMeter) -> None:
        self.plan = plan
        self.sandbox = sandbox
        self.meter = meter
        self.accounts = fleet_accounts(plan)
        self.settings = Settings.load(
            {"ROTATOR_ACCOUNTS": accounts_json(self.accounts), "ROTATOR_KEY_SIZE": str(KEY_SIZE)}
        )
        self.partitions = [p for account in self.accounts for p in account.partitions()]
        self.account_ids = {a.name: a.account_id for a in self.accounts}
        self.now = datetime.now(UTC).replace(microsecond=0)
        # The emergency and the report come an hour after the fleet was put under management.
        self.later = self.now + timedelta(hours=1)

    def adapters(self) -> tuple[dict[Partition, Adapters], dict[Partition, boto3.Session]]:
        """Fresh adapters for every partition (bootstrap.build_fleet_adapters, each on its member
        role assumed with the external ID), metered, and each partition's session."""
        source = botocore.session.get_session()
        self.meter.attach(source)  # the AssumeRole calls
        sessions: dict[Partition, boto3.Session] = {}

        def build(account: Account, region: str) -> Adapters:
            session = assumed_role_session(account, region, source=source)
            sessions[Partition(account.name, region)] = session
            adapters = build_account_adapters(self.settings, account, region, session=session)
            for client in (adapters.ssm, adapters.connect_client, adapters.identity.sts):
                self.meter.attach(client.meta.events)
            return adapters

        return build_fleet_adapters(self.settings, self.partitions, build=build), sessions

    def session(self, partition: Partition) -> boto3.Session:
        """An unmetered session of the partition's member role (set-up only)."""
        account = next(a for a in self.accounts if a.name == partition.account)
        return assumed_role_session(account, partition.region)


# -- seeding ------------------------------------------------------------------------------------


def key_of(p: int, q: int) -> rsa.RSAPrivateKey:
    """The RSA key of primes p and q (OpenSSL's, from generated RSA-2048 keys: n has 2048 bits).
    OpenSSL's full check is skipped: it costs as much as a generation, and these numbers are
    computed here from primes OpenSSL made."""
    d = pow(PUBLIC_EXPONENT, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(PUBLIC_EXPONENT, p * q),
    )
    key = numbers.private_key(unsafe_skip_rsa_key_validation=True)
    if key.key_size != KEY_SIZE:
        raise BenchError(f"a seeded key has {key.key_size} bits")
    return key


class KeyPool:
    """Distinct RSA-2048 key pairs for the seeded instances (set-up): each has its own, as
    `init` would give it (one key pair under two instances is a finding of its own).

    Built from a small pool of primes, each pair of them one key: 46 primes (23 generated keys'
    p and q) give 1,035 distinct moduli in about a second, where 1,000 generations take a
    minute or two on a loaded 2-core machine. Keys that share a prime are no secret to anyone
    holding two of them: these are sandbox keys that never protect data. Nothing measured
    depends on how a seeded key was made; every measured rotation generates its own key the
    rotator's way."""

    def __init__(self, count: int) -> None:
        started = time.perf_counter()
        primes: list[int] = []
        while len(primes) * (len(primes) - 1) // 2 < count:
            numbers = rsa.generate_private_key(
                public_exponent=PUBLIC_EXPONENT, key_size=KEY_SIZE
            ).private_numbers()
            primes += [numbers.p, numbers.q]
        pairs = itertools.islice(itertools.combinations(primes, 2), count)
        self._keys = [key_of(p, q) for p, q in pairs]
        self.primes = len(primes)
        self.seconds = time.perf_counter() - started
        self._lock = threading.Lock()

    def material(self, now: datetime, settings: Settings) -> KeyMaterial:
        with self._lock:
            if not self._keys:
                raise BenchError("the key pool is empty")
            key = self._keys.pop()
        return self_signed_material(
            key, now=now, validity_days=settings.validity_days, subject=settings.subject
        )


@dataclass(frozen=True)
class Parameter:
    name: str
    value: str
    type: str
    key_id: str | None
    description: str | None
    tier: str | None


@dataclass
class Template:
    """One partition's really initialised instance: what a replica copies, and the values that
    are its own (replaced in every copied name, value and flow)."""

    partition: Partition
    instance_id: str
    flow_id: str
    module_id: str
    key_id: str
    rotation_id: str
    material: KeyMaterial
    parameters: list[Parameter]
    flow_content: str
    module_content: str
    replicas: list[str] = field(default_factory=list)


def own_values(
    instance_id: str,
    flow_id: str,
    module_id: str,
    key_id: str,
    rotation_id: str,
    material: KeyMaterial,
) -> list[str]:
    """The values that make an initialised instance itself, in replacement order (the PEMs also
    as they appear escaped inside JSON)."""
    pems = [material.private_key_pem, material.certificate_pem, material.public_key_pem]
    escaped = [json.dumps(pem)[1:-1] for pem in pems]
    return [
        *pems,
        *escaped,
        instance_id,
        flow_id,
        module_id,
        key_id,
        rotation_id,
        material.public_key_sha256,
        material.certificate_sha256,
    ]


def replace_all(text: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        text = text.replace(old, new)
    return text


class Seeder:
    """The fleet's managed instances: one real `init` per partition, the rest replicas of it."""

    def __init__(self, fleet: Fleet, pool: KeyPool) -> None:
        self.fleet = fleet
        self.pool = pool
        self.templates: dict[Partition, Template] = {}
        self.init_seconds = 0.0
        self.replica_seconds = 0.0
        self.seeded = 0
        from moto.ssm.models import ssm_backends

        # moto's SSM backends, per account and region (process-wide, so the sandbox's own).
        self._ssm_backends: Any = ssm_backends

    def member_key(self, partition: Partition) -> None:
        """What deploy/member.yaml makes in each account region: the keyring's KMS key."""
        kms = self.fleet.session(partition).client("kms")
        key_id = kms.create_key(Description="connect-key-rotator keyring")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName=MEMBER_KEYRING_KEY_ALIAS, TargetKeyId=key_id)

    def seed_to(self, count: int) -> None:
        """Instances 0..count-1 of the fleet, round robin over the partitions."""
        partitions = self.fleet.partitions
        for number in range(self.seeded, count):
            partition = partitions[number % len(partitions)]
            if partition not in self.templates:
                self.member_key(partition)
                started = time.perf_counter()
                self.templates[partition] = self.real_init(partition, number)
                self.init_seconds += time.perf_counter() - started
            else:
                started = time.perf_counter()
                self.replicate(self.templates[partition], number)
                self.replica_seconds += time.perf_counter() - started
        self.seeded = max(self.seeded, count)

    def real_init(self, partition: Partition, number: int) -> Template:
        """`RotationService.init` on the member's adapters: every AWS call over HTTP."""
        fleet = self.fleet
        account = next(a for a in fleet.accounts if a.name == partition.account)
        instance = fleet.sandbox.add_instance(
            f"fleet-{number}", account=account.account_id, region=partition.region
        )
        adapters = build_account_adapters(fleet.settings, account, partition.region)
        used: list[KeyMaterial] = []

        def generate(now: datetime) -> KeyMaterial:
            used.append(self.pool.material(now, fleet.settings))
            return used[-1]

        result = adapters.rotation(ACTOR, generate=generate).init(
            instance.instance_id,
            [instance.flow_id],
            [instance.module_id],
            fleet.now,
            encrypt_blocks=card_blocks(instance.flow_id, instance.module_id),
        )
        if result.outcome is not Outcome.ROTATED or not result.new_key_id:
            raise BenchError(f"init of {instance.instance_id}: {result.outcome} {result.detail}")
        ssm = adapters.ssm
        pages = ssm.get_paginator("get_parameters_by_path").paginate(
            Path=fleet.settings.keyring_prefix, Recursive=True, WithDecryption=True
        )
        values = {p["Name"]: (p["Value"], p["Type"]) for page in pages for p in page["Parameters"]}
        described = ssm.get_paginator("describe_parameters").paginate(
            ParameterFilters=[
                {"Key": "Path", "Option": "Recursive", "Values": [fleet.settings.keyring_prefix]}
            ]
        )
        parameters = []
        for page in described:
            for p in page["Parameters"]:
                value, kind = values[p["Name"]]
                parameters.append(
                    Parameter(
                        p["Name"], value, kind, p.get("KeyId"), p.get("Description"), p.get("Tier")
                    )
                )
        own = (instance.instance_id, result.new_key_id)
        strays = [p.name for p in parameters if not any(part in p.name for part in own)]
        if strays:
            raise BenchError(f"init wrote parameters a replica would not copy: {strays}")
        emulator = fleet.sandbox.emulator.state
        where = {"account": account.account_id, "region": partition.region}
        flow = emulator.invoke(
            "DescribeContactFlow",
            {"InstanceId": instance.instance_id, "ContactFlowId": instance.flow_id},
            **where,
        )["ContactFlow"]["Content"]
        module = emulator.invoke(
            "DescribeContactFlowModule",
            {"InstanceId": instance.instance_id, "ContactFlowModuleId": instance.module_id},
            **where,
        )["ContactFlowModule"]["Content"]
        if len(used) != 1 or result.rotation_id is None:
            raise BenchError(f"init of {instance.instance_id} generated {len(used)} keys")
        return Template(
            partition,
            instance.instance_id,
            instance.flow_id,
            instance.module_id,
            result.new_key_id,
            result.rotation_id,
            used[0],
            parameters,
            flow,
            module,
        )

    def replicate(self, template: Template, number: int) -> None:
        """What init leaves for another instance of the partition, written in-process: its
        Connect instance with the key associated and the blocks encrypting, and its keyring
        parameters, each the template's with the template's own values replaced by its own."""
        fleet, partition = self.fleet, template.partition
        account_id = fleet.account_ids[partition.account]
        where = {"account": account_id, "region": partition.region}
        instance = fleet.sandbox.add_instance(f"fleet-{number}", **where)
        material = self.pool.material(fleet.now, fleet.settings)
        emulator = fleet.sandbox.emulator.state
        key_id = emulator.invoke(
            "AssociateSecurityKey",
            {"InstanceId": instance.instance_id, "Key": material.public_key_pem},
            **where,
        )["AssociationId"]
        old = own_values(
            template.instance_id,
            template.flow_id,
            template.module_id,
            template.key_id,
            template.rotation_id,
            template.material,
        )
        new = own_values(
            instance.instance_id,
            instance.flow_id,
            instance.module_id,
            key_id,
            str(uuid.uuid4()),
            material,
        )
        pairs = list(zip(old, new, strict=True))
        emulator.invoke(
            "UpdateContactFlowContent",
            {
                "InstanceId": instance.instance_id,
                "ContactFlowId": instance.flow_id,
                "Content": replace_all(template.flow_content, pairs),
            },
            **where,
        )
        emulator.invoke(
            "UpdateContactFlowModuleContent",
            {
                "InstanceId": instance.instance_id,
                "ContactFlowModuleId": instance.module_id,
                "Content": replace_all(template.module_content, pairs),
            },
            **where,
        )
        backend = self._ssm_backends[account_id][partition.region]
        leftovers = [value for value in old if len(value) >= 8]
        for parameter in template.parameters:
            name = replace_all(parameter.name, pairs)
            value = replace_all(parameter.value, pairs)
            if any(value_of_template in name + value for value_of_template in leftovers):
                raise BenchError(f"replica {name} still holds a value of its template")
            backend.put_parameter(
                name=name,
                description=None
                if parameter.description is None
                else replace_all(parameter.description, pairs),
                value=value,
                parameter_type=parameter.type,
                allowed_pattern=None,
                keyid=parameter.key_id,
                overwrite=False,
                tags=[],
                data_type="text",
                tier=parameter.tier,
                policies=None,
            )
        template.replicas.append(instance.instance_id)

    def check_replicas(self, partitions: list[Partition]) -> int:
        """`verify`'s invariants over these partitions' keyrings: a replica that is not what
        init would leave fails one (same key everywhere, flows encrypting with it, one current
        key, a valid certificate, no lock, nothing staged). Returns the checks that held."""
        held = 0
        for partition in partitions:
            account = next(a for a in self.fleet.accounts if a.name == partition.account)
            adapters = build_account_adapters(self.fleet.settings, account, partition.region)
            checks = adapters.invariants().check(None, self.fleet.now)
            failed = [c for c in checks if not c.ok]
            if failed:
                raise BenchError(f"{partition}: seeded keyring fails {failed[0]}")
            held += len(checks)
        return held


# -- the measurements -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One workload: its size, wall time and AWS calls."""

    what: str
    instances: int
    concurrency: int
    wall_s: float
    calls: Counter[str]

    def per_instance(self) -> float:
        return total(self.calls) / self.instances

    def cells(self) -> tuple[str, ...]:
        return (
            self.what,
            f"{self.instances:,}",
            str(self.concurrency),
            f"{self.wall_s:.3g}",
            f"{1000 * self.wall_s / self.instances:.3g}",
            f"{total(self.calls):,}",
            f"{self.per_instance():.3g}",
            by_service(self.calls),
        )


SIDE_BY_SIDE = (
    "workload",
    "instances",
    "concurrency",
    "wall s",
    "wall ms per instance",
    "AWS calls",
    "calls per instance",
    "calls by service",
)


def measure_evaluation(fleet: Fleet, expected: int) -> tuple[Measured, Evaluation]:
    """The daily evaluation as its Lambda runs it: adapters built (roles assumed on first
    use), every partition's keyring read, judged at now (a fresh fleet: nothing is due)."""
    fleet.meter.reset()
    started = time.perf_counter()
    adapters, _ = fleet.adapters()
    keyrings = {partition: a.keyring for partition, a in adapters.items()}
    evaluation = evaluate(
        keyrings, fleet.settings.policy, fleet.now, schedule=fleet.settings.schedule
    )
    wall_s = time.perf_counter() - started
    summary = evaluation.to_dict()
    if evaluation.errors or summary["counts"]["managed"] != expected:
        raise BenchError(f"evaluation saw {summary['counts']}, errors {evaluation.errors}")
    what = "daily evaluation" + (" (quarter)" if expected < fleet.plan.instances else "")
    return Measured(what, expected, 1, wall_s, fleet.meter.snapshot()), evaluation


def emergency_targets(seeder: Seeder, per_partition: int, skip: int) -> list[Unit]:
    """`per_partition` replicas of each partition, after the first `skip` of them."""
    return [
        Unit(partition.account, partition.region, instance_id)
        for partition, template in seeder.templates.items()
        for instance_id in template.replicas[skip : skip + per_partition]
    ]


def measure_rotation(fleet: Fleet, targets: list[Unit], concurrency: int) -> Measured:
    """`rotator rotate --force --emergency --reason R --concurrency N` over these targets:
    run_units on a pool, each unit `rotate_target` on its partition's adapters, a real RSA-2048
    key generated per unit."""
    fleet.meter.reset()
    started = time.perf_counter()
    adapters, _ = fleet.adapters()

    def rotate_one(target: Unit) -> Any:
        rotation = adapters[target.partition].rotation(ACTOR)
        return rotate_target(
            rotation.rotate,
            target,
            fleet.later,
            force=True,
            emergency=True,
            override_reason=EMERGENCY_REASON,
        )

    results: list[TargetResult] = run_units(targets, rotate_one, concurrency=concurrency)
    wall_s = time.perf_counter() - started
    wrong = [r for r in results if r.result.outcome is not Outcome.ROTATED]
    if wrong:
        raise BenchError(f"{wrong[0].target}: {wrong[0].result.outcome} {wrong[0].result.detail}")
    what = f"emergency rotation, concurrency {concurrency}"
    return Measured(what, len(targets), concurrency, wall_s, fleet.meter.snapshot())


@dataclass(frozen=True)
class ReportRun:
    measured: Measured
    keys: int
    findings: Counter[str]


def measure_reports(fleet: Fleet) -> ReportRun:
    """The fleet's one report (`rotator report` over every account region: each keyring,
    Connect, the history, the KMS key's evidence), rendered as JSON and HTML."""
    fleet.meter.reset()
    started = time.perf_counter()
    adapters, sessions = fleet.adapters()
    sources = {}
    for partition, partition_adapters in adapters.items():
        kms = sessions[partition].client("kms", config=RETRY_CONFIG)
        fleet.meter.attach(kms.meta.events)
        sources[partition] = PartitionSources(
            partition_adapters.keyring,
            partition_adapters.connect,
            partition_adapters.lock,
            EvidenceSources(keks=KmsKeyEncryptionKeys(kms)),
        )
    report = make_fleet_report(sources, fleet.settings.report_options(), fleet.later)
    for fmt in (ReportFormat.JSON, ReportFormat.HTML):
        render_fleet(report, fmt)
    wall_s = time.perf_counter() - started
    instances = report.instance_count()
    keys = report.key_count()
    findings = Counter[str](
        f"{f.severity} {f.code}"
        for section in report.readable
        if section.report is not None
        for f in section.report.findings
    )
    findings.update(f"{f.finding.severity} {f.finding.code}" for f in report.findings)
    if instances != fleet.plan.instances:
        raise BenchError(f"the report saw {instances} instances, not {fleet.plan.instances}")
    measured = Measured("fleet report", instances, 1, wall_s, fleet.meter.snapshot())
    return ReportRun(measured, keys, findings)


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


@dataclass(frozen=True)
class Results:
    quarter: Measured
    whole: Measured
    single: Measured
    pooled: Measured
    report: ReportRun
    call_ms: float
    latency_ms: float


def result_rows(plan: Plan, r: Results) -> list[Row]:
    # Held only at full size: a few instances a partition are a page or two, and a few
    # rotations time the pool's start-up more than its work. The pool's gain is held only when
    # calls wait as on AWS: at loopback cost the sandbox serves every call in this process, on
    # the same cores and interpreter lock as the units, so there is no waiting to overlap.
    full = plan is FULL_PLAN
    waits = r.latency_ms > 0
    quarter, whole = r.quarter, r.whole
    marginal = (total(whole.calls) - total(quarter.calls)) / (whole.instances - quarter.instances)
    single_per = total(r.single.calls) / r.single.instances
    pooled_per = total(r.pooled.calls) / r.pooled.instances
    report = r.report.measured
    return [
        Row(
            "evaluation: AWS calls per instance, fleet vs quarter",
            whole.per_instance(),
            quarter.per_instance(),
            whole.per_instance() / quarter.per_instance(),
            Target("ratio", "<=", 1.0),
        ),
        Row(
            "evaluation: AWS calls per added instance vs page bound",
            marginal,
            MARGINAL_BOUND,
            marginal / MARGINAL_BOUND,
            Target("ours", "<=", 1.0) if full else None,
        ),
        Row(
            "evaluation: wall s, fleet vs quarter",
            whole.wall_s,
            quarter.wall_s,
            whole.wall_s / quarter.wall_s,
            None,
        ),
        Row(
            "emergency rotation: wall s, pooled vs concurrency 1",
            r.pooled.wall_s,
            r.single.wall_s,
            r.pooled.wall_s / r.single.wall_s,
            Target("ratio", "<=", 0.5) if full and waits else None,
        ),
        Row(
            "emergency rotation: speed-up vs pool size",
            r.single.wall_s / r.pooled.wall_s,
            float(plan.concurrency),
            r.single.wall_s / r.pooled.wall_s / plan.concurrency,
            None,
        ),
        Row(
            "emergency rotation: AWS calls per rotation, pooled vs 1",
            pooled_per,
            single_per,
            pooled_per / single_per,
            Target("ratio", "<=", 1.0),
        ),
        Row(
            "fleet report: wall s vs evaluation",
            report.wall_s,
            whole.wall_s,
            report.wall_s / whole.wall_s,
            None,
        ),
        Row(
            "fleet report: AWS calls per instance vs evaluation",
            report.per_instance(),
            whole.per_instance(),
            report.per_instance() / whole.per_instance(),
            None,
        ),
    ]


def run(plan: Plan, latency_ms: float) -> Results:
    for name in FOREIGN_AWS_SETTINGS:
        os.environ.pop(name, None)
    meter = CallMeter()
    with start_sandbox() as sandbox:
        os.environ.update(sandbox.environment())
        call_ms = loopback_call_ms(plan.call_samples)
        fleet = Fleet(plan, sandbox, meter)
        pool = KeyPool(plan.instances)
        seeder = Seeder(fleet, pool)
        print_header(plan, sandbox, call_ms, pool, latency_ms)
        seeder.seed_to(plan.first_stage)
        quarter, _ = measure_evaluation(fleet, plan.first_stage)
        seeder.seed_to(plan.instances)
        # All partitions in quick mode; in full mode two (100 instances): invariants are slow.
        checked = fleet.partitions if plan.name == "quick" else fleet.partitions[:2]
        held = seeder.check_replicas(checked)
        print_seeding(plan, seeder, held, len(checked))
        whole, _ = measure_evaluation(fleet, plan.instances)
        meter.latency_s = latency_ms / 1000  # the rotations only: the pool hides latency
        per_partition = plan.rotations // plan.partitions
        if per_partition < 1 or 2 * per_partition > plan.per_partition - 1:
            raise BenchError("the plan's rotations do not spread over its partitions")
        single = measure_rotation(fleet, emergency_targets(seeder, per_partition, 0), 1)
        pooled = measure_rotation(
            fleet, emergency_targets(seeder, per_partition, per_partition), plan.concurrency
        )
        meter.latency_s = 0.0
        report = measure_reports(fleet)
    return Results(quarter, whole, single, pooled, report, call_ms, latency_ms)


def print_header(
    plan: Plan, sandbox: Sandbox, call_ms: float, pool: KeyPool, latency_ms: float
) -> None:
    print(
        f"fleet bench ({plan.name}): Python {platform.python_version()}, boto3 "
        f"{boto3.__version__}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"
    )
    print(
        f"fleet: {plan.instances:,} managed instances in {plan.accounts} accounts x "
        f"{len(plan.regions)} regions ({', '.join(plan.regions)}), {plan.per_partition} per "
        "account region; each account region reached through its member role "
        "(connect-key-rotator-member-{region}), assumed with the external ID"
    )
    print(
        f"keys: RSA-{KEY_SIZE} (not the default 4096) to keep generation time reasonable; "
        f"every measured rotation generates a real RSA-{KEY_SIZE} key. Seeded: "
        f"{plan.instances:,} distinct key pairs made from pairs of {pool.primes} primes in "
        f"{pool.seconds:.1f} s (set-up; sandbox keys, never for data)"
    )
    print(
        f"AWS: one sandbox at {sandbox.url} (moto + Connect emulator, in this process), "
        f"{call_ms:.2g} ms for a trivial call; calls counted by botocore events on every client "
        "(AssumeRole, GetCallerIdentity, SSM, Connect, KMS)",
        flush=True,
    )
    if latency_ms:
        print(
            f"rotations: each AWS call first waits {latency_ms:g} ms, a model of a round trip "
            "to AWS (the evaluation and the report do not)"
        )


def print_seeding(plan: Plan, seeder: Seeder, held: int, checked: int) -> None:
    real = len(seeder.templates)
    print(
        f"seeded: {real} instances by the real `init` (one per account region, every call over "
        f"HTTP, {seeder.init_seconds:.1f} s), {plan.instances - real:,} replicas of them written "
        f"in-process into moto's SSM and the emulator ({seeder.replica_seconds:.1f} s); "
        f"verify's {held:,} invariant checks hold on {checked} account region(s) of replicas"
    )
    print(
        f"measured: the evaluation at {plan.first_stage:,} and at {plan.instances:,} instances; "
        f"an emergency rotation of {plan.rotations} replicas ({plan.rotations // plan.partitions} "
        f"per account region) at concurrency 1, then {plan.rotations} others at "
        f"{plan.concurrency} (at most 2 at once per account region); the fleet's one report "
        "(every account region), JSON + HTML",
        flush=True,
    )
    print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_PLAN.instances} instances in {QUICK_PLAN.accounts} accounts x "
        f"{len(QUICK_PLAN.regions)} regions (a smoke test)",
    )
    parser.add_argument(
        "--aws-latency-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="the emergency rotations' calls each wait MS first, as a round trip to AWS would "
        "(about 10-20 ms in-region); default 0: the sandbox's loopback cost only",
    )
    args = parser.parse_args(argv)
    configure_logging("WARNING", stream="stderr")
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    try:
        results = run(plan, args.aws_latency_ms)
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    measured = [results.quarter, results.whole, results.single, results.pooled]
    print(markdown_table(SIDE_BY_SIDE, [m.cells() for m in [*measured, results.report.measured]]))
    print()
    rows = result_rows(plan, results)
    print(format_table(rows))
    print()
    report = results.report
    findings = ", ".join(f"{severity} {n}" for severity, n in sorted(report.findings.items()))
    print(f"reports: {report.keys:,} keys, findings: {findings or 'none'}")
    print()
    print(markdown_table(("AWS calls by operation", *WORKLOADS), operation_rows(results)))
    return 0 if all(row.status() != "MISS" for row in rows) else 1


WORKLOADS = ("evaluation", "rotation c=1", "rotation pooled", "report")


def operation_rows(results: Results) -> list[tuple[str, ...]]:
    counts = [
        results.whole.calls,
        results.single.calls,
        results.pooled.calls,
        results.report.measured.calls,
    ]
    names = sorted(set().union(*counts))
    return [(name, *(str(c.get(name, 0)) for c in counts)) for name in names]


if __name__ == "__main__":
    sys.exit(main())
