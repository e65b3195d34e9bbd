"""The fleet's one report (issue 12): two fake accounts x two regions give a section each and the
right totals; one key pair in two accounts is a `key-shared` finding naming both; a region that
cannot be read is a finding and the rest is reported; the JSON follows the schema; the HTML
groups 1,000 keys' timeline and filters it offline, with no external reference."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
from dataclasses import replace
from datetime import timedelta
from importlib.resources import files
from typing import Any

import jsonschema
import pytest

from rotator.domain.checks import ReportOptions
from rotator.domain.findings import FindingCode, Severity
from rotator.domain.fleet import Partition
from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import KeyRecord, KeyState
from rotator.domain.rotation import ManagedInstance
from rotator.domain.state import InstanceState, KeyringState, ProtectionSweep
from rotator.errors import AwsCallError
from rotator.services.fleet_report import (
    FleetReport,
    PartitionSources,
    build_fleet_report,
    make_fleet_report,
)
from rotator.services.fleet_report_render import filter_script_hash, render_fleet
from rotator.services.report_render import ReportFormat, render
from tests.conftest import NOW, make_record
from tests.fakes import FakeConnect, FakeKeyring, FakeLock
from tests.test_report_html import Page

PARTITIONS = (
    Partition("prod", "eu-west-2"),
    Partition("prod", "eu-central-1"),
    Partition("test", "eu-west-2"),
    Partition("test", "us-east-1"),
)
STATES = (KeyState.ACTIVE, KeyState.PREVIOUS, KeyState.RETIRED)


def fingerprint(text: str) -> str:
    """A distinct public-key SHA-256 per key without generating a key pair per key."""
    return hashlib.sha256(text.encode()).hexdigest()


def fake_partition(
    partition: Partition, material: KeyMaterial, *, instances: int = 2
) -> PartitionSources:
    """`instances` managed instances in this account region's Connect, each with an active,
    a previous and a retired key (fingerprints distinct across the fleet)."""
    keyring, connect = FakeKeyring(), FakeConnect()
    for _ in range(instances):
        instance = connect.create_instance()
        keyring.put_instance(ManagedInstance(instance, (), ()))
        for state in STATES:
            key_id = f"{partition.account}-{partition.region}-{instance[:8]}-{state.value}"
            record = replace(
                make_record(key_id, material, instance_id=instance, state=state),
                public_key_sha256=fingerprint(key_id),
            )
            keyring.create_private_key(key_id, "not a key: the report never reads it")
            keyring.put_record(record)
            if state is KeyState.ACTIVE:
                keyring.set_current(instance, key_id)
    return PartitionSources(keyring, connect, FakeLock(lambda: NOW))


class UnreadableKeyring(FakeKeyring):
    """A member account whose role may not read the keyring."""

    def instance_entries(self) -> Any:
        raise AwsCallError("ssm:GetParametersByPath", "/connect-keys", "AccessDenied")


@pytest.fixture
def fleet(material_2048: KeyMaterial) -> dict[Partition, PartitionSources]:
    return {p: fake_partition(p, material_2048) for p in PARTITIONS}


def schema() -> dict[str, Any]:
    text = files("rotator.services").joinpath("report.schema.json").read_text()
    return dict(json.loads(text))


def validate(document: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(
        schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(document)


def test_a_section_per_account_region_and_the_fleet_totals(
    fleet: dict[Partition, PartitionSources],
) -> None:
    report = make_fleet_report(fleet, ReportOptions(), NOW)
    assert [s.partition for s in report.sections] == list(PARTITIONS)
    for section, source in zip(report.sections, fleet.values(), strict=True):
        assert section.report is not None and section.error is None
        # Each section is its own keyring's: its instances and keys, no other partition's.
        assert {i.instance_id for i in section.report.instances} == set(source.connect.instances)  # type: ignore[attr-defined]
        prefix = f"{section.partition.account}-{section.partition.region}-"
        assert len(section.keys) == 6 and all(k.key_id.startswith(prefix) for k in section.keys)

    totals = report.to_dict()["fleet"]["totals"]
    each = [s.report.counts() for s in report.sections if s.report is not None]
    assert totals == {
        "partitions": 4,
        "unreadable_partitions": 0,
        "instances": 8,
        "keys": 24,
        "keys_by_state": {
            "pending": 0,
            "active": 8,
            "previous": 8,
            "retired": 8,
            "destroyed": 0,
            "unknown": 0,
        },
        "findings": {s.value: sum(c[s] for c in each) for s in Severity},
    }
    # Connect holds none of them: each active and previous key is a finding of its section.
    assert totals["findings"] == {"critical": 16, "warning": 0, "info": 0}
    assert report.findings == ()  # no key pair in two places, every region read
    validate(report.to_dict())


def test_the_same_key_fingerprint_in_two_accounts_is_a_finding_naming_both(
    fleet: dict[Partition, PartitionSources], material_2048: KeyMaterial
) -> None:
    """The issue's proof: production and test share one key pair."""
    prod, test = PARTITIONS[0], PARTITIONS[3]
    prod_keyring, test_keyring = fleet[prod].keyring, fleet[test].keyring
    assert isinstance(prod_keyring, FakeKeyring) and isinstance(test_keyring, FakeKeyring)
    shared = next(r for r in prod_keyring.records() if r.state is KeyState.ACTIVE)
    copy = next(r for r in test_keyring.records() if r.state is KeyState.ACTIVE)
    test_keyring.put_record(replace(copy, public_key_sha256=shared.public_key_sha256))

    report = make_fleet_report(fleet, ReportOptions(), NOW)
    (finding,) = report.findings
    assert finding.finding.code is FindingCode.KEY_SHARED
    assert finding.finding.severity is Severity.CRITICAL
    assert {(h.partition, h.key_id, h.instance_id) for h in finding.holders} == {
        (prod, shared.key_id, shared.instance_id),
        (test, copy.key_id, copy.instance_id),
    }
    message = finding.finding.message
    for holder in (f"prod/eu-west-2 {shared.key_id} ({shared.instance_id})",
                   f"test/us-east-1 {copy.key_id} ({copy.instance_id})"):  # fmt: skip
        assert holder in message
    assert shared.public_key_sha256 not in message  # a prefix of the fingerprint, no more
    assert material_2048.public_key_pem.splitlines()[1] not in json.dumps(report.to_dict())
    # Counted in the fleet's totals, flagged on both keys in CSV, validated by the schema.
    assert report.counts()[Severity.CRITICAL] == 1 + sum(
        s.report.counts()[Severity.CRITICAL] for s in report.sections if s.report is not None
    )
    rows = list(csv.DictReader(io.StringIO(render_fleet(report, ReportFormat.CSV))))
    flagged = {(r["account"], r["key_id"]) for r in rows if "key-shared" in r["findings"]}
    assert flagged == {("prod", shared.key_id), ("test", copy.key_id)}
    validate(report.to_dict())
    markdown = render_fleet(report, ReportFormat.MD)
    assert "## Fleet findings" in markdown and shared.key_id in markdown.split("## Account")[0]


