"""CLI bench: start-up of `rotator --help`, `--version` and `runbook list` vs `python -c pass`."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from result_table import Row, Target, format_table, markdown_table

# The commands that need no AWS: each must start without the AWS SDK or the Encryption SDK.
COMMANDS = (("--help",), ("--version",), ("runbook", "list"))
# Loaded by a command that uses AWS; a command that does not must load none of them.
HEAVY = ("boto3", "botocore", "aws_encryption_sdk", "cryptography", "structlog")
FORBIDDEN = HEAVY[:3]
# What `rotator --help` may take on top of the interpreter's own start-up, in seconds: the
# parser and argparse, not an SDK (which cost about 0.35 s on the 2-core machine).
HELP_OVERHEAD_TARGET_S = 0.15
PROBE = """
import contextlib, io, json, sys
from rotator.entrypoints.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@dataclass(frozen=True)
class Plan:
    name: str
    runs: int


FULL_PLAN = Plan("full", runs=21)
QUICK_PLAN = Plan("quick", runs=3)


def rotator_command() -> list[str]:
    """The console script installed next to this interpreter (what a user runs), else main()."""
    script = Path(sys.executable).parent / "rotator"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from rotator.entrypoints.cli import main; main()"]


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def medians(plan: Plan) -> tuple[float, dict[tuple[str, ...], float]]:
    """The median wall time of each command and of `python -c pass`, over runs interleaved
    round-robin, so that a change in the machine's load hits every figure alike."""
    rotator = rotator_command()
    floor: list[float] = []
    times: dict[tuple[str, ...], list[float]] = {command: [] for command in COMMANDS}
    timed([sys.executable, "-c", "pass"])  # warm the file cache for both
    for command in COMMANDS:
        timed([*rotator, *command])
    for _ in range(plan.runs):
        floor.append(timed([sys.executable, "-c", "pass"]))
        for command in COMMANDS:
            times[command].append(timed([*rotator, *command]))
    return statistics.median(floor), {c: statistics.median(t) for c, t in times.items()}


def imported(command: tuple[str, ...]) -> list[str]:
    """Which of HEAVY the command imports, run in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *command],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def run(plan: Plan) -> tuple[list[Row], list[tuple[str, ...]]]:
    floor, figures = medians(plan)
    rows = []
    for command, seconds in figures.items():
        target = None
        if command == ("--help",):
            target = Target("ours", "<=", floor + HELP_OVERHEAD_TARGET_S)
        rows.append(
            Row(
                f"rotator {' '.join(command)} start-up s vs python -c pass",
                seconds,
                floor,
                seconds / floor,
                target,
                "x",
            )
        )
    budget = [(f"rotator {' '.join(c)}", ", ".join(imported(c)) or "none") for c in COMMANDS]
    return rows, budget


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_PLAN.runs} runs each (a smoke test)"
    )
    args = parser.parse_args(argv)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    print(
        f"CLI bench ({plan.name}): Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.machine()}; command: {' '.join(rotator_command())}"
    )
    print(
        f"measured: wall time of a new process, median of {plan.runs} runs interleaved with "
        f"`python -c pass` (the baseline); target: `rotator --help` within "
        f"{HELP_OVERHEAD_TARGET_S:g} s of the baseline, and no command here imports "
        f"{', '.join(FORBIDDEN)}"
    )
    print(flush=True)
    rows, budget = run(plan)
    print(format_table(rows))
    print()
    print(markdown_table(("command", f"imports of {', '.join(HEAVY)}"), budget))
    clean = all(not set(FORBIDDEN) & set(loaded.split(", ")) for _, loaded in budget)
    return 0 if clean and all(row.status() != "MISS" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
