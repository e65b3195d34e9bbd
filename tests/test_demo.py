"""`rotator demo` (what `make demo` runs) tells the whole story and exits 0."""

from __future__ import annotations

import io
import re

import pytest

from rotator.entrypoints.cli import main
from rotator.sandbox.demo import DEMO_CARD, SECOND_CARD

pytestmark = pytest.mark.wire  # the demo runs the sandbox and talks to it over HTTP


def test_demo_runs_the_story_and_shows_only_its_own_test_cards() -> None:
    out = io.StringIO()
    assert main(["demo"], out) == 0
    text = out.getvalue()
    for milestone in ("$ rotator init", "$ rotator rotate", "$ rotator retire", "$ rotator verify"):
        assert milestone in text
    assert "all invariants hold" in text
    assert "no contact was lost" in text
    assert text.count(f"'CardNumber': '{DEMO_CARD}'") == 3  # before, across, after rotation
    assert f"'CardNumber': '{SECOND_CARD}'" in text
    assert "'error': 'truncated'" in text
    assert "PRIVATE KEY" not in text
    # Card-length digit runs that are not part of a UUID (whose last group can be all digits).
    long_digit_runs = set(re.findall(r"(?<![\w-])\d{12,19}(?![\w-])", text))
    assert long_digit_runs <= {DEMO_CARD, SECOND_CARD}
