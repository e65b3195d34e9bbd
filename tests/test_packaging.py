"""`rotator package`: Lambda zips for the template's runtime, lean, byte-for-byte reproducible."""

from __future__ import annotations

import ast
import io
import os
import platform
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lambda_decrypt.errors import ConfigError
from rotator_build import lambda_zips as packaging
from rotator_build.lambda_zips import (
    BUILD_EXTRA_MISSING,
    DEFAULT_TEMPLATE,
    BuildExtraMissing,
    PackageReport,
    Target,
    build_packages,
    find_interpreter,
    pinned_closure,
    read_target,
    run_package,
    zip_date_time,
)

ROOT = Path(__file__).resolve().parents[1]
# Shared with `make package`, so that a rerun downloads nothing (build/ is git-ignored).
WHEEL_CACHE = ROOT / "build" / ".wheels"
ELF_MACHINES = {"arm64": 183, "x86_64": 62}  # e_machine: EM_AARCH64, EM_X86_64
HOST_ARCHITECTURES = {"x86_64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}
# Runs inside the unpacked zip with the target Python, isolated from any site-packages.
SMOKE = """
import sys
root = sys.argv[1]
sys.path.insert(0, root)
from lambda_decrypt import ConnectKey, Decryptor, StaticKeys
import boto3, cryptography, lambda_decrypt.handler
for module in (lambda_decrypt.handler, cryptography, boto3):
    assert module.__file__.startswith(root), module.__file__
boto3.client("ssm", region_name="us-east-1")
key_id, ciphertext, pem = sys.argv[2:5]
keys = StaticKeys({key_id: ConnectKey.from_pem(key_id, open(pem).read(), trusted=False)})
print(Decryptor(keys).decrypt(open(ciphertext).read().strip()).text())
"""


@dataclass(frozen=True)
class Built:
    target: Target
    decrypt: PackageReport
    rotator: PackageReport
    decrypt_again: PackageReport


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """Both zips once per session (wheels come from the cache), and the decrypt zip a second
    time in another directory, for the reproducibility check."""
    target = read_target(DEFAULT_TEMPLATE)
    saved = os.environ.pop("SOURCE_DATE_EPOCH", None)
    try:
        first = build_packages(
            tmp_path_factory.mktemp("first"),
            python_version=target.python_version,
            architecture=target.architecture,
            out=io.StringIO(),
            cache_dir=WHEEL_CACHE,
        )
        (again,) = build_packages(
            tmp_path_factory.mktemp("second"),
            python_version=target.python_version,
            architecture=target.architecture,
            out=io.StringIO(),
            names=("decrypt",),
            cache_dir=WHEEL_CACHE,
        )
    finally:
        if saved is not None:
            os.environ["SOURCE_DATE_EPOCH"] = saved
    by_name = {r.name: r for r in first}
    yield Built(target, by_name["decrypt"], by_name["rotator"], again)


def names(report: PackageReport) -> list[str]:
    with zipfile.ZipFile(report.path) as archive:
        return archive.namelist()


def top_level(report: PackageReport) -> set[str]:
    return {name.split("/", 1)[0] for name in names(report)}


def test_decrypt_zip_holds_no_rotator_scheduler_cli_or_test_code(built: Built) -> None:
    entries = names(built.decrypt)
    assert "lambda_decrypt/handler.py" in entries
    assert "lambda_decrypt/keyring.py" in entries
    tops = top_level(built.decrypt)
    for unwanted in ("rotator", "apscheduler", "moto", "tests", "test", "pytest", "bin"):
        assert unwanted not in tops
    assert not [n for n in tops if n.startswith(("apscheduler", "moto", "connect_key_rotator"))]
    assert not [n for n in entries if "/tests/" in n and n.startswith("lambda_decrypt")]
    with zipfile.ZipFile(built.decrypt.path) as archive:
        ours = [n for n in entries if n.startswith("lambda_decrypt/") and n.endswith(".py")]
        assert not [n for n in ours if b"argparse" in archive.read(n)]


def _third_party_imports(package: Path) -> set[str]:
    """Top-level modules imported at run time (not under `if TYPE_CHECKING:`)."""
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    for source in package.rglob("*.py"):
        visit(ast.parse(source.read_text()).body)
    return found - set(sys.stdlib_module_names) - {"__future__", package.name}


def test_decrypt_zip_has_everything_lambda_decrypt_imports(built: Built) -> None:
    needed = _third_party_imports(ROOT / "lambda_decrypt")
    assert {"aws_encryption_sdk", "boto3", "cryptography", "structlog"} <= needed
    assert needed <= top_level(built.decrypt)
    assert {"attr", "wrapt", "cffi", "jmespath", "urllib3"} <= top_level(built.decrypt)


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF"
    return int.from_bytes(data[18:20], "little")


def test_cryptography_is_the_manylinux_build_for_the_template_cpu(built: Built) -> None:
    entries = names(built.decrypt)
    machine = built.target.machine
    (wheel,) = [n for n in entries if n.startswith("cryptography-") and n.endswith("/WHEEL")]
    with zipfile.ZipFile(built.decrypt.path) as archive:
        tags = [line for line in archive.read(wheel).decode().splitlines() if line[:4] == "Tag:"]
        rust = archive.read("cryptography/hazmat/bindings/_rust.abi3.so")
        extensions = {n: archive.read(n) for n in entries if n.endswith(".so")}
    assert tags and all("manylinux" in t and t.endswith(f"_{machine}") for t in tags)
    assert _elf_machine(rust) == ELF_MACHINES[built.target.architecture]
    for name, data in extensions.items():
        assert _elf_machine(data) == ELF_MACHINES[built.target.architecture], name
        if ".cpython-" in name:
            assert f"cpython-{built.target.python_version.replace('.', '')}-{machine}" in name


def test_no_bytecode_of_the_build_machine(built: Built) -> None:
    compiled = [n for n in names(built.decrypt) if n.endswith((".pyc", ".pyo"))]
    assert all(f".{built.target.cache_tag}.pyc" in n for n in compiled)
    assert bool(compiled) == (built.decrypt.bytecode is not None)


def test_bytecode_is_for_the_target_python_and_never_checks_timestamps(built: Built) -> None:
    interpreter = find_interpreter(built.target.python_version)
    # Building for Lambda compiles bytecode with the runtime's Python (pyenv has it here).
    assert interpreter is not None, f"Python {built.target.python_version} is needed to build"
    assert built.decrypt.bytecode is not None
    probe = "import importlib.util; print(importlib.util.MAGIC_NUMBER.hex())"
    magic = subprocess.run(
        [str(interpreter), "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    with zipfile.ZipFile(built.decrypt.path) as archive:
        entries = set(archive.namelist())
        for source in [n for n in entries if n.startswith("lambda_decrypt/") and n[-3:] == ".py"]:
            folder, _, module = source.rpartition("/")
            compiled = f"{folder}/__pycache__/{module[:-3]}.{built.target.cache_tag}.pyc"
            header = archive.read(compiled)[:8]
            assert header[:4].hex() == magic
            assert int.from_bytes(header[4:8], "little") == 0b01  # hash-based, unchecked


def test_two_builds_are_byte_identical(built: Built) -> None:
    assert built.decrypt.sha256 == built.decrypt_again.sha256
    assert built.decrypt.path.read_bytes() == built.decrypt_again.path.read_bytes()


def test_entries_are_sorted_with_fixed_times_and_modes(built: Built) -> None:
    with zipfile.ZipFile(built.decrypt.path) as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    modes = {i.external_attr >> 16 for i in infos}
    assert modes <= {0o100644, 0o100755, 0o040755}


@pytest.mark.slow
def test_the_decrypt_zip_alone_decrypts_connect_s_message_on_the_target_python(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The same build for this machine's CPU, unpacked, run by the target Python with no
    site-packages: the zip is complete and its bytecode loads (the real Connect vector)."""
    target = read_target(DEFAULT_TEMPLATE)
    interpreter = find_interpreter(target.python_version)
    architecture = HOST_ARCHITECTURES.get(platform.machine())
    assert interpreter is not None, f"Python {target.python_version} is needed to build"
    assert architecture is not None, f"no Lambda architecture matches {platform.machine()}"
    folder = tmp_path_factory.mktemp("host")
    (report,) = build_packages(
        folder,
        python_version=target.python_version,
        architecture=architecture,
        out=io.StringIO(),
        names=("decrypt",),
        cache_dir=WHEEL_CACHE,
    )
    unpacked = folder / "unpacked"
    with zipfile.ZipFile(report.path) as archive:
        archive.extractall(unpacked)
    vector = ROOT / "tests" / "vectors" / "connect-real"
    key_id = "a5ecd749-4bd8-4a94-bfde-27eefe4f12b1"
    result = subprocess.run(
        [str(interpreter), "-I", "-S", "-c", SMOKE, str(unpacked), key_id]
        + [str(vector / "ciphertext.b64"), str(vector / "private.key.pem")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "112344567789"


def test_rotator_zip_has_the_scheduled_entrypoint_and_no_sandbox(built: Built) -> None:
    entries = names(built.rotator)
    assert "rotator/entrypoints/scheduled.py" in entries
    assert "lambda_decrypt/handler.py" in entries
    # The report job renders HTML in the Lambda: every template the wheel carries is in the zip.
    templates = {p.relative_to(ROOT).as_posix() for p in (ROOT / "rotator/templates").rglob("*")}
    assert {t for t in templates if "." in t.rsplit("/", 1)[-1]} <= set(entries)
    assert "rotator/templates/report/page.html.j2" in entries
    assert "rotator/services/report.schema.json" in entries
    assert {"apscheduler", "tzlocal", "boto3"} <= top_level(built.rotator)
    assert not [n for n in entries if n.startswith(("rotator/sandbox", "moto/", "werkzeug/"))]


def test_rotator_zip_carries_no_build_tool(built: Built) -> None:
    entries = names(built.rotator)
    build_tool = [
        n
        for n in entries
        if n.startswith(("rotator_build/", "packaging/")) or n.startswith("rotator/packaging")
    ]
    assert build_tool == []
    assert not {"rotator_build", "packaging"} & top_level(built.rotator)
    assert not [n for n in top_level(built.rotator) if n.startswith("packaging-")]
    assert "rotator_build" not in top_level(built.decrypt)


def test_reports_give_sizes(built: Built) -> None:
    for report in (built.decrypt, built.rotator):
        assert 0 < report.compressed_bytes < report.uncompressed_bytes < 250 * 1024 * 1024
        assert report.compressed_bytes == report.path.stat().st_size
        assert f"{report.compressed_bytes:,} bytes zipped" in report.line()


# --------------------------------------------------------------------------- fast unit tests


def test_template_is_the_one_source_of_the_target() -> None:
    target = read_target(DEFAULT_TEMPLATE)
    assert target == Target("3.12", "arm64")
    assert "manylinux_2_34_aarch64" in target.pip_target_args()
    assert "manylinux2014_aarch64" in target.pip_target_args()


def test_read_target_accepts_flow_lists_and_refuses_ambiguity(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text(
        "Globals:\n  Function:\n    Runtime: python3.13\n    Architectures: [x86_64]\n"
    )
    assert read_target(template) == Target("3.13", "x86_64")
    template.write_text("Runtime: python3.12\nRuntime: python3.13\nArchitectures: [arm64]\n")
    with pytest.raises(ConfigError, match="one python Runtime"):
        read_target(template)
    template.write_text("Runtime: python3.12\n")
    with pytest.raises(ConfigError, match="one Architectures"):
        read_target(template)
    with pytest.raises(ConfigError, match="arm64 or x86_64"):
        Target("3.12", "ppc64le")


def test_pins_follow_the_target_markers_and_leave_out_the_rotator_extras() -> None:
    target = Target("3.12", "arm64")
    decrypt = {
        pin.split("==")[0] for pin in pinned_closure(packaging.DECRYPT_DISTRIBUTIONS, target)
    }
    assert {"boto3", "botocore", "cryptography", "cffi", "aws-encryption-sdk", "wrapt"} <= decrypt
    assert not {"apscheduler", "tzlocal", "typing-extensions", "moto", "connect-key-rotator"} & (
        decrypt
    )
    rotator = {pin.split("==")[0] for pin in pinned_closure([packaging.PROJECT], target)}
    assert {"apscheduler", "tzlocal"} <= rotator
    assert not {"moto", "pytest", "connect-key-rotator", "awscrt"} & rotator


def _dependency_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_packaging_is_a_build_extra_not_a_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "packaging" not in _dependency_names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert "packaging" in _dependency_names(extras["build"])
    assert "connect-key-rotator[build]" in extras["dev"]  # the dev venv can run `rotator package`
    target = Target("3.12", "arm64")
    assert "packaging" not in {
        p.split("==")[0] for p in pinned_closure([packaging.PROJECT], target)
    }


def test_the_runtime_package_neither_holds_nor_imports_the_build_tool() -> None:
    assert not (ROOT / "rotator" / "packaging.py").exists()
    runtime = _third_party_imports(ROOT / "rotator") | _third_party_imports(ROOT / "lambda_decrypt")
    assert "packaging" not in runtime
    # Only the CLI's `package` command reaches the build tool, by an import inside its handler:
    # importing any runtime module (the Lambda's) never needs it.
    assert "rotator_build" not in _third_party_imports(ROOT / "lambda_decrypt")
    for source in (ROOT / "rotator").rglob("*.py"):
        module = ast.parse(source.read_text())
        top = [n for n in module.body if isinstance(n, ast.Import | ast.ImportFrom)]
        assert not [n for n in top if "rotator_build" in ast.unparse(n)], source
        if any("rotator_build" in ast.unparse(n) for n in ast.walk(module) if _imports(n)):
            assert source.parent.name == "entrypoints", source
    decrypt, rotator = packaging.package_specs()
    assert "rotator_build" not in decrypt.packages + rotator.packages
    assert "rotator_build" in decrypt.forbidden and "rotator_build" in rotator.forbidden


def _imports(node: ast.AST) -> bool:
    return isinstance(node, ast.Import | ast.ImportFrom)


def test_without_the_build_extra_package_says_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("packaging", "packaging.requirements", "packaging.utils"):
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: the import fails
    out, err = io.StringIO(), io.StringIO()
    assert run_package(tmp_path, out=out, err=err) == 1
    assert err.getvalue() == f"error: {BUILD_EXTRA_MISSING}\n"
    assert "pip install 'connect-key-rotator[build]'" in err.getvalue()
    assert out.getvalue() == ""
    assert list(tmp_path.iterdir()) == []  # nothing was started
    with pytest.raises(BuildExtraMissing, match=re.escape(BUILD_EXTRA_MISSING)):
        pinned_closure(["boto3"], Target("3.12", "arm64"))


def test_source_date_epoch_sets_the_entry_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert zip_date_time() == (2023, 11, 14, 22, 13, 20)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert zip_date_time() == (1980, 1, 1, 0, 0, 0)


def test_run_package_names_a_bad_template(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run_package(tmp_path, template=tmp_path / "missing.yaml", out=out, err=err) == 2
    assert "missing.yaml" in err.getvalue()
