"""The report as JSON, CSV, Markdown or one self-contained HTML file (fingerprints, never keys)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from enum import StrEnum
from html import escape

from rotator.domain.findings import Finding, Severity
from rotator.domain.history import RotationRun
from rotator.domain.lifecycle import Transition
from rotator.services.report import KeyRow, Report
from rotator.services.report_timeline import timeline_svg

CSV_COLUMNS = (
    "instance_id",
    "key_id",
    "state",
    "current",
    "in_keyring",
    "associated",
    "private_key_stored",
    "key_size",
    "public_key_sha256",
    "certificate_sha256",
    "created_at",
    "not_before",
    "not_after",
    "days_to_expiry",
    "age_days",
    "cryptoperiod_days",
    "cryptoperiod_ends",
    "flows",
    "kms_key_id",
    "history",
    "findings",
)
ROTATION_COLUMNS = (
    "instance",
    "started",
    "rotation",
    "from key",
    "to key",
    "reason",
    "outcome",
    "by",
)
# Renders an optional identifier (key, instance, KMS key) for one output format.
IdFormatter = Callable[[str | None], str]
# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class ReportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"
    MD = "md"
    HTML = "html"

    @property
    def content_type(self) -> str:
        return {
            ReportFormat.JSON: "application/json",
            ReportFormat.CSV: "text/csv; charset=utf-8",
            ReportFormat.MD: "text/markdown; charset=utf-8",
            ReportFormat.HTML: "text/html; charset=utf-8",
        }[self]


def render(report: Report, fmt: ReportFormat) -> str:
    renderers = {
        ReportFormat.JSON: render_json,
        ReportFormat.CSV: render_csv,
        ReportFormat.MD: render_markdown,
        ReportFormat.HTML: render_html,
    }
    return renderers[fmt](report)


def render_json(report: Report) -> str:
    """Follows rotator/services/report.schema.json."""
    return json.dumps(report.to_dict(), indent=2) + "\n"


def render_csv(report: Report) -> str:
    """One row per key; `findings` lists those naming the key or its instance as a whole."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    cryptoperiod_days = report.options.policy.cryptoperiod.days
    for key in report.keys:
        data = key.to_dict()
        data["cryptoperiod_days"] = cryptoperiod_days
        age = _age(key)
        data["age_days"] = None if age is None else round(age, 1)
        data["flows"] = "; ".join(key.flows)
        data["history"] = "; ".join(_transition_text(t) for t in key.history)
        data["findings"] = "; ".join(_finding_tag(f) for f in report.findings_for(key))
        writer.writerow(_csv_cell(data[column]) for column in CSV_COLUMNS)
    return buffer.getvalue()


def render_markdown(report: Report) -> str:
    """Readable as plain text in a terminal and rendered in a pull request."""
    lines = [
        "# Amazon Connect key report",
        "",
        _headline(report),
        "",
        _policy_text(report),
        "",
        "## Findings",
        "",
    ]
    if report.findings:
        lines.append(
            _md_table(
                ("severity", "finding", "instance", "key", "detail", "runbook"),
                [
                    (
                        f.severity.value.upper(),
                        f.rule.title,
                        _md_code(f.instance_id),
                        _md_code(f.key_id),
                        f.message,
                        f.rule.runbook.path,
                    )
                    for f in report.findings
                ],
            )
        )
    else:
        lines.append("No findings.")
    lines += ["", "## Instances", ""]
    lines.append(
        _md_table(
            ("instance", "current key", "managed", "associated keys", "last rotation", "lock"),
            [
                (
                    _md_code(i.instance_id),
                    _md_code(i.current_key_id),
                    ", ".join(i.managed),
                    ", ".join(_md_code(a) for a in i.associations) or "-",
                    i.rotation,
                    "-" if i.lock is None else i.lock.description,
                )
                for i in report.instances
            ],
        )
    )
    lines += ["", "## Rotation history", ""]
    rotations = _rotation_rows(report, _md_code)
    lines.append(_md_table(ROTATION_COLUMNS, rotations) if rotations else "No rotation recorded.")
    lines += ["", "## Keys", ""]
    lines.append(
        _md_table(
            (
                "instance",
                "key",
                "state",
                "RSA",
                "not after",
                "days left",
                "age / cryptoperiod",
                "flows",
                "KMS key",
            ),
            [_key_cells(report, key, _md_code) for key in report.keys],
        )
    )
    lines += ["", "## Key details", ""]
    for key in report.keys:
        lines += [f"### `{key.key_id}`", ""]
        lines += [f"- {name}: {value}" for name, value in _key_facts(key)]
        if key.history:
            lines += ["", "History:", ""]
            lines.append(
                _md_table(
                    ("at", "state", "by", "reason"),
                    [(t.at.isoformat(), t.state.value, t.actor, t.reason) for t in key.history],
                )
            )
        lines.append("")
    return "\n".join(lines)


