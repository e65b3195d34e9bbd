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
from rotator.services.fleet_timeline import grouped_timeline
from rotator.services.report_render import (
    CSV_COLUMNS,
    KEY_COLUMNS,
    Badge,
    Cell,
    ReportFormat,
    Table,
    _templates,
    csv_cell,
    csv_columns,
    csv_values,
    finding_tag,
    findings_table,
    headline,
    instances_table,
    key_cells,
    keys_table,
    md_findings,
    md_instances,
    md_row,
    md_table,
)

FLEET_TEMPLATE = "report/fleet.html.j2"
FILTER_SCRIPT = "report/fleet_filter.js"
PARTITION_COLUMNS = ("account", "region")
FLEET_FINDING_COLUMNS = ("severity", "finding", "where", "detail", "runbook")
TOTAL_COLUMNS = ("account regions", "unreadable", "instances", "keys", *KEY_STATES)


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
        for key in section.report.keys:
            fleet = [
                finding_tag(f.finding) for f in report.findings_for(section.partition, key.key_id)
            ]
            values = csv_values(section.report, key, key_columns, more_findings=fleet)
            writer.writerow(csv_cell(value) for value in where + values)
    return buffer.getvalue()


def render_fleet_markdown(report: FleetReport) -> str:
    lines = [
        "# Amazon Connect fleet key report",
        "",
        fleet_headline(report),
        "",
        fleet_policy_text(report),
        "",
        "## Fleet totals",
        "",
        md_table(TOTAL_COLUMNS, [_total_values(report)]),
        "",
        "## Fleet findings",
        "",
    ]
    rows = [md_row(cells) for cells in _fleet_finding_rows(report)]
    lines.append(md_table(FLEET_FINDING_COLUMNS, rows) if rows else "No findings across accounts.")
    for section in report.sections:
        lines += ["", f"## {_heading(section)}", ""]
        if section.report is None:
            lines.append(f"Could not be read: {section.error}")
            continue
        sub = section.report
        lines += [headline(sub), "", "### Findings", "", md_findings(sub)]
        lines += ["", "### Instances", "", md_instances(sub), "", "### Keys", ""]
        lines.append(md_table(KEY_COLUMNS, [md_row(key_cells(sub, key)) for key in sub.keys]))
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


def _fleet_findings_of(report: FleetReport, section: PartitionSection) -> list[FleetFinding]:
    return [f for f in report.findings if section.partition in f.partitions]


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
        "totals": Table(
            TOTAL_COLUMNS, (tuple(Cell(v) for v in _total_values(report)),), "No account."
        ),
        "fleet_findings": Table(
            FLEET_FINDING_COLUMNS,
            tuple(_fleet_finding_rows(report)),
            empty="No findings across accounts.",
        ),
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
            }
            for s in report.sections
        ],
    }
