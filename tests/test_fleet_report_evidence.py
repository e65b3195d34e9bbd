"""The fleet report's HTML and Markdown carry each account region's evidence, from the keyring
report's own builders and partials: its dual-control requests and refusals (3.7.6), its
cryptographic architecture (3.6.1.1: algorithms, keys' sizes and strengths, the KMS key's spec),
its decrypt function's copy inventory (3.6.1.4) and its key custodians (3.7.8); one section's
evidence never shows in another's; no format carries a private key or plaintext."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import replace

import pytest

from rotator.domain.checks import ReportOptions
from rotator.domain.fleet import Partition
from rotator.domain.keys import KeyMaterial
from rotator.domain.rotation import ManagedInstance
from rotator.services.crypto_architecture import EvidenceSources
from rotator.services.fleet_report import (
    FleetReport,
    PartitionSources,
    make_fleet_report,
)
from rotator.services.fleet_report_render import filter_script_hash, render_fleet
from rotator.services.report_render import ReportFormat
from tests.conftest import make_record
from tests.fakes import (
    FakeConnect,
    FakeFunctionEnvironments,
    FakeKeyEncryptionKeys,
    FakeKeyring,
    FakeLock,
)
from tests.test_dual_control import ALICE, BOB
from tests.test_fleet_report import fingerprint
from tests.test_report_html import Page
from tests.test_report_markdown import (
    FUNCTION,
    KMS_ALIAS,
    KMS_ARN,
    KMS_KEY_ID,
    PLAINTEXT,
    T,
    keyring_with_requests,
    rows,
    section,
)

PROD, TEST = Partition("prod", "eu-west-2"), Partition("test", "us-east-1")
TEST_KMS_KEY_ID = "9999eeee-12ab-34cd-56ef-1234567890ab"
TEST_KMS_ARN = f"arn:aws:kms:us-east-1:123456789012:key/{TEST_KMS_KEY_ID}"
REFUSED_WHY = "a second principal must approve it (dual control)"
EVIDENCE_HEADINGS = (
    "Dual control requests",
    "Dual control: refused approvals and withdrawals",
    "Key custodians",
    "Cryptographic architecture",
    "Cryptographic architecture: keys, their strength, use, expiry and store",
    "Cryptographic architecture: key-encrypting keys (KMS)",
    "Copy inventory: the decrypt function's environment",
)


def evidence(keks: FakeKeyEncryptionKeys, environment: dict[str, str]) -> EvidenceSources:
    return EvidenceSources(keks, FakeFunctionEnvironments({FUNCTION: environment}), FUNCTION)


def prod_sources(
    material_a: KeyMaterial, material_2048: KeyMaterial, *, plaintext_env: bool
) -> tuple[PartitionSources, dict[str, str]]:
    """RSA-4096 and RSA-2048 keys under one KMS key, and the year's dual-control requests."""
    keyring, ids = keyring_with_requests(material_a, material_2048)
    keks = FakeKeyEncryptionKeys()
    keks.add(KMS_KEY_ID, alias=KMS_ALIAS)
    env = {"KEY": material_a.private_key_pem, "CARD": PLAINTEXT} if plaintext_env else {}
    sources = PartitionSources(keyring, FakeConnect(), FakeLock(lambda: T), evidence(keks, env))
    return sources, ids


def other_sources(material_2048: KeyMaterial) -> PartitionSources:
    """One RSA-2048 key under the account's own KMS key (an HMAC spec, to tell it apart), and
    no dual-control request."""
    alias = "alias/test-connect-keys"
    keyring, connect = FakeKeyring(kms_key_id=alias), FakeConnect()
    instance = connect.create_instance()
    keyring.put_instance(ManagedInstance(instance, (), ()))
    key_id = "test-only-key"
    record = make_record(key_id, material_2048, instance_id=instance)
    keyring.store_key(key_id, material_2048, replace(record, public_key_sha256=fingerprint(key_id)))
    keyring.set_current(instance, key_id)
    keks = FakeKeyEncryptionKeys()
    keks.add(TEST_KMS_KEY_ID, key_spec="HMAC_256", alias=alias)
    return PartitionSources(keyring, connect, FakeLock(lambda: T), evidence(keks, {}))


