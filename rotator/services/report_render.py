"""The report as JSON, CSV, Markdown or one self-contained HTML file (fingerprints, never keys)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any

from rotator.domain.approval import Request
from rotator.domain.crypto_architecture import KEY_USE
from rotator.domain.custodians import Custodian
from rotator.domain.findings import Finding, Severity
from rotator.domain.history import RotationRun
from rotator.domain.lifecycle import Transition
from rotator.services.report import KeyRow, Report
from rotator.services.report_timeline import Mark, Row, timeline

if TYPE_CHECKING:
    from jinja2 import Environment

# The cryptographic architecture's facts that are per key (3.6.1.1): its security strength,
# where its private key is stored, and the KMS key protecting that, as DescribeKey showed it.
ARCHITECTURE_CSV_COLUMNS = (
    "strength_bits",
    "private_key_stored_at",
    "kms_key_arn",
    "kms_key_spec",
    "kms_key_strength_bits",
)
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
    *ARCHITECTURE_CSV_COLUMNS,
)
# Only when a rotation window or freeze is configured: what it does with each due key.
WINDOW_COLUMNS = ("rotation_window", "waits_until")
# Only when stores of Connect ciphertexts are registered: each key's at the last inventory.
STORED_COLUMNS = ("stored_ciphertexts", "inventoried_at")
STORED_TABLE_COLUMNS = ("instance", "key", "state", "stored ciphertexts", "inventoried at")
FINDING_COLUMNS = ("severity", "finding", "instance", "key", "detail", "runbook")
INSTANCE_COLUMNS = (
    "instance",
    "current key",
    "managed",
    "associated keys",
    "last rotation",
    "lock",
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
KEY_COLUMNS = (
    "instance",
    "key",
    "state",
    "RSA",
    "not after",
    "days left",
    "age / cryptoperiod",
    "flows",
    "KMS key",
)
HISTORY_COLUMNS = ("at", "state", "by", "reason")
REFUSAL_COLUMNS = ("request", "refused at", "principal", "why")
DUAL_CONTROL_COLUMNS = (
    "request",
    "command",
    "reason",
    "requested by",
    "requested at",
    "approved by",
    "approved at",
    "outcome",
)
CUSTODIAN_COLUMNS = (
    "principal",
    "key operations",
    "last operation",
    "acknowledged",
    "text SHA-256",
    "status",
)
ALGORITHM_COLUMNS = ("role", "algorithm", "security strength")
ARCHITECTURE_KEY_COLUMNS = (
    "key",
    "instance",
    "state",
    "algorithm",
    "strength",
    "not after",
    "private key stored at",
    "KMS key",
)
KEK_COLUMNS = ("KMS key", "ARN", "aliases", "key spec", "strength", "protects")
TIMELINE_COLUMNS = ("instance", "key", "certificate", "renew window", "cryptoperiod end")
# What the timeline says of a key whose certificate dates are unknown (timeline.svg.j2 too).
NO_DATES = "no certificate dates known"
# The HTML report's templates, under rotator/templates/ (package data).
TEMPLATE_PACKAGE = "rotator"
TEMPLATE_DIRECTORY = "templates"
HTML_TEMPLATE = "report/page.html.j2"
# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Cell:
    """One table cell as data: identifiers (shown as code), then text. Each renderer marks it
    up its own way, so what is escaped never depends on where a cell sits in a row."""

    text: str = ""
    codes: tuple[str, ...] = ()
    badge: str | None = None  # a severity: the cell is that severity's badge

    @classmethod
    def code(cls, value: str | None, text: str = "") -> Cell:
        """An optional identifier (key, instance, KMS key, path); "-" when there is none."""
        return cls(text="-" + text) if not value else cls(text=text, codes=(value,))


@dataclass(frozen=True)
class Table:
    """A table for the HTML template; `empty` is said instead when there are no rows."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    empty: str


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
    columns = csv_columns(report)
    writer.writerow(columns)
    architecture = key_architecture(report)
    for key in report.keys:
        values = csv_values(report, key, columns, architecture=architecture)
        writer.writerow(csv_cell(value) for value in values)
    return buffer.getvalue()


