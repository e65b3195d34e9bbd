"""The proof of the rotation window, through the CLI and the scheduled job on the sandbox: a due
rotation outside the window waits (rotate, status and report say why and until when, and the
job raises no alarm), one inside it rotates, one 6 days before expiry rotates outside it, and
`--emergency` ignores it."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rotator.domain.window import schedule_from
from rotator.entrypoints.cli import main
from rotator.entrypoints.scheduled import handler
from tests.conftest import NOW
from tests.simulated import unmark
from tests.world import World

DAY = timedelta(days=1)
WINDOW = "0 2 * * TUE 4h Europe/London"


def run(world: World, capsys: pytest.CaptureFixture[str], at: datetime, *argv: str) -> Any:
    """`rotator ARGV --json` (report: `--format json`) at the sandbox's simulated time `at`."""
    world.sandbox.clock.stand_at(at)
    capsys.readouterr()
    out = io.StringIO()
    code = main([*argv, *(() if argv[0] == "report" else ("--json",))], out)
    text, err = unmark(out.getvalue(), capsys.readouterr().err, at)
    assert code == 0, f"rotator {' '.join(argv)} -> {code}: {text} {err}"
    return json.loads(text)


def noon(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


def test_a_due_rotation_outside_the_window_waits_and_one_6_days_before_expiry_does_not(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ROTATOR_KEY_SIZE", "2048")
    monkeypatch.setenv("ROTATOR_CRYPTOPERIOD_DAYS", "1000")  # due by expiry only
    monkeypatch.setenv("ROTATOR_ROTATION_WINDOW", WINDOW)
    world.init(NOW)  # a Monday noon: an instance's first key does not wait
    first = world.flow_key_id()
    keyring = world.adapters.keyring
    assert first is not None
    not_after = keyring.get_record(first).not_after
    assert not_after is not None

    # 20 days before expiry, a Thursday noon: due, outside the window. It waits.
    at = noon(not_after - 20 * DAY)
    assert at.weekday() == 3
    [result] = run(world, capsys, at, "rotate")["results"]
    assert result["outcome"] == "waiting", result
    assert "waits until 2028-11-07 02:00 Europe/London (02:00 UTC)" in result["detail"]
    assert result["detail"].endswith("outside the rotation window")
    assert world.flow_key_id() == first

    status = run(world, capsys, at, "status")
    assert status["rotation_window"]["next_opening"] == "2028-11-07T02:00:00+00:00"
    [key] = [k for k in status["keys"] if k["key_id"] == first]
    assert key["due"] and key["waits_until"] == "2028-11-07T02:00:00+00:00"
    report = run(world, capsys, at, "report", "--format", "json")
    [row] = [k for k in report["keys"] if k["key_id"] == first]
    assert row["waits_until"] == "2028-11-07T02:00:00+00:00"
    assert "outside the rotation window" in row["rotation_window"]

    # The scheduled job waits too, and a waiting key is not "due and not rotated".
    world.sandbox.clock.stand_at(at)
    summary = handler({}, None)
    assert summary["ok"] is True and summary["counts"]["waiting"] == 1, summary
    assert summary["still_due"] == [] and world.flow_key_id() == first

    # Inside the window (Tuesday 03:00 UTC is 03:00 in London in November): it rotates.
    inside = datetime(2028, 11, 7, 3, tzinfo=UTC)
    [result] = run(world, capsys, inside, "rotate")["results"]
    assert result["outcome"] == "rotated", result
    second = result["new_key_id"]
    assert world.flow_key_id() == second != first

    # 6 days before the second key's expiry, outside the window: it does not wait.
    second_not_after = keyring.get_record(second).not_after
    assert second_not_after is not None
    late = noon(second_not_after - 6 * DAY)
    schedule = schedule_from(WINDOW, None)
    assert schedule is not None and not schedule.opening(late).open
    [result] = run(world, capsys, late, "rotate")["results"]
    assert result["outcome"] == "rotated", result
    assert "within 7 days: it does not wait" in result["detail"]
    third = result["new_key_id"]

    # --emergency ignores the window (and --force alone is refused outside it).
    third_not_after = keyring.get_record(third).not_after
    assert third_not_after is not None
    due = noon(third_not_after - 20 * DAY)
    world.sandbox.clock.stand_at(due)
    assert main(["rotate", "--force"], io.StringIO()) == 1
    assert world.flow_key_id() == third
    [result] = run(world, capsys, due, "rotate", "--emergency", "--reason", "key compromise")[
        "results"
    ]
    assert result["outcome"] == "rotated" and "emergency (key compromise)" in result["detail"]
    assert world.flow_key_id() == result["new_key_id"] != third