def fleet_of(
    material_a: KeyMaterial, material_2048: KeyMaterial, *, plaintext_env: bool = False
) -> tuple[FleetReport, dict[str, str]]:
    prod, ids = prod_sources(material_a, material_2048, plaintext_env=plaintext_env)
    report = make_fleet_report({PROD: prod, TEST: other_sources(material_2048)}, ReportOptions(), T)
    return report, ids


@pytest.fixture(scope="module")
def fleet(
    material_a: KeyMaterial, material_2048: KeyMaterial
) -> tuple[FleetReport, dict[str, str]]:
    return fleet_of(material_a, material_2048)


def md_part(markdown: str, partition: Partition) -> str:
    """An account region's Markdown section, up to the next `## ` heading."""
    heading = f"\n## Account {partition.account}, region {partition.region}\n"
    return "\n" + markdown.split(heading, 1)[1].split("\n## ", 1)[0]


def md_parts(report: FleetReport) -> tuple[str, str, str]:
    """The fleet's Markdown, then prod's and test's sections."""
    markdown = render_fleet(report, ReportFormat.MD)
    return markdown, md_part(markdown, PROD), md_part(markdown, TEST)


def html_part(html: str, partition: Partition) -> str:
    """An account region's HTML <section>."""
    opening = f"<section id='partition-{partition.account}-{partition.region}'>"
    return html.split(opening, 1)[1].split("</section>", 1)[0]


def html_table_after(part: str, heading: str) -> str:
    """The markup under an <h3> up to the next <h3>."""
    return part.split(f">{heading}</h3>", 1)[1].split("<h3", 1)[0]


def test_only_the_partition_with_a_request_names_it_its_principals_and_outcome_in_markdown(
    fleet: tuple[FleetReport, dict[str, str]],
) -> None:
    report, ids = fleet
    markdown, prod, test = md_parts(report)
    requests = rows(section(prod, "Dual control requests"))
    done = next(row for row in requests if row[0] == f"`{ids['done']}`")
    assert (done[1], done[3], done[5], done[7]) == (
        "`rotator destroy k-1 --yes`",
        f"`{ALICE}`",
        f"`{BOB}`",
        "executed (exit code 0)",
    )
    refused = next(row for row in requests if row[0] == f"`{ids['refused']}`")
    assert (refused[3], refused[-1]) == (f"`{BOB}`", "open; 1 refused approval(s)")
    (refusal,) = rows(section(prod, "Dual control: refused approvals and withdrawals"))
    assert refusal[0] == f"`{ids['refused']}`" and refusal[2] == f"`{BOB}`"
    assert REFUSED_WHY in refusal[3]
    # The other account region has its own (empty) evidence, never prod's.
    assert (
        section(test, "Dual control requests").strip() == "No dual-control request in the period."
    )
    for request_id in ids.values():
        assert markdown.count(request_id) == prod.count(request_id) > 0, request_id
        assert request_id not in test
    assert ALICE not in test and REFUSED_WHY not in test
    for part in (prod, test):
        for heading in EVIDENCE_HEADINGS:
            assert part.count(f"\n### {heading}\n") == 1, heading


def test_only_the_partition_with_a_request_names_it_its_principals_and_outcome_in_html(
    fleet: tuple[FleetReport, dict[str, str]],
) -> None:
    report, ids = fleet
    html = render_fleet(report, ReportFormat.HTML)
    Page.of(html)  # every element closed
    prod, test = html_part(html, PROD), html_part(html, TEST)
    requests = html_table_after(prod, "Dual control requests")
    done = next(r for r in requests.split("<tr>") if f"<code>{ids['done']}</code>" in r)
    for text in (ALICE, BOB, "executed (exit code 0)", "rotator destroy k-1 --yes"):
        assert text in done, text
    refusals = html_table_after(prod, "Dual control: refused approvals and withdrawals")
    assert f"<code>{ids['refused']}</code>" in refusals and BOB in refusals
    assert REFUSED_WHY in refusals
    assert "No dual-control request in the period." in html_table_after(
        test, "Dual control requests"
    )
    for request_id in ids.values():
        assert html.count(request_id) == prod.count(request_id) > 0, request_id
    assert ALICE not in test and REFUSED_WHY not in test
    # The Markdown's evidence headings are the HTML section's, one each, in <h3>.
    markdown = render_fleet(report, ReportFormat.MD)
    for partition, part in ((PROD, prod), (TEST, test)):
        md_headings = [
            line[4:]
            for line in md_part(markdown, partition).splitlines()
            if line.startswith("### ")
        ]
        html_headings = re.findall(r"<h3[^>]*>([^<]*)</h3>", part)
        assert [h.replace("&#39;", "'") for h in html_headings] == [
            h
            for h in md_headings
            if h != "Timeline"  # the HTML's timeline is the page's
        ]