def csv_columns(report: Report) -> tuple[str, ...]:
    """The CSV's columns: the window's and the stores' only when configured."""
    columns = CSV_COLUMNS + (WINDOW_COLUMNS if report.options.schedule is not None else ())
    return columns + (STORED_COLUMNS if report.options.stores else ())


def key_architecture(report: Report) -> dict[str, dict[str, object]]:
    """Key ID -> its ARCHITECTURE_CSV_COLUMNS, from the report's cryptographic architecture
    (a key the keyring does not hold has none)."""
    kek_of = {key_id: kek for kek in report.crypto.keks for key_id in kek.protects}
    found: dict[str, dict[str, object]] = {}
    for key in report.crypto.keys:
        kek = kek_of.get(key.key_id)
        described = None if kek is None else kek.description
        found[key.key_id] = {
            "strength_bits": key.strength_bits,
            "private_key_stored_at": key.stored_at,
            "kms_key_arn": None if described is None else described.arn,
            "kms_key_spec": None if described is None else described.key_spec,
            "kms_key_strength_bits": None if kek is None else kek.strength_bits,
        }
    return found


def csv_values(
    report: Report,
    key: KeyRow,
    columns: Sequence[str],
    *,
    architecture: Mapping[str, Mapping[str, object]],
    more_findings: Sequence[str] = (),
) -> list[object]:
    """One key's CSV values in `columns` (`architecture`: the report's `key_architecture`;
    `more_findings`: tags of findings from outside its keyring, the fleet's)."""
    data = key.to_dict() | dict(architecture.get(key.key_id, {}))
    data["cryptoperiod_days"] = report.options.policy.cryptoperiod.days
    age = _age(key)
    data["age_days"] = None if age is None else round(age, 1)
    data["flows"] = "; ".join(key.flows)
    data["history"] = "; ".join(_transition_text(t) for t in key.history)
    tags = [finding_tag(f) for f in report.findings_for(key)] + list(more_findings)
    data["findings"] = "; ".join(tags)
    data["stored_ciphertexts"] = key.stored_ciphertexts
    inventoried = key.inventoried_at
    data["inventoried_at"] = None if inventoried is None else inventoried.isoformat()
    return [data.get(column) for column in columns]


def render_markdown(report: Report) -> str:
    """Readable as plain text in a terminal and rendered in a pull request. Every section of
    the HTML page, in its order, from the same tables: what an auditor reads does not depend
    on the format handed over (the timeline's picture becomes a table of what it draws)."""
    graph = timeline(report)
    lines = ["# Amazon Connect key report", "", headline(report), "", policy_text(report)]
    lines += md_section("Timeline", timeline_text(graph.today), timeline_table(graph.rows))
    lines += md_section("Findings", findings_table(report))
    lines += md_section("Instances", instances_table(report))
    lines += md_section("Rotation history", rotations_table(report))
    lines += md_accountability(report)
    lines += md_section("Keys", keys_table(report))
    lines += md_architecture(report)
    lines += ["", "## Key details and history"]
    for key in report.keys:
        lines += ["", f"### `{key.key_id}`", ""]
        lines += [f"- {name}: {value}" for name, value in _key_facts(key)]
        lines += ["", md_block(history_table(key))]
    return "\n".join(lines) + "\n"


def md_accountability(report: Report, *, level: int = 2) -> list[str]:
    """Dual control (3.7.6: requests, refusals) and key custodians (3.7.8) as Markdown
    sections at `level`: the keyring report's, and each account region's of the fleet's."""
    lines = md_section("Dual control requests", dual_control_table(report), level=level)
    lines += md_section(
        "Dual control: refused approvals and withdrawals", refusals_table(report), level=level
    )
    return lines + md_section(
        "Key custodians", _custodian_text(report), custodians_table(report), level=level
    )


