"""The report's timeline picture: an inline SVG of every key's validity, renew window and today."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape

from rotator.services.report import Report

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


def timeline_svg(report: Report) -> str:
    """One row per key: a bar from NotBefore to NotAfter coloured by state, the renew window
    shaded at the end of each active key's bar, its cryptoperiod end ticked, a line for today."""
    now = report.generated_at
    scale = _scale(report)
    height = TOP + ROW_HEIGHT * max(len(report.keys), 1) + BOTTOM
    width = LABEL_WIDTH + CHART_WIDTH + 20
    parts = [
        f'<svg class="timeline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="validity of {len(report.keys)} keys, renew windows and today">',
        *_ticks(scale, height),
    ]
    renew_before = report.options.policy.renew_before
    previous_instance: str | None = None
    for row_number, key in enumerate(report.keys):
        y = TOP + row_number * ROW_HEIGHT
        if row_number and key.instance_id != previous_instance:
            parts.append(
                f'<line x1="0" y1="{y}" x2="{width}" y2="{y}" stroke="#ddd" stroke-width="1"/>'
            )
        previous_instance = key.instance_id
        parts.append(
            f'<text x="4" y="{y + 14}" class="label">{escape(key.key_id)}'
            f'<tspan class="state" dx="8">{escape(key.state)}</tspan>'
            f"<title>instance {escape(key.instance_id or '-')}</title></text>"
        )
        record = key.record
        if record is None or record.not_before is None or record.not_after is None:
            parts.append(
                f'<text x="{LABEL_WIDTH + 4}" y="{y + 14}" class="none">'
                "no certificate dates known</text>"
            )
            continue
        x1, x2 = scale.x(record.not_before), scale.x(record.not_after)
        colour = STATE_COLOURS.get(key.state, "#bbb")
        parts.append(
            f'<rect x="{x1:.1f}" y="{y + 4}" width="{max(x2 - x1, 1):.1f}" '
            f'height="{BAR_HEIGHT}" fill="{colour}" rx="2"><title>{escape(key.key_id)}: '
            f"{key.state}, {record.not_before:%Y-%m-%d} to {record.not_after:%Y-%m-%d}"
            "</title></rect>"
        )
        if key.state == "active":
            renew = scale.x(record.not_after - renew_before)
            parts.append(
                f'<rect x="{renew:.1f}" y="{y + 4}" width="{max(x2 - renew, 1):.1f}" '
                f'height="{BAR_HEIGHT}" fill="{RENEW_COLOUR}" fill-opacity="0.85">'
                f"<title>renew window from {record.not_after - renew_before:%Y-%m-%d}</title>"
                "</rect>"
            )
            if key.cryptoperiod_ends is not None:
                tick = scale.x(key.cryptoperiod_ends)
                parts.append(
                    f'<line x1="{tick:.1f}" y1="{y + 2}" x2="{tick:.1f}" y2="{y + 18}" '
                    'stroke="#222" stroke-width="2" stroke-dasharray="2,2">'
                    f"<title>cryptoperiod ends {key.cryptoperiod_ends:%Y-%m-%d}</title></line>"
                )
    today = scale.x(now)
    parts += [
        f'<line x1="{today:.1f}" y1="{TOP - 6}" x2="{today:.1f}" y2="{height - BOTTOM + 4}" '
        f'stroke="{TODAY_COLOUR}" stroke-width="2"/>',
        f'<text x="{today:.1f}" y="{TOP - 10}" class="today" text-anchor="middle">'
        f"today {now:%Y-%m-%d}</text>",
        *_legend(height),
        "</svg>",
    ]
    return "\n".join(parts)


def _scale(report: Report) -> Scale:
    """From the earliest NotBefore to the latest NotAfter, today included, padded a little."""
    now = report.generated_at
    moments = [now]
    for key in report.keys:
        if key.record is not None:
            moments += [m for m in (key.record.not_before, key.record.not_after) if m is not None]
    start, end = min(moments), max(moments)
    pad = max((end - start) * 0.03, timedelta(days=15))
    return Scale(start - pad, end + pad)


def _ticks(scale: Scale, height: int) -> list[str]:
    """A gridline at the start of each year, or of each quarter for spans under three years."""
    months = 12 if scale.end - scale.start > timedelta(days=3 * 365) else 3
    moment = datetime(scale.start.year, 1, 1, tzinfo=UTC)
    parts = []
    while moment <= scale.end:
        if moment >= scale.start:
            x = scale.x(moment)
            label = f"{moment:%Y}" if moment.month == 1 else f"{moment:%Y-%m}"
            parts += [
                f'<line x1="{x:.1f}" y1="{TOP - 4}" x2="{x:.1f}" y2="{height - BOTTOM}" '
                'stroke="#e4e4e4" stroke-width="1"/>',
                f'<text x="{x:.1f}" y="{height - BOTTOM + 16}" class="tick" '
                f'text-anchor="middle">{label}</text>',
            ]
        month = moment.month - 1 + months
        moment = moment.replace(year=moment.year + month // 12, month=month % 12 + 1)
    return parts


def _legend(height: int) -> list[str]:
    y = height - 14
    entries = [*STATE_COLOURS.items(), ("renew window", RENEW_COLOUR)]
    parts = []
    x = LABEL_WIDTH
    for name, colour in entries:
        parts += [
            f'<rect x="{x}" y="{y - 9}" width="12" height="10" fill="{colour}"/>',
            f'<text x="{x + 16}" y="{y}" class="tick">{name}</text>',
        ]
        x += 24 + 7 * len(name)
    parts.append(
        f'<line x1="{x}" y1="{y - 10}" x2="{x}" y2="{y + 1}" stroke="#222" stroke-width="2" '
        f'stroke-dasharray="2,2"/><text x="{x + 6}" y="{y}" class="tick">cryptoperiod end</text>'
    )
    return parts
