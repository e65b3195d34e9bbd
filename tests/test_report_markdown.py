"""The Markdown report carries the HTML's evidence: dual control (3.7.6: requests, requester,
approver, refusals and why, outcomes), the cryptographic architecture (3.6.1.1: algorithms, each
key's size, strength, expiry and store, the KMS key's spec and what it protects), the decrypt
function's copy inventory, the timeline's dates; the fleet's Markdown the same per account
region; the CSV the per-key architecture facts. No format carries a private key or plaintext."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest

from rotator.domain.checks import ReportOptions
from rotator.domain.fleet import Partition
from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import KeyState
from rotator.domain.rotation import ManagedInstance
from rotator.services.fleet_report import PartitionSources, make_fleet_report
from rotator.services.fleet_report_render import render_fleet
from rotator.services.report import EvidenceSources, Report, make_report
from rotator.services.report_render import ARCHITECTURE_CSV_COLUMNS, ReportFormat, render
from tests.conftest import NOW, make_record
from tests.fakes import (
    FakeApprovals,
    FakeConnect,
    FakeFunctionEnvironments,
    FakeKeyEncryptionKeys,
    FakeKeyring,
    FakeLock,
)
from tests.test_dual_control import ALICE, BOB, DESTROY, service
from tests.test_fleet_report import fake_partition

KMS_ALIAS = "alias/connect-keys"
KMS_KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
KMS_ARN = f"arn:aws:kms:us-east-1:123456789012:key/{KMS_KEY_ID}"
KEY_4096, KEY_2048, UNPROTECTED = "key-4096", "key-2048", "key-no-private-key"
INSTANCE = "instance-1"
FUNCTION = "connect-decrypt"
PLAINTEXT = "4111111111111111"  # a card number: what Connect's ciphertexts hold
T = NOW + timedelta(hours=3)  # the report's time


def section(markdown: str, heading: str) -> str:
    """The text under `## heading` (or `### heading`) up to the next heading of that level."""
    marker = next(m for m in (f"\n## {heading}\n", f"\n### {heading}\n") if m in markdown)
    level = marker.strip().split(" ", 1)[0]
    rest = markdown.split(marker, 1)[1]
    return rest.split(f"\n{level} ", 1)[0]


def rows(text: str) -> set[tuple[str, ...]]:
    """The body rows of the Markdown tables in `text`, cells stripped."""
    lines = text.splitlines()
    found = set()
    for number, line in enumerate(lines):
        ruled = number + 1 < len(lines) and lines[number + 1].startswith("|-")
        if line.startswith("| ") and not ruled:  # neither the header nor its rule
            found.add(tuple(c.strip() for c in line.strip("| ").split(" | ")))
    return found


def keyring_with_requests(
    material_a: KeyMaterial, material_2048: KeyMaterial
) -> tuple[FakeKeyring, dict[str, str]]:
    """Two keys under one KMS key (alias), one key Connect knows with no private key, and
    the year's dual-control requests: executed, refused-then-open, withdrawn."""
    keyring = FakeKeyring(kms_key_id=KMS_ALIAS)
    keyring.store_key(KEY_4096, material_a, make_record(KEY_4096, material_a))
    keyring.store_key(
        KEY_2048,
        material_2048,
        make_record(KEY_2048, material_2048, state=KeyState.PREVIOUS),
    )
    keyring.put_record(make_record(UNPROTECTED, material_2048, state=KeyState.RETIRED))
    keyring.set_current(INSTANCE, KEY_4096)
    keyring.put_instance(ManagedInstance(INSTANCE, (), ()))
    approvals = FakeApprovals()
    done = service(approvals, ALICE).request(DESTROY, "retire the | old key", NOW)
    approved = service(approvals, BOB).approve(done.request_id, NOW + timedelta(hours=1))
    service(approvals, BOB).finish(approved, 0, NOW + timedelta(hours=1))
    refused = service(approvals, BOB).request(["rollback", "--instance-id", INSTANCE], "bad", NOW)
    with pytest.raises(Exception, match="second principal"):
        service(approvals, BOB).approve(refused.request_id, NOW + timedelta(minutes=5))
    withdrawn = service(approvals, ALICE).request(["import", "--from-blog-parameters"], "x", NOW)
    service(approvals, ALICE).cancel(withdrawn.request_id, NOW + timedelta(minutes=7))
    for event in approvals.events():
        keyring.append_event(event)
    ids = {"done": done.request_id, "refused": refused.request_id}
    return keyring, ids | {"withdrawn": withdrawn.request_id}


def evidence_report(
    material_a: KeyMaterial, material_2048: KeyMaterial, *, plaintext_env: bool = False
) -> tuple[Report, dict[str, str]]:
    keyring, ids = keyring_with_requests(material_a, material_2048)
    keks = FakeKeyEncryptionKeys()
    keks.add(KMS_KEY_ID, alias=KMS_ALIAS)
    functions = FakeFunctionEnvironments(
        {FUNCTION: {"KEY": material_a.private_key_pem, "CARD": PLAINTEXT} if plaintext_env else {}}
    )
    report = make_report(
        keyring,
        FakeConnect(),
        FakeLock(lambda: T),
        ReportOptions(),
        T,
        evidence=EvidenceSources(keks, functions, FUNCTION),
    )
    return report, ids