def md_architecture(report: Report, *, level: int = 2) -> list[str]:
    """The cryptographic architecture (3.6.1.1), the copy inventory (3.6.1.4) and, when stores
    are registered, the stored ciphertexts, as Markdown sections at `level`."""
    crypto = _crypto_context(report)
    lines = md_section(
        "Cryptographic architecture", crypto["intro"], crypto["algorithm_table"], level=level
    )
    lines += md_section(
        "Cryptographic architecture: keys, their strength, use, expiry and store",
        crypto["use"],
        crypto["key_table"],
        level=level,
    )
    lines += md_section(
        "Cryptographic architecture: key-encrypting keys (KMS)", crypto["kek_table"], level=level
    )
    lines += md_section(
        "Copy inventory: the decrypt function's environment",
        crypto["decrypt_function"],
        level=level,
    )
    stored = _stored_table(report)
    if stored is not None:
        lines += md_section("Stored ciphertexts", _stores_text(report), stored, level=level)
    return lines


def md_section(heading: str, *parts: str | Table, level: int = 2) -> list[str]:
    """A heading, then each part (a paragraph, or a table: its rows or its `empty` text)."""
    lines = ["", "#" * level + " " + heading]
    for part in parts:
        lines += ["", part if isinstance(part, str) else md_block(part)]
    return lines


def md_block(table: Table) -> str:
    return md_table(table.columns, [md_row(r) for r in table.rows]) if table.rows else table.empty


def render_html(report: Report) -> str:
    """One file: inline CSS and SVG, no script, no external resource; opens offline. The
    templates mark up; this module only says what goes where, as plain text."""
    return _templates().get_template(HTML_TEMPLATE).render(**_html_context(report))


