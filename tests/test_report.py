"""The compliance expiry report against the sandbox (`world`): a keyring seeded with every
finding, each with its severity and runbook; every format parsed back; --fail-on exit codes;
a bounded number of AWS calls; S3 and SNS publishing; never a secret."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import boto3
import jsonschema
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from rotator.adapters.lock import DEFAULT_LEASE, LockHolder
from rotator.adapters.publishing import AwsPublisher
from rotator.config import Settings
from rotator.domain.findings import RULES, FindingCode, RunbookName, Severity
from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import KeyState, Transition
from rotator.domain.rotation import RotationState, RotationStep
from rotator.domain.state import KeyringState, ProtectedKey, ProtectionSweep
from rotator.entrypoints.bootstrap import Adapters
from rotator.entrypoints.scheduled import handler
from rotator.errors import ConfigError
from rotator.sandbox.sample_flows import card_blocks, create_payment_instance
from rotator.services.importing import import_from_blog
from rotator.services.jobs import Published, publish_report, report_object, run_report
from rotator.services.report import (
    Report,
    ReportOptions,
    build_report,
    gather,
    make_report,
    same_kms_key,
)
from rotator.services.report_render import CSV_COLUMNS, ReportFormat, render
from rotator.services.rotation import Outcome, RotationService
from tests.conftest import NOW, keep_rotation, make_record
from tests.fakes import HeldKeys
from tests.world import KeyPool, World, make_adapters

DAY = timedelta(days=1)
T = NOW + 710 * DAY  # the report's time: 20 days before the first key's certificate expires
ROOT = Path(__file__).resolve().parent.parent
REPORT_BENCH = ROOT / "bench" / "report_bench.py"
# The contract's mapping (issue 5), written out independently of RULES.
CONTRACT_RUNBOOKS = {
    FindingCode.CERTIFICATE_EXPIRING: "certificate-expiry",
    FindingCode.CERTIFICATE_EXPIRED: "certificate-expiry",
    FindingCode.CRYPTOPERIOD_EXCEEDED: "routine-rotation",
    FindingCode.REFERENCED_KEY_MISSING: "restore-key-parameter",
    FindingCode.ASSOCIATION_WITHOUT_PRIVATE_KEY: "decrypt-failures",
    FindingCode.RETIRED_KEY_ASSOCIATED: "routine-rotation",
    FindingCode.DESTROYED_KEY_REFERENCED: "emergency-rotation",
    FindingCode.KEY_BELOW_MINIMUM_SIZE: "routine-rotation",
    FindingCode.STALE_LOCK: "stuck-rotation",
    FindingCode.KMS_KEY_MISMATCH: "routine-rotation",
}


@dataclass(frozen=True)
class Seeded:
    """A keyring with every finding; key IDs by what they illustrate."""

    world: World
    adapters: Adapters  # the rotator's, configured with KMS key `kms_key`
    kms_key: str
    other_kms_key: str
    instances: dict[str, str]
    keys: dict[str, str]

    def options(self, **changes: Any) -> ReportOptions:
        return replace(self.adapters.settings.report_options(), **changes)

    def report(self, **changes: Any) -> Report:
        a = self.adapters
        return make_report(a.keyring, a.connect, a.lock, self.options(**changes), T)


def report_schema() -> dict[str, Any]:
    """The JSON Schema shipped with the package."""
    text = resources.files("rotator.services").joinpath("report.schema.json").read_text()
    return dict(json.loads(text))


def new_instance(world: World, alias: str) -> tuple[str, str]:
    payments = create_payment_instance(world.connect, alias)
    return payments.instance_id, payments.flow_id


def rotated_key(results: list[Any]) -> str:
    (result,) = results
    assert result.outcome is Outcome.ROTATED, result.detail
    assert result.new_key_id is not None
    return str(result.new_key_id)


def dead_pid() -> int:
    gone = subprocess.Popen(["true"])  # a process that has exited
    gone.wait()
    return gone.pid


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def seed(world: World, key_pool: KeyPool) -> Seeded:
    """Every finding of issue 5, each on its own instance, as of time T."""
    kms = boto3.client("kms")
    kms_key, other_kms_key = (kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(2))
    adapters = make_adapters(Settings(keyring_prefix=world.prefix, kms_key_id=kms_key))
    service = adapters.rotation("test", generate=key_pool.generator())
    keyring, ssm = adapters.keyring, world.ssm
    instances: dict[str, str] = {"expiring": world.instance_id}
    keys: dict[str, str] = {}

    def init(name: str, at: datetime, rotator: RotationService = service) -> str:
        if name not in instances:
            instances[name] = new_instance(world, name)[0]
        instance_id = instances[name]
        flows = [world.flow_id] if name == "expiring" else []
        modules = [world.module_id] if name == "expiring" else []
        if not flows:
            flows = [f["Id"] for f in list_flows(world, instance_id)]
        return rotated_key(
            [
                rotator.init(
                    instance_id, flows, modules, at, encrypt_blocks=card_blocks(*flows, *modules)
                )
            ]
        )

    # Expiring inside the renew window (20 days left) and past the cryptoperiod.
    keys["expiring"] = init("expiring", NOW)
    # Expired while active (and past the cryptoperiod).
    keys["expired"] = init("expired", NOW - 40 * DAY)
    # A stale lock and the rotation it interrupted; an association with no private key.
    keys["locked"] = init("locked", T - 10 * DAY)
    stale = replace(LockHolder.this_process("crashed", DEFAULT_LEASE), pid=dead_pid())
    ssm.put_parameter(
        Name=f"{world.prefix}/locks/{instances['locked']}",
        Value=stale.to_json(),
        Type="String",
    )
    keep_rotation(
        keyring,
        RotationState(
            "crashed", instances["locked"], RotationStep.STAGED, T - DAY, "test", keys["locked"]
        ),
        at=T - DAY,
    )
    stray = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys["orphan"] = world.connect.associate_security_key(
        InstanceId=instances["locked"], Key=public_pem(stray)
    )["AssociationId"]
    # A flow on a key whose private key was deleted; the previous key is past its grace.
    keys["previous"] = init("missing", T - 30 * DAY)
    keys["missing"] = rotated_key(service.rotate(instances["missing"], T - 20 * DAY, force=True))
    ssm.delete_parameter(Name=f"{world.prefix}/keys/{keys['missing']}/private-key")
    # A key marked retired while still associated.
    keys["retired"] = init("retired", T - 20 * DAY)
    keys["successor"] = rotated_key(service.rotate(instances["retired"], T - 15 * DAY, force=True))
    record = keyring.get_record(keys["retired"])
    keyring.write_record(
        record.transition(KeyState.RETIRED, at=T - 14 * DAY, actor="test", reason="marked")
    )
    # A destroyed key that the flow still uses.
    keys["destroyed"] = init("destroyed", T - 10 * DAY)
    record = keyring.get_record(keys["destroyed"])
    gone = Transition(KeyState.DESTROYED, T - 5 * DAY, "test", "deleted by hand")
    keyring.write_record(replace(record, state=KeyState.DESTROYED, history=(*record.history, gone)))
    ssm.delete_parameter(Name=f"{world.prefix}/keys/{keys['destroyed']}/private-key")
    # A private key stored under another KMS key than the configured one.
    other = make_adapters(Settings(keyring_prefix=world.prefix, kms_key_id=other_kms_key))
    keys["other-kms"] = init(
        "other-kms", T - 10 * DAY, other.rotation("test", generate=key_pool.generator())
    )
    # The blog's key adopted without its certificate: expiry unknown.
    blog = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    blog_pem = blog.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")
    keys["adopted"] = "5f0c1c1e-0000-4000-8000-00000000b10c"
    ssm.put_parameter(Name=f"{world.prefix}-blog/key", Value=blog_pem, Type="SecureString")
    ssm.put_parameter(Name=f"{world.prefix}-blog/key-id", Value=keys["adopted"], Type="String")
    instances["adopted"] = "adopted-instance"
    import_from_blog(
        keyring,
        key_parameter=f"{world.prefix}-blog/key",
        key_id_parameter=f"{world.prefix}-blog/key-id",
        certificate_pem=None,
        instance_id=instances["adopted"],
        now=T - 5 * DAY,
        actor="test",
        connect=HeldKeys().hold(instances["adopted"], keys["adopted"], public_pem(blog)),
    )
    return Seeded(world, adapters, kms_key, other_kms_key, instances, keys)


def list_flows(world: World, instance_id: str) -> list[dict[str, Any]]:
    return list(world.connect.list_contact_flows(InstanceId=instance_id)["ContactFlowSummaryList"])


@pytest.fixture
def seeded(world: World, key_pool: KeyPool) -> Seeded:
    return seed(world, key_pool)


def triples(report: Report) -> set[tuple[FindingCode, str | None, str | None]]:
    return {(f.code, f.instance_id, f.key_id) for f in report.findings}


def test_one_batched_read_finds_every_finding_and_lists_every_key(seeded: Seeded) -> None:
    a = seeded.adapters
    calls = count_calls(a)
    facts = gather(a.keyring, a.connect, a.lock, T)
    report = build_report(facts, seeded.options(), T)
    assert_calls_bounded(calls, report, len(facts.events))
    assert_findings(seeded, report)
    assert_key_facts(seeded, report)

    # Pure: the same facts judged against a 4096-bit minimum flag every key that encrypts.
    strict = build_report(facts, seeded.options(min_key_size=4096), T)
    below = {f.key_id for f in strict.findings if f.code is FindingCode.KEY_BELOW_MINIMUM_SIZE}
    k = seeded.keys
    encrypting = ("expiring", "expired", "locked", "previous", "missing", "successor")
    assert below == {k[name] for name in (*encrypting, "other-kms", "adopted")}
    assert triples(strict) - triples(report) == {
        (FindingCode.KEY_BELOW_MINIMUM_SIZE, f.instance_id, f.key_id)
        for f in strict.findings
        if f.code is FindingCode.KEY_BELOW_MINIMUM_SIZE
    }


def count_calls(adapters: Adapters) -> Counter[str]:
    """AWS calls by service:operation, from now on, on the rotator's own clients."""
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[f"{model.service_model.service_name}:{model.name}"] += 1

    for client in (adapters.ssm, adapters.connect_client):
        client.meta.events.register("before-call", count)
    return calls