def test_one_keyring_s_own_duplicate_stays_that_keyring_s_finding(
    fleet: dict[Partition, PartitionSources],
) -> None:
    keyring = fleet[PARTITIONS[1]].keyring
    assert isinstance(keyring, FakeKeyring)
    first, second = keyring.records()[:2]
    keyring.put_record(replace(second, public_key_sha256=first.public_key_sha256))
    report = make_fleet_report(fleet, ReportOptions(), NOW)
    assert report.findings == ()  # not the fleet's: one account region
    section = report.sections[1].report
    assert section is not None
    assert [f.code for f in section.findings].count(FindingCode.KEY_SHARED) == 1


def test_an_unreadable_partition_is_a_finding_and_the_rest_is_reported(
    fleet: dict[Partition, PartitionSources],
) -> None:
    broken = PARTITIONS[2]
    fleet[broken] = replace(fleet[broken], keyring=UnreadableKeyring())
    report = make_fleet_report(fleet, ReportOptions(), NOW)

    (finding,) = report.findings
    assert finding.finding.code is FindingCode.PARTITION_UNREADABLE
    assert finding.partition == broken and finding.finding.severity is Severity.CRITICAL
    assert (
        "AccessDenied" in finding.finding.message
        and "test, region eu-west-2" in finding.finding.message
    )
    assert [s.partition for s in report.unreadable] == [broken]
    assert len(report.readable) == 3 and report.key_count() == 18
    document = report.to_dict()
    assert document["fleet"]["totals"]["unreadable_partitions"] == 1
    (section,) = [p for p in document["partitions"] if p["report"] is None]
    assert (section["account"], section["region"]) == ("test", "eu-west-2")
    assert "AccessDenied" in section["error"]
    validate(document)
    assert report.fails(Severity.CRITICAL) and not report.fails(None)
    for fmt in ReportFormat:  # every format says it, none crashes
        assert "AccessDenied" in render_fleet(report, fmt), fmt


def test_a_crash_in_one_partition_names_its_type_only(
    fleet: dict[Partition, PartitionSources],
) -> None:
    class Crashing(FakeKeyring):
        def instance_entries(self) -> Any:
            raise RuntimeError("secret-looking text")

    fleet[PARTITIONS[0]] = replace(fleet[PARTITIONS[0]], keyring=Crashing())
    report = make_fleet_report(fleet, ReportOptions(), NOW)
    assert report.sections[0].error == "unexpected RuntimeError"
    assert "secret-looking" not in render_fleet(report, ReportFormat.JSON)


def test_the_schema_takes_a_keyring_report_unchanged_and_rejects_a_mixed_one(
    fleet: dict[Partition, PartitionSources],
) -> None:
    section = make_fleet_report(fleet, ReportOptions(), NOW).sections[0].report
    assert section is not None
    single = json.loads(render(section, ReportFormat.JSON))
    validate(single)  # one keyring's report, as without accounts
    with pytest.raises(jsonschema.ValidationError):
        validate({**single, "fleet": {"totals": {}, "findings": []}})
    fleet = build_fleet_report({PARTITIONS[0]: "AccessDenied"}, ReportOptions(), NOW).to_dict()
    validate(fleet)
    fleet["fleet"]["findings"][0]["holders"] = [{"account": "prod", "region": "eu-west-2"}]
    with pytest.raises(jsonschema.ValidationError):
        validate(fleet)