@cache
def _templates() -> Environment:
    """Jinja2 is imported on the first HTML report only: the CLI starts without it."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    # Every template is HTML or SVG: escape everything, whatever a template is called.
    return Environment(
        loader=PackageLoader(TEMPLATE_PACKAGE, TEMPLATE_DIRECTORY),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _html_context(report: Report) -> dict[str, Any]:
    return {
        "title": f"Amazon Connect key report {report.generated_at:%Y-%m-%d}",
        "badges": _badges(report),
        "headline": headline(report),
        "policy": policy_text(report),
        "timeline": timeline(report),
        "findings": findings_table(report),
        "instances": instances_table(report),
        "rotations": rotations_table(report),
        "keys": keys_table(report),
        **evidence_context(report),
        "details": [
            {"key": key, "facts": _key_facts(key), "history": history_table(key)}
            for key in report.keys
        ],
    }


def evidence_context(report: Report) -> dict[str, Any]:
    """What the evidence partials (dual_control, custodians, crypto_architecture,
    stored_ciphertexts .html.j2) render: the keyring page's, and each fleet section's."""
    return {
        "dual_control": dual_control_table(report),
        "refusals": refusals_table(report),
        "custodians": {"text": _custodian_text(report), "table": custodians_table(report)},
        "crypto": _crypto_context(report),
        "stored": _stored_table(report),
        "stores_text": _stores_text(report),
    }


def rotations_table(report: Report) -> Table:
    return Table(ROTATION_COLUMNS, tuple(_rotation_rows(report)), empty="No rotation recorded.")


def dual_control_table(report: Report) -> Table:
    return Table(
        DUAL_CONTROL_COLUMNS,
        tuple(_request_cells(report, request) for request in report.requests),
        empty="No dual-control request in the period.",
    )


def refusals_table(report: Report) -> Table:
    """Each approval or withdrawal of the period's requests that was refused: who tried, when,
    and why not (a requester approving their own request, a stranger withdrawing one)."""
    return Table(
        REFUSAL_COLUMNS,
        tuple(
            (
                Cell.code(request.request_id),
                Cell(refusal.at.isoformat(timespec="seconds")),
                Cell.code(refusal.principal),
                Cell(refusal.why),
            )
            for request in report.requests
            for refusal in request.refusals
        ),
        empty="No approval or withdrawal was refused in the period.",
    )


def custodians_table(report: Report) -> Table:
    return Table(
        CUSTODIAN_COLUMNS,
        tuple(_custodian_cells(c) for c in report.custodians),
        empty=NO_CUSTODIANS,
    )


def history_table(key: KeyRow) -> Table:
    return Table(
        HISTORY_COLUMNS,
        tuple(
            (Cell(t.at.isoformat()), Cell(t.state.value), Cell(t.actor), Cell(t.reason))
            for t in key.history
        ),
        empty="No recorded history (the keyring does not know this key).",
    )


def timeline_table(rows: Sequence[Row]) -> Table:
    """What the timeline draws for each key, as the texts the picture shows on hover."""
    return Table(
        TIMELINE_COLUMNS,
        tuple(
            (
                Cell.code(row.instance),
                Cell.code(row.key_id),
                Cell(NO_DATES if row.bar is None else row.bar.title),
                Cell("-" if row.renew is None else row.renew.title),
                Cell("-" if row.cryptoperiod_end is None else row.cryptoperiod_end.title),
            )
            for row in rows
        ),
        empty="No keys.",
    )


def timeline_text(today: Mark) -> str:
    return f"Each key's certificate validity, renew window and cryptoperiod end; {today.title}."


def findings_table(report: Report) -> Table:
    return Table(
        FINDING_COLUMNS,
        tuple(
            (
                Cell(f.severity.value, badge=f.severity.value),
                Cell(f.rule.title),
                Cell.code(f.instance_id),
                Cell.code(f.key_id),
                Cell(f.message),
                Cell.code(f.rule.runbook.path),
            )
            for f in report.findings
        ),
        empty="No findings.",
    )


def instances_table(report: Report) -> Table:
    return Table(
        INSTANCE_COLUMNS,
        tuple(
            (
                Cell.code(i.instance_id),
                Cell.code(i.current_key_id),
                Cell(", ".join(i.managed)),
                Cell(codes=i.associations) if i.associations else Cell("-"),
                Cell(i.rotation),
                Cell("-" if i.lock is None else i.lock.description),
            )
            for i in report.instances
        ),
        empty="No managed instances.",
    )


def keys_table(report: Report) -> Table:
    return Table(KEY_COLUMNS, tuple(key_cells(report, key) for key in report.keys), "No keys.")


def _request_cells(report: Report, request: Request) -> tuple[Cell, ...]:
    """A dual-control request: who asked, who approved, and how it ended (status; exit code)."""
    outcome = request.status(report.generated_at).value
    if request.exit_code is not None:
        outcome += f" (exit code {request.exit_code})"
    if request.refusals:
        outcome += f"; {len(request.refusals)} refused approval(s)"
    return (
        Cell.code(request.request_id),
        Cell.code(request.command),
        Cell(request.reason),
        Cell.code(request.requester),
        Cell(request.requested_at.isoformat(timespec="seconds")),
        Cell.code(request.approver),
        Cell("-" if request.approved_at is None else request.approved_at.isoformat("T", "seconds")),
        Cell(outcome),
    )


def _crypto_context(report: Report) -> dict[str, Any]:
    """The cryptographic-architecture section's tables (the partial crypto_architecture)."""
    crypto = report.crypto
    section = crypto.to_dict()
    return {
        "intro": (
            f"Private keys: {section['private_key_store']}. "
            f"Strengths: {section['strength_source']}."
        ),
        "algorithm_table": Table(
            ALGORITHM_COLUMNS,
            tuple(
                (
                    Cell(a.role),
                    Cell(a.algorithm),
                    Cell("the key's" if a.strength_bits is None else f"{a.strength_bits} bits"),
                )
                for a in crypto.algorithms
            ),
            empty="No algorithms.",
        ),
        "key_table": Table(
            ARCHITECTURE_KEY_COLUMNS,
            tuple(
                (
                    Cell.code(k.key_id),
                    Cell.code(k.instance_id),
                    Cell(k.state),
                    Cell(f"RSA-{k.key_size}"),
                    Cell(f"{k.strength_bits} bits"),
                    Cell("-" if k.not_after is None else k.not_after.isoformat()),
                    Cell.code(k.stored_at) if k.stored_at else Cell("no private key stored"),
                    Cell.code(k.kms_key),
                )
                for k in crypto.keys
            ),
            empty="No keys.",
        ),
        "kek_table": Table(
            KEK_COLUMNS,
            tuple(
                (
                    Cell.code(
                        None if k.description is None else k.description.key_id,
                        "" if k.unreadable is None else f" not described: {k.unreadable}",
                    ),
                    Cell.code(None if k.description is None else k.description.arn),
                    Cell(codes=k.aliases) if k.aliases else Cell("-"),
                    Cell("-" if k.description is None else k.description.key_spec),
                    Cell("unknown" if k.strength_bits is None else f"{k.strength_bits} bits"),
                    Cell(codes=k.protects) if k.protects else Cell("-"),
                )
                for k in crypto.keks
            ),
            empty="No KMS key protects a stored private key (or none was described).",
        ),
        "use": f"Each key's use: {KEY_USE}.",
        "decrypt_function": section["decrypt_function"]["status"],
    }


