"""`rotator demo` from a built wheel installed in a fresh venv, run away from the checkout; its
`rotator --help` imports neither the AWS SDK nor the Encryption SDK."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from importlib import metadata, resources
from pathlib import Path

import pytest

from tests.test_cli_shape import probe_imports

ROOT = Path(__file__).resolve().parents[1]
DATA = "rotator/sandbox/data/blog-truncated.b64"
# Local state and caches of a checkout; the build works on a copy so that it leaves no build/
# or *.egg-info behind in the worktree.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    ".pytest_cache",
)
PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--quiet")
TIMEOUT = 600  # seconds; a hung build or install fails the test instead of stalling the run


def test_the_packaged_blog_ciphertext_is_the_test_vector() -> None:
    packaged = resources.files("rotator.sandbox") / "data" / "blog-truncated.b64"
    assert packaged.read_bytes() == (ROOT / "tests" / "vectors" / "blog-truncated.b64").read_bytes()


@pytest.mark.slow
def test_the_demo_runs_from_an_installed_wheel(tmp_path: Path) -> None:
    source, dist, environment = tmp_path / "source", tmp_path / "dist", tmp_path / "venv"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    # pip's own configuration (index, cache) stays; only PYTHONPATH could leak the checkout in.
    pip_env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    _run([*PIP, "wheel", "--no-deps", "--wheel-dir", str(dist), str(source)], pip_env)
    [wheel] = dist.glob("connect_key_rotator-*.whl")
    assert DATA in zipfile.ZipFile(wheel).namelist()
    # The HTML report's templates: without them `rotator report --format html` fails.
    templates = ROOT / "rotator" / "templates"
    shipped = {p.relative_to(ROOT).as_posix() for p in templates.rglob("*") if p.is_file()}
    assert shipped and shipped <= set(zipfile.ZipFile(wheel).namelist())

    # A venv without pip (ensurepip costs seconds); this interpreter's pip installs into it.
    # --no-compile: byte-compiling all of moto and botocore up front costs more than the demo
    # then spends compiling the modules it imports.
    venv.create(environment, with_pip=False)
    python, rotator = environment / "bin" / "python", environment / "bin" / "rotator"
    install = ["--python", str(python), "install", "--no-compile", f"{wheel}[sandbox]"]
    _run([*PIP, *install], pip_env)

    home = tmp_path / "home"
    home.mkdir()
    clean = {"HOME": str(home), "PATH": f"{environment / 'bin'}{os.pathsep}{os.defpath}"}
    where = _run([str(python), "-c", "import rotator; print(rotator.__file__)"], clean, tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(environment)

    # The installed command starts without the AWS SDK or the Encryption SDK.
    assert probe_imports(str(python), ["--help"], tmp_path, clean) == (0, [])
    version = _run([str(rotator), "--version"], clean, tmp_path)
    assert version.stdout == f"rotator {metadata.version('connect-key-rotator')}\n"

    demo = _run([str(rotator), "demo"], clean, tmp_path)
    assert "Demo finished: no contact was lost to the rotation." in demo.stdout
    assert "truncated ciphertext -> {'status': 'error', 'error': 'truncated'" in demo.stdout


def _run(
    command: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} exited {result.returncode}\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result
