"""Output printed under the sandbox's simulated clock: check its marks, then strip them."""

from __future__ import annotations

from datetime import datetime


def unmark(out: str, err: str, at: datetime | None) -> tuple[str, str]:
    """(stdout, stderr) without the banner and line prefixes of a run at simulated time `at`,
    after asserting that every line carries them (nothing to strip when `at` is None)."""
    if at is None:
        return out, err
    banner = f"simulated time (sandbox clock): {at.isoformat(timespec='seconds')}\n"
    prefix = f"[simulated {at:%Y-%m-%d}] "
    if not out and not err.startswith(banner):
        return out, err  # refused before the clock was read (a configuration error)
    if out.startswith("{"):  # JSON: the banner goes to stderr, the document is untouched
        assert err.startswith(banner), err
        return out, err[len(banner) :]
    lines = out.splitlines(keepends=True)
    assert lines and lines[0] == banner, out
    assert all(line.startswith(prefix) for line in lines[1:]), out
    return "".join(line[len(prefix) :] for line in lines[1:]), err
