"""Lambda SnapStart's runtime hooks, registered when the runtime's hook library is there."""

from __future__ import annotations

import importlib
from collections.abc import Callable

# Part of Lambda's Python managed runtimes (3.12 and later), not of the package: imported by
# name, and only tried, so that the decrypt path runs unchanged anywhere else.
HOOK_LIBRARY = "snapshot_restore_py"


def register(before_snapshot: Callable[[], None], after_restore: Callable[[], None]) -> bool:
    """Register both hooks with the runtime; False (nothing registered) without its library.

    Registered does not mean they will run: Lambda calls them only for a published version with
    SnapStart on. Without SnapStart neither ever runs and the handler loads keys on first use.
    """
    try:
        hooks = importlib.import_module(HOOK_LIBRARY)
    except ImportError:
        return False
    hooks.register_before_snapshot(before_snapshot)
    hooks.register_after_restore(after_restore)
    return True