def _stored_table(report: Report) -> Table | None:
    """Each key's stored ciphertexts in the registered stores at the last inventory (from the
    history); None when no store is registered."""
    if not report.options.stores:
        return None
    return Table(
        STORED_TABLE_COLUMNS,
        tuple(
            (
                Cell.code(key.instance_id),
                Cell.code(key.key_id),
                Cell(key.state),
                Cell(
                    "not inventoried"
                    if key.stored_ciphertexts is None
                    else str(key.stored_ciphertexts)
                ),
                Cell("-" if key.inventoried_at is None else key.inventoried_at.isoformat()),
            )
            for key in report.keys
        ),
        empty="No keys.",
    )


def _stores_text(report: Report) -> str:
    stores = ", ".join(report.options.stores)
    return (
        f"Registered stores: {stores or 'none'}. Counts come from the newest inventory of exactly "
        "these stores in the history (rotator inventory, rewrap, destroy's check); headers "
        "only, nothing decrypted."
    )


def render_summary(report: Report, *, limit: int = 10) -> str:
    """A few lines for a notification: counts by severity and the most severe findings."""
    lines = [headline(report)]
    if report.findings:
        lines.append("Top findings:")
        lines += [f"- {_finding_line(f)}" for f in report.findings[:limit]]
        if len(report.findings) > limit:
            lines.append(f"- ... and {len(report.findings) - limit} more in the report")
    return "\n".join(lines)


def headline(report: Report) -> str:
    counts = report.counts()
    found = ", ".join(f"{counts[s]} {s.value}" for s in Severity)
    return (
        f"Keyring {report.prefix} at {report.generated_at.isoformat()}: "
        f"{len(report.instances)} managed instance(s), {len(report.keys)} key(s); "
        f"findings: {found}"
    )


def policy_text(report: Report) -> str:
    options = report.options
    kms = options.kms_key_id or "SSM's default key (not checked)"
    text = (
        f"Policy: renew {options.policy.renew_before.days} days before expiry, cryptoperiod "
        f"{options.policy.cryptoperiod.days} days, grace {options.grace.days} days, minimum "
        f"RSA-{options.min_key_size}, private keys under KMS key {kms}."
    )
    window = report.window
    if window is not None:
        text += (
            f" Due rotations: {window.describe()}; a due key within "
            f"{window.schedule.minimum.days} days of expiry does not wait."
        )
    return text


def _finding_line(finding: Finding) -> str:
    where = "/".join(part for part in (finding.instance_id, finding.key_id) if part) or "keyring"
    return (
        f"{finding.severity.value.upper()} {finding.code.value} {where}: {finding.message} "
        f"(runbook {finding.rule.runbook.path})"
    )


def finding_tag(finding: Finding) -> str:
    return f"{finding.severity.value} {finding.code.value} ({finding.rule.runbook.value})"