def assert_calls_bounded(calls: Counter[str], report: Report, events: int) -> None:
    """Connect: one list per instance, one read per managed flow. SSM: a few paginated sweeps
    (keys 3 parameters each, instances up to 3 and history events, 10 a page; SecureStrings
    50 a page; locks)."""
    instances, keys = len(report.instances), len([r for r in report.keys if r.record])
    refs = sum(len(i.managed) for i in report.instances)
    assert calls["connect:ListSecurityKeys"] == instances
    assert calls["connect:DescribeContactFlow"] + calls["connect:DescribeContactFlowModule"] == refs
    ssm_calls = sum(n for name, n in calls.items() if name.startswith("ssm:"))
    # A page more per sweep: moto sends an empty last page after a full one (and serves
    # DescribeParameters 10 a page; AWS 50). One more instance holds only a current pointer.
    pages = (3 * keys // 10 + 1) + (3 * (instances + 1) // 10 + 1) + 1 + (keys // 10 + 1)
    pages += events // 10 + 1
    pages += 1  # one DescribeParameters by name: the adopted keys' source parameters
    assert ssm_calls <= pages
    assert {name for name in calls if name.startswith("ssm:")} == {
        "ssm:GetParametersByPath",
        "ssm:DescribeParameters",
    }


def pool_shared(report: Report) -> set[tuple[FindingCode, str | None, str | None]]:
    """key-shared where the seed's KeyPool handed one private key to two keys (the pool cycles
    its keys for speed): by fingerprint, the first key ID; an instance only if all share it."""
    groups: dict[str, list[Any]] = {}
    for row in report.keys:
        if row.record is not None:
            groups.setdefault(row.record.public_key_sha256, []).append(row.record)
    shared = set()
    for group in groups.values():
        if len(group) > 1:
            first = min(group, key=lambda r: (r.key_id, r.instance_id or ""))
            one = len({r.instance_id for r in group}) == 1
            shared.add((FindingCode.KEY_SHARED, first.instance_id if one else None, first.key_id))
    return shared


def assert_findings(seeded: Seeded, report: Report) -> None:
    i, k = seeded.instances, seeded.keys
    shared = pool_shared(report)
    assert shared  # two rotation services drew from the same pool: "other-kms" shares a key
    assert triples(report) - shared == {
        (FindingCode.CERTIFICATE_EXPIRING, i["expiring"], k["expiring"]),
        (FindingCode.CRYPTOPERIOD_EXCEEDED, i["expiring"], k["expiring"]),
        (FindingCode.CERTIFICATE_EXPIRED, i["expired"], k["expired"]),
        (FindingCode.CRYPTOPERIOD_EXCEEDED, i["expired"], k["expired"]),
        (FindingCode.STALE_LOCK, i["locked"], None),
        (FindingCode.INTERRUPTED_ROTATION, i["locked"], None),
        (FindingCode.ASSOCIATION_WITHOUT_PRIVATE_KEY, i["locked"], k["orphan"]),
        (FindingCode.REFERENCED_KEY_MISSING, i["missing"], k["missing"]),
        (FindingCode.GRACE_PERIOD_OVER, i["missing"], k["previous"]),
        (FindingCode.RETIRED_KEY_ASSOCIATED, i["retired"], k["retired"]),
        (FindingCode.DESTROYED_KEY_REFERENCED, i["destroyed"], k["destroyed"]),
        (FindingCode.KMS_KEY_MISMATCH, i["other-kms"], k["other-kms"]),
        (FindingCode.CERTIFICATE_UNKNOWN, i["adopted"], k["adopted"]),
        # The blog's parameter is left after adoption: a copy of the private key.
        (FindingCode.PRIVATE_KEY_COPY, i["adopted"], k["adopted"]),
        # The seed's key operations ran as moto's principal, which never acknowledged (3.7.8).
        (FindingCode.CUSTODIAN_UNACKNOWLEDGED, None, None),
    }
    assert shared <= triples(report)
    copy = next(f for f in report.findings if f.code is FindingCode.PRIVATE_KEY_COPY)
    assert f"parameter {seeded.world.prefix}-blog/key still holds" in copy.message
    severities = {f.code: f.severity for f in report.findings}
    assert {c for c, s in severities.items() if s is Severity.CRITICAL} == {
        FindingCode.CERTIFICATE_EXPIRED,
        FindingCode.REFERENCED_KEY_MISSING,
        FindingCode.DESTROYED_KEY_REFERENCED,
        FindingCode.KEY_SHARED,
    }
    assert severities[FindingCode.GRACE_PERIOD_OVER] is Severity.INFO
    ranks = [f.severity.rank for f in report.findings]
    assert ranks == sorted(ranks)
    for code, runbook in CONTRACT_RUNBOOKS.items():
        assert RULES[code].runbook.value == runbook, code
    assert set(RULES) == set(FindingCode)
    stale = next(f for f in report.findings if f.code is FindingCode.STALE_LOCK)
    assert "no longer running" in stale.message
    missing = next(f for f in report.findings if f.code is FindingCode.REFERENCED_KEY_MISSING)
    assert "flow " in missing.message and "cannot be decrypted" in missing.message


def assert_key_facts(seeded: Seeded, report: Report) -> None:
    rows = {row.key_id: row for row in report.keys}
    assert set(rows) == set(seeded.keys.values())
    expiring = rows[seeded.keys["expiring"]]
    assert (expiring.state, expiring.current, expiring.associated) == ("active", True, True)
    assert expiring.flows == (f"flow {seeded.world.flow_id}", f"module {seeded.world.module_id}")
    assert expiring.kms_key_id == seeded.kms_key and expiring.private_key_stored
    assert expiring.days_to_expiry is not None and round(expiring.days_to_expiry) == 20
    assert expiring.age_days is not None and round(expiring.age_days) == 710
    orphan = rows[seeded.keys["orphan"]]
    assert (orphan.state, orphan.record, orphan.associated) == ("unknown", None, True)
    successor = rows[seeded.keys["successor"]]
    assert [t.state for t in successor.history] == [KeyState.PENDING, KeyState.ACTIVE]
    retired = rows[seeded.keys["retired"]]
    assert [t.state for t in retired.history][-2:] == [KeyState.PREVIOUS, KeyState.RETIRED]
    assert [i.instance_id for i in report.instances] == sorted(
        v for n, v in seeded.instances.items() if n != "adopted"
    )


def test_formats_parse_back_and_fail_on_sets_the_exit_code(seeded: Seeded, tmp_path: Path) -> None:
    report = seeded.report()
    key_ids = [row.key_id for row in report.keys]
    rendered = {fmt: render(report, fmt) for fmt in ReportFormat}

    schema = report_schema()
    document = json.loads(rendered[ReportFormat.JSON])
    jsonschema.validate(document, schema, format_checker=jsonschema.FormatChecker())
    # The seed's findings, the blog parameter's copy, and a key-shared per key the pool reused.
    critical = 3 + len(pool_shared(report))
    # ... and one principal (moto's, the other-KMS service) that never acknowledged (3.7.8).
    assert document["summary"]["findings"] == {"critical": critical, "warning": 11, "info": 1}
    finding_schema = schema["$defs"]["finding"]["properties"]
    assert finding_schema["code"]["enum"] == [c.value for c in FindingCode]
    assert finding_schema["runbook"]["enum"] == [r.value for r in RunbookName]

    rows = list(csv.reader(io.StringIO(rendered[ReportFormat.CSV])))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [row[1] for row in rows[1:]] == key_ids
    by_key = {row[1]: dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows[1:]}
    locked = by_key[seeded.keys["locked"]]
    assert "warning stale-lock (stuck-rotation)" in locked["findings"]
    assert by_key[seeded.keys["expired"]]["findings"].startswith(
        "critical certificate-expired (certificate-expiry)"
    )

    markdown = rendered[ReportFormat.MD]
    assert "## Findings" in markdown and "## Keys" in markdown
    assert "| severity | finding" in markdown.replace("  ", " ")
    assert "runbooks/restore-key-parameter.md" in markdown
    assert all(key_id in markdown for key_id in key_ids)

    html = rendered[ReportFormat.HTML]
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html
    assert all(key_id in html for key_id in key_ids)
    assert "http" not in html.lower()
    tags = TagCollector.of(html)
    assert not {"script", "link", "img", "iframe", "object", "embed"} & tags.names
    assert not tags.attributes & {"src", "href", "xlink:href"}
    svg = ET.fromstring(html[html.index("<svg") : html.index("</svg>") + len("</svg>")])
    texts = "".join(svg.itertext())
    assert all(key_id in texts for key_id in key_ids)
    assert f"today {T:%Y-%m-%d}" in texts
    renew_windows = [r for r in svg.iter("rect") if "renew window" in "".join(r.itertext())]
    active = [row for row in report.keys if row.state == "active" and row.renew_at is not None]
    assert len(renew_windows) == len(active)

    for text in rendered.values():
        assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text

    a, output = seeded.adapters, tmp_path / "report.html"
    for fail_on, expected in ((None, 0), (Severity.CRITICAL, 1), (Severity.WARNING, 1)):
        out = io.StringIO()
        code = run_report(
            a.keyring,
            a.connect,
            a.lock,
            seeded.options(),
            T,
            fmt=ReportFormat.HTML,
            output=output,
            fail_on=fail_on,
            out=out,
        )
        assert code == expected, fail_on
        assert output.read_text(encoding="utf-8") == rendered[ReportFormat.HTML]
        assert f"report written to {output}" in out.getvalue()
        assert f"{critical} critical, 11 warning, 1 info" in out.getvalue()


class TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.names.add(tag)
        self.attributes.update(name for name, _ in attrs)

    @classmethod
    def of(cls, html: str) -> TagCollector:
        collector = cls()
        collector.feed(html)
        return collector


def test_fail_on_critical_passes_with_warnings_only(world: World) -> None:
    key_id = rotated_key(
        [
            world.service.init(
                world.instance_id,
                [world.flow_id],
                [],
                NOW,
                encrypt_blocks=card_blocks(world.flow_id),
            )
        ]
    )
    a = world.adapters
    options = a.settings.report_options()

    def run(now: datetime, fail_on: Severity | None, fmt: ReportFormat) -> tuple[int, str]:
        out = io.StringIO()
        code = run_report(
            a.keyring,
            a.connect,
            a.lock,
            options,
            now,
            fmt=fmt,
            output=None,
            fail_on=fail_on,
            out=out,
        )
        return code, out.getvalue()

    assert run(NOW, Severity.WARNING, ReportFormat.JSON)[0] == 0  # a healthy keyring
    later = NOW + 400 * DAY  # past the cryptoperiod, not yet in the renew window
    assert run(later, Severity.CRITICAL, ReportFormat.CSV)[0] == 0
    code, markdown = run(later, Severity.WARNING, ReportFormat.MD)
    assert code == 1 and "cryptoperiod exceeded" in markdown and key_id in markdown
    with pytest.raises(ConfigError, match="--output"):
        run_report(
            a.keyring,
            a.connect,
            a.lock,
            options,
            NOW,
            fmt=ReportFormat.HTML,
            output=Path("/nonexistent-directory/report.html"),
            fail_on=None,
            out=io.StringIO(),
        )


def test_an_unreadable_instance_is_a_finding_not_a_crash(world: World) -> None:
    rotated_key(
        [
            world.service.init(
                world.instance_id,
                [world.flow_id],
                [],
                NOW,
                encrypt_blocks=card_blocks(world.flow_id),
            )
        ]
    )
    world.sandbox.emulator.reset()  # Connect forgets the instance
    a = world.adapters
    report = make_report(a.keyring, a.connect, a.lock, ReportOptions(), NOW)
    (finding,) = report.findings
    assert finding.code is FindingCode.INSTANCE_UNREADABLE and finding.severity is Severity.CRITICAL
    assert "ListSecurityKeys" in finding.message


def test_publish_puts_the_report_in_s3_and_a_summary_on_sns(world: World) -> None:
    rotated_key(
        [
            world.service.init(
                world.instance_id,
                [world.flow_id],
                [],
                NOW,
                encrypt_blocks=card_blocks(world.flow_id),
            )
        ]
    )
    a, expired = world.adapters, NOW + 731 * DAY
    report = make_report(a.keyring, a.connect, a.lock, ReportOptions(), expired)
    s3, sns, sqs = boto3.client("s3"), boto3.client("sns"), boto3.client("sqs")
    name = f"report{world.prefix.replace('/', '-')}"
    s3.create_bucket(Bucket=name)
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=attributes["Attributes"]["QueueArn"])

    publisher = AwsPublisher({"s3": s3, "sns": sns}.__getitem__, namespace="unused")
    published = publish_report(report, publisher, s3_uri=f"s3://{name}/evidence/", topic_arn=topic)
    key = f"evidence/report-{expired:%Y-%m-%d}.html"
    assert published == Published(f"s3://{name}/{key}", notified=True)
    stored = s3.get_object(Bucket=name, Key=key)
    assert stored["ContentType"].startswith("text/html")
    assert b"<svg" in stored["Body"].read()
    (message,) = sqs.receive_message(QueueUrl=queue)["Messages"]
    body = json.loads(message["Body"])
    assert body["Subject"].endswith(": 1 critical, 1 warning")
    assert "CRITICAL certificate-expired" in body["Message"]
    assert "runbooks/certificate-expiry.md" in body["Message"]
    assert f"Full report: {published.location}" in body["Message"]
    assert "PRIVATE KEY" not in body["Message"]
    nothing = publish_report(report, publisher, s3_uri=None, topic_arn=None)
    assert nothing == Published(None, notified=False)


