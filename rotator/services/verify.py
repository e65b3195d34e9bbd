"""`rotator verify`: every invariant of the keyring, judged over one read of its state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rotator.domain.checks import INVARIANT_CODES, Verdict, invariants
from rotator.domain.findings import Finding
from rotator.domain.state import KeyringState
from rotator.ports import ConnectReader, Keyring, Lock
from rotator.services.state import read_state

# A check of the command's argument, not of the keyring's state: no report finding matches it.
MANAGED = "managed"
ARGUMENT_CHECKS = frozenset({MANAGED})
# Every check `verify` can print: the invariants (each broken one is a report finding), and
# the argument check.
CHECKS = frozenset(INVARIANT_CODES) | ARGUMENT_CHECKS


@dataclass(frozen=True)
class Check:
    """One line of `rotator verify`: an invariant for one instance, held or broken."""

    check: str
    instance_id: str | None
    ok: bool
    message: str


@dataclass(frozen=True)
class Verification:
    """What `verify` saw: the state it read, and each invariant's verdict over it."""

    state: KeyringState | None  # None: the instance asked for is not managed
    verdicts: tuple[Verdict, ...]
    checks: tuple[Check, ...]

    @property
    def findings(self) -> list[Finding]:
        """The broken invariants, as the report shows them."""
        return [v.finding for v in self.verdicts if v.finding is not None]


class InvariantChecker:
    def __init__(self, keyring: Keyring, connect: ConnectReader, lock: Lock) -> None:
        self.keyring = keyring
        self.connect = connect
        self.lock = lock

    def check(self, instance_id: str | None, now: datetime) -> list[Check]:
        return list(self.verify(instance_id, now).checks)

    def verify(self, instance_id: str | None, now: datetime) -> Verification:
        """Read once (with a live canary per key a managed flow uses), then judge at `now`."""
        state = read_state(
            self.keyring,
            self.lock,
            connect=self.connect,
            protection=True,
            canaries=True,
            instance_id=instance_id,
        )
        if instance_id is not None and instance_id not in state.managed_ids:
            unmanaged = Check(MANAGED, instance_id, False, "instance is not managed")
            return Verification(None, (), (unmanaged,))
        return judge(state, now, instance_id)


def judge(state: KeyringState, now: datetime, instance_id: str | None = None) -> Verification:
    """The invariants over a state already read (pure)."""
    verdicts = tuple(invariants(state, now, instance_id))
    return Verification(state, verdicts, tuple(_check(v) for v in verdicts))


def _check(verdict: Verdict) -> Check:
    finding = verdict.finding
    if finding is None:
        return Check(verdict.check, verdict.instance_id, True, verdict.message)
    message = finding.message
    if finding.key_id is not None and finding.key_id not in message:
        message = f"key {finding.key_id}: {message}"
    message += f" ({finding.code}; runbook: {finding.rule.runbook.path})"
    return Check(verdict.check, verdict.instance_id, False, message)
