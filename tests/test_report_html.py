"""The HTML report comes from Jinja2 templates with autoescape: hostile text in every field that
reaches the page (tables, key details, the SVG timeline) arrives as text, never as markup."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rotator.domain.findings import Finding as DomainFinding
from rotator.domain.findings import FindingCode
from rotator.domain.history import RotationRun
from rotator.domain.lifecycle import KeyRecord, KeyState, Transition
from rotator.domain.state import InstanceState, LockState
from rotator.services import report_render, report_timeline
from rotator.services.report import KeyRow, Report, ReportOptions
from rotator.services.report_render import ReportFormat, render
from tests.conftest import NOW

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "rotator" / "templates"
DAY = timedelta(days=1)
# The tags a report may contain: anything else (script, img, ...) came from the data.
REPORT_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "span", "table",
    "thead", "tbody", "tr", "th", "td", "code", "details", "summary", "dl", "dt", "dd",
    "svg", "line", "text", "tspan", "rect",
}  # fmt: skip


def hostile(field: str) -> str:
    """Markup, both quotes, an entity, an ampersand and a CDATA end, named after its field."""
    return f'{field}<script>alert("{field}")</script>\'&amp;&]]><b>'


# Every text field of the report's data that the HTML shows.
F = {
    name: hostile(name)
    for name in (
        "prefix",
        "kms-default",
        "key",
        "key-unrecorded",
        "instance",
        "state",
        "key-kms",
        "flow",
        "subject",
        "source",
        "public-sha",
        "cert-sha",
        "actor",
        "reason",
        "managed-flow",
        "rotation-text",
        "lock",
        "association",
        "rotation-id",
        "run-actor",
        "run-reason",
        "run-step",
        "old-key",
        "message",
    )
}


def hostile_report() -> Report:
    record = KeyRecord(
        key_id=F["key"],
        instance_id=F["instance"],
        state=KeyState.ACTIVE,
        key_size=2048,
        public_key_sha256=F["public-sha"],
        certificate_sha256=F["cert-sha"],
        subject=F["subject"],
        not_before=NOW - 100 * DAY,
        not_after=NOW + 20 * DAY,
        created_at=NOW - 100 * DAY,
        source=F["source"],
        kms_key_id=F["key-kms"],
        history=(),
    )
    history = (Transition(KeyState.ACTIVE, NOW - 100 * DAY, F["actor"], F["reason"]),)
    keys = (
        KeyRow(
            key_id=F["key"],
            instance_id=F["instance"],
            state=KeyState.ACTIVE.value,
            current=True,
            associated=True,
            private_key_stored=True,
            kms_key_id=F["key-kms"],
            flows=(F["flow"],),
            record=record,
            days_to_expiry=20.0,
            age_days=100.0,
            cryptoperiod_ends=NOW + 265 * DAY,
            renew_at=NOW - 10 * DAY,
            history=history,
        ),
        KeyRow(
            key_id=F["key-unrecorded"],
            instance_id=F["instance"],
            state=F["state"],
            current=False,
            associated=True,
            private_key_stored=False,
            kms_key_id=None,
            flows=(),
            record=None,
        ),
    )
    run = RotationRun(
        rotation_id=F["rotation-id"],
        started_at=NOW - DAY,
        actor=F["run-actor"],
        reason=F["run-reason"],
        emergency=True,
        old_key_id=F["old-key"],
        new_key_id=F["key"],
        step=F["run-step"],
        updated_at=None,
    )
    instance = InstanceState(
        instance_id=F["instance"],
        current_key_id=F["key"],
        managed=(F["managed-flow"],),
        rotation=F["rotation-text"],
        rotation_interrupted=True,
        lock=LockState(F["lock"], None),
        associations=(F["association"], F["key"]),
        rotations=(run,),
    )
    finding = DomainFinding(FindingCode.FLOW_DRIFT, F["instance"], F["key"], F["message"])
    options = ReportOptions(kms_key_id=F["kms-default"])
    return Report(NOW, F["prefix"], options, (instance,), keys, (finding,))


class Page(HTMLParser):
    """The text of every element, by tag, and every start tag's attributes, entities decoded."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attributes: list[tuple[str, str | None]] = []
        self.texts: defaultdict[str, list[str]] = defaultdict(list)
        self.open: list[tuple[str, list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes += attrs
        if tag != "meta":  # the one void element the report writes without "/>"
            self.open.append((tag, []))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes += attrs

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            name, parts = self.open.pop()
            self.texts[name].append("".join(parts))
            if name == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, parts in self.open:
            parts.append(data)

    def text(self, tag: str) -> str:
        """Each element's text on a line of its own."""
        return "\n".join(self.texts[tag])

    @classmethod
    def of(cls, html: str) -> Page:
        page = cls()
        page.feed(html)
        page.close()
        assert not page.open, [name for name, _ in page.open]  # every element was closed
        return page


@pytest.fixture(scope="module")
def html() -> str:
    return render(hostile_report(), ReportFormat.HTML)


def test_hostile_text_is_never_markup(html: str) -> None:
    page = Page.of(html)
    assert page.tags <= REPORT_TAGS, page.tags - REPORT_TAGS
    assert "<script" not in html.lower() and "<b>" not in html
    assert "]]>" not in html  # CDATA is live inside inline SVG: its end must be escaped too
    assert "&amp;amp;" in html  # an entity in the data shows as typed, not as "&"
    # Every attribute is one the templates write, with a value they (or the key ID) chose.
    names = {name for name, _ in page.attributes}
    assert not {n for n in names if n.startswith("on")} and "src" not in names
    assert ("id", f"key-{F['key']}") in page.attributes


@pytest.mark.parametrize("field", sorted(F))
def test_every_field_reaches_the_page_as_text(html: str, field: str) -> None:
    value = F[field]
    page = Page.of(html)
    assert value in page.text("body"), field


def test_table_cells_carry_each_field_escaped(html: str) -> None:
    cells = Page.of(html).text("td")
    in_tables = set(F) - {"prefix", "kms-default", "subject", "source", "public-sha", "cert-sha"}
    for field in sorted(in_tables):
        assert F[field] in cells, field
    details = Page.of(html).text("dd")
    for field in ("subject", "source", "public-sha", "cert-sha", "key-kms", "flow", "instance"):
        assert F[field] in details, field
    headline = Page.of(html).text("p")
    assert F["prefix"] in headline and F["kms-default"] in headline


def test_the_svg_is_well_formed_and_carries_each_field_escaped(html: str) -> None:
    source = html[html.index("<svg") : html.index("</svg>") + len("</svg>")]
    svg = ET.fromstring(source)  # an XML parser: one unescaped "<" or "&" and this raises
    texts = "".join(svg.itertext())
    for field in ("key", "key-unrecorded", "instance", "state"):
        assert F[field] in texts, field
    titles = ["".join(t.itertext()) for t in svg.iter("title")]
    assert f"instance {F['instance']}" in titles
    assert any(t.startswith(f"{F['key']}: active, ") for t in titles)
    assert {element.tag for element in svg.iter()} <= REPORT_TAGS | {"title"}
    assert "no certificate dates known" in texts  # the unrecorded key has no bar


def test_markdown_and_html_show_the_same_rows() -> None:
    """The cells are shared data: both formats list the same keys and rotations."""
    report = hostile_report()
    markdown = render(report, ReportFormat.MD)
    page = Page.of(render(report, ReportFormat.HTML))
    for field in ("rotation-id", "old-key", "run-actor", "key-kms", "association"):
        assert F[field] in markdown and F[field] in page.text("td"), field
    assert f"`{F['key']}` (current)" in markdown
    assert f"{F['key']} (current)" in page.text("td")


def test_no_html_is_written_in_python() -> None:
    """The markup lives in rotator/templates; the modules only compute what goes where."""
    for module in (report_render, report_timeline):
        source = Path(str(module.__file__)).read_text(encoding="utf-8")
        assert "<td" not in source and "<tr" not in source, module.__name__
        assert not re.findall(r"<[a-zA-Z!/]", source), module.__name__
        assert "from html import" not in source and "escape(" not in source
        assert "Markup" not in source  # nothing bypasses autoescape


def test_the_templates_are_package_data() -> None:
    shipped = {p.relative_to(ROOT).as_posix() for p in TEMPLATES.rglob("*") if p.is_file()}
    assert f"rotator/templates/{report_render.HTML_TEMPLATE}" in shipped
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"templates/**/*"' in pyproject
    # Autoescape is on for every template, whatever its file name says.
    assert report_render._templates().autoescape is True


def test_jinja2_is_imported_only_to_render_html() -> None:
    code = (
        "import sys\n"
        "from rotator.services import report_render\n"
        "assert 'jinja2' not in sys.modules, 'imported eagerly'\n"
        "from tests.test_report_html import hostile_report\n"
        "report_render.render(hostile_report(), report_render.ReportFormat.JSON)\n"
        "assert 'jinja2' not in sys.modules, 'imported for JSON'\n"
        "report_render.render(hostile_report(), report_render.ReportFormat.HTML)\n"
        "assert 'jinja2' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
