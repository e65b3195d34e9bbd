"""Rotation windows and freezes: when a due rotation may run, decided from a given time (pure).

A window is a cron expression in a time zone (each firing opens it) and a duration (how long it
stays open, in elapsed time): `0 2 * * TUE 4h Europe/London` is open on Tuesdays from 02:00 to
06:00 London time, summer or winter. A freeze is a range of whole dates, both ends included, in
the window's time zone (UTC when no window is set): `2026-12-01..2026-12-31`. A due key waits
for the next moment that is inside a window and outside every freeze, unless waiting would bring
its certificate within `minimum` of its NotAfter: then it rotates at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

WINDOW_EXAMPLE = "0 2 * * TUE 4h Europe/London"
FREEZE_EXAMPLE = "2026-12-01..2026-12-31,2027-03-28"
DEFAULT_MINIMUM = timedelta(days=7)
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?")
# How many window openings and freezes the search for the next open moment steps over before it
# gives up (a window that opens hourly behind a month-long freeze takes ~750).
_MAX_STEPS = 5000


# -- cron ------------------------------------------------------------------------------------------


def cron_trigger(expression: str, timezone: tzinfo = UTC) -> CronTrigger:
    """A standard five-field crontab line, in `timezone`, as an APScheduler trigger.

    Weekdays mean what cron means (0 or 7 = Sunday): APScheduler 3 counts them from Monday, so
    they are handed over as names. Raises ValueError saying what is wrong.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"needs 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    minute, hour, day, month, weekday = fields
    if day != "*" and weekday != "*":
        raise ValueError(
            "restrict the day of month or the day of week, not both (cron runs when either matches)"
        )
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=_weekdays(weekday.lower()),
        timezone=timezone,
    )


def _weekdays(spec: str) -> str:
    if spec == "*":
        return spec
    days: set[int] = set()
    for item in spec.split(","):
        span, slash, step_text = item.partition("/")
        first, _, last = ("0-7" if span == "*" else span).partition("-")
        start = _weekday(first)
        end = _weekday(last) if last else (7 if slash else start)
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else 0
        if (slash and not step) or end < start:
            raise ValueError(f"{item!r} is not a weekday, range or step of the day-of-week field")
        days.update(day % 7 for day in range(start, end + 1, step or 1))
    return ",".join(WEEKDAYS[day] for day in sorted(days))


def _weekday(token: str) -> int:
    if token in WEEKDAYS:
        return WEEKDAYS.index(token)
    if token.isdigit() and int(token) <= 7:
        return int(token)
    raise ValueError(f"{token!r} is not a weekday (0-7 or sun-sat; 0 and 7 are Sunday)")


# -- the window --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RotationWindow:
    """Opens at each firing of `cron` in `zone` and stays open for `duration`."""

    cron: str
    duration: timedelta
    zone: str  # an IANA time zone name

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)

    @cached_property
    def trigger(self) -> CronTrigger:
        return cron_trigger(self.cron, self.tz)

    def __str__(self) -> str:
        return f"{self.cron} {_duration_text(self.duration)} {self.zone}"

    def around(self, moment: datetime) -> tuple[datetime, datetime] | None:
        """The opening that contains `moment`, else the next one; None if it never opens again.

        APScheduler answers the first firing at or after a time, so an opening that contains
        `moment` is the first firing after `moment - duration` that is still open at `moment`."""
        start = _next_fire(self.trigger, moment - self.duration)
        while start is not None and start + self.duration <= moment:
            start = _next_fire(self.trigger, start + timedelta(seconds=1))
        return None if start is None else (start, start + self.duration)


def _next_fire(trigger: CronTrigger, after: datetime) -> datetime | None:
    fire: datetime | None = trigger.get_next_fire_time(None, after)
    return None if fire is None else fire.astimezone(UTC)


def parse_window(text: str) -> RotationWindow:
    """`CRON(5 fields) DURATION ZONE`, e.g. `0 2 * * TUE 4h Europe/London`; ValueError if not."""
    tokens = text.split()
    if len(tokens) != 7:
        raise ValueError(
            "needs a cron expression (5 fields), a duration and a time zone, like "
            f"{WINDOW_EXAMPLE!r}; got {len(tokens)} field(s)"
        )
    cron, duration_text, zone = " ".join(tokens[:5]), tokens[5], tokens[6]
    duration = parse_duration(duration_text)
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{zone!r} is not a time zone (an IANA name like Europe/London, or UTC)"
        ) from None
    try:
        trigger = cron_trigger(cron, tz)
    except ValueError as error:
        raise ValueError(f"cron expression {cron!r}: {error}") from None
    if trigger.get_next_fire_time(None, datetime(2000, 1, 1, tzinfo=UTC)) is None:
        raise ValueError(f"cron expression {cron!r} never fires, so the window never opens")
    return RotationWindow(cron, duration, zone)


