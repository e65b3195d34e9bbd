"""The shipped runbooks: where they are, and loading them by name (parsed, never executed here)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from rotator.domain.runbook import NAME, Runbook, parse_runbook
from rotator.errors import ConfigError

DISTRIBUTION = "connect-key-rotator"
# A wheel installs the repository's runbooks/ as data files (pyproject: data-files) here:
INSTALLED_UNDER = ("share", DISTRIBUTION, "runbooks")
INDEX = "README.md"


def runbooks_dir() -> Path:
    """`runbooks/` of a source checkout (editable install), else of the installed wheel."""
    checkout = Path(__file__).resolve().parents[2] / "runbooks"
    if checkout.is_dir():
        return checkout
    installed = installed_runbooks_dir()
    if installed is None:
        raise ConfigError("runbooks", f"none next to the package ({checkout}) nor installed")
    return installed


def installed_runbooks_dir() -> Path | None:
    """Where a wheel's data files put them: `{data}/share/connect-key-rotator/runbooks`."""
    try:
        files = metadata.files(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if tuple(file.parts[-4:-1]) == INSTALLED_UNDER:
            return Path(str(file.locate())).resolve().parent
    return None


def list_runbooks(directory: Path | None = None) -> list[Runbook]:
    """Every runbook (each `*.md` but the index), sorted by name."""
    folder = directory or runbooks_dir()
    return [
        _parse(path)
        for path in sorted(folder.glob("*.md"))
        if path.name != INDEX and NAME.fullmatch(path.stem)
    ]


def load_runbook(name: str, directory: Path | None = None) -> Runbook:
    folder = directory or runbooks_dir()
    path = folder / f"{name}.md"
    if not NAME.fullmatch(name) or not path.is_file():
        known = ", ".join(r.name for r in list_runbooks(folder))
        raise ConfigError("runbook", f"no runbook {name!r} (known: {known})")
    return _parse(path)


def _parse(path: Path) -> Runbook:
    return parse_runbook(path.stem, path.read_text(encoding="utf-8"))
