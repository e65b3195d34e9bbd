"""The HTML report in a real browser: headless Chromium lays out `rotator report --format html`
over a seeded sandbox, every key ID and timeline label is shown, and its screenshot is a page."""

from __future__ import annotations

import html as html_module
import io
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lambda_decrypt import handler
from rotator.entrypoints.cli import main
from rotator.sandbox.server import Sandbox
from rotator.services import report_timeline
from rotator.services.report import Report
from tests.test_report import T, seed
from tests.world import KeyPool, build_world

# Chromium needs seconds to start, not a sandbox's worth of milliseconds: the slow tier.
pytestmark = pytest.mark.slow

WINDOW = (1400, 1000)
# As root in a container: no setuid sandbox, no GPU; scrollbars would paint over the screenshot.
FLAGS = (
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--hide-scrollbars",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--force-device-scale-factor=1",  # screenshot pixels are CSS pixels: the probe's rects apply
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)
TIMEOUT = 60

# Appended to a copy of the report (the report itself carries no script): after layout, what
# the browser shows. `innerText` leaves out text that is not rendered (display:none, hidden
# visibility, closed <details>); each SVG text and tspan is measured and styled by the browser.
PROBE = """
<script>
(() => {
  const shown = (e) => e.checkVisibility({opacityProperty: true, visibilityProperty: true});
  const box = (e) => { const r = e.getBoundingClientRect();
    return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; };
  const own = (e) => [...e.childNodes].filter((n) => n.nodeType === 3).map((n) => n.data).join("");
  const painted = (e) => {
    const s = getComputedStyle(e), r = e.getBoundingClientRect();
    return shown(e)
      && !["none", "transparent"].includes(s.fill) && !/^rgba\\(.*, 0\\)$/.test(s.fill)
      && parseFloat(s.fillOpacity) > 0
      && parseFloat(s.fontSize) > 0 && r.width > 0 && r.height > 0;
  };
  const svg = document.querySelector("svg.timeline");
  const labels = svg ? [...svg.querySelectorAll("text, tspan")].map((e) => ({
    text: own(e).trim(), cls: e.getAttribute("class") || "", painted: painted(e), box: box(e),
  })) : [];
  const headline = [...document.querySelectorAll("h1, p.headline")].map(box);
  const badges = [...document.querySelectorAll("p.headline .sev")].filter((e) => shown(e));
  const probe = {
    text: document.body.innerText, labels, svg: svg && svg.checkVisibility() ? box(svg) : null,
    headline, badges: badges.length,
  };
  const out = document.createElement("pre");
  out.id = "browser-probe";
  out.textContent = JSON.stringify(probe);
  document.body.append(out);
})();
</script>
"""
PROBE_OUT = re.compile(r'<pre id="browser-probe">(.*?)</pre>', re.S)


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "chromium is not installed: run `make browser` (as root it apt-installs it)"
    return path


def run_chromium(page: Path, profile: Path, *args: str) -> str:
    """One headless Chromium run on `page`, time-bound, with a profile of its own."""
    result = subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@dataclass(frozen=True)
class Label:
    text: str
    cls: str
    painted: bool
    box: dict[str, float]


@dataclass(frozen=True)
class Shown:
    """What the browser showed of a page, read back from the probe's output in the DOM."""

    dom: str  # the whole DOM after layout, as --dump-dom serialises it
    text: str  # the body's rendered text (innerText)
    labels: tuple[Label, ...]  # every SVG text and tspan of the timeline
    svg: dict[str, float] | None  # the timeline's box; None when it is not shown
    headline: tuple[dict[str, float], ...]
    badges: int

    def painted_labels(self) -> list[str]:
        return [label.text for label in self.labels if label.painted and self.inside_svg(label)]

    def inside_svg(self, label: Label) -> bool:
        """Drawn inside the timeline's box: not clipped away by its viewport."""
        svg, box = self.svg, label.box
        return svg is not None and (
            box["left"] >= svg["left"] - 0.5
            and box["right"] <= svg["right"] + 0.5
            and box["top"] >= svg["top"] - 0.5
            and box["bottom"] <= svg["bottom"] + 0.5
        )