def test_an_empty_keyring_renders_in_every_format() -> None:
    facts = KeyringState(
        prefix="/empty",
        records=(),
        current={},
        instances=(),
        protection=ProtectionSweep.unread(),
    )
    report = build_report(facts, ReportOptions(), NOW)
    assert (report.keys, report.findings, report.fails(Severity.INFO)) == ((), (), False)
    jsonschema.validate(json.loads(render(report, ReportFormat.JSON)), report_schema())
    assert render(report, ReportFormat.CSV) == ",".join(CSV_COLUMNS) + "\n"
    assert "No findings." in render(report, ReportFormat.MD)
    assert f"today {NOW:%Y-%m-%d}" in render(report, ReportFormat.HTML)


def test_kms_keys_compare_as_ssm_reports_them() -> None:
    key = "1234abcd-12ab-34cd-56ef-1234567890ab"
    assert same_kms_key(f"arn:aws:kms:us-east-1:111122223333:key/{key}", key)
    assert same_kms_key("arn:aws:kms:us-east-1:111122223333:alias/connect", "alias/connect")
    assert not same_kms_key("alias/aws/ssm", key)
    assert not same_kms_key("alias/connect", key)  # an alias is not resolved (no KMS call)


def test_report_object_names() -> None:
    assert report_object("s3://b", T, ReportFormat.JSON) == ("b", f"report-{T:%Y-%m-%d}.json")
    assert report_object("s3://b/a/c/", T, ReportFormat.CSV)[1] == f"a/c/report-{T:%Y-%m-%d}.csv"
    with pytest.raises(Exception, match="s3://bucket/prefix"):
        report_object("https://b", T, ReportFormat.MD)


