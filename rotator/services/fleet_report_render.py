"""The fleet report as JSON, CSV, Markdown or one self-contained HTML file (fingerprints only).

The HTML page carries one inline script, the timeline's filter: no network access (its Content
Security Policy allows that script by hash and nothing from anywhere), and with scripts off the
page shows everything, the filter's controls staying hidden.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from functools import cache
from typing import Any

from rotator.domain.checks import FleetFinding
from rotator.domain.findings import Severity
from rotator.services.fleet_report import KEY_STATES, FleetReport, PartitionSection
from rotator.services.fleet_timeline import GroupedTimeline, RegionGroup, grouped_timeline
from rotator.services.report import Report
from rotator.services.report_render import (
    CSV_COLUMNS,
    Badge,
    Cell,
    ReportFormat,
    Table,
    _templates,
    csv_cell,
    csv_columns,
    csv_values,
    evidence_context,
    finding_tag,
    findings_table,
    headline,
    instances_table,
    key_architecture,
    keys_table,
    md_accountability,
    md_architecture,
    md_section,
    timeline_table,
    timeline_text,
)

FLEET_TEMPLATE = "report/fleet.html.j2"
FILTER_SCRIPT = "report/fleet_filter.js"
PARTITION_COLUMNS = ("account", "region")
FLEET_FINDING_COLUMNS = ("severity", "finding", "where", "detail", "runbook")
TOTAL_COLUMNS = ("account regions", "unreadable", "instances", "keys", *KEY_STATES)
ACCOUNT_COLUMNS = ("account", "regions and keys")
INSTANCE_GROUP_COLUMNS = ("instance", "keys, findings, nearest expiry")


def render_fleet(report: FleetReport, fmt: ReportFormat) -> str:
    renderers = {
        ReportFormat.JSON: render_fleet_json,
        ReportFormat.CSV: render_fleet_csv,
        ReportFormat.MD: render_fleet_markdown,
        ReportFormat.HTML: render_fleet_html,
    }
    return renderers[fmt](report)


def render_fleet_json(report: FleetReport) -> str:
    """Follows rotator/services/report.schema.json (`$defs/fleet_report`)."""
    return json.dumps(report.to_dict(), indent=2) + "\n"


def render_fleet_csv(report: FleetReport) -> str:
    """One row per key of the fleet, its account and region first; an account region that could
    not be read is one row with its finding and no key."""
    readable = report.readable
    key_columns = (
        csv_columns(readable[0].report) if readable and readable[0].report else CSV_COLUMNS
    )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PARTITION_COLUMNS + key_columns)
    for section in report.sections:
        where = [section.partition.account, section.partition.region]
        if section.report is None:
            tags = [
                f"{finding_tag(f.finding)}: {section.error}"
                for f in _fleet_findings_of(report, section)
            ]
            row = ["; ".join(tags) if column == "findings" else None for column in key_columns]
            writer.writerow(csv_cell(value) for value in where + row)
            continue
        architecture = key_architecture(section.report)
        for key in section.report.keys:
            fleet = [
                finding_tag(f.finding) for f in report.findings_for(section.partition, key.key_id)
            ]
            values = csv_values(
                section.report,
                key,
                key_columns,
                architecture=architecture,
                more_findings=fleet,
            )
            writer.writerow(csv_cell(value) for value in where + values)
    return buffer.getvalue()


def render_fleet_markdown(report: FleetReport) -> str:
    """Every section of the HTML page from the same tables; the grouped timeline becomes, per
    account region, its instance groups' summaries and what the picture draws for each key."""
    graph = grouped_timeline(report)
    lines = ["# Amazon Connect fleet key report", "", fleet_headline(report)]
    lines += ["", fleet_policy_text(report)]
    lines += md_section("Fleet totals", _totals_table(report))
    lines += md_section("Fleet findings", _fleet_findings_table(report))
    lines += md_section("Timeline", _timeline_text(graph), _accounts_table(graph))
    regions = {(r.account, r.region): r for a in graph.accounts for r in a.regions}
    for section in report.sections:
        lines += ["", f"## {_heading(section)}", ""]
        if section.report is None:
            lines.append(f"Could not be read: {section.error}")
            continue
        sub = section.report
        region = regions[section.partition.account, section.partition.region]
        lines += [headline(sub), "", f"Decrypt function: {section.decrypt_function}"]
        lines += md_section("Findings", findings_table(sub), level=3)
        lines += md_section("Instances", instances_table(sub), level=3)
        lines += md_section("Keys", keys_table(sub), level=3)
        # This account region's evidence, by the keyring report's own builders.
        lines += md_accountability(sub, level=3)
        lines += md_architecture(sub, level=3)
        lines += md_section(
            "Timeline",
            region.summary,
            _instance_groups_table(region),
            timeline_table([row for group in region.instances for row in group.timeline.rows]),
            level=3,
        )
    return "\n".join(lines) + "\n"


def render_fleet_html(report: FleetReport) -> str:
    """One file: inline CSS, SVG and the filter's script; no external resource, opens offline.
    The templates mark up; this module says what goes where, as plain text."""
    return _templates().get_template(FLEET_TEMPLATE).render(**_fleet_html_context(report))


@cache
def filter_script_hash() -> str:
    """The CSP source of the filter's script: the page may run that script and no other."""
    script = _templates().get_template(FILTER_SCRIPT).render()
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


