"""The report's timeline picture as data: every key's validity, renew window and today."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rotator.services.report import KeyRow, Report

LABEL_WIDTH = 340
CHART_WIDTH = 660
ROW_HEIGHT = 20
BAR_HEIGHT = 12
TOP = 34
BOTTOM = 44
STATE_COLOURS = {
    "pending": "#8fa8c8",
    "active": "#2e8b57",
    "previous": "#4682b4",
    "retired": "#a0a0a0",
    "destroyed": "#5a5a5a",
}
UNKNOWN_COLOUR = "#bbb"
RENEW_COLOUR = "#f0a030"
TODAY_COLOUR = "#d62728"


@dataclass(frozen=True)
class Scale:
    """Maps times onto the chart's x axis."""

    start: datetime
    end: datetime

    def x(self, moment: datetime) -> float:
        span = (self.end - self.start).total_seconds()
        offset = (moment - self.start).total_seconds()
        return LABEL_WIDTH + CHART_WIDTH * min(max(offset / span, 0.0), 1.0)


@dataclass(frozen=True)
class Mark:
    """Something drawn at `x` (and `width` wide, for a bar), with its hover text."""

    x: float
    title: str
    width: float = 0.0
    colour: str = ""


@dataclass(frozen=True)
class Row:
    """One key's row, `y` its top; no bar when its certificate dates are unknown."""

    y: int
    key_id: str
    state: str
    instance: str
    separator: bool  # a line above: the first key of another instance
    bar: Mark | None
    renew: Mark | None
    cryptoperiod_end: Mark | None


@dataclass(frozen=True)
class Gridline:
    x: float
    label: str


@dataclass(frozen=True)
class LegendEntry:
    x: int
    name: str
    colour: str


@dataclass(frozen=True)
class Timeline:
    """What the timeline template draws; geometry in SVG user units."""

    width: int
    height: int
    key_count: int
    gridlines: tuple[Gridline, ...]
    rows: tuple[Row, ...]
    today: Mark
    legend_y: int
    legend: tuple[LegendEntry, ...]
    legend_end: int  # where the legend's "cryptoperiod end" entry goes
    top: int = TOP
    bottom: int = BOTTOM
    bar_height: int = BAR_HEIGHT
    label_width: int = LABEL_WIDTH


def timeline(report: Report) -> Timeline:
    """One row per key: a bar from NotBefore to NotAfter coloured by state, the renew window
    shaded at the end of each active key's bar, its cryptoperiod end ticked, a line for today."""
    now = report.generated_at
    scale = scale_for(report.keys, now)
    height = TOP + ROW_HEIGHT * max(len(report.keys), 1) + BOTTOM
    rows = []
    previous_instance: str | None = None
    for row_number, key in enumerate(report.keys):
        separator = bool(row_number) and key.instance_id != previous_instance
        previous_instance = key.instance_id
        rows.append(key_row(report, key, scale, TOP + row_number * ROW_HEIGHT, separator))
    legend, legend_end = legend_entries()
    return Timeline(
        width=LABEL_WIDTH + CHART_WIDTH + 20,
        height=height,
        key_count=len(report.keys),
        gridlines=tuple(gridlines(scale)),
        rows=tuple(rows),
        today=Mark(scale.x(now), f"today {now:%Y-%m-%d}", colour=TODAY_COLOUR),
        legend_y=height - 14,
        legend=legend,
        legend_end=legend_end,
    )


def key_row(report: Report, key: KeyRow, scale: Scale, y: int, separator: bool) -> Row:
    """One key's row at `y`: its bar, and for an active key its renew window and cryptoperiod
    end (`report`: the policy its keyring is held against)."""
    record = key.record
    bar = renew = cryptoperiod = None
    if record is not None and record.not_before is not None and record.not_after is not None:
        x1, x2 = scale.x(record.not_before), scale.x(record.not_after)
        bar = Mark(
            x1,
            f"{key.key_id}: {key.state}, {record.not_before:%Y-%m-%d} to "
            f"{record.not_after:%Y-%m-%d}",
            width=max(x2 - x1, 1),
            colour=STATE_COLOURS.get(key.state, UNKNOWN_COLOUR),
        )
        if key.state == "active":
            renew_from = record.not_after - report.options.policy.renew_before
            start = scale.x(renew_from)
            renew = Mark(
                start,
                f"renew window from {renew_from:%Y-%m-%d}",
                width=max(x2 - start, 1),
                colour=RENEW_COLOUR,
            )
            if key.cryptoperiod_ends is not None:
                cryptoperiod = Mark(
                    scale.x(key.cryptoperiod_ends),
                    f"cryptoperiod ends {key.cryptoperiod_ends:%Y-%m-%d}",
                )
    return Row(
        y=y,
        key_id=key.key_id,
        state=key.state,
        instance=key.instance_id or "-",
        separator=separator,
        bar=bar,
        renew=renew,
        cryptoperiod_end=cryptoperiod,
    )


def scale_for(keys: Iterable[KeyRow], now: datetime) -> Scale:
    """From the earliest NotBefore to the latest NotAfter, today included, padded a little."""
    moments = [now]
    for key in keys:
        if key.record is not None:
            moments += [m for m in (key.record.not_before, key.record.not_after) if m is not None]
    start, end = min(moments), max(moments)
    pad = max((end - start) * 0.03, timedelta(days=15))
    return Scale(start - pad, end + pad)


def gridlines(scale: Scale) -> list[Gridline]:
    """A gridline at the start of each year, or of each quarter for spans under three years."""
    months = 12 if scale.end - scale.start > timedelta(days=3 * 365) else 3
    moment = datetime(scale.start.year, 1, 1, tzinfo=UTC)
    lines = []
    while moment <= scale.end:
        if moment >= scale.start:
            label = f"{moment:%Y}" if moment.month == 1 else f"{moment:%Y-%m}"
            lines.append(Gridline(scale.x(moment), label))
        month = moment.month - 1 + months
        moment = moment.replace(year=moment.year + month // 12, month=month % 12 + 1)
    return lines


def legend_entries() -> tuple[tuple[LegendEntry, ...], int]:
    """The colour of each state and of the renew window, left to right; then where the
    cryptoperiod-end entry starts."""
    entries = []
    x = LABEL_WIDTH
    for name, colour in [*STATE_COLOURS.items(), ("renew window", RENEW_COLOUR)]:
        entries.append(LegendEntry(x, name, colour))
        x += 24 + 7 * len(name)
    return tuple(entries), x