def render_html(report: Report) -> str:
    """One file: inline CSS and SVG, no script, no external resource; opens offline."""
    title = f"Amazon Connect key report {report.generated_at:%Y-%m-%d}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f"<p class='headline'>{_badges(report)} {escape(_headline(report))}</p>",
        f"<p class='meta'>{escape(_policy_text(report))}</p>",
        "<h2>Timeline</h2>",
        timeline_svg(report),
        "<h2>Findings</h2>",
        _html_table(
            ("severity", "finding", "instance", "key", "detail", "runbook"),
            [
                (
                    f"<span class='sev {f.severity.value}'>{f.severity.value}</span>",
                    escape(f.rule.title),
                    _html_code(f.instance_id),
                    _html_code(f.key_id),
                    escape(f.message),
                    _html_code(f.rule.runbook.path),
                )
                for f in report.findings
            ],
            empty="No findings.",
        ),
        "<h2>Instances</h2>",
        _html_table(
            ("instance", "current key", "managed", "associated keys", "last rotation", "lock"),
            [
                (
                    _html_code(i.instance_id),
                    _html_code(i.current_key_id),
                    escape(", ".join(i.managed)),
                    " ".join(_html_code(a) for a in i.associations) or "-",
                    escape(i.rotation),
                    escape("-" if i.lock is None else i.lock.description),
                )
                for i in report.instances
            ],
            empty="No managed instances.",
        ),
        "<h2>Rotation history</h2>",
        _html_table(
            ROTATION_COLUMNS,
            [
                tuple(
                    cell if index in (0, 2, 3, 4) else escape(cell)
                    for index, cell in enumerate(row)
                )
                for row in _rotation_rows(report, _html_code)
            ],
            empty="No rotation recorded.",
        ),
        "<h2>Keys</h2>",
        _html_table(
            (
                "instance",
                "key",
                "state",
                "RSA",
                "not after",
                "days left",
                "age / cryptoperiod",
                "flows",
                "KMS key",
            ),
            [
                tuple(
                    cell if index in (0, 1, 8) else escape(cell)
                    for index, cell in enumerate(_key_cells(report, key, _html_code))
                )
                for key in report.keys
            ],
            empty="No keys.",
        ),
        "<h2>Key details and history</h2>",
        *(_html_key_details(key) for key in report.keys),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def render_summary(report: Report, *, limit: int = 10) -> str:
    """A few lines for a notification: counts by severity and the most severe findings."""
    lines = [_headline(report)]
    if report.findings:
        lines.append("Top findings:")
        lines += [f"- {_finding_line(f)}" for f in report.findings[:limit]]
        if len(report.findings) > limit:
            lines.append(f"- ... and {len(report.findings) - limit} more in the report")
    return "\n".join(lines)


def _headline(report: Report) -> str:
    counts = report.counts()
    found = ", ".join(f"{counts[s]} {s.value}" for s in Severity)
    return (
        f"Keyring {report.prefix} at {report.generated_at.isoformat()}: "
        f"{len(report.instances)} managed instance(s), {len(report.keys)} key(s); "
        f"findings: {found}"
    )


def _policy_text(report: Report) -> str:
    options = report.options
    kms = options.kms_key_id or "SSM's default key (not checked)"
    return (
        f"Policy: renew {options.policy.renew_before.days} days before expiry, cryptoperiod "
        f"{options.policy.cryptoperiod.days} days, grace {options.grace.days} days, minimum "
        f"RSA-{options.min_key_size}, private keys under KMS key {kms}."
    )


def _finding_line(finding: Finding) -> str:
    where = "/".join(part for part in (finding.instance_id, finding.key_id) if part) or "keyring"
    return (
        f"{finding.severity.value.upper()} {finding.code.value} {where}: {finding.message} "
        f"(runbook {finding.rule.runbook.path})"
    )


def _finding_tag(finding: Finding) -> str:
    return f"{finding.severity.value} {finding.code.value} ({finding.rule.runbook.value})"


def _transition_text(transition: Transition) -> str:
    return (
        f"{transition.state.value} {transition.at.isoformat()} by {transition.actor}"
        f" ({transition.reason})"
    )


def _rotation_rows(report: Report, code: IdFormatter) -> list[tuple[str, ...]]:
    """Every rotation of every instance, from the history; identifier cells through `code`."""
    return [
        (
            code(instance.instance_id),
            run.started_at.isoformat(),
            code(run.rotation_id),
            code(run.old_key_id),
            code(run.new_key_id),
            run.reason + (" (emergency)" if run.emergency else ""),
            _rotation_progress(run),
            run.actor,
        )
        for instance in report.instances
        for run in instance.rotations
    ]


