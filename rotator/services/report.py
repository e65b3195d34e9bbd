"""Compliance expiry report: every key's facts at a given time, and findings from pure rules."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from rotator.domain.approval import Request, requests_from
from rotator.domain.checks import (
    DEFAULT_MIN_KEY_SIZE,
    ENCRYPTING_STATES,
    ReportOptions,
    findings,
    grace_end,
    same_kms_key,
)
from rotator.domain.crypto_architecture import ALGORITHMS, CryptoArchitecture, crypto_architecture
from rotator.domain.custodians import Custodian, custodians
from rotator.domain.findings import Finding, Severity
from rotator.domain.history import key_history, transitions_by_key
from rotator.domain.lifecycle import KeyRecord, KeyState, Transition
from rotator.domain.policy import (
    cryptoperiod_end,
    key_age_start,
    renew_window_start,
    rotation_due,
)
from rotator.domain.state import InstanceState, KeyringState
from rotator.domain.stored_ciphertext import last_inventories
from rotator.domain.window import WindowAction, WindowStatus, window_decision
from rotator.ports import ConnectReader, Keyring, Lock
from rotator.services.crypto_architecture import EvidenceSources, with_evidence
from rotator.services.custodians import current_text_sha256
from rotator.services.state import read_state

__all__ = [
    "DEFAULT_MIN_KEY_SIZE",
    "ENCRYPTING_STATES",
    "EvidenceSources",
    "KeyRow",
    "Report",
    "ReportOptions",
    "build_report",
    "gather",
    "make_report",
    "same_kms_key",
]

REPORT_SCHEMA = "connect-key-rotator/report/1"
# Dual-control requests listed by the report: those made in the year before its time.
REQUEST_PERIOD = timedelta(days=365)
UNKNOWN_STATE = "unknown"  # a key Connect knows (associated or in a flow) but the keyring does not


@dataclass(frozen=True)
class KeyRow:
    """One key: what the keyring records, what Connect and SSM show, and its dates at `now`."""

    key_id: str
    instance_id: str | None
    state: str  # a KeyState, or UNKNOWN_STATE for a key Connect knows and the keyring does not
    current: bool
    associated: bool
    private_key_stored: bool
    kms_key_id: str | None
    flows: tuple[str, ...]
    record: KeyRecord | None
    days_to_expiry: float | None = None
    age_days: float | None = None
    cryptoperiod_ends: datetime | None = None
    renew_at: datetime | None = None
    grace_ends: datetime | None = None
    history: tuple[Transition, ...] = ()  # from the history events (see key_history)
    # A due key and the rotation window: why it waits (or does not) and until when; None when
    # the key is not due or no window or freeze is configured.
    rotation_window: str | None = None
    waits_until: datetime | None = None
    # With registered stores only: the key's stored ciphertexts there at the last inventory
    # of exactly those stores, and when it was taken (None: never inventoried).
    stores_registered: bool = False
    stored_ciphertexts: int | None = None
    inventoried_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        record = self.record
        optional: dict[str, Any] = {}
        if self.rotation_window is not None:
            optional = {
                "rotation_window": self.rotation_window,
                "waits_until": _iso(self.waits_until),
            }
        if self.stores_registered:
            optional["stored_ciphertexts"] = {
                "count": self.stored_ciphertexts,
                "inventoried_at": _iso(self.inventoried_at),
            }
        return {
            "key_id": self.key_id,
            "instance_id": self.instance_id,
            "state": self.state,
            "in_keyring": record is not None,
            "current": self.current,
            "associated": self.associated,
            "private_key_stored": self.private_key_stored,
            "kms_key_id": self.kms_key_id,
            "key_size": None if record is None else record.key_size,
            "public_key_sha256": None if record is None else record.public_key_sha256,
            "certificate_sha256": None if record is None else record.certificate_sha256,
            "subject": None if record is None else record.subject,
            "source": None if record is None else record.source,
            "created_at": _iso(None if record is None else record.created_at),
            "not_before": _iso(None if record is None else record.not_before),
            "not_after": _iso(None if record is None else record.not_after),
            "days_to_expiry": _round(self.days_to_expiry),
            "age_days": _round(self.age_days),
            "cryptoperiod_ends": _iso(self.cryptoperiod_ends),
            "renew_at": _iso(self.renew_at),
            "grace_ends": _iso(self.grace_ends),
            "flows": list(self.flows),
            "history": [t.to_dict() for t in self.history],
            **optional,
        }


@dataclass(frozen=True)
class Report:
    generated_at: datetime
    prefix: str
    options: ReportOptions
    instances: tuple[InstanceState, ...]
    keys: tuple[KeyRow, ...]
    findings: tuple[Finding, ...]
    # Dual control (3.7.6): the requests of the period, oldest first, with their outcome.
    requests: tuple[Request, ...] = ()
    # Who ran key operations in the 12 months to the report's time, and their acknowledgements.
    custodians: tuple[Custodian, ...] = ()
    # The cryptographic architecture (PCI DSS 3.6.1.1); None: not built (no key is described).
    architecture: CryptoArchitecture | None = None

    @property
    def crypto(self) -> CryptoArchitecture:
        """The section as the renderers show it (the algorithms alone when it was not built)."""
        if self.architecture is not None:
            return self.architecture
        return CryptoArchitecture(ALGORITHMS, (), (), None)

    def counts(self) -> dict[Severity, int]:
        return {s: sum(f.severity is s for f in self.findings) for s in Severity}

    def fails(self, fail_on: Severity | None) -> bool:
        """Whether a finding at or above `fail_on` exists (None: never)."""
        return fail_on is not None and any(f.severity.rank <= fail_on.rank for f in self.findings)

    def findings_for(self, key: KeyRow) -> list[Finding]:
        """The findings naming this key, or its instance as a whole."""
        return [
            f
            for f in self.findings
            if f.key_id == key.key_id
            or (f.key_id is None and f.instance_id is not None and f.instance_id == key.instance_id)
        ]

    @property
    def window(self) -> WindowStatus | None:
        """The rotation window and freezes at the report's time; None: none configured."""
        schedule = self.options.schedule
        return None if schedule is None else WindowStatus.at(schedule, self.generated_at)

    def to_dict(self) -> dict[str, Any]:
        policy = self.options.policy
        window = self.window
        return {
            "schema": REPORT_SCHEMA,
            "generated_at": self.generated_at.isoformat(),
            "keyring_prefix": self.prefix,
            "policy": {
                "renew_before_days": policy.renew_before.days,
                "cryptoperiod_days": policy.cryptoperiod.days,
                "grace_days": self.options.grace.days,
                "min_key_size": self.options.min_key_size,
                "kms_key_id": self.options.kms_key_id,
                **({} if window is None else {"rotation_window": window.to_dict()}),
                **({"ciphertext_stores": list(self.options.stores)} if self.options.stores else {}),
            },
            "summary": {
                "instances": len(self.instances),
                "keys": len(self.keys),
                "findings": {s.value: n for s, n in self.counts().items()},
            },
            "instances": [i.to_dict() for i in self.instances],
            "keys": [k.to_dict() for k in self.keys],
            "findings": [f.to_dict() for f in self.findings],
            "dual_control_requests": [r.to_dict(self.generated_at) for r in self.requests],
            "custodians": {
                "responsibilities_sha256": self.options.custodian_text_sha256,
                "principals": [c.to_dict() for c in self.custodians],
            },
            "cryptographic_architecture": self.crypto.to_dict(),
        }


