"""The bench's result table: one row per metric, each held against its target."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Literal

COLUMNS = ("metric", "ours", "baseline", "ratio", "target", "status")


@dataclass(frozen=True)
class Target:
    """A bound on a row's ratio, or on its own value ("ours")."""

    applies_to: Literal["ratio", "ours"]
    comparison: Literal["<=", ">="]
    limit: float

    def met_by(self, value: float) -> bool:
        compare = operator.le if self.comparison == "<=" else operator.ge
        return compare(value, self.limit)


@dataclass(frozen=True)
class Row:
    """One metric: our figure, the baseline's (or the floor's), and their ratio."""

    metric: str
    ours: float
    baseline: float
    ratio: float | None
    target: Target | None
    ratio_suffix: str = ""

    def status(self) -> str:
        if self.target is None:
            return "-"
        value = self.ratio if self.target.applies_to == "ratio" else self.ours
        return "ok" if value is not None and self.target.met_by(value) else "MISS"

    def cells(self) -> tuple[str, ...]:
        ratio = "-" if self.ratio is None else f"{self.ratio:.3g}{self.ratio_suffix}"
        return (
            self.metric,
            f"{self.ours:.4g}",
            f"{self.baseline:.4g}",
            ratio,
            self._target_text(),
            self.status(),
        )

    def _target_text(self) -> str:
        if self.target is None:
            return "-"
        suffix = self.ratio_suffix if self.target.applies_to == "ratio" else ""
        return f"{self.target.applies_to} {self.target.comparison} {self.target.limit:g}{suffix}"


def format_table(rows: list[Row]) -> str:
    return markdown_table(COLUMNS, [row.cells() for row in rows])


def markdown_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table, columns padded so it also reads well in a terminal."""
    lines = [columns, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    rendered = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in lines
    ]
    rendered.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(rendered)
