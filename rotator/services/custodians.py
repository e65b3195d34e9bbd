"""Key custodians (PCI DSS 3.7.8): the shipped responsibilities text, acknowledging it, the list."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rotator.domain.custodians import Custodian, acknowledgement_event, custodians
from rotator.domain.history import HistoryEvent
from rotator.errors import ConfigError
from rotator.ports import Identity, Keyring
from rotator.services.runbooks import runbooks_dir

# Beside the runbooks (and shipped with them), in a folder of its own: not a runbook to run.
RESPONSIBILITIES = Path("custodian") / "responsibilities.md"


@dataclass(frozen=True)
class Responsibilities:
    """The text a custodian accepts: where it is, its bytes as text, and their SHA-256 (what
    `sha256sum` prints for the file, so anyone can check which text was acknowledged)."""

    path: Path
    text: str
    sha256: str

    @property
    def name(self) -> str:
        """Its path under the runbooks, as recorded in the acknowledgement."""
        return f"runbooks/{RESPONSIBILITIES.as_posix()}"


def responsibilities(directory: Path | None = None) -> Responsibilities:
    """The shipped text (ConfigError if it is missing)."""
    path = (directory or runbooks_dir()) / RESPONSIBILITIES
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ConfigError("custodian", f"cannot read {path}: {type(error).__name__}") from None
    return Responsibilities(path, raw.decode("utf-8"), hashlib.sha256(raw).hexdigest())


def current_text_sha256(directory: Path | None = None) -> str | None:
    """The shipped text's SHA-256; None when it cannot be found (the report then says so)."""
    try:
        return responsibilities(directory).sha256
    except ConfigError:
        return None


def acknowledge(
    keyring: Keyring, identity: Identity, text: Responsibilities, now: datetime, actor: str
) -> HistoryEvent:
    """Record, in the append-only history, that the calling principal accepts `text` at `now`
    (the clock's time: an acknowledgement is never a what-if)."""
    event = acknowledgement_event(identity.caller_arn(), now, actor, text.sha256, text.name)
    keyring.append_event(event)
    return event


def custodian_list(keyring: Keyring, now: datetime, current_sha256: str | None) -> list[Custodian]:
    """Every principal that acknowledged or ran a key operation in the 12 months to `now`."""
    return custodians(keyring.history_events(), now, current_sha256)