def test_dual_control_in_markdown_names_each_request_its_principals_and_outcome(
    material_a: KeyMaterial, material_2048: KeyMaterial
) -> None:
    report, ids = evidence_report(material_a, material_2048)
    markdown = render(report, ReportFormat.MD)
    requests = rows(section(markdown, "Dual control requests"))
    requested = f"{NOW.isoformat(timespec='seconds')}"
    approved = (NOW + timedelta(hours=1)).isoformat(timespec="seconds")
    assert (
        f"`{ids['done']}`",
        "`rotator destroy k-1 --yes`",
        "retire the \\| old key",  # a pipe in a reason stays inside its cell
        f"`{ALICE}`",
        requested,
        f"`{BOB}`",
        approved,
        "executed (exit code 0)",
    ) in requests
    assert (
        f"`{ids['refused']}`",
        f"`rotator rollback --instance-id {INSTANCE}`",
        "bad",
        f"`{BOB}`",
        requested,
        "-",
        "-",
        "open; 1 refused approval(s)",
    ) in requests
    withdrawn = next(row for row in requests if row[0] == f"`{ids['withdrawn']}`")
    assert (withdrawn[3], withdrawn[5], withdrawn[-1]) == (f"`{ALICE}`", "-", "cancelled")
    (refusal,) = rows(section(markdown, "Dual control: refused approvals and withdrawals"))
    at = (NOW + timedelta(minutes=5)).isoformat(timespec="seconds")
    assert refusal[:3] == (f"`{ids['refused']}`", at, f"`{BOB}`")
    assert "a second principal must approve it (dual control)" in refusal[3]
    # The HTML page shows the same refusal, from the same table.
    html = render(report, ReportFormat.HTML)
    assert "Dual control: refused approvals and withdrawals" in html
    assert "a second principal must approve it (dual control)" in html


def test_crypto_architecture_in_markdown_names_algorithms_keys_strengths_stores_and_the_kek(
    material_a: KeyMaterial, material_2048: KeyMaterial
) -> None:
    report, _ = evidence_report(material_a, material_2048)
    markdown = render(report, ReportFormat.MD)
    intro = section(markdown, "Cryptographic architecture")
    assert "Private keys: SSM SecureString parameters under the keyring prefix." in intro
    assert "NIST SP 800-57 Part 1 Rev. 5 table 2" in intro
    algorithms = {row[0]: row[1:] for row in rows(intro)}
    assert algorithms["content encryption"] == ("AES-256-GCM", "256 bits")
    assert algorithms["message signature"] == ("ECDSA on P-384 with SHA-384", "192 bits")
    assert algorithms["data key wrapping"][0].startswith("RSA-OAEP with SHA-512 and MGF1-SHA-512")
    assert algorithms["data key wrapping"][1] == "the key's"
    assert "0x0378" in algorithms["message format"][0]

    heading = "Cryptographic architecture: keys, their strength, use, expiry and store"
    keys = section(markdown, heading)
    assert "Each key's use: encrypt customer input (Connect's Store customer input block)" in keys
    assert rows(keys) == {
        (
            f"`{KEY_4096}`",
            f"`{INSTANCE}`",
            "active",
            "RSA-4096",
            "152 bits",
            material_a.not_after.isoformat(),
            f"`fake:keys/{KEY_4096}/private-key`",
            f"`{KMS_ALIAS}`",
        ),
        (
            f"`{KEY_2048}`",
            f"`{INSTANCE}`",
            "previous",
            "RSA-2048",
            "112 bits",
            material_2048.not_after.isoformat(),
            f"`fake:keys/{KEY_2048}/private-key`",
            f"`{KMS_ALIAS}`",
        ),
        (
            f"`{UNPROTECTED}`",
            f"`{INSTANCE}`",
            "retired",
            "RSA-2048",
            "112 bits",
            material_2048.not_after.isoformat(),
            "no private key stored",
            "-",
        ),
    }
    (kek,) = rows(section(markdown, "Cryptographic architecture: key-encrypting keys (KMS)"))
    assert kek == (
        f"`{KMS_KEY_ID}`",
        f"`{KMS_ARN}`",
        f"`{KMS_ALIAS}`",
        "SYMMETRIC_DEFAULT",
        "256 bits",
        f"`{KEY_2048}`, `{KEY_4096}`",
    )
    inventory = section(markdown, "Copy inventory: the decrypt function's environment")
    assert inventory.strip() == f"{FUNCTION}: no environment variable holds a private key"


