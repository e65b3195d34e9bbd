"""The report's stored ciphertexts: per key, from the newest inventory of exactly the registered
stores in the history; a retired, destroyed or compromised key with values left is a finding."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import jsonschema

from rotator.config import Settings
from rotator.domain.checks import ReportOptions, compromised_keys
from rotator.domain.findings import FindingCode, Severity
from rotator.domain.history import HistoryEvent, RotationRun
from rotator.domain.lifecycle import KeyRecord, KeyState, Transition
from rotator.domain.state import InstanceState, KeyringState, ProtectionSweep
from rotator.domain.stored_ciphertext import Inventory, KeyCount, last_inventories
from rotator.services.inventory import inventory_event
from rotator.services.report import build_report
from rotator.services.report_render import ReportFormat, render

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(days=2)
STORES = ("s3://contact-records/ctr/", "dynamodb://payments")
INSTANCE = "instance-1"
CURRENT, RETIRED, COMPROMISED, DESTROYED, CLEAN, PREVIOUS = (
    "key-current",
    "key-retired",
    "key-compromised",
    "key-destroyed",
    "key-clean",
    "key-previous",
)


def record(key_id: str, state: KeyState, *, reason: str = "grace period over") -> KeyRecord:
    first = KeyRecord.for_public_key(
        key_id,
        hashlib.sha256(key_id.encode()).hexdigest(),
        2048,
        instance_id=INSTANCE,
        state=KeyState.ACTIVE,
        at=EARLIER - timedelta(days=30),
        actor="test",
        reason="fixture",
        source="test",
        kms_key_id=None,
    )
    if state is KeyState.ACTIVE:
        return first
    return KeyRecord(
        **{
            **vars(first),
            "state": state,
            "history": (*first.history, Transition(state, EARLIER, "test", reason)),
        }
    )


def inventory(counts: dict[str, int], at: datetime, stores: tuple[str, ...] = STORES) -> Any:
    counted = Inventory(list(stores))
    counted.keys = {key_id: KeyCount(count) for key_id, count in counts.items()}
    return inventory_event(counted, at, "test")


def state(events: tuple[HistoryEvent, ...], *, emergency_old: str | None = None) -> KeyringState:
    rotations: tuple[RotationRun, ...] = ()
    if emergency_old is not None:
        rotations = (
            RotationRun(
                "rot-1", EARLIER, "test", "compromise", True, emergency_old, CURRENT, "done", None
            ),
        )
    instance = InstanceState(
        INSTANCE, CURRENT, ("flow",), "rotated", False, None, (CURRENT,), rotations=rotations
    )
    return KeyringState(
        prefix="/connect-keys",
        records=(
            record(CURRENT, KeyState.ACTIVE),
            record(RETIRED, KeyState.RETIRED),
            record(COMPROMISED, KeyState.RETIRED, reason="emergency, grace period overridden: x"),
            record(DESTROYED, KeyState.DESTROYED),
            record(CLEAN, KeyState.RETIRED),
            record(PREVIOUS, KeyState.PREVIOUS),
        ),
        current={INSTANCE: CURRENT},
        instances=(instance,),
        protection=ProtectionSweep.unread(),
        events=events,
    )


ALL_COUNTS = {CURRENT: 9, RETIRED: 3, COMPROMISED: 2, DESTROYED: 1, PREVIOUS: 4}


def stored_findings(report: Any) -> dict[str | None, tuple[FindingCode, Severity, str]]:
    codes = {
        FindingCode.STORED_CIPHERTEXTS_UNDER_RETIRED_KEY,
        FindingCode.STORED_CIPHERTEXTS_UNDER_COMPROMISED_KEY,
    }
    return {f.key_id: (f.code, f.severity, f.message) for f in report.findings if f.code in codes}


def test_retired_destroyed_and_compromised_keys_with_values_left_are_findings() -> None:
    facts = state((inventory(ALL_COUNTS, EARLIER),))
    report = build_report(facts, ReportOptions(stores=STORES), NOW)
    found = stored_findings(report)
    assert set(found) == {RETIRED, COMPROMISED, DESTROYED}  # not the current, previous or clean
    assert found[RETIRED][:2] == (
        FindingCode.STORED_CIPHERTEXTS_UNDER_RETIRED_KEY,
        Severity.WARNING,
    )
    assert "3 stored ciphertexts" in found[RETIRED][2]
    assert f"rotator rewrap --from {RETIRED}" in found[RETIRED][2]
    assert found[COMPROMISED][:2] == (
        FindingCode.STORED_CIPHERTEXTS_UNDER_COMPROMISED_KEY,
        Severity.CRITICAL,
    )
    assert "PCI DSS 3.7.5" in found[COMPROMISED][2]
    assert found[DESTROYED][0] is FindingCode.STORED_CIPHERTEXTS_UNDER_RETIRED_KEY
    assert "no longer decrypt" in found[DESTROYED][2]
    assert f"{EARLIER:%Y-%m-%d %H:%M}" in found[RETIRED][2]


def test_the_old_key_of_an_emergency_rotation_is_compromised() -> None:
    facts = state((inventory({RETIRED: 3}, EARLIER),), emergency_old=RETIRED)
    assert compromised_keys(facts) == {RETIRED, COMPROMISED}
    found = stored_findings(build_report(facts, ReportOptions(stores=STORES), NOW))
    assert found[RETIRED][:2] == (
        FindingCode.STORED_CIPHERTEXTS_UNDER_COMPROMISED_KEY,
        Severity.CRITICAL,
    )


def test_the_newest_inventory_of_exactly_the_registered_stores_counts() -> None:
    events = (
        inventory(ALL_COUNTS, EARLIER),
        # A rewrap (or destroy's check) limited to one key: zero left for it.
        inventory_event(Inventory(list(STORES)), EARLIER + timedelta(hours=1), "t", key_id=RETIRED),
        # Other stores, or only some of the registered ones: say nothing about them.
        inventory({COMPROMISED: 0, DESTROYED: 0}, NOW - timedelta(hours=1), STORES[:1]),
        inventory({COMPROMISED: 0}, NOW - timedelta(hours=1), ("s3://elsewhere/",)),
    )
    facts = state(events)
    counted = last_inventories(events, STORES)
    assert (counted[RETIRED].count, counted[RETIRED].at) == (0, EARLIER + timedelta(hours=1))
    assert (counted[COMPROMISED].count, counted[DESTROYED].count) == (2, 1)
    assert last_inventories(events)[COMPROMISED].count == 0  # unfiltered: any stores
    report = build_report(facts, ReportOptions(stores=tuple(reversed(STORES))), NOW)
    assert set(stored_findings(report)) == {COMPROMISED, DESTROYED}
    rows = {row.key_id: row for row in report.keys}
    assert (rows[RETIRED].stored_ciphertexts, rows[CLEAN].stored_ciphertexts) == (0, None)
    assert rows[COMPROMISED].inventoried_at == EARLIER


def test_without_registered_stores_the_report_shows_nothing_of_them() -> None:
    facts = state((inventory(ALL_COUNTS, EARLIER),))
    report = build_report(facts, ReportOptions(), NOW)
    assert stored_findings(report) == {}
    document = json.loads(render(report, ReportFormat.JSON))
    assert "ciphertext_stores" not in document["policy"]
    assert all("stored_ciphertexts" not in key for key in document["keys"])
    assert "stored_ciphertexts" not in render(report, ReportFormat.CSV).splitlines()[0]
    assert "Stored ciphertexts" not in render(report, ReportFormat.MD)
    assert "Stored ciphertexts" not in render(report, ReportFormat.HTML)


def test_every_format_shows_the_count_and_time_per_key() -> None:
    facts = state((inventory(ALL_COUNTS, EARLIER),))
    report = build_report(facts, ReportOptions(stores=STORES), NOW)
    schema = json.loads(
        resources.files("rotator.services").joinpath("report.schema.json").read_text()
    )
    document = json.loads(render(report, ReportFormat.JSON))
    jsonschema.validate(document, schema, format_checker=jsonschema.FormatChecker())
    assert document["policy"]["ciphertext_stores"] == list(STORES)
    keys = {key["key_id"]: key["stored_ciphertexts"] for key in document["keys"]}
    assert keys[RETIRED] == {"count": 3, "inventoried_at": EARLIER.isoformat()}
    assert keys[CLEAN] == {"count": None, "inventoried_at": None}
    rows = {
        row["key_id"]: row for row in csv.DictReader(io.StringIO(render(report, ReportFormat.CSV)))
    }
    assert (rows[COMPROMISED]["stored_ciphertexts"], rows[CLEAN]["stored_ciphertexts"]) == (
        "2",
        "",
    )
    assert rows[COMPROMISED]["inventoried_at"] == EARLIER.isoformat()
    markdown = render(report, ReportFormat.MD)
    section = markdown.split("## Stored ciphertexts", 1)[1].split("## Key details", 1)[0]
    assert STORES[0] in section and "not inventoried" in section
    cells = {
        tuple(cell.strip() for cell in line.strip("|").split("|"))
        for line in section.splitlines()
        if line.startswith("| `")
    }
    assert (f"`{INSTANCE}`", f"`{DESTROYED}`", "destroyed", "1", EARLIER.isoformat()) in cells
    html = render(report, ReportFormat.HTML)
    part = html.split("<h2>Stored ciphertexts</h2>", 1)[1].split("<h2>Key details", 1)[0]
    assert f"<td><code>{COMPROMISED}</code></td><td>retired</td><td>2</td>" in part
    assert "not inventoried" in part


def test_settings_hand_the_registered_stores_to_the_report() -> None:
    settings = Settings.load({"ROTATOR_CIPHERTEXT_STORES": ",".join(STORES)})
    assert settings.report_options().stores == STORES
