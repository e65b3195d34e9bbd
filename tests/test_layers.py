"""The layer contracts (.importlinter, run by `make lint`): the required ones are there, strict,
kept by the code, and live (a forbidden import planted in a copy of the sources breaks them)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / ".importlinter"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
# The contracts, by section: source packages and what each must never import. The
# config may forbid more, never less.
FORBIDDEN = {
    "domain-is-pure": (
        {"rotator.domain"},
        {
            "rotator.adapters",
            "rotator.services",
            "rotator.entrypoints",
            "rotator.sandbox",
            "boto3",
            "botocore",
        },
    ),
    "services-see-ports": (
        {"rotator.services"},
        {"rotator.entrypoints", "rotator.adapters", "boto3", "botocore"},
    ),
    "lambda-decrypt-stands-alone": ({"lambda_decrypt"}, {"rotator"}),
}
ACYCLIC = {"entrypoints-acyclic": {"rotator.entrypoints"}, "rotator-acyclic": {"rotator"}}
# A module planted in a copy of the sources, per contract, that breaks it.
PROBES = {
    "domain-is-pure": ("rotator/domain/_layer_probe.py", "import boto3\n"),
    "services-see-ports": (
        "rotator/services/_layer_probe.py",
        "from rotator.entrypoints import bootstrap\n",
    ),
    "lambda-decrypt-stands-alone": ("lambda_decrypt/_layer_probe.py", "import rotator.errors\n"),
    # Two entrypoints modules importing each other (this one and its partner below).
    "entrypoints-acyclic": (
        "rotator/entrypoints/_layer_probe.py",
        "from rotator.entrypoints import _layer_probe_partner\n",
    ),
}
PROBE_PARTNER = (
    "rotator/entrypoints/_layer_probe_partner.py",
    "from rotator.entrypoints import _layer_probe\n",
)


def config() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    assert parser.read(CONFIG, encoding="utf-8") == [str(CONFIG)], "no .importlinter at the root"
    return parser


def lines(value: str) -> set[str]:
    return {line.strip() for line in value.splitlines() if line.strip()}


def contract(parser: configparser.ConfigParser, contract_id: str) -> configparser.SectionProxy:
    section = f"importlinter:contract:{contract_id}"
    assert parser.has_section(section), f"the {contract_id} contract is gone from .importlinter"
    return parser[section]


def test_the_required_contracts_are_there_and_strict() -> None:
    parser = config()
    main = parser["importlinter"]
    assert lines(main["root_packages"]) == {"rotator", "lambda_decrypt"}
    # Without it, import-linter cannot see boto3 or botocore at all.
    assert main.getboolean("include_external_packages") is True
    assert "exclude_type_checking_imports" not in main  # a typed-only import is an import
    for contract_id, (sources, forbidden) in FORBIDDEN.items():
        section = contract(parser, contract_id)
        assert section["type"] == "forbidden", contract_id
        assert lines(section["source_modules"]) == sources, contract_id
        assert lines(section["forbidden_modules"]) >= forbidden, contract_id
        # Strict: an import through another module counts, and nothing is waived.
        assert not section.getboolean("allow_indirect_imports", fallback=False), contract_id
        assert "ignore_imports" not in section, contract_id
    for contract_id, ancestors in ACYCLIC.items():
        section = contract(parser, contract_id)
        assert section["type"] == "acyclic_siblings", contract_id
        assert lines(section["ancestors"]) == ancestors, contract_id
        assert "ignore_imports" not in section and "skip_descendants" not in section


def test_make_lint_runs_the_contracts() -> None:
    lint = (ROOT / "Makefile").read_text(encoding="utf-8").split("\nlint:", 1)[1]
    recipe = lint.split("\n\n", 1)[0]
    assert "$(BIN)/lint-imports" in recipe


def lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"import-linter is not installed in {sys.prefix}"
    env = None
    if pythonpath is not None:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        # No cache: parallel test workers would share (and race on) its directory.
        [str(LINT_IMPORTS), "--no-cache"],  # the .importlinter of `cwd`
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_code_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " BROKEN" not in result.stdout
    for contract_id in (*FORBIDDEN, *ACYCLIC):
        assert f"{contract(config(), contract_id)['name']} KEPT" in " ".join(result.stdout.split())


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> str:
    """lint-imports' report on a copy of the sources with every probe planted."""
    copy = tmp_path_factory.mktemp("layers")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("rotator", "lambda_decrypt"):
        shutil.copytree(ROOT / package, copy / package, ignore=ignore)
    shutil.copyfile(CONFIG, copy / ".importlinter")
    for path, code in (*PROBES.values(), PROBE_PARTNER):
        (copy / path).write_text(code, encoding="utf-8")
    result = lint_imports(copy, pythonpath=copy)
    assert result.returncode != 0, result.stdout
    return " ".join(result.stdout.split())


@pytest.mark.parametrize("contract_id", sorted(PROBES))
def test_a_planted_import_breaks_its_contract(planted: str, contract_id: str) -> None:
    parser = config()
    names = {c: " ".join(contract(parser, c)["name"].split()) for c in (*FORBIDDEN, *ACYCLIC)}
    name = names[contract_id]
    assert f"{name} BROKEN" in planted, planted[:3000]
    # Its section of the report, up to the next contract's, names the probe.
    start = planted.index(f"{name} -")
    ends = [planted.find(f"{other} -", start + 1) for other in names.values() if other != name]
    section = planted[start : min([e for e in ends if e > 0], default=len(planted))]
    assert "_layer_probe" in section, section
