"""The fleet report's timeline filter in headless Chromium, at 1,000 keys: its script runs under
the page's own Content Security Policy, and typing in the filter hides the groups that do not
match (and the account and region groups left empty); clearing it shows everything again."""

from __future__ import annotations

import base64
import hashlib
import html as html_module
import json
import re
from pathlib import Path
from typing import Any

import pytest

from rotator.domain.keys import KeyMaterial
from rotator.services.fleet_report_render import render_fleet
from rotator.services.report_render import ReportFormat
from tests.test_fleet_report import big_fleet
from tests.test_report_browser import run_chromium

pytestmark = pytest.mark.slow

WANTED = "prod-eu-west-2-inst-007"
# Appended to a copy of the page (and allowed by its hash, the policy otherwise kept): types
# into the filter as a reader would (value, then an input event), and reads what is shown.
PROBE = """(() => {
  const shown = (e) => e.checkVisibility();
  const groups = () => [...document.querySelectorAll("details.tl-instance")];
  const visible = (selector) => [...document.querySelectorAll(selector)].filter(shown)
    .map((e) => [e.dataset.account, e.dataset.region,
      e.querySelector(":scope > summary code")?.textContent ?? null]);
  const form = document.getElementById("timeline-filter");
  const type = (name, value) => {
    const field = form.elements.namedItem(name);
    field.value = value;
    field.dispatchEvent(new Event(name === "text" ? "input" : "change", {bubbles: true}));
  };
  const look = () => ({
    instances: visible("details.tl-instance"), regions: visible("details.tl-region"),
    accounts: visible("details.tl-account"),
    count: document.getElementById("timeline-count").textContent,
    hidden: groups().filter((g) => g.hidden).length,
  });
  const probe = {formShown: shown(form), before: look()};
  type("text", "WANTED_TEXT");
  probe.typed = look();
  probe.rows = [...document.querySelectorAll("details.tl-instance")].filter(shown)
    .flatMap((g) => [...g.querySelectorAll("svg text.label")].filter(shown)
      .map((t) => t.firstChild.data));
  type("text", "");
  type("account", "test");
  probe.account = look();
  type("account", "");
  type("state", "previous");
  probe.state = look();
  type("state", "");
  probe.cleared = look();
  const out = document.createElement("pre");
  out.id = "browser-probe";
  out.textContent = JSON.stringify(probe);
  document.body.append(out);
})();
""".replace("WANTED_TEXT", WANTED.upper())  # the filter ignores case
PROBE_OUT = re.compile(r'<pre id="browser-probe">(.*?)</pre>', re.S)


@pytest.fixture(scope="module")
def page(material_2048: KeyMaterial) -> str:
    """One render of the 1,000-key fleet for the module: Chromium only reads it."""
    return render_fleet(big_fleet(material_2048), ReportFormat.HTML)


def with_probe(source: str) -> str:
    digest = base64.b64encode(hashlib.sha256(PROBE.encode()).digest()).decode()
    policy = re.search(r"script-src ('sha256-[^']+')", source)
    assert policy is not None
    allowed = source.replace(policy.group(0), f"{policy.group(0)} 'sha256-{digest}'", 1)
    return allowed.replace("</body>", f"<script>{PROBE}</script></body>", 1)


def probe(source: str, folder: Path) -> dict[str, Any]:
    target = folder / "fleet.html"
    target.write_text(with_probe(source), encoding="utf-8")
    dom = run_chromium(target, folder / "profile", "--dump-dom")
    found = PROBE_OUT.search(dom)
    assert found, f"the probe wrote nothing; the DOM starts {dom[:500]!r}"
    result: dict[str, Any] = json.loads(html_module.unescape(found.group(1)))
    return result


def test_typing_in_the_filter_hides_the_groups_that_do_not_match(page: str, tmp_path: Path) -> None:
    shown = probe(page, tmp_path)
    assert shown["formShown"]  # the script ran under the page's policy and showed its form
    before = shown["before"]
    assert len(before["instances"]) == 500 and before["hidden"] == 0
    assert before["count"] == "500 of 500 instance groups shown"
    assert len(before["regions"]) == 7  # the unreadable region's group too

    typed = shown["typed"]
    assert typed["instances"] == [["prod", "eu-west-2", WANTED]]
    assert typed["hidden"] == 499 and typed["count"] == "1 of 500 instance groups shown"
    assert typed["regions"] == [["prod", "eu-west-2", None]]
    assert typed["accounts"] == [["prod", None, None]]
    # The group opened: its keys' timeline rows are on screen.
    assert sorted(shown["rows"]) == [f"{WANTED}-active", f"{WANTED}-previous"]

    account = shown["account"]
    assert {a for a, _, _ in account["instances"]} == {"test"}
    assert len(account["instances"]) == 166  # eu-west-2 and us-east-1; eu-central-1 unreadable
    assert [a for a, _, _ in account["accounts"]] == ["test"]
    assert len(shown["state"]["instances"]) == 500  # every instance has a previous key
    assert len(shown["cleared"]["instances"]) == 500 and shown["cleared"]["hidden"] == 0
    assert len(shown["cleared"]["regions"]) == 7


def test_without_the_policy_s_consent_no_script_runs(page: str, tmp_path: Path) -> None:
    """The check above can fail: a probe the policy does not allow never reports."""
    target = tmp_path / "blocked.html"
    target.write_text(page.replace("</body>", f"<script>{PROBE}</script></body>", 1))
    dom = run_chromium(target, tmp_path / "profile", "--dump-dom")
    assert PROBE_OUT.search(dom) is None
    assert '<form id="timeline-filter" class="filter">' in dom  # its own script did run
