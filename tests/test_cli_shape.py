"""The CLI's shape: one handler per command, global options anywhere, --version, no import
cycles, and commands that need no AWS start without the AWS SDK or the Encryption SDK."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path

import pytest

from rotator.entrypoints.cli import COMMANDS, main
from rotator.entrypoints.cli_parser import (
    GLOBAL_OPTIONS,
    REPORT_FORMATS,
    build_parser,
    leaf_commands,
)
from rotator.entrypoints.invocation import actor, requested_time
from rotator.exit_codes import ExitCode
from rotator.services.report_render import ReportFormat

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rotator"
# The smallest valid argv of every command; a new command must be added here (a test checks).
MINIMAL_ARGV = {
    "import": ["import"],
    "status": ["status"],
    "init": ["init", "--instance-id", "i-1"],
    "rotate": ["rotate"],
    "retire": ["retire", "k"],
    "destroy": ["destroy", "k"],
    "rollback": ["rollback", "--instance-id", "i-1"],
    "verify": ["verify"],
    "report": ["report"],
    "package": ["package"],
    "runbook list": ["runbook", "list"],
    "runbook show": ["runbook", "show", "rollback"],
    "runbook run": ["runbook", "run", "rollback"],
    "runbook audit": ["runbook", "audit"],
    "custodian acknowledge": ["custodian", "acknowledge"],
    "custodian list": ["custodian", "list"],
    "serve": ["serve"],
    "sandbox": ["sandbox"],
    "demo": ["demo"],
    "inventory": ["inventory", "--store", "s3://bucket/prefix"],
    "rewrap": ["rewrap", "--from", "k", "--store", "dynamodb://table"],
    "request": ["request", "destroy", "k", "--reason", "r"],
    "request list": ["request", "list"],
    "request cancel": ["request", "cancel", "req-0123456789ab"],
    "approve": ["approve", "req-0123456789ab"],
}
VALUED_GLOBALS = {"--prefix": "prefix", "--kms-key-id": "kms_key_id", "--log-level": "log_level"}
# A command that needs no AWS must not load these (about 0.35 s of start-up on 2 cores).
FORBIDDEN = ("boto3", "botocore", "aws_encryption_sdk", "prometheus_client")
REPORTED = (*FORBIDDEN, "cryptography", "structlog", "rotator.services", "rotator.adapters")
# Runs main(argv) in a fresh interpreter; prints which of REPORTED it imported, as JSON.
IMPORT_PROBE = f"""
import contextlib, io, json, sys
from rotator.entrypoints.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as stop:
        code = stop.code
print(json.dumps({{"code": code, "loaded": [m for m in {REPORTED!r} if m in sys.modules]}}))
"""
NO_AWS_COMMANDS = [
    ["--help"],
    ["--version"],
    ["runbook", "list"],
    ["runbook", "show", "rollback"],
    ["status", "--help"],
    # `package` up to its first check (the template): what it imports to get there.
    ["package", "--template", "/nonexistent/template.yaml"],
]


def probe_imports(
    python: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[object, list[str]]:
    """The exit code of `rotator ARGV` run by `python`, and which of REPORTED it imported."""
    result = subprocess.run(
        [python, "-c", IMPORT_PROBE, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=cwd,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probed = json.loads(result.stdout.strip().splitlines()[-1])
    return probed["code"], list(probed["loaded"])


def test_every_command_has_one_handler_and_every_handler_a_command() -> None:
    assert set(leaf_commands(build_parser())) == set(COMMANDS) == set(MINIMAL_ARGV)


@pytest.mark.parametrize("name", sorted(MINIMAL_ARGV))
def test_the_minimal_argv_reaches_its_handler(name: str) -> None:
    assert build_parser().parse_args(MINIMAL_ARGV[name]).handler == name


@pytest.mark.parametrize("option", sorted(VALUED_GLOBALS))
@pytest.mark.parametrize("name", sorted(MINIMAL_ARGV))
def test_a_global_option_works_before_and_after_every_command(name: str, option: str) -> None:
    command, dest = MINIMAL_ARGV[name], VALUED_GLOBALS[option]
    parser = build_parser()
    assert getattr(parser.parse_args([option, "B", *command]), dest) == "B"
    assert getattr(parser.parse_args([*command, option, "A"]), dest) == "A"
    assert getattr(parser.parse_args([option, "B", *command, option, "A"]), dest) == "A"
    assert getattr(parser.parse_args(command), dest) is None  # absent: the environment's


def test_the_global_options_are_the_ones_tested() -> None:
    assert set(GLOBAL_OPTIONS) == {*VALUED_GLOBALS, "--version"}


@pytest.mark.parametrize("name", ["", *sorted(MINIMAL_ARGV)])
def test_version_before_or_after_any_command(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--version"] if not name else [*MINIMAL_ARGV[name], "--version"]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"rotator {metadata.version('connect-key-rotator')}\n"


def test_report_formats_are_the_renderers() -> None:
    assert tuple(f.value for f in ReportFormat) == REPORT_FORMATS
    assert build_parser().parse_args(["report"]).format == ReportFormat.MD


@pytest.mark.parametrize("argv", NO_AWS_COMMANDS, ids=" ".join)
def test_commands_without_aws_import_no_aws_sdk(argv: list[str]) -> None:
    code, loaded = probe_imports(sys.executable, argv, ROOT)
    assert code in (0, 2)  # 2: package's missing template, as intended
    assert not set(FORBIDDEN) & set(loaded), loaded


def test_help_imports_no_service_nor_adapter() -> None:
    assert probe_imports(sys.executable, ["--help"], ROOT) == (0, [])  # nor cryptography


def test_the_probe_sees_a_command_that_uses_aws() -> None:
    """`status` does load boto3 (and fails without a region, exit 2): the probe is not blind."""
    no_region = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
    code, loaded = probe_imports(sys.executable, ["status"], ROOT, no_region)
    assert code == ExitCode.USAGE
    assert "boto3" in loaded


def _imports(path: Path) -> set[str]:
    """Every rotator module the file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "rotator"}