def _rotation_progress(run: RotationRun) -> str:
    if run.finished:
        return "done" if run.updated_at is None else f"done {run.updated_at.isoformat()}"
    return f"unfinished (last step: {run.step})"


def _key_cells(report: Report, key: KeyRow, code: IdFormatter) -> tuple[str, ...]:
    record = key.record
    cryptoperiod = report.options.policy.cryptoperiod.days
    age = _age(key)
    return (
        code(key.instance_id),
        code(key.key_id) + (" (current)" if key.current else ""),
        key.state,
        "-" if record is None else str(record.key_size),
        "-" if record is None or record.not_after is None else f"{record.not_after:%Y-%m-%d}",
        "-" if key.days_to_expiry is None else f"{key.days_to_expiry:.0f}",
        "-" if age is None else f"{age:.0f} / {cryptoperiod} days",
        ", ".join(key.flows) or "-",
        code(key.kms_key_id) if key.private_key_stored else "no private key",
    )


def _age(key: KeyRow) -> float | None:
    """Days since the cryptoperiod started, never negative: a certificate whose NotBefore is
    after the report's time (clock skew, a what-if date) is a key of age 0, not -8."""
    return None if key.age_days is None else max(0.0, key.age_days)


def _key_facts(key: KeyRow) -> list[tuple[str, str]]:
    record = key.record
    facts = [
        ("instance", key.instance_id or "-"),
        ("state", key.state + (", current" if key.current else "")),
        ("associated with Connect", "yes" if key.associated else "no"),
        ("private key stored", "yes" if key.private_key_stored else "no"),
        ("KMS key", key.kms_key_id or "-"),
        ("referenced by", ", ".join(key.flows) or "no managed flow"),
    ]
    if record is not None:
        facts += [
            ("RSA key size", str(record.key_size)),
            ("public key SHA-256", record.public_key_sha256),
            ("certificate SHA-256", record.certificate_sha256 or "-"),
            ("subject", record.subject or "-"),
            ("source", record.source),
            ("created", record.created_at.isoformat()),
            ("not before", "-" if record.not_before is None else record.not_before.isoformat()),
            ("not after", "-" if record.not_after is None else record.not_after.isoformat()),
        ]
    return facts


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return "'" + text if isinstance(value, str) and text.startswith(FORMULA_PREFIXES) else text


def _md_code(value: str | None) -> str:
    return "-" if not value else f"`{value}`"


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded so the table also reads well as plain text."""
    lines = [list(columns), *([_md_cell(c) for c in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    rendered = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    rendered.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(rendered)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _html_code(value: str | None) -> str:
    return "-" if not value else f"<code>{escape(value)}</code>"


def _html_table(columns: Sequence[str], rows: Sequence[Sequence[str]], *, empty: str) -> str:
    """Cells are HTML already (escaped by the caller)."""
    if not rows:
        return f"<p>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _html_key_details(key: KeyRow) -> str:
    facts = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in _key_facts(key))
    history = _html_table(
        ("at", "state", "by", "reason"),
        [
            (escape(t.at.isoformat()), escape(t.state.value), escape(t.actor), escape(t.reason))
            for t in key.history
        ],
        empty="No recorded history (the keyring does not know this key).",
    )
    return (
        f"<details id='key-{escape(key.key_id)}'><summary><code>{escape(key.key_id)}</code> "
        f"{escape(key.state)}</summary>\n<dl>{facts}</dl>\n{history}\n</details>"
    )


def _badges(report: Report) -> str:
    """One badge per severity; at zero it is grey: colour means there is something to do."""
    return " ".join(
        f"<span class='sev {s.value if n else 'zero'}'>{n} {s.value}</span>"
        for s, n in report.counts().items()
    )


CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d1d1f}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #d8d8d8;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}code{font:12px ui-monospace,Menlo,Consolas,monospace}
.sev{display:inline-block;padding:1px 7px;border-radius:9px;color:#fff;font-weight:600}
.sev.critical{background:#c62828}.sev.warning{background:#e08a00}.sev.info{background:#1e6fb8}
.sev.zero{background:#8a8a8a}
.meta{color:#555}dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px}
dt{color:#555}dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
details{margin:4px 0}summary{cursor:pointer}
svg.timeline{font:11px ui-monospace,Menlo,Consolas,monospace;background:#fff}
svg .state{fill:#666}svg .none{fill:#999;font-style:italic}svg .tick{fill:#555}
svg .today{fill:#d62728;font-weight:600}
"""
