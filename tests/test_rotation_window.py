"""The rotation window on the fakes: the rotation service waits (and says until when), near
expiry it does not, `--emergency` ignores it, `--force` is refused outside it; the rotation job
raises no alarm for a waiting key; status and the report say why a due key waits. Without a
window nothing changes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any

import jsonschema
import pytest

from rotator.config import Settings
from rotator.services.jobs import rotation_job
from rotator.services.report import make_report
from rotator.services.report_render import ReportFormat, render
from rotator.services.rotation import InstanceResult, Outcome, RotationService
from rotator.services.status import keyring_overview
from tests.conftest import NOW
from tests.fakes import (
    FakeClock,
    FakeConnect,
    FakeKeyring,
    FakeLock,
    FakePublisher,
    init_payment_instance,
)
from tests.world import KeyPool

WINDOW = "0 2 * * TUE 4h Europe/London"
DAY = timedelta(days=1)


@dataclass
class Fakes:
    service: RotationService
    keyring: FakeKeyring
    connect: FakeConnect
    lock: FakeLock
    settings: Settings
    instance: str
    first_key: str

    @property
    def not_after(self) -> datetime:
        record = self.keyring.get_record(self.current)
        assert record.not_after is not None
        return record.not_after

    @property
    def current(self) -> str:
        current = self.keyring.get_current(self.instance)
        assert current is not None
        return current

    def rotate(self, at: datetime, **flags: Any) -> InstanceResult:
        [result] = self.service.rotate(self.instance, at, **flags)
        return result


def build(key_pool: KeyPool, **settings: Any) -> Fakes:
    keyring, connect, clock = FakeKeyring(), FakeConnect(), FakeClock(NOW)
    lock = FakeLock(clock.now)
    configured = Settings(keyring_prefix="/fakes", key_size=2048, **settings)
    service = RotationService(
        keyring, connect, lock, configured, actor="test", generate=key_pool.generator()
    )
    # NOW is a Monday noon: outside the window; an instance's first key never waits.
    made = init_payment_instance(service, connect, NOW)
    return Fakes(service, keyring, connect, lock, configured, made.instance_id, made.first_key_id)


@pytest.fixture
def fakes(key_pool: KeyPool) -> Iterator[Fakes]:
    yield build(key_pool, rotation_window=WINDOW, cryptoperiod_days=1000)


def noon(moment: datetime) -> datetime:
    """Noon UTC of that day: outside a window of 02:00-06:00 London time."""
    return moment.astimezone(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


def next_tuesday_three_utc(moment: datetime) -> datetime:
    """03:00 UTC on the next Tuesday: 03:00 or 04:00 in London, inside the window."""
    day = moment.astimezone(UTC).replace(hour=3, minute=0, second=0, microsecond=0)
    while day.weekday() != 1 or day <= moment:
        day += DAY
    return day


def test_a_due_key_outside_the_window_waits_and_changes_nothing(fakes: Fakes) -> None:
    at = noon(fakes.not_after - 20 * DAY)
    before = (fakes.connect.list_security_keys(fakes.instance), fakes.keyring.records())
    result = fakes.rotate(at)
    assert result.outcome is Outcome.WAITING, result
    assert at == datetime(2028, 11, 2, 12, tzinfo=UTC)  # a Thursday; NotAfter 2028-11-22
    assert result.detail == (
        "certificate expires on 2028-11-22, inside the renew window; waits until "
        "2028-11-07 02:00 Europe/London (02:00 UTC): outside the rotation window"
    )
    assert result.old_key_id == fakes.first_key and result.new_key_id is None
    assert (fakes.connect.list_security_keys(fakes.instance), fakes.keyring.records()) == before
    dry = fakes.rotate(at, dry_run=True)
    assert (dry.outcome, dry.detail) == (Outcome.WAITING, result.detail)


def test_inside_the_window_the_due_key_rotates(fakes: Fakes) -> None:
    at = next_tuesday_three_utc(fakes.not_after - 20 * DAY)
    result = fakes.rotate(at)
    assert result.outcome is Outcome.ROTATED and "renew window" in result.detail, result
    assert fakes.current == result.new_key_id != fakes.first_key


def test_six_days_before_expiry_it_rotates_outside_the_window(fakes: Fakes) -> None:
    at = noon(fakes.not_after - 6 * DAY)
    result = fakes.rotate(at)
    assert result.outcome is Outcome.ROTATED, result
    assert "within 7 days: it does not wait" in result.detail
    assert fakes.current == result.new_key_id


def test_the_emergency_ignores_the_window_and_force_does_not(fakes: Fakes) -> None:
    at = noon(fakes.not_after - 20 * DAY)
    refused = fakes.rotate(at, force=True)
    assert refused.outcome is Outcome.FAILED
    assert "outside the rotation window (rotation window 0 2 * * TUE 4h Europe/London)" in (
        refused.detail
    )
    assert "it next opens" in refused.detail and "--emergency --reason TEXT" in refused.detail
    assert fakes.current == fakes.first_key
    result = fakes.rotate(at, emergency=True, override_reason="key compromise")
    assert result.outcome is Outcome.ROTATED and "emergency (key compromise)" in result.detail
    # Forced inside the window: allowed.
    forced = fakes.rotate(next_tuesday_three_utc(at), force=True)
    assert forced.outcome is Outcome.ROTATED, forced


def test_a_freeze_holds_a_due_key_and_names_itself(key_pool: KeyPool) -> None:
    fakes = build(key_pool, freeze="2028-10-25..2028-11-05", cryptoperiod_days=1000)
    at = noon(fakes.not_after - 20 * DAY)  # 2 November 2028, no window: frozen
    result = fakes.rotate(at)
    assert result.outcome is Outcome.WAITING, result
    assert result.detail.endswith(
        "waits until 2028-11-06 00:00 UTC: inside the freeze 2028-10-25..2028-11-05"
    )
    # A freeze that would hold it within 7 days of expiry (22 November) does not.
    late = build(key_pool, freeze="2028-10-25..2028-11-20", cryptoperiod_days=1000)
    result = late.rotate(at)
    assert result.outcome is Outcome.ROTATED, result
    assert "inside the freeze 2028-10-25..2028-11-20, but waiting until 2028-11-21" in result.detail


def test_the_rotation_job_raises_no_alarm_for_a_waiting_key(fakes: Fakes) -> None:
    publisher = FakePublisher()
    at = noon(fakes.not_after - 20 * DAY)
    run = rotation_job(fakes.service, fakes.keyring, publisher, fakes.settings.policy, at)
    assert run.ok and run.still_due == [] and run.counts()["waiting"] == 1, run.to_dict()
    assert publisher.notices == []
    late = noon(fakes.not_after - 6 * DAY)
    rotated = rotation_job(fakes.service, fakes.keyring, publisher, fakes.settings.policy, late)
    assert rotated.ok and rotated.counts()["rotated"] == 1, rotated.to_dict()


def test_status_shows_the_next_window_and_why_a_due_key_waits(fakes: Fakes) -> None:
    at = noon(fakes.not_after - 20 * DAY)
    status = keyring_overview(
        fakes.keyring, fakes.lock, fakes.settings.policy, at, schedule=fakes.settings.schedule
    )
    assert status.window is not None
    line = status.window.describe()
    assert line.startswith("rotation window 0 2 * * TUE 4h Europe/London: closed (outside")
    assert "next opens" in line
    data = status.to_dict()
    assert data["rotation_window"]["open"] is False
    [key] = [k for k in data["keys"] if k["key_id"] == fakes.first_key]
    assert key["due"] is True and key["waits_until"] == data["rotation_window"]["next_opening"]
    assert "waits until" in key["rotation"] and "outside the rotation window" in key["rotation"]
    [row] = [k for k in status.keys if k.key_id == fakes.first_key]
    assert "WAITING: " in row.describe()


def test_the_report_shows_the_window_and_why_a_due_key_waits(fakes: Fakes) -> None:
    at = noon(fakes.not_after - 20 * DAY)
    options = fakes.settings.report_options()
    report = make_report(fakes.keyring, fakes.connect, fakes.lock, options, at)
    data = json.loads(render(report, ReportFormat.JSON))
    schema = json.loads(files("rotator.services").joinpath("report.schema.json").read_text())
    jsonschema.validate(data, schema)
    window = data["policy"]["rotation_window"]
    assert window["window"] == WINDOW and window["open"] is False and window["next_opening"]
    [key] = [k for k in data["keys"] if k["key_id"] == fakes.first_key]
    assert key["waits_until"] == window["next_opening"]
    assert key["rotation_window"].endswith(": outside the rotation window")
    markdown = render(report, ReportFormat.MD)
    assert "Due rotations: rotation window 0 2 * * TUE 4h Europe/London: closed" in markdown
    assert f"- rotation window: {key['rotation_window']}" in markdown
    html = render(report, ReportFormat.HTML)
    assert "outside the rotation window" in html and "next opens" in html
    header, *rows = render(report, ReportFormat.CSV).splitlines()
    assert header.endswith(",rotation_window,waits_until")
    assert any("outside the rotation window" in row for row in rows)


def test_without_a_window_nothing_changes(key_pool: KeyPool) -> None:
    fakes = build(key_pool, cryptoperiod_days=1000)
    at = noon(fakes.not_after - 20 * DAY)
    status = keyring_overview(
        fakes.keyring, fakes.lock, fakes.settings.policy, at, schedule=fakes.settings.schedule
    )
    data = status.to_dict()
    assert "rotation_window" not in data and all("waits_until" not in k for k in data["keys"])
    options = fakes.settings.report_options()
    report = make_report(fakes.keyring, fakes.connect, fakes.lock, options, at)
    document = report.to_dict()
    assert "rotation_window" not in document["policy"]
    assert all("rotation_window" not in k for k in document["keys"])
    assert "rotation_window" not in render(report, ReportFormat.CSV).splitlines()[0]
    assert "Due rotations" not in render(report, ReportFormat.MD)
    assert fakes.rotate(at).outcome is Outcome.ROTATED