def test_no_import_cycle_runs_through_the_cli() -> None:
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): path
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py"
    }
    graph = {name: _imports(path) & set(modules) for name, path in modules.items()}
    ours = {
        "rotator.entrypoints.cli",
        "rotator.entrypoints.cli_parser",
        "rotator.entrypoints.cli_context",
        "rotator.entrypoints.runbook",
        "rotator.entrypoints.invocation",
        "rotator.sandbox.demo",
        "rotator.exit_codes",
    }

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            name = stack.pop()
            for nxt in graph.get(name, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    cycles = sorted((a, b) for a in ours for b in graph[a] if b in modules and reaches(b, a))
    assert cycles == []


def test_runbook_steps_and_the_demo_do_not_import_the_cli() -> None:
    for module in ("entrypoints/runbook.py", "sandbox/demo.py", "entrypoints/cli_parser.py"):
        assert "rotator.entrypoints.cli" not in _imports(PACKAGE / module), module


def test_actor_names_user_host_and_the_way_in() -> None:
    who = actor("runbook")
    assert who.endswith(" (runbook)") and "@" in who
    assert actor("cli", simulated=True).endswith(" (cli) [simulated clock]")


def test_requested_time_is_iso_8601_and_utc_without_an_offset() -> None:
    assert requested_time("2030-01-02T03:04:05") == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    plus_two = timezone(timedelta(hours=2))
    assert requested_time("2030-01-02T03:04+02:00").tzinfo == plus_two
    with pytest.raises(ValueError, match=r"^'soon' is not an ISO 8601 time$"):
        requested_time("soon")
    with pytest.raises(ValueError, match=r"^5 is not an ISO 8601 time$"):
        requested_time(5)


def test_a_bad_now_is_refused_by_the_parser_with_the_same_words() -> None:
    complaint = io.StringIO()
    with contextlib.redirect_stderr(complaint), pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["status", "--now", "soon"])
    assert stop.value.code == ExitCode.USAGE
    assert "argument --now: 'soon' is not an ISO 8601 time" in complaint.getvalue()


def test_exit_codes_are_the_documented_numbers() -> None:
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3, 130]


def test_quick_cli_bench_reports_start_up_and_the_import_budget() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cli_bench.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]  # 1: a target missed (load)
    rows = {
        cells[0]: cells[1:]
        for line in result.stdout.splitlines()
        if line.startswith("| rotator ")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    for command in ("--help", "--version", "runbook list"):
        ours, baseline, _ratio, _target, status = rows[
            f"rotator {command} start-up s vs python -c pass"
        ]
        assert float(ours) > 0 and float(baseline) > 0 and status in ("ok", "MISS", "-")
        assert rows[f"rotator {command}"] == ["none"]