def test_each_section_names_its_own_kms_key_spec_and_key_sizes(
    fleet: tuple[FleetReport, dict[str, str]],
) -> None:
    _, prod, test = md_parts(fleet[0])
    keks = "Cryptographic architecture: key-encrypting keys (KMS)"
    (prod_kek,) = rows(section(prod, keks))
    assert (prod_kek[1], prod_kek[3], prod_kek[4]) == (
        f"`{KMS_ARN}`",
        "SYMMETRIC_DEFAULT",
        "256 bits",
    )
    (test_kek,) = rows(section(test, keks))
    assert (test_kek[1], test_kek[3]) == (f"`{TEST_KMS_ARN}`", "HMAC_256")
    architecture = "Cryptographic architecture: keys, their strength, use, expiry and store"
    prod_sizes = {row[3] for row in rows(section(prod, architecture))}
    test_sizes = {row[3] for row in rows(section(test, architecture))}
    assert prod_sizes == {"RSA-4096", "RSA-2048"} and test_sizes == {"RSA-2048"}
    assert {row[4] for row in rows(section(prod, architecture))} == {"152 bits", "112 bits"}
    inventory = "Copy inventory: the decrypt function's environment"
    for part in (prod, test):
        assert FUNCTION in section(part, inventory)
    html = render_fleet(fleet[0], ReportFormat.HTML)
    prod_html, test_html = html_part(html, PROD), html_part(html, TEST)
    assert KMS_ARN in prod_html and TEST_KMS_ARN not in prod_html
    assert TEST_KMS_ARN in test_html and KMS_ARN not in test_html
    assert "SYMMETRIC_DEFAULT" in prod_html and "HMAC_256" in test_html
    prod_keys = html_table_after(prod_html, architecture)
    test_keys = html_table_after(test_html, architecture)
    assert "<td>RSA-4096</td>" in prod_keys and "<td>RSA-2048</td>" in prod_keys
    assert "<td>RSA-2048</td>" in test_keys and "<td>RSA-4096</td>" not in test_keys


def test_the_evidence_is_collapsed_and_the_page_runs_only_its_filter(
    fleet: tuple[FleetReport, dict[str, str]],
) -> None:
    report, _ = fleet
    html = render_fleet(report, ReportFormat.HTML)
    evidence = re.findall(r"<details class='evidence'[^>]*>", html)
    assert evidence == ["<details class='evidence'>"] * 2  # one a section, closed
    for part in (html_part(html, PROD), html_part(html, TEST)):
        opened = part.split("<details class='evidence'>", 1)[1]
        assert "Dual control requests" in opened and "key-encrypting keys" in opened
    ids = re.findall(r"\sid='([^']+)'", html)
    assert len(ids) == len(set(ids))  # each section's architecture anchor is its own
    assert "id='partition-prod-eu-west-2-crypto-architecture'" in html
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert filter_script_hash() == f"sha256-{digest}" and f"'sha256-{digest}'" in html
    assert not re.search(r"(src|href)\s*=", html, re.I)


def test_no_fleet_format_carries_a_private_key_or_plaintext(
    material_a: KeyMaterial, material_2048: KeyMaterial
) -> None:
    """Even when prod's decrypt function holds a private key and a card number."""
    report, _ = fleet_of(material_a, material_2048, plaintext_env=True)
    pem_body = material_a.private_key_pem.splitlines()[1]
    secrets = ("PRIVATE KEY", pem_body, PLAINTEXT, material_2048.private_key_pem[40:80])
    texts = {fmt: render_fleet(report, fmt) for fmt in ReportFormat}
    assert not [(f, s) for f, text in texts.items() for s in secrets if s in text]
    _, prod, test = md_parts(report)
    inventory = "Copy inventory: the decrypt function's environment"
    assert section(prod, inventory).strip() == (f"{FUNCTION}: private key text in KEY")
    assert "private key text" not in section(test, inventory)
    html = render_fleet(report, ReportFormat.HTML)
    assert f"{FUNCTION}: private key text in KEY" in html_part(html, PROD)
    assert "private key text" not in html_part(html, TEST)