def parse_duration(text: str) -> timedelta:
    """`4h`, `90m`, `1h30m`, `2d`: a positive length of time."""
    match = _DURATION.fullmatch(text.lower())
    if not text or match is None:
        raise ValueError(f"duration {text!r} is not like 4h, 90m, 1h30m or 1d")
    days, hours, minutes = (int(part or 0) for part in match.groups())
    duration = timedelta(days=days, hours=hours, minutes=minutes)
    if duration <= timedelta(0):
        raise ValueError(f"duration {text!r} must be longer than zero")
    return duration


def _duration_text(duration: timedelta) -> str:
    minutes = int(duration.total_seconds()) // 60
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m")]
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0m"


# -- freezes -----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Freeze:
    """Whole dates from `first` to `last`, both included."""

    first: date
    last: date

    def __str__(self) -> str:
        return f"{self.first}..{self.last}" if self.first != self.last else str(self.first)

    def bounds(self, tz: tzinfo) -> tuple[datetime, datetime]:
        """From the first date's midnight to the midnight after the last date, in UTC."""
        start = datetime.combine(self.first, time(), tz).astimezone(UTC)
        end = datetime.combine(self.last + timedelta(days=1), time(), tz).astimezone(UTC)
        return start, end


def parse_freezes(text: str) -> tuple[Freeze, ...]:
    """`2026-12-01..2026-12-31,2027-03-28`: ranges and single dates, comma-separated."""
    freezes = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise ValueError(f"an empty entry; freezes are dates or ranges like {FREEZE_EXAMPLE!r}")
        first_text, dots, last_text = item.partition("..")
        first = _date(first_text.strip())
        last = _date(last_text.strip()) if dots else first
        if last < first:
            raise ValueError(f"freeze {item!r} ends before it starts")
        freezes.append(Freeze(first, last))
    return tuple(sorted(freezes))


def _date(text: str) -> date:
    try:
        parsed = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    if parsed.year >= date.max.year:  # its end, the next midnight, would not be a datetime
        raise ValueError(f"{text!r} is too far ahead")
    return parsed


# -- the schedule and the decision ---------------------------------------------------------------


@dataclass(frozen=True)
class Opening:
    """Whether rotations may run at a time, and when they next may (None: never again)."""

    open: bool
    opens_at: datetime | None  # `now` when open
    closes_at: datetime | None  # when open: the end of this opening (None: no window)
    reason: str  # why it is closed ("" when open)


@dataclass(frozen=True)
class RotationSchedule:
    """When rotations may run: inside `window` (None: at any time) and outside every freeze."""

    window: RotationWindow | None = None
    freezes: tuple[Freeze, ...] = ()
    minimum: timedelta = DEFAULT_MINIMUM  # a due key closer than this to expiry never waits

    @property
    def tz(self) -> tzinfo:
        return UTC if self.window is None else self.window.tz

    @property
    def zone(self) -> str:
        return "UTC" if self.window is None else self.window.zone

    def describe(self) -> str:
        """One line for status and the report: the window and the freezes."""
        parts = [f"rotation window {self.window}" if self.window else "no rotation window"]
        if self.freezes:
            dates = ", ".join(str(f) for f in self.freezes)
            parts.append(f"freezes {dates} ({self.zone})")
        return "; ".join(parts)

    def frozen_at(self, moment: datetime) -> Freeze | None:
        tz = self.tz
        for freeze in self.freezes:
            start, end = freeze.bounds(tz)
            if start <= moment < end:
                return freeze
        return None

    def opening(self, now: datetime) -> Opening:
        """Open now, or the next moment inside a window and outside every freeze."""
        now = now.astimezone(UTC)
        freeze = self.frozen_at(now)
        window = None if self.window is None else self.window.around(now)
        if freeze is None and (self.window is None or (window is not None and window[0] <= now)):
            end = None if window is None else window[1]
            next_freeze = self._next_freeze_start(now)
            if next_freeze is not None and (end is None or next_freeze < end):
                end = next_freeze
            return Opening(True, now, end, "")
        if freeze is not None:
            reason = f"inside the freeze {freeze}"
        else:
            reason = "outside the rotation window"
        return Opening(False, self._next_open(now), None, reason)

    def _next_freeze_start(self, after: datetime) -> datetime | None:
        tz = self.tz
        starts = [start for start, _ in (f.bounds(tz) for f in self.freezes) if start > after]
        return min(starts, default=None)

    def _next_open(self, moment: datetime) -> datetime | None:
        for _ in range(_MAX_STEPS):
            if self.window is not None:
                window = self.window.around(moment)
                if window is None:
                    return None
                moment = max(moment, window[0])
            freeze = self.frozen_at(moment)
            if freeze is None:
                return moment
            moment = freeze.bounds(self.tz)[1]
        return None

    def local(self, moment: datetime) -> str:
        """A time as an operator reads it: in the schedule's time zone, and in UTC."""
        text = f"{moment.astimezone(self.tz):%Y-%m-%d %H:%M} {self.zone}"
        return text if self.zone == "UTC" else f"{text} ({moment.astimezone(UTC):%H:%M} UTC)"