@pytest.mark.wire
def test_quick_report_bench_reports_its_figures() -> None:
    result = subprocess.run(
        [sys.executable, str(REPORT_BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| report: AWS calls" in result.stdout
    assert "MISS" not in result.stdout, result.stdout


def one_key_report(material: KeyMaterial, at: datetime) -> Report:
    record = make_record("k", material, instance_id="i")
    facts = KeyringState(
        prefix="/p",
        records=(record,),
        current={"i": "k"},
        instances=(),
        protection=ProtectionSweep(
            {"k": ProtectedKey("/p/keys/k/private-key", "alias/aws/ssm")}, {}
        ),
    )
    return build_report(facts, ReportOptions(), at)


def badges(html: str) -> list[tuple[str, str]]:
    """(class, text) of each severity badge in the headline."""
    headline = html.split("<p class='headline'>", 1)[1].split("</p>", 1)[0]
    return re.findall(r"<span class='([a-z ]+)'>([^<]+)</span>", headline)


def test_html_badges_are_grey_at_zero_and_coloured_otherwise(material_a: KeyMaterial) -> None:
    quiet = render(one_key_report(material_a, NOW + DAY), ReportFormat.HTML)
    assert badges(quiet) == [
        ("sev zero", "0 critical"),
        ("sev zero", "0 warning"),
        ("sev zero", "0 info"),
    ]
    due = one_key_report(material_a, NOW + 400 * DAY)  # past the cryptoperiod: a warning
    assert due.counts()[Severity.WARNING] == 1
    assert badges(render(due, ReportFormat.HTML)) == [
        ("sev zero", "0 critical"),
        ("sev warning", "1 warning"),
        ("sev zero", "0 info"),
    ]
    assert ".sev.zero{background:#8a8a8a}" in quiet


def test_the_age_column_is_never_negative(material_a: KeyMaterial) -> None:
    report = one_key_report(material_a, NOW - 8 * DAY)  # a key "from the future" (clock skew)
    (key,) = report.keys
    assert key.age_days is not None and key.age_days < -7
    for fmt in (ReportFormat.MD, ReportFormat.HTML):
        rendered = render(report, fmt)
        assert "0 / 365 days" in rendered and "-8 / 365" not in rendered
    (row,) = csv.DictReader(io.StringIO(render(report, ReportFormat.CSV)))
    assert row["age_days"] == "0.0"
    later = one_key_report(material_a, NOW + 10 * DAY)
    assert "10 / 365 days" in render(later, ReportFormat.MD)


def test_the_lambda_report_job_warns_when_it_delivers_nowhere(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    summary = handler({"job": "report"}, None)  # no S3 URI, no topic
    # The Lambda configures its own JSON logging on stdout: read the lines it printed.
    logs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line[:1] == "{"]
    warning = (
        "the report was delivered nowhere: no destination is configured (set "
        "ROTATOR_REPORT_S3_URI, ROTATOR_REPORT_SNS_TOPIC_ARN or ROTATOR_SNS_TOPIC_ARN)"
    )
    assert (summary["ok"], summary["location"], summary["notified"]) == (True, None, False)
    assert summary["warnings"] == [warning]
    (line,) = [e for e in logs if e["event"] == "scheduled_report"]
    assert (line["level"], line["warnings"]) == ("warning", [warning])


def test_the_readme_lists_every_finding_with_its_severity_and_runbook() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| ([^|]+) \| `([a-z-]+)` \| (\w+) \| ([a-z-]+) \|$", readme, re.M)
    documented = {code: (title, severity, runbook) for title, code, severity, runbook in rows}
    expected = {
        code.value: (rule.title, rule.severity.value, rule.runbook.value)
        for code, rule in RULES.items()
    }
    assert documented == expected
