"""The fleet report's timeline as data: groups by account, region and instance, one scale.

At 1,000 keys one picture of 1,000 rows is unreadable. Each instance's keys get a small timeline
of their own, all on the fleet's one time scale (bars compare across groups), in collapsible
groups by account and region. Each instance group carries what the page's filter matches on
(its text, its keys' states, its account), so the filter reads attributes and writes none of
the page's text.
"""

from __future__ import annotations

from dataclasses import dataclass

from rotator.services.fleet_report import KEY_STATES, FleetReport, PartitionSection
from rotator.services.report import KeyRow
from rotator.services.report_timeline import (
    CHART_WIDTH,
    LABEL_WIDTH,
    ROW_HEIGHT,
    TODAY_COLOUR,
    TOP,
    Mark,
    Scale,
    Timeline,
    gridlines,
    key_row,
    legend_entries,
    scale_for,
)

# A group's picture ends under its last row: the gridlines' labels, no legend (the page draws
# the legend once, above the groups).
GROUP_BOTTOM = 22
LEGEND_HEIGHT = 42


@dataclass(frozen=True)
class InstanceGroup:
    """One instance's keys (or a partition's keys with no instance, `instance` "-")."""

    account: str
    region: str
    instance: str
    states: tuple[str, ...]  # each state its keys are in, once
    summary: str  # keys by state, findings, nearest expiry: readable while collapsed
    search: str  # lower-case text the filter matches: account, region, instance, key IDs, states
    timeline: Timeline


@dataclass(frozen=True)
class RegionGroup:
    account: str
    region: str
    summary: str
    error: str | None
    instances: tuple[InstanceGroup, ...]


@dataclass(frozen=True)
class AccountGroup:
    account: str
    summary: str
    regions: tuple[RegionGroup, ...]


@dataclass(frozen=True)
class GroupedTimeline:
    """What the fleet template draws: the shared scale's legend, then the groups."""

    legend: Timeline
    accounts: tuple[AccountGroup, ...]
    states: tuple[str, ...]  # the filter's choices of state
    key_count: int
    group_count: int


def grouped_timeline(report: FleetReport) -> GroupedTimeline:
    now = report.generated_at
    scale = scale_for((key for s in report.sections for key in s.keys), now)
    accounts: dict[str, list[RegionGroup]] = {}
    for section in report.sections:
        accounts.setdefault(section.partition.account, []).append(_region(report, section, scale))
    groups = [
        AccountGroup(name, _account_summary(regions), tuple(regions))
        for name, regions in accounts.items()
    ]
    states = {key.state for s in report.sections for key in s.keys}
    return GroupedTimeline(
        legend=_legend(report, scale),
        accounts=tuple(groups),
        states=tuple(s for s in KEY_STATES if s in states),
        key_count=report.key_count(),
        group_count=sum(len(r.instances) for g in groups for r in g.regions),
    )


def _region(report: FleetReport, section: PartitionSection, scale: Scale) -> RegionGroup:
    partition = section.partition
    by_instance: dict[str, list[KeyRow]] = {}
    for key in section.keys:
        by_instance.setdefault(key.instance_id or "-", []).append(key)
    instances = tuple(
        _instance(report, section, instance, keys, scale)
        for instance, keys in sorted(by_instance.items())
    )
    if section.error is not None:
        summary = f"could not be read: {section.error}"
    else:
        summary = f"{len(instances)} instance group(s), {len(section.keys)} key(s)"
    return RegionGroup(partition.account, partition.region, summary, section.error, instances)


def _instance(
    report: FleetReport,
    section: PartitionSection,
    instance: str,
    keys: list[KeyRow],
    scale: Scale,
) -> InstanceGroup:
    assert section.report is not None  # only a readable section has keys
    partition = section.partition
    rows = tuple(
        key_row(section.report, key, scale, TOP + number * ROW_HEIGHT, False)
        for number, key in enumerate(keys)
    )
    height = TOP + ROW_HEIGHT * len(keys) + GROUP_BOTTOM
    states = tuple(dict.fromkeys(key.state for key in keys))
    findings = sum(len(section.report.findings_for(key)) for key in keys)
    findings += sum(len(report.findings_for(partition, key.key_id)) for key in keys)
    days = [key.days_to_expiry for key in keys if key.days_to_expiry is not None]
    counted = ", ".join(f"{sum(k.state == s for k in keys)} {s}" for s in states)
    summary = f"{len(keys)} key(s): {counted}; {findings} finding(s)"
    if days:
        summary += f"; nearest expiry in {min(days):.0f} days"
    words = [partition.account, partition.region, instance, *states]
    words += [key.key_id for key in keys]
    return InstanceGroup(
        partition.account,
        partition.region,
        instance,
        states,
        summary,
        " ".join(words).lower(),
        Timeline(
            width=LABEL_WIDTH + CHART_WIDTH + 20,
            height=height,
            key_count=len(keys),
            gridlines=tuple(gridlines(scale)),
            rows=rows,
            today=_today(report, scale),
            legend_y=height,
            legend=(),
            legend_end=0,
            bottom=GROUP_BOTTOM,
        ),
    )


def _legend(report: FleetReport, scale: Scale) -> Timeline:
    """No rows: the colours of the states and the renew window, the scale's years, today."""
    legend, legend_end = legend_entries()
    height = TOP + LEGEND_HEIGHT
    return Timeline(
        width=LABEL_WIDTH + CHART_WIDTH + 20,
        height=height,
        key_count=0,
        gridlines=tuple(gridlines(scale)),
        rows=(),
        today=_today(report, scale),
        legend_y=height - 4,
        legend=legend,
        legend_end=legend_end,
        bottom=LEGEND_HEIGHT,
    )


def _today(report: FleetReport, scale: Scale) -> Mark:
    now = report.generated_at
    return Mark(scale.x(now), f"today {now:%Y-%m-%d}", colour=TODAY_COLOUR)


def _account_summary(regions: list[RegionGroup]) -> str:
    keys = sum(len(i.timeline.rows) for r in regions for i in r.instances)
    unread = sum(r.error is not None for r in regions)
    text = f"{len(regions)} region(s), {keys} key(s)"
    return text + (f", {unread} region(s) unreadable" if unread else "")