def show(source: str, folder: Path, name: str) -> Shown:
    """Load a copy of `source` with the probe in Chromium and read back what it laid out."""
    folder.mkdir(parents=True, exist_ok=True)
    assert source.count("</body>") == 1
    page = folder / f"{name}.html"
    page.write_text(source.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = run_chromium(page, folder / f"{name}-profile", "--dump-dom")
    found = PROBE_OUT.search(dom)
    assert found, f"the probe wrote nothing; the DOM starts {dom[:500]!r}"
    probe: dict[str, Any] = json.loads(html_module.unescape(found.group(1)))
    return Shown(
        dom=dom,
        text=probe["text"],
        labels=tuple(Label(**label) for label in probe["labels"]),
        svg=probe["svg"],
        headline=tuple(probe["headline"]),
        badges=probe["badges"],
    )


def screenshot(source: str, folder: Path) -> bytes:
    """The report as Chromium paints it, the window's first screen, as PNG bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    page, shot = folder / "report.html", folder / "report.png"
    page.write_text(source, encoding="utf-8")
    run_chromium(page, folder / "profile", f"--screenshot={shot}")
    assert shot.is_file(), "Chromium wrote no screenshot"
    return shot.read_bytes()


@dataclass(frozen=True)
class Image:
    """An 8-bit RGB(A) PNG decoded with zlib: the pixels, row by row, without alpha."""

    width: int
    height: int
    rows: tuple[bytes, ...]  # each width * 3 bytes, RGB

    def colours(
        self, left: int = 0, top: int = 0, right: int = 0, bottom: int = 0
    ) -> Counter[bytes]:
        """Pixels by colour in a rectangle (the whole image by default)."""
        right, bottom = right or self.width, bottom or self.height
        counts: Counter[bytes] = Counter()
        for row in self.rows[top:bottom]:
            counts.update(row[i : i + 3] for i in range(left * 3, right * 3, 3))
        return counts

    @classmethod
    def decode(cls, data: bytes) -> Image:
        assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
        position, compressed, header = 8, bytearray(), None
        while position < len(data):
            length, kind = struct.unpack(">I4s", data[position : position + 8])
            body = data[position + 8 : position + 8 + length]
            position += 12 + length
            if kind == b"IHDR":
                header = struct.unpack(">IIBBBBB", body)
            elif kind == b"IDAT":
                compressed += body
        assert header is not None, "no IHDR"
        width, height, depth, colour_type, _, _, interlace = header
        assert depth == 8 and colour_type in (2, 6) and not interlace, header
        channels = 3 if colour_type == 2 else 4
        raw = zlib.decompress(bytes(compressed))
        stride = width * channels
        assert len(raw) == height * (stride + 1), "truncated image data"
        rows, previous = [], bytearray(stride)
        for y in range(height):
            start = y * (stride + 1)
            line = _unfilter(
                raw[start], bytearray(raw[start + 1 : start + 1 + stride]), previous, channels
            )
            rows.append(bytes(line) if channels == 3 else _rgb(line))
            previous = line
        return cls(width, height, tuple(rows))


def _unfilter(kind: int, line: bytearray, up: bytearray, bpp: int) -> bytearray:
    """Undo one PNG row filter (RFC 2083 section 6)."""
    if kind == 1:
        for i in range(bpp, len(line)):
            line[i] = (line[i] + line[i - bpp]) & 255
    elif kind == 2:
        line = bytearray((a + b) & 255 for a, b in zip(line, up, strict=True))
    elif kind == 3:
        for i in range(len(line)):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + up[i]) >> 1)) & 255
    elif kind == 4:
        for i in range(len(line)):
            a = line[i - bpp] if i >= bpp else 0
            b, c = up[i], up[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    else:
        assert kind == 0, f"unknown PNG filter {kind}"
    return line


def _rgb(rgba: bytearray) -> bytes:
    return bytes(byte for i, byte in enumerate(rgba) if i % 4 != 3)


@dataclass(frozen=True)
class Rendered:
    report: Report
    html: str

    @property
    def key_ids(self) -> list[str]:
        return [row.key_id for row in self.report.keys]

    def timeline_labels(self) -> list[str]:
        """Every text the timeline draws, from the data the template draws it from."""
        t = report_timeline.timeline(self.report)
        texts = [line.label for line in t.gridlines]
        for row in t.rows:
            texts += [row.key_id, row.state]
            if row.bar is None:
                texts.append("no certificate dates known")
        texts.append(t.today.title)
        texts += [entry.name for entry in t.legend]
        return [*texts, "cryptoperiod end"]


@pytest.fixture(scope="module")
def rendered(
    sandbox: Sandbox, key_pool: KeyPool, tmp_path_factory: pytest.TempPathFactory
) -> Rendered:
    """The seeded keyring (several instances, every finding) reported through the CLI, once for
    the module: the browser only reads the file, so the tests share it."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in os.environ:  # as tests/conftest.py's _isolated_env, which is per test
            if name.startswith(("KEYRING_", "ROTATOR_")):
                monkeypatch.delenv(name)
        for name, value in sandbox.environment().items():
            monkeypatch.setenv(name, value)
        seeded = seed(build_world(sandbox, key_pool, monkeypatch), key_pool)
        monkeypatch.setenv("ROTATOR_KMS_KEY_ID", seeded.kms_key)
        output = tmp_path_factory.mktemp("report") / "report.html"
        out = io.StringIO()
        argv = ["report", "--format", "html", "--output", str(output), "--now", T.isoformat()]
        try:
            assert main(argv, out) == 0, out.getvalue()
            return Rendered(seeded.report(), output.read_text(encoding="utf-8"))
        finally:
            handler.reset_container()


def test_every_key_id_and_timeline_label_is_shown(rendered: Rendered, tmp_path: Path) -> None:
    report = rendered.report
    assert len({row.instance_id for row in report.keys}) >= 5 and len(report.keys) >= 10
    assert len(report.findings) >= 10
    shown = show(rendered.html, tmp_path, "report")

    # Every key ID is rendered text of the page, and a painted label of the timeline.
    missing = [key for key in rendered.key_ids if key not in shown.text]
    assert not missing, missing
    assert shown.svg is not None, "the timeline is not shown"
    painted = shown.painted_labels()
    expected = rendered.timeline_labels()
    assert not [text for text in expected if text not in painted], (expected, painted)
    assert Counter(painted)[report.keys[0].key_id] == 1  # one row per key
    # A key's label ends before the chart begins: no bar is drawn over its ID.
    chart_left = shown.svg["left"] + report_timeline.LABEL_WIDTH
    for label in shown.labels:
        if label.cls == "state":
            assert label.box["right"] <= chart_left, label
    # The findings, headline and policy reach the screen too.
    assert "critical" in shown.text and "runbooks/" in shown.text
    assert shown.badges == 3
    for finding in report.findings:
        assert finding.message in shown.text, finding


def test_the_screenshot_is_a_page_not_a_blank(rendered: Rendered, tmp_path: Path) -> None:
    image = Image.decode(screenshot(rendered.html, tmp_path))
    assert (image.width, image.height) == WINDOW
    colours = image.colours()
    white = colours[b"\xff\xff\xff"]
    assert len(colours) >= 50, colours.most_common(10)  # text antialiasing, bars, badges
    assert image.width * image.height - white >= 20_000, f"only {white} of the pixels are not white"
    # The headline (title and severity badges) is drawn: many colours, the critical badge's red.
    shown = show(rendered.html, tmp_path / "probe", "report")
    top = int(min(box["top"] for box in shown.headline))
    bottom = int(max(box["bottom"] for box in shown.headline)) + 1
    left = int(min(box["left"] for box in shown.headline))
    right = min(int(max(box["right"] for box in shown.headline)) + 1, image.width)
    headline = image.colours(left, top, right, bottom)
    assert len(headline) >= 20 and headline.most_common(1)[0][1] < 0.97 * headline.total()
    assert headline[bytes.fromhex("c62828")] >= 100, "no critical badge in the headline"
    # The timeline's bars: the active key's green and the renew window's orange.
    assert colours[bytes.fromhex("2e8b57")] >= 200 and colours[bytes.fromhex("f0a030")] >= 100


# CSS injected into copies of the report: the text stays in the DOM, the browser hides it.
HIDE_EVERY_KEY = "<style>table, details, svg.timeline .label {visibility: hidden}</style>"
HIDE_TIMELINE = "<style>svg.timeline {display: none}</style>"
HIDE_ONE_LABEL = "<style>svg.timeline .label:not(.label ~ .label) {fill: transparent}</style>"


def hidden(source: str, style: str) -> str:
    return source.replace("</head>", style + "</head>", 1)


def test_the_check_sees_what_css_hides(rendered: Rendered, tmp_path: Path) -> None:
    """The checks above can fail: text in the DOM but hidden by CSS is not counted as shown."""
    keys = rendered.key_ids
    every_key = show(hidden(rendered.html, HIDE_EVERY_KEY), tmp_path, "every-key")
    assert all(key in every_key.dom for key in keys)  # the DOM alone would pass
    assert not [key for key in keys if key in every_key.text]
    assert not [key for key in keys if key in every_key.painted_labels()]

    timeline = show(hidden(rendered.html, HIDE_TIMELINE), tmp_path, "timeline")
    assert timeline.svg is None and not timeline.painted_labels()
    assert all(key in timeline.text for key in keys)  # the tables still show every key

    one = show(hidden(rendered.html, HIDE_ONE_LABEL), tmp_path, "one-label")
    first = rendered.report.keys[0].key_id
    assert first not in one.painted_labels()
    assert all(key in one.painted_labels() for key in keys if key != first)