def make_report(
    keyring: Keyring,
    connect: ConnectReader,
    lock: Lock,
    options: ReportOptions,
    now: datetime,
    *,
    canaries: bool = False,
    evidence: EvidenceSources | None = None,
) -> Report:
    """Read the keyring and Connect once, then judge what was read at `now`. `canaries`: also
    decrypt a canary with each key a managed flow uses (reads the private keys; `verify`).
    `evidence`: where the KMS keys are described and the decrypt function's environment is
    scanned (None: neither; the report says so)."""
    if options.custodian_text_sha256 is None:
        options = replace(options, custodian_text_sha256=current_text_sha256())
    facts = gather(keyring, connect, lock, now, canaries=canaries, evidence=evidence)
    return build_report(facts, options, now)


def gather(
    keyring: Keyring,
    connect: ConnectReader,
    lock: Lock,
    now: datetime,
    *,
    canaries: bool = False,
    evidence: EvidenceSources | None = None,
) -> KeyringState:
    """What the report reads: everything, with the history, and no key material unless
    `canaries` (`now` is not read: the state is what it is); then the evidence reads. The
    evidence's decrypt function is also what the flows' Lambda invocations are judged against."""
    del now
    sources = evidence or EvidenceSources()
    state = read_state(
        keyring,
        lock,
        connect=connect,
        protection=True,
        history=True,
        canaries=canaries,
        copies=True,
        decrypt_function=sources.decrypt_function,
    )
    return with_evidence(state, sources, keyring.kms_key_id)


def build_report(facts: KeyringState, options: ReportOptions, now: datetime) -> Report:
    """Judge a state already read (pure): every finding comes from domain.checks."""
    rows = key_rows(facts, options, now)
    return Report(
        now,
        facts.prefix,
        options,
        facts.instances,
        tuple(rows),
        tuple(findings(facts, options, now)),
        requests_of_period(facts, now),
        tuple(
            custodians(facts.events, now, options.custodian_text_sha256, with_acknowledgers=False)
        ),
        crypto_architecture(facts),
    )