@dataclass(frozen=True)
class WindowStatus:
    """The rotation window and freezes at a time: open now (until when), or when they open next."""

    schedule: RotationSchedule
    open: bool
    opens_at: datetime | None
    closes_at: datetime | None
    reason: str  # why it is closed ("" when open)

    @classmethod
    def at(cls, schedule: RotationSchedule, now: datetime) -> WindowStatus:
        opening = schedule.opening(now)
        return cls(schedule, opening.open, opening.opens_at, opening.closes_at, opening.reason)

    def to_dict(self) -> dict[str, Any]:
        window, freezes = self.schedule.window, self.schedule.freezes
        return {
            "window": None if window is None else str(window),
            "freezes": [str(freeze) for freeze in freezes],
            "time_zone": self.schedule.zone,
            "renew_before_minimum_days": self.schedule.minimum.days,
            "open": self.open,
            "next_opening": None if self.opens_at is None else self.opens_at.isoformat(),
            "closes_at": None if self.closes_at is None else self.closes_at.isoformat(),
            "closed_because": self.reason or None,
        }

    def describe(self) -> str:
        """One line: what is configured, and whether rotations may run now or from when."""
        local = self.schedule.local
        if self.open:
            when = "open now" + (f" until {local(self.closes_at)}" if self.closes_at else "")
        elif self.opens_at is None:
            when = f"closed ({self.reason}) and never opens again"
        else:
            when = f"closed ({self.reason}); next opens {local(self.opens_at)}"
        return f"{self.schedule.describe()}: {when}"


class WindowAction(StrEnum):
    ROTATE = "rotate"  # open now, or no window and no freeze
    WAIT = "wait"
    ROTATE_ANYWAY = "rotate_anyway"  # closed, but waiting would come too close to expiry


@dataclass(frozen=True)
class WindowDecision:
    """What a key that should rotate at `now` does: rotate, or wait until `until` and why."""

    action: WindowAction
    reason: str
    until: datetime | None = None  # when it waits: the next opening

    @property
    def waits(self) -> bool:
        return self.action is WindowAction.WAIT

    def describe(self, schedule: RotationSchedule) -> str:
        if self.action is WindowAction.WAIT and self.until is not None:
            return f"waits until {schedule.local(self.until)}: {self.reason}"
        return self.reason


def window_decision(
    schedule: RotationSchedule | None, not_after: datetime | None, now: datetime
) -> WindowDecision:
    """For a key that should rotate at `now` (due, or forced) with certificate expiry
    `not_after` (None: unknown; nothing expires, so it may wait)."""
    if schedule is None:
        return WindowDecision(WindowAction.ROTATE, "no rotation window")
    opening = schedule.opening(now)
    if opening.open:
        return WindowDecision(WindowAction.ROTATE, "inside the rotation window")
    deadline = None if not_after is None else not_after - schedule.minimum
    days = schedule.minimum.days
    if deadline is not None and now >= deadline:
        return WindowDecision(
            WindowAction.ROTATE_ANYWAY,
            f"{opening.reason}, but the certificate expires on {not_after:%Y-%m-%d}, within "
            f"{days} days: it does not wait",
        )
    if opening.opens_at is None:
        if deadline is None:
            return WindowDecision(WindowAction.WAIT, f"{opening.reason}, and it never opens again")
        return WindowDecision(
            WindowAction.ROTATE_ANYWAY,
            f"{opening.reason} and it never opens again: rotating now, before the certificate "
            f"comes within {days} days of its expiry on {not_after:%Y-%m-%d}",
        )
    if deadline is not None and opening.opens_at >= deadline:
        return WindowDecision(
            WindowAction.ROTATE_ANYWAY,
            f"{opening.reason}, but waiting until {schedule.local(opening.opens_at)} would bring "
            f"the certificate within {days} days of its expiry on {not_after:%Y-%m-%d}",
        )
    return WindowDecision(WindowAction.WAIT, opening.reason, opening.opens_at)


def schedule_from(
    window: str | None, freezes: str | None, minimum: timedelta = DEFAULT_MINIMUM
) -> RotationSchedule | None:
    """The schedule the settings describe; None when neither a window nor a freeze is set."""
    if not window and not freezes:
        return None
    return RotationSchedule(
        parse_window(window) if window else None,
        parse_freezes(freezes) if freezes else (),
        minimum,
    )