def test_markdown_has_every_html_section_and_the_timeline_s_dates(
    material_a: KeyMaterial, material_2048: KeyMaterial
) -> None:
    report, _ = evidence_report(material_a, material_2048)
    markdown = render(report, ReportFormat.MD)
    html = render(report, ReportFormat.HTML)
    headings = [line.split(" ", 1)[1] for line in markdown.splitlines() if line.startswith("## ")]
    for heading in headings:
        assert f">{heading}</h2>" in html, heading
    html_headings = html.count("<h2")
    assert len(headings) == html_headings, (headings, html_headings)
    timeline = rows(section(markdown, "Timeline"))
    renew = material_a.not_after - report.options.policy.renew_before
    cryptoperiod = material_a.not_before + report.options.policy.cryptoperiod
    assert (
        f"`{INSTANCE}`",
        f"`{KEY_4096}`",
        f"{KEY_4096}: active, {material_a.not_before:%Y-%m-%d} to {material_a.not_after:%Y-%m-%d}",
        f"renew window from {renew:%Y-%m-%d}",
        f"cryptoperiod ends {cryptoperiod:%Y-%m-%d}",
    ) in timeline
    previous = next(row for row in timeline if row[1] == f"`{KEY_2048}`")
    assert previous[3:] == ("-", "-")  # the picture marks the renew window of active keys only
    assert f"today {T:%Y-%m-%d}" in section(markdown, "Timeline")
    assert f"renew window from {renew:%Y-%m-%d}" in html


def test_csv_carries_each_key_s_strength_store_and_kms_key(
    material_a: KeyMaterial, material_2048: KeyMaterial
) -> None:
    report, _ = evidence_report(material_a, material_2048)
    by_key = {r["key_id"]: r for r in csv.DictReader(io.StringIO(render(report, ReportFormat.CSV)))}
    facts = {key: tuple(row[c] for c in ARCHITECTURE_CSV_COLUMNS) for key, row in by_key.items()}
    assert facts == {
        KEY_4096: ("152", f"fake:keys/{KEY_4096}/private-key", KMS_ARN, "SYMMETRIC_DEFAULT", "256"),
        KEY_2048: ("112", f"fake:keys/{KEY_2048}/private-key", KMS_ARN, "SYMMETRIC_DEFAULT", "256"),
        UNPROTECTED: ("112", "", "", "", ""),
    }


def test_no_format_carries_a_private_key_or_plaintext(
    material_a: KeyMaterial, material_2048: KeyMaterial
) -> None:
    """Even when the decrypt function's environment holds a private key and a card number."""
    report, _ = evidence_report(material_a, material_2048, plaintext_env=True)
    pem_body = material_a.private_key_pem.splitlines()[1]
    for fmt in ReportFormat:
        text = render(report, fmt)
        for secret in ("PRIVATE KEY", pem_body, PLAINTEXT, material_2048.private_key_pem[40:80]):
            assert secret not in text, (fmt, secret)
    markdown = render(report, ReportFormat.MD)
    inventory = section(markdown, "Copy inventory: the decrypt function's environment")
    assert inventory.strip() == f"{FUNCTION}: private key text in KEY"


def test_fleet_markdown_has_each_account_region_s_timeline_and_groups(
    material_2048: KeyMaterial,
) -> None:
    prod, test = Partition("prod", "eu-west-2"), Partition("test", "us-east-1")
    fleet: dict[Partition, PartitionSources] = {
        prod: fake_partition(prod, material_2048, instances=2),
        test: fake_partition(test, material_2048, instances=1),
    }
    report = make_fleet_report(fleet, ReportOptions(), NOW)
    markdown = render_fleet(report, ReportFormat.MD)
    html = render_fleet(report, ReportFormat.HTML)
    accounts = rows(section(markdown, "Timeline"))
    assert accounts == {("`prod`", "1 region(s), 6 key(s)"), ("`test`", "1 region(s), 3 key(s)")}
    assert "9 key(s) in 3 instance group(s)" in section(markdown, "Timeline")
    prod_part = markdown.split("## Account prod, region eu-west-2\n", 1)[1].split("\n## ", 1)[0]
    prod_timeline = prod_part.split("### Timeline\n", 1)[1]
    assert "2 instance group(s), 6 key(s)" in prod_timeline
    prod_section = next(s for s in report.sections if s.partition == prod)
    assert prod_section.report is not None
    instances = sorted(i.instance_id for i in prod_section.report.instances)
    groups = {row[0]: row[1] for row in rows(prod_timeline) if len(row) == 2}
    assert set(groups) == {f"`{i}`" for i in instances}
    # Connect holds none of the keys: the active and the previous key are findings each.
    summary = "3 key(s): 1 active, 1 previous, 1 retired; 2 finding(s); nearest expiry in"
    assert all(text.startswith(summary) for text in groups.values())
    assert all(text in html for text in groups.values())
    active = [row for row in rows(prod_timeline) if len(row) == 5 and ": active, " in row[2]]
    assert {row[0] for row in active} == {f"`{i}`" for i in instances}
    assert all(row[3].startswith("renew window from ") for row in active)
    assert "PRIVATE KEY" not in markdown and "not a key" not in markdown
    # Each section says what its decrypt function's scan found, as the HTML does.
    line = f"Decrypt function: {prod_section.decrypt_function}"
    assert line in prod_part and line in html