def requests_of_period(facts: KeyringState, now: datetime) -> tuple[Request, ...]:
    """The dual-control requests made in the year up to `now`, oldest first."""
    found = requests_from(facts.events).values()
    return tuple(
        sorted(
            (r for r in found if now - REQUEST_PERIOD <= r.requested_at <= now),
            key=lambda r: (r.requested_at, r.request_id),
        )
    )


def key_rows(facts: KeyringState, options: ReportOptions, now: datetime) -> list[KeyRow]:
    """Every key in the keyring, then every key Connect knows that the keyring does not."""
    associated = {k for i in facts.instances for k in i.associations}
    flows: defaultdict[str, list[str]] = defaultdict(list)
    seen_in: dict[str, str] = {}
    for instance in facts.instances:
        seen_in.update(dict.fromkeys(instance.associations, instance.instance_id))
        for flow in instance.flows:
            for key_id in flow.key_ids:
                flows[key_id].append(flow.flow)
                seen_in.setdefault(key_id, instance.instance_id)
    transitions = transitions_by_key(facts.events)
    rows = []
    for record in facts.records:
        rows.append(
            _record_row(
                record,
                options,
                now,
                current=facts.current.get(record.instance_id or "") == record.key_id,
                associated=record.key_id in associated,
                kms_key_id=_kms_key_of(facts, record.key_id),
                flows=tuple(flows.get(record.key_id, ())),
                history=key_history(transitions.get(record.key_id, []), record.history),
            )
        )
    known = {r.key_id for r in facts.records}
    for key_id in sorted(seen_in.keys() - known, key=lambda k: (seen_in[k], k)):
        rows.append(
            KeyRow(
                key_id=key_id,
                instance_id=seen_in[key_id],
                state=UNKNOWN_STATE,
                current=facts.current.get(seen_in[key_id]) == key_id,
                associated=key_id in associated,
                private_key_stored=facts.private_key_stored(key_id),
                kms_key_id=_kms_key_of(facts, key_id),
                flows=tuple(flows.get(key_id, ())),
                record=None,
                history=tuple(transitions.get(key_id, ())),
            )
        )
    return _with_stored_ciphertexts(rows, facts, options)


def _with_stored_ciphertexts(
    rows: list[KeyRow], facts: KeyringState, options: ReportOptions
) -> list[KeyRow]:
    """Each row with its last inventory of the registered stores (from the history)."""
    if not options.stores:
        return rows
    counted = last_inventories(facts.events, options.stores)
    with_counts = []
    for row in rows:
        last = counted.get(row.key_id)
        with_counts.append(
            replace(
                row,
                stores_registered=True,
                stored_ciphertexts=None if last is None else last.count,
                inventoried_at=None if last is None else last.at,
            )
        )
    return with_counts


def _record_row(
    record: KeyRecord,
    options: ReportOptions,
    now: datetime,
    *,
    current: bool,
    associated: bool,
    kms_key_id: str | None,
    flows: tuple[str, ...],
    history: tuple[Transition, ...],
) -> KeyRow:
    waiting, waits_until = _window(record, options, now)
    return KeyRow(
        key_id=record.key_id,
        instance_id=record.instance_id,
        state=record.state.value,
        current=current,
        associated=associated,
        private_key_stored=kms_key_id is not None,
        kms_key_id=kms_key_id,
        flows=flows,
        record=record,
        days_to_expiry=record.days_to_expiry(now),
        age_days=(now - key_age_start(record)).total_seconds() / 86400,
        cryptoperiod_ends=cryptoperiod_end(record, options.policy),
        renew_at=renew_window_start(record, options.policy),
        grace_ends=grace_end(record, options),
        history=history,
        rotation_window=waiting,
        waits_until=waits_until,
    )


def _window(
    record: KeyRecord, options: ReportOptions, now: datetime
) -> tuple[str | None, datetime | None]:
    """For an active key that is due, with a window or freeze configured: what the window does
    with it (waits until when, and why; or why it does not wait)."""
    schedule = options.schedule
    if schedule is None or record.state is not KeyState.ACTIVE:
        return None, None
    if not rotation_due(record, options.policy, now).due:
        return None, None
    decision = window_decision(schedule, record.not_after, now)
    if decision.action is WindowAction.ROTATE:
        return "rotates at the next rotation run: inside the rotation window", None
    return decision.describe(schedule), decision.until


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _kms_key_of(facts: KeyringState, key_id: str) -> str | None:
    """The KMS key protecting the key's private key, as SSM reports it (None: not stored)."""
    protected = facts.protection.keys.get(key_id)
    return None if protected is None else protected.kms_key_id