def _transition_text(transition: Transition) -> str:
    return (
        f"{transition.state.value} {transition.at.isoformat()} by {transition.actor}"
        f" ({transition.reason})"
    )


def _rotation_rows(report: Report) -> list[tuple[Cell, ...]]:
    """Every rotation of every instance, from the history."""
    return [
        (
            Cell.code(instance.instance_id),
            Cell(run.started_at.isoformat()),
            Cell.code(run.rotation_id),
            Cell.code(run.old_key_id),
            Cell.code(run.new_key_id),
            Cell(run.reason + (" (emergency)" if run.emergency else "")),
            Cell(_rotation_progress(run)),
            Cell(run.actor),
        )
        for instance in report.instances
        for run in instance.rotations
    ]


def _rotation_progress(run: RotationRun) -> str:
    if run.finished:
        return "done" if run.updated_at is None else f"done {run.updated_at.isoformat()}"
    return f"unfinished (last step: {run.step})"


def key_cells(report: Report, key: KeyRow) -> tuple[Cell, ...]:
    record = key.record
    cryptoperiod = report.options.policy.cryptoperiod.days
    age = _age(key)
    return (
        Cell.code(key.instance_id),
        Cell.code(key.key_id, " (current)" if key.current else ""),
        Cell(key.state),
        Cell("-" if record is None else str(record.key_size)),
        Cell("-" if record is None or record.not_after is None else f"{record.not_after:%Y-%m-%d}"),
        Cell("-" if key.days_to_expiry is None else f"{key.days_to_expiry:.0f}"),
        Cell("-" if age is None else f"{age:.0f} / {cryptoperiod} days"),
        Cell(", ".join(key.flows) or "-"),
        Cell.code(key.kms_key_id) if key.private_key_stored else Cell("no private key"),
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
    if key.rotation_window is not None:
        facts.append(("rotation window", key.rotation_window))
    return facts


def csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return "'" + text if isinstance(value, str) and text.startswith(FORMULA_PREFIXES) else text


def md_code(value: str | None) -> str:
    return "-" if not value else f"`{value}`"


def md_row(cells: Sequence[Cell]) -> tuple[str, ...]:
    """A severity badge in capitals (plain text has no colour); identifiers as code."""
    return tuple(
        cell.text.upper() if cell.badge else ", ".join(md_code(c) for c in cell.codes) + cell.text
        for cell in cells
    )


def md_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
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


@dataclass(frozen=True)
class Badge:
    """A severity's count in the headline; at zero it is grey: colour means there is
    something to do."""

    severity: str
    count: int

    @property
    def css(self) -> str:
        return self.severity if self.count else "zero"


def _badges(report: Report) -> list[Badge]:
    return [Badge(s.value, n) for s, n in report.counts().items()]


# -- key custodians (PCI DSS 3.7.8) ------------------------------------------------------------

NO_CUSTODIANS = "No principal recorded a key operation in the 12 months to the report's time."


def _custodian_text(report: Report) -> str:
    sha256 = report.options.custodian_text_sha256
    shipped = "not found where the report ran" if sha256 is None else f"SHA-256 {sha256}"
    return (
        "Every AWS principal that ran a key operation in the 12 months to the report's time, "
        "and its latest acknowledgement of the key-custodian responsibilities "
        f"(`rotator custodian acknowledge`; the shipped text: {shipped})."
    )


def _custodian_cells(custodian: Custodian) -> tuple[Cell, ...]:
    acknowledged = custodian.acknowledged_at
    if custodian.automation:
        status = "scheduled job's role"
    elif custodian.unacknowledged:
        status = "UNACKNOWLEDGED"
    elif custodian.current_text is False:
        status = "acknowledged an earlier text"
    else:
        status = "acknowledged"
    return (
        Cell.code(custodian.principal),
        Cell(str(custodian.operations)),
        Cell(custodian.last_operation.isoformat() if custodian.last_operation else "-"),
        Cell(acknowledged.isoformat() if acknowledged else "never"),
        Cell.code(custodian.text_sha256),
        Cell(status),
    )
