"""Rotation windows and freezes (rotator/domain/window.py): parsing and its messages, openings
across daylight saving time, freezes in the window's time zone, and the decision for a due key
(rotate, wait until the next opening, or rotate anyway near expiry), with property tests."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rotator.config import Settings
from rotator.domain.window import (
    Freeze,
    RotationSchedule,
    RotationWindow,
    WindowAction,
    WindowStatus,
    parse_duration,
    parse_freezes,
    parse_window,
    schedule_from,
    window_decision,
)
from rotator.errors import ConfigError

LONDON = "0 2 * * TUE 4h Europe/London"
MONDAY_NOON = datetime(2026, 6, 1, 12, tzinfo=UTC)  # British Summer Time: London is UTC+1
H = timedelta(hours=1)
DAY = timedelta(days=1)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# -- parsing ---------------------------------------------------------------------------------


def test_a_window_is_cron_duration_and_time_zone() -> None:
    window = parse_window(LONDON)
    assert (window.cron, window.duration, window.zone) == ("0 2 * * TUE", 4 * H, "Europe/London")
    assert str(window) == LONDON
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2d") == 2 * DAY


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0 2 * * TUE 4h", "needs a cron expression (5 fields), a duration and a time zone"),
        ("0 2 * * TUE 4x UTC", "duration '4x' is not like 4h, 90m, 1h30m or 1d"),
        ("0 2 * * TUE 0h UTC", "duration '0h' must be longer than zero"),
        ("0 2 * * TUE 4h Mars/Olympus", "'Mars/Olympus' is not a time zone"),
        ("0 25 * * TUE 4h UTC", "cron expression '0 25 * * TUE'"),
        ("0 2 1 * TUE 4h UTC", "restrict the day of month or the day of week, not both"),
        ("0 2 30 2 * 4h UTC", "never fires, so the window never opens"),
    ],
)
def test_a_bad_window_is_refused_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.load({"ROTATOR_ROTATION_WINDOW": value})
    assert "ROTATOR_ROTATION_WINDOW" in str(error.value) and message in str(error.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-12-31..2026-12-01", "freeze '2026-12-31..2026-12-01' ends before it starts"),
        ("2026-13-01", "'2026-13-01' is not a date (YYYY-MM-DD)"),
        ("2026-12-01,,2026-12-03", "an empty entry"),
        ("2026-12-01..9999-12-31", "'9999-12-31' is too far ahead"),
    ],
)
def test_a_bad_freeze_is_refused_naming_the_variable(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.load({"ROTATOR_FREEZE": value})
    assert "ROTATOR_FREEZE" in str(error.value) and message in str(error.value)


def test_freezes_are_ranges_and_single_dates_ends_included() -> None:
    assert parse_freezes("2027-03-28, 2026-12-01..2026-12-31") == (
        Freeze(date(2026, 12, 1), date(2026, 12, 31)),
        Freeze(date(2027, 3, 28), date(2027, 3, 28)),
    )


def test_no_window_and_no_freeze_is_no_schedule() -> None:
    assert Settings().schedule is None
    assert window_decision(None, MONDAY_NOON, MONDAY_NOON).action is WindowAction.ROTATE
    loaded = Settings.load(
        {"ROTATOR_ROTATION_WINDOW": LONDON, "ROTATOR_RENEW_BEFORE_MINIMUM_DAYS": "5"}
    ).schedule
    assert loaded is not None and loaded.minimum == 5 * DAY and loaded.freezes == ()


# -- openings ----------------------------------------------------------------------------------


def test_outside_the_window_it_opens_next_tuesday_at_two_london_time() -> None:
    schedule = schedule_from(LONDON, None)
    assert schedule is not None
    opening = schedule.opening(MONDAY_NOON)
    assert not opening.open and opening.reason == "outside the rotation window"
    assert opening.opens_at == utc(2026, 6, 2, 1)  # 02:00 BST
    inside = schedule.opening(utc(2026, 6, 2, 4, 59))
    assert inside.open and inside.closes_at == utc(2026, 6, 2, 5)
    assert not schedule.opening(utc(2026, 6, 2, 5)).open  # the end is not inside


def test_the_window_follows_daylight_saving_time() -> None:
    schedule = schedule_from(LONDON, None)
    assert schedule is not None
    assert schedule.opening(utc(2026, 1, 5, 12)).opens_at == utc(2026, 1, 6, 2)  # GMT
    assert schedule.opening(utc(2026, 6, 1, 12)).opens_at == utc(2026, 6, 2, 1)  # BST
    # 02:00 does not exist on 29 March 2026 in London: the window opens when the clocks jump.
    spring = parse_window("0 2 * * * 1h Europe/London")
    assert spring.around(utc(2026, 3, 29, 0, 30)) == (utc(2026, 3, 29, 1), utc(2026, 3, 29, 2))
    # 01:30 happens twice on 25 October 2026: each opens the window.
    autumn = parse_window("30 1 * * * 1h Europe/London")
    assert autumn.around(utc(2026, 10, 25, 1, 10))[0] == utc(2026, 10, 25, 0, 30)  # type: ignore[index]
    assert autumn.around(utc(2026, 10, 25, 1, 40))[0] == utc(2026, 10, 25, 1, 30)  # type: ignore[index]


def test_a_freeze_is_whole_dates_in_the_window_time_zone() -> None:
    schedule = schedule_from("0 * * * * 1h Europe/London", "2026-07-01")
    assert schedule is not None
    assert schedule.opening(utc(2026, 6, 30, 22, 59)).open
    frozen = schedule.opening(utc(2026, 6, 30, 23))  # midnight in London
    assert not frozen.open and frozen.reason == "inside the freeze 2026-07-01"
    assert frozen.opens_at == utc(2026, 7, 1, 23)  # the next midnight in London
    # Without a window the dates are UTC's and the rest of the time is open.
    alone = schedule_from(None, "2026-07-01")
    assert alone is not None and alone.opening(utc(2026, 6, 30, 23, 30)).open
    assert alone.opening(utc(2026, 7, 1, 23, 59)).opens_at == utc(2026, 7, 2)


def test_a_window_inside_a_freeze_waits_for_the_first_one_after_it() -> None:
    schedule = schedule_from(LONDON, "2026-12-01..2026-12-31")
    assert schedule is not None
    opening = schedule.opening(utc(2026, 12, 8, 2, 30))  # a Tuesday, inside its window
    assert opening.reason == "inside the freeze 2026-12-01..2026-12-31"
    assert opening.opens_at == utc(2027, 1, 5, 2)  # the first Tuesday of 2027 (GMT)
    open_now = schedule.opening(utc(2026, 11, 30, 23, 0))  # a Monday: outside
    assert not open_now.open
    status = WindowStatus.at(schedule, utc(2026, 12, 8, 2, 30))
    assert status.to_dict()["next_opening"] == "2027-01-05T02:00:00+00:00"
    assert "next opens 2027-01-05 02:00 Europe/London (02:00 UTC)" in status.describe()


# -- the decision for a due key --------------------------------------------------------------------


def test_a_due_key_outside_the_window_waits_until_it_opens() -> None:
    schedule = schedule_from(LONDON, None)
    assert schedule is not None
    decision = window_decision(schedule, MONDAY_NOON + 20 * DAY, MONDAY_NOON)
    assert decision.action is WindowAction.WAIT and decision.until == utc(2026, 6, 2, 1)
    assert decision.describe(schedule) == (
        "waits until 2026-06-02 02:00 Europe/London (01:00 UTC): outside the rotation window"
    )


def test_a_key_that_waiting_would_bring_within_the_minimum_rotates_anyway() -> None:
    schedule = schedule_from(LONDON, None)
    assert schedule is not None
    # 7.5 days left: the window opens in 13 hours, when 6.96 days would be left.
    near = window_decision(schedule, MONDAY_NOON + timedelta(days=7.5), MONDAY_NOON)
    assert near.action is WindowAction.ROTATE_ANYWAY and near.until is None
    assert "would bring the certificate within 7 days of its expiry" in near.reason
    six = window_decision(schedule, MONDAY_NOON + 6 * DAY, MONDAY_NOON)
    assert six.action is WindowAction.ROTATE_ANYWAY
    assert "within 7 days: it does not wait" in six.reason
    # A certificate of unknown expiry has no deadline: it waits.
    assert window_decision(schedule, None, MONDAY_NOON).action is WindowAction.WAIT


def test_a_window_far_away_or_never_again_rotates_now() -> None:
    yearly = schedule_from("0 2 1 1 * 1h UTC", None)
    assert yearly is not None
    far = window_decision(yearly, MONDAY_NOON + 20 * DAY, MONDAY_NOON)
    assert far.action is WindowAction.ROTATE_ANYWAY
    assert "waiting until 2027-01-01 02:00 UTC would bring the certificate" in far.reason
    assert window_decision(yearly, MONDAY_NOON + 400 * DAY, MONDAY_NOON).until == utc(2027, 1, 1, 2)
    # Built without parse_window's check: a cron expression that never fires.
    never = RotationSchedule(RotationWindow("0 2 30 2 *", H, "UTC"))
    assert never.opening(MONDAY_NOON).opens_at is None
    decision = window_decision(never, MONDAY_NOON + 20 * DAY, MONDAY_NOON)
    assert decision.action is WindowAction.ROTATE_ANYWAY and "never opens again" in decision.reason
    assert window_decision(never, None, MONDAY_NOON).action is WindowAction.WAIT


# -- properties ----------------------------------------------------------------------------------

WINDOWS = st.sampled_from(
    [
        LONDON,
        "0 2 * * * 1h Europe/London",
        "30 1 * * * 90m Europe/London",
        "0 22 * * 0,6 3h America/New_York",
        "0 */6 * * * 2h UTC",
        "15 3 1 * * 1d Australia/Lord_Howe",
        "0 0 * * 1-5 30m Asia/Kolkata",
    ]
)
MOMENTS = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)
FREEZES = st.sampled_from(
    [None, "2026-12-01..2026-12-31", "2027-03-28,2027-10-31", "2026-06-01..2026-06-14,2028-02-29"]
)


@settings(max_examples=60, deadline=None)
@given(window=WINDOWS, freezes=FREEZES, now=MOMENTS)
def test_the_next_opening_is_open_and_nothing_before_it_is(
    window: str, freezes: str | None, now: datetime
) -> None:
    schedule = schedule_from(window, freezes)
    assert schedule is not None
    opening = schedule.opening(now)
    if opening.open:
        assert schedule.frozen_at(now) is None and opening.opens_at == now
        start, end = schedule.window.around(now)  # type: ignore[union-attr, misc]
        assert start <= now < end
        assert opening.closes_at is not None and now < opening.closes_at <= end
        return
    assert opening.opens_at is not None and opening.opens_at > now
    assert schedule.opening(opening.opens_at).open
    span = opening.opens_at - now
    for step in range(1, 40):
        assert not schedule.opening(now + span * step / 40).open


@settings(max_examples=60, deadline=None)
@given(
    window=WINDOWS,
    freezes=FREEZES,
    now=MOMENTS,
    days_left=st.floats(min_value=-3, max_value=60),
    minimum=st.integers(min_value=1, max_value=14),
)
def test_a_due_key_never_waits_past_its_minimum(
    window: str, freezes: str | None, now: datetime, days_left: float, minimum: int
) -> None:
    schedule = schedule_from(window, freezes, timedelta(days=minimum))
    assert isinstance(schedule, RotationSchedule)
    not_after = now + timedelta(days=days_left)
    decision = window_decision(schedule, not_after, now)
    opening = schedule.opening(now)
    if opening.open:
        assert decision.action is WindowAction.ROTATE
    elif decision.waits:
        assert decision.until == opening.opens_at
        assert decision.until is not None and now < decision.until < not_after - schedule.minimum
    else:
        assert decision.action is WindowAction.ROTATE_ANYWAY
        deadline = not_after - schedule.minimum
        assert opening.opens_at is None or opening.opens_at >= deadline
