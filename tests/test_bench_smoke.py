"""Both benches run end to end in quick mode and report every metric with figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.wire  # the benches run as child processes
ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "decrypt_bench.py"
METRICS = (
    "warm decrypt median ms, handler vs floor",
    "warm decrypt p99 ms, handler vs floor",
    "cold start median ms, ours vs blog",
    "warm invocation median ms, ours vs blog (speed-up)",
    "SSM calls per warm invocation, ours vs blog",
)
SSM_CALLS_METRIC = METRICS[-1]
BLOG_SSM_CALLS_PER_INVOCATION = 2.0
ROTATION_BENCH = ROOT / "bench" / "rotation_bench.py"
ROTATION_METRICS = (
    "rotation wall ms (median) vs key generation",
    "rotation: key generation inside it, ms",
    "rotation: time in AWS calls, ms",
    "rotation: other local work, ms",
    "RSA key load with full checks, ms",
    "AWS calls per rotation",
    "SSM calls per rotation",
    "Connect calls per rotation",
    "loopback AWS call ms (median)",
    "fleet: init wall s",
    "fleet: rotate run wall s vs N x single rotation",
    "fleet: wall ms per instance vs its key generation",
    "fleet: key generation s",
    "fleet: time in AWS calls s",
    "fleet: AWS calls",
    "fleet: AWS calls per instance vs single",
)
CALLS_METRICS = ("AWS calls per rotation", "SSM calls per rotation", "Connect calls per rotation")


def table_rows(output: str) -> dict[str, list[str]]:
    """metric -> its other cells, from the Markdown table the bench prints."""
    rows = {}
    for line in output.splitlines():
        if line.startswith("| "):
            metric, *cells = (cell.strip() for cell in line.strip("|").split("|"))
            rows[metric] = cells
    return rows


def test_quick_bench_reports_every_metric() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    for metric in METRICS:
        assert metric in rows, f"no row for {metric!r} in:\n{result.stdout}"
        ours, baseline, _ratio, _target, status = rows[metric]
        assert float(ours) >= 0 and float(baseline) > 0, rows[metric]
        assert status in ("ok", "MISS", "-"), rows[metric]
    # The call counter is real: the blog's Lambda reads two parameters per invocation.
    assert float(rows[SSM_CALLS_METRIC][1]) == BLOG_SSM_CALLS_PER_INVOCATION


def test_quick_rotation_bench_reports_every_metric() -> None:
    result = subprocess.run(
        [sys.executable, str(ROTATION_BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    for metric in ROTATION_METRICS:
        assert metric in rows, f"no row for {metric!r} in:\n{result.stdout}"
        measured, baseline, ratio, _note = rows[metric]
        assert float(measured) >= 0, rows[metric]
        if baseline != "-":
            assert float(baseline) > 0 and float(ratio) >= 0, rows[metric]
    # The call counters are real: a rotation calls both services, and the split adds up.
    total, ssm, connect = (float(rows[metric][0]) for metric in CALLS_METRICS)
    assert ssm > 0 and connect > 0 and total == ssm + connect


FLEET_BENCH = ROOT / "bench" / "fleet_bench.py"
FLEET_METRICS = (
    "evaluation: AWS calls per instance, fleet vs quarter",
    "evaluation: AWS calls per added instance vs page bound",
    "evaluation: wall s, fleet vs quarter",
    "emergency rotation: wall s, pooled vs concurrency 1",
    "emergency rotation: speed-up vs pool size",
    "emergency rotation: AWS calls per rotation, pooled vs 1",
    "fleet report: wall s vs evaluation",
    "fleet report: AWS calls per instance vs evaluation",
)
FLEET_WORKLOADS = (
    "daily evaluation (quarter)",
    "daily evaluation",
    "emergency rotation, concurrency 1",
    "emergency rotation, concurrency 2",
    "fleet report",
)


@pytest.mark.slow  # about 15 s: a sandbox, 2 real inits and 4 real rotations
def test_quick_fleet_bench_reports_every_workload_and_evaluation_is_o1() -> None:
    result = subprocess.run(
        [sys.executable, str(FLEET_BENCH), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "RSA-2048" in result.stdout  # the issue: say the key size in the output
    rows = table_rows(result.stdout)
    for metric in FLEET_METRICS:
        assert metric in rows, f"no row for {metric!r} in:\n{result.stdout}"
        ours, baseline, ratio, _target, status = rows[metric]
        assert float(ours) > 0 and float(baseline) > 0 and float(ratio) > 0, rows[metric]
        assert status in ("ok", "-"), rows[metric]
    # Evaluation is O(1) per instance: the fleet's per-instance calls are no more than a
    # quarter fleet's (the per-partition role and page constants only spread thinner).
    per_instance = rows["evaluation: AWS calls per instance, fleet vs quarter"]
    assert float(per_instance[0]) <= float(per_instance[1]), per_instance
    assert per_instance[4] == "ok"
    # A pool makes no call a single unit does not: same calls per rotation.
    calls = rows["emergency rotation: AWS calls per rotation, pooled vs 1"]
    assert float(calls[0]) == float(calls[1]), calls
    # Every workload is measured, and the counters are real: each assumes the member roles.
    for workload in FLEET_WORKLOADS:
        instances, _concurrency, wall_s, _ms, aws_calls, _per, services = rows[workload]
        assert int(instances) > 0 and float(wall_s) > 0 and int(aws_calls) > 0, rows[workload]
        assert "ssm" in services and "sts" in services, rows[workload]
    assert "connect" in rows["emergency rotation, concurrency 2"][-1]