# -- the HTML at 1,000 keys ----------------------------------------------------------------------

ACCOUNTS_1000 = ("prod", "test", "payments-bu")
REGIONS_1000 = ("eu-west-2", "eu-central-1")


def big_state(partition: Partition, material: KeyMaterial, keys: int) -> KeyringState:
    """`keys` keys, two an instance (active and previous), as one read would see them."""
    records: list[KeyRecord] = []
    instances: list[InstanceState] = []
    current: dict[str, str] = {}
    for number in range(keys // 2):
        instance = f"{partition.account}-{partition.region}-inst-{number:03d}"
        for state in (KeyState.ACTIVE, KeyState.PREVIOUS):
            key_id = f"{instance}-{state.value}"
            records.append(
                replace(
                    make_record(key_id, material, instance_id=instance, state=state),
                    public_key_sha256=fingerprint(key_id),
                    not_after=NOW + timedelta(days=30 + number % 300),
                )
            )
        current[instance] = f"{instance}-active"
        instances.append(
            InstanceState(instance, current[instance], (), "never rotated", False, None)
        )
    return KeyringState(
        "/connect-keys", tuple(records), current, tuple(instances), ProtectionSweep.unread()
    )


def big_fleet(material: KeyMaterial) -> FleetReport:
    """1,000 keys (500 instances) in 3 accounts x 2 regions, one region unreadable."""
    partitions = [Partition(a, r) for a in ACCOUNTS_1000 for r in REGIONS_1000]
    sizes = [168, 168, 166, 166, 166, 166]
    states: dict[Partition, KeyringState | str] = {
        p: big_state(p, material, n) for p, n in zip(partitions, sizes, strict=True)
    }
    states[Partition("test", "eu-central-1")] = "sts:AssumeRole: AccessDenied"
    states[Partition("test", "us-east-1")] = big_state(
        Partition("test", "us-east-1"), material, 166
    )
    report = build_fleet_report(states, ReportOptions(), NOW)
    assert report.key_count() == 1000
    return report


@pytest.fixture(scope="module")
def big_html(material_2048: KeyMaterial) -> tuple[FleetReport, str]:
    report = big_fleet(material_2048)
    return report, render_fleet(report, ReportFormat.HTML)


def test_the_html_groups_1000_keys_by_account_region_and_instance(
    big_html: tuple[FleetReport, str],
) -> None:
    report, html = big_html
    page = Page.of(html)  # every element closed
    assert html.count("class='tl-account'") == len(ACCOUNTS_1000)
    assert html.count("class='tl-region'") == len(report.sections) == 7
    assert html.count("class='tl-instance'") == 500
    # Every key is on the page, in its instance's group (one small timeline per instance).
    for section in report.sections:
        for key in section.keys[:5]:
            assert f">{key.key_id}<" in html
    assert len(re.findall(r"<svg class=\"timeline\"", html)) == 501  # the legend, then a group each
    # Nothing is hidden without the script: only the filter's form, which needs it.
    hidden = re.findall(r"<(\w+)[^>]*\shidden[\s>]", html)
    assert hidden == ["form"]
    assert "could not be read: sts:AssumeRole: AccessDenied" in page.text("body")


def test_the_html_loads_nothing_and_runs_only_its_own_filter(
    big_html: tuple[FleetReport, str],
) -> None:
    _, html = big_html
    assert not re.search(r"(src|href)\s*=", html, re.I)
    assert not re.search(r"https?://", html.replace("http://www.w3.org/2000/svg", ""))
    assert "@import" not in html and "url(" not in html
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1 and "timeline-filter" in scripts[0]
    assert "innerHTML" not in scripts[0] and "fetch(" not in scripts[0]
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert filter_script_hash() == f"sha256-{digest}"
    policy = re.search(r"http-equiv='Content-Security-Policy' content=\"([^\"]+)\"", html)
    assert policy is not None
    assert "default-src 'none'" in policy.group(1)
    assert f"script-src 'sha256-{digest}'" in policy.group(1)


def test_hostile_text_in_a_fleet_section_is_never_markup(material_2048: KeyMaterial) -> None:
    hostile = '<script>alert("x")</script>\'&amp;<b>'
    partition = Partition("prod", "eu-west-2")
    state = big_state(partition, material_2048, 2)
    record = replace(state.records[0], key_id=f"k{hostile}", instance_id=f"i{hostile}")
    state = replace(state, records=(record, *state.records[1:]))
    report = build_fleet_report(
        {partition: state, Partition("test", "eu-west-2"): f"why{hostile}"}, ReportOptions(), NOW
    )
    html = render_fleet(report, ReportFormat.HTML)
    assert html.count("<script") == 1 and "<b>" not in html
    body = Page.of(html).text("body")
    assert f"k{hostile}" in body and f"why{hostile}" in body