def render_fleet_summary(report: FleetReport, *, limit: int = 10) -> str:
    """A few lines for a notification: the fleet's counts and its most severe findings."""
    found = sorted(
        [(f.finding, "fleet") for f in report.findings]
        + [
            (f, str(s.partition))
            for s in report.sections
            if s.report is not None
            for f in s.report.findings
        ],
        key=lambda pair: pair[0].severity.rank,
    )
    lines = [fleet_headline(report)]
    if found:
        lines.append("Top findings:")
        lines += [
            f"- {f.severity.value.upper()} {f.code.value} {where}"
            f"{'/' + f.instance_id if f.instance_id else ''}: {f.message}"
            for f, where in found[:limit]
        ]
        if len(found) > limit:
            lines.append(f"- ... and {len(found) - limit} more in the report")
    return "\n".join(lines)


def fleet_headline(report: FleetReport) -> str:
    counts = report.counts()
    found = ", ".join(f"{counts[s]} {s.value}" for s in Severity)
    unread = len(report.unreadable)
    return (
        f"Fleet at {report.generated_at.isoformat()}: {len(report.sections)} account region(s)"
        f"{f' ({unread} unreadable)' if unread else ''}, {report.instance_count()} managed "
        f"instance(s), {report.key_count()} key(s); findings: {found}"
    )


def fleet_policy_text(report: FleetReport) -> str:
    options = report.options
    return (
        f"Policy: renew {options.policy.renew_before.days} days before expiry, cryptoperiod "
        f"{options.policy.cryptoperiod.days} days, grace {options.grace.days} days, minimum "
        f"RSA-{options.min_key_size}; each account region's private keys under its own KMS key. "
        "A key pair found in two account regions is a key-shared finding of the fleet."
    )


def _heading(section: PartitionSection) -> str:
    return f"Account {section.partition.account}, region {section.partition.region}"


def _evidence_summary(report: Report) -> str:
    """What a section's collapsed evidence holds, so that a reader knows whether to open it."""
    refused = sum(len(r.refusals) for r in report.requests)
    stored = "; stored ciphertexts" if report.options.stores else ""
    return (
        f"{len(report.requests)} dual-control request(s), {refused} refused; "
        f"{len(report.custodians)} key custodian(s); cryptographic architecture: "
        f"{len(report.crypto.keys)} key(s), {len(report.crypto.keks)} KMS key(s); "
        f"copy inventory{stored}"
    )


def _fleet_findings_of(report: FleetReport, section: PartitionSection) -> list[FleetFinding]:
    return [f for f in report.findings if section.partition in f.partitions]


def _totals_table(report: FleetReport) -> Table:
    return Table(TOTAL_COLUMNS, (tuple(Cell(v) for v in _total_values(report)),), "No account.")


def _fleet_findings_table(report: FleetReport) -> Table:
    return Table(
        FLEET_FINDING_COLUMNS,
        tuple(_fleet_finding_rows(report)),
        empty="No findings across accounts.",
    )


def _timeline_text(graph: GroupedTimeline) -> str:
    return (
        f"{graph.key_count} key(s) in {graph.group_count} instance group(s), by account, region "
        "and instance; each account region's section lists its groups and keys. "
        + timeline_text(graph.legend.today)
    )


def _accounts_table(graph: GroupedTimeline) -> Table:
    return Table(
        ACCOUNT_COLUMNS,
        tuple((Cell.code(a.account), Cell(a.summary)) for a in graph.accounts),
        empty="No account.",
    )


def _instance_groups_table(region: RegionGroup) -> Table:
    return Table(
        INSTANCE_GROUP_COLUMNS,
        tuple((Cell.code(g.instance), Cell(g.summary)) for g in region.instances),
        empty="No keys.",
    )


def _total_values(report: FleetReport) -> tuple[str, ...]:
    by_state = report.keys_by_state()
    return (
        str(len(report.sections)),
        str(len(report.unreadable)),
        str(report.instance_count()),
        str(report.key_count()),
        *(str(by_state[state]) for state in KEY_STATES),
    )


def _fleet_finding_rows(report: FleetReport) -> list[tuple[Cell, ...]]:
    rows: list[tuple[Cell, ...]] = []
    for fleet in report.findings:
        f = fleet.finding
        where = [str(h) for h in fleet.holders] or [str(p) for p in fleet.partitions]
        rows.append(
            (
                Cell(f.severity.value, badge=f.severity.value),
                Cell(f.rule.title),
                Cell(codes=tuple(where)),
                Cell(f.message),
                Cell.code(f.rule.runbook.path),
            )
        )
    return rows


def _fleet_html_context(report: FleetReport) -> dict[str, Any]:
    counts = report.counts()
    return {
        "title": f"Amazon Connect fleet key report {report.generated_at:%Y-%m-%d}",
        "csp": filter_script_hash(),
        "filter_script": FILTER_SCRIPT,
        "badges": [Badge(s.value, n) for s, n in counts.items()],
        "headline": fleet_headline(report),
        "policy": fleet_policy_text(report),
        "totals": _totals_table(report),
        "fleet_findings": _fleet_findings_table(report),
        "timeline": grouped_timeline(report),
        "accounts": tuple(dict.fromkeys(s.partition.account for s in report.sections)),
        "sections": [
            {
                "id": f"partition-{s.partition.account}-{s.partition.region}",
                "heading": _heading(s),
                "error": s.error,
                "headline": None if s.report is None else headline(s.report),
                "decrypt_function": s.decrypt_function,
                "findings": None if s.report is None else findings_table(s.report),
                "instances": None if s.report is None else instances_table(s.report),
                "keys": None if s.report is None else keys_table(s.report),
                "evidence": None if s.report is None else evidence_context(s.report),
                "evidence_summary": None if s.report is None else _evidence_summary(s.report),
            }
            for s in report.sections
        ],
    }
