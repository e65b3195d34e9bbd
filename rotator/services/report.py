"""Compliance expiry report: every key's facts at a given time, and findings from pure rules."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from lambda_decrypt.keyring import KeyringLayout
from rotator.adapters.connect import ConnectGateway
from rotator.adapters.lock import SsmLock
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.config import Settings
from rotator.domain.findings import Finding, FindingCode, Severity
from rotator.domain.history import key_history, transitions_by_key
from rotator.domain.keys import ALLOWED_KEY_SIZES
from rotator.domain.lifecycle import KeyRecord, KeyState, Transition
from rotator.domain.policy import (
    RotationPolicy,
    cryptoperiod_end,
    key_age_start,
    renew_window_start,
)
from rotator.services.report_facts import InstanceFacts, KeyringFacts, gather

REPORT_SCHEMA = "connect-key-rotator/report/1"
# PCI DSS counts RSA of at least 2048 bits as strong cryptography; raise it with --min-key-size.
DEFAULT_MIN_KEY_SIZE = min(ALLOWED_KEY_SIZES)
UNKNOWN_STATE = "unknown"  # a key Connect knows (associated or in a flow) but the keyring does not
# States whose key encrypts now or may again (rollback): the ones its size and age matter for.
ENCRYPTING_STATES = frozenset({KeyState.PENDING, KeyState.ACTIVE, KeyState.PREVIOUS})


FindingMaker = Callable[[FindingCode, str], Finding]


@dataclass(frozen=True)
class ReportOptions:
    """The policy the keys are held against."""

    policy: RotationPolicy = field(default_factory=RotationPolicy)
    grace: timedelta = timedelta(days=7)
    min_key_size: int = DEFAULT_MIN_KEY_SIZE
    kms_key_id: str | None = None  # None: SSM's default key; no KMS finding is raised

    @classmethod
    def from_settings(
        cls, settings: Settings, *, min_key_size: int = DEFAULT_MIN_KEY_SIZE
    ) -> ReportOptions:
        return cls(settings.policy, settings.grace, min_key_size, settings.kms_key_id)


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

    def to_dict(self) -> dict[str, Any]:
        record = self.record
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
        }


@dataclass(frozen=True)
class Report:
    generated_at: datetime
    prefix: str
    options: ReportOptions
    instances: tuple[InstanceFacts, ...]
    keys: tuple[KeyRow, ...]
    findings: tuple[Finding, ...]

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

    def to_dict(self) -> dict[str, Any]:
        policy = self.options.policy
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
            },
            "summary": {
                "instances": len(self.instances),
                "keys": len(self.keys),
                "findings": {s.value: n for s, n in self.counts().items()},
            },
            "instances": [i.to_dict() for i in self.instances],
            "keys": [k.to_dict() for k in self.keys],
            "findings": [f.to_dict() for f in self.findings],
        }


def make_report(
    keyring: SsmKeyring,
    connect: ConnectGateway,
    lock: SsmLock,
    options: ReportOptions,
    now: datetime,
) -> Report:
    """Read the keyring and Connect once, then judge what was read at `now`."""
    return build_report(gather(keyring, connect, lock, now), options, now)


def build_report(facts: KeyringFacts, options: ReportOptions, now: datetime) -> Report:
    rows = key_rows(facts, options, now)
    by_id = {row.key_id: row for row in rows}
    findings = [
        *(f for row in rows for f in key_findings(row, options, now)),
        *(f for instance in facts.instances for f in instance_findings(instance, by_id)),
        *protection_findings(facts, options),
        *staging_findings(facts),
    ]
    findings.sort(key=lambda f: (f.severity.rank, f.code, f.instance_id or "", f.key_id or ""))
    return Report(now, facts.prefix, options, facts.instances, tuple(rows), tuple(findings))


def key_rows(facts: KeyringFacts, options: ReportOptions, now: datetime) -> list[KeyRow]:
    """Every key in the keyring, then every key Connect knows that the keyring does not."""
    layout = KeyringLayout(facts.prefix)
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
        private_key = layout.private_key(record.key_id)
        rows.append(
            _record_row(
                record,
                options,
                now,
                current=facts.current.get(record.instance_id or "") == record.key_id,
                associated=record.key_id in associated,
                kms_key_id=facts.protection.get(private_key),
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
                private_key_stored=layout.private_key(key_id) in facts.protection,
                kms_key_id=facts.protection.get(layout.private_key(key_id)),
                flows=tuple(flows.get(key_id, ())),
                record=None,
                history=tuple(transitions.get(key_id, ())),
            )
        )
    return rows


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
    previous_since = record.entered(KeyState.PREVIOUS)
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
        grace_ends=None
        if record.state is not KeyState.PREVIOUS or previous_since is None
        else previous_since + options.grace,
        history=history,
    )


def key_findings(row: KeyRow, options: ReportOptions, now: datetime) -> Iterator[Finding]:
    """What is wrong with one keyring key on its own: dates, size, leftover association."""
    record = row.record
    if record is None:
        return

    def finding(code: FindingCode, message: str) -> Finding:
        return Finding(code, record.instance_id, record.key_id, message)

    state = record.state
    if state is KeyState.ACTIVE:
        yield from _expiry_findings(record, row, now, finding)
        if row.cryptoperiod_ends is not None and now >= row.cryptoperiod_ends:
            yield finding(
                FindingCode.CRYPTOPERIOD_EXCEEDED,
                f"key is {row.age_days:.0f} days old; its {options.policy.cryptoperiod.days}-day "
                f"cryptoperiod ended on {row.cryptoperiod_ends:%Y-%m-%d}",
            )
    if state in ENCRYPTING_STATES and record.key_size < options.min_key_size:
        yield finding(
            FindingCode.KEY_BELOW_MINIMUM_SIZE,
            f"RSA-{record.key_size} is below the minimum of {options.min_key_size} bits",
        )
    if state is KeyState.RETIRED and row.associated:
        yield finding(
            FindingCode.RETIRED_KEY_ASSOCIATED,
            "key is retired but still associated with Connect: disassociate it",
        )
    if state is KeyState.PREVIOUS and row.grace_ends is not None and now >= row.grace_ends:
        yield finding(
            FindingCode.GRACE_PERIOD_OVER,
            f"grace period ended on {row.grace_ends:%Y-%m-%d}: the next rotation retires it",
        )


def _expiry_findings(
    record: KeyRecord, row: KeyRow, now: datetime, finding: FindingMaker
) -> Iterator[Finding]:
    if record.not_after is None:
        yield finding(
            FindingCode.CERTIFICATE_UNKNOWN,
            "the key was adopted without its certificate: its expiry is unknown",
        )
    elif now >= record.not_after:
        yield finding(
            FindingCode.CERTIFICATE_EXPIRED,
            f"certificate expired on {record.not_after:%Y-%m-%d} and the key is still active",
        )
    elif record.not_before is not None and now < record.not_before:
        yield finding(
            FindingCode.CERTIFICATE_NOT_YET_VALID,
            f"certificate is not valid before {record.not_before:%Y-%m-%d %H:%M} UTC and the key "
            "is current: Connect may refuse to encrypt with it",
        )
    elif row.renew_at is not None and now >= row.renew_at:
        yield finding(
            FindingCode.CERTIFICATE_EXPIRING,
            f"certificate expires on {record.not_after:%Y-%m-%d} "
            f"({row.days_to_expiry:.0f} days), inside the renew window",
        )


def instance_findings(instance: InstanceFacts, by_id: Mapping[str, KeyRow]) -> Iterator[Finding]:
    """What the instance's lock, rotation, associations and flows say about its keys."""
    instance_id = instance.instance_id

    def finding(code: FindingCode, message: str, key_id: str | None = None) -> Finding:
        return Finding(code, instance_id, key_id, message)

    if instance.unreadable is not None:
        yield finding(
            FindingCode.INSTANCE_UNREADABLE, f"{instance.unreadable}: its keys are unchecked"
        )
    lock = instance.lock
    if lock is not None and lock.stale_reason is not None:
        yield finding(
            FindingCode.STALE_LOCK, f"lock {lock.description} is stale: {lock.stale_reason}"
        )
    if instance.rotation_interrupted and (lock is None or lock.stale_reason is not None):
        yield finding(FindingCode.INTERRUPTED_ROTATION, instance.rotation)
    for flow in instance.flows:
        for drift in flow.drift:
            yield finding(FindingCode.FLOW_DRIFT, f"{drift}: the rotator did not make this change")
    referenced: defaultdict[str, list[str]] = defaultdict(list)
    for flow in instance.flows:
        for key_id in flow.key_ids:
            referenced[key_id].append(flow.flow)
    for key_id, flows in sorted(referenced.items()):
        row = by_id[key_id]
        where = ", ".join(flows)
        if row.state == KeyState.DESTROYED:
            yield finding(
                FindingCode.DESTROYED_KEY_REFERENCED,
                f"destroyed but still used by {where}: contacts encrypted with it cannot be "
                "decrypted",
                key_id,
            )
        elif not row.private_key_stored:
            yield finding(
                FindingCode.REFERENCED_KEY_MISSING,
                f"used by {where} but its private key is not in the keyring: contacts "
                "encrypted with it cannot be decrypted",
                key_id,
            )
    for key_id in instance.associations:
        if key_id not in referenced and not by_id[key_id].private_key_stored:
            yield finding(
                FindingCode.ASSOCIATION_WITHOUT_PRIVATE_KEY,
                "associated with Connect but no private key is stored: any flow that uses it "
                "makes contacts that cannot be decrypted",
                key_id,
            )


def staging_findings(facts: KeyringFacts) -> Iterator[Finding]:
    """Staged private keys that no unfinished rotation owns (`rotator rotate` removes them)."""
    for rotation_id in facts.orphaned_staging:
        yield Finding(
            FindingCode.ORPHANED_STAGING,
            None,
            None,
            f"a private key is staged under rotation {rotation_id}, which no unfinished rotation "
            "owns; the next rotator rotate removes it",
        )


def protection_findings(facts: KeyringFacts, options: ReportOptions) -> Iterator[Finding]:
    """SecureStrings under the prefix whose KMS key is not the configured one."""
    configured = options.kms_key_id
    if configured is None:
        return
    layout = KeyringLayout(facts.prefix)
    instance_of = {r.key_id: r.instance_id for r in facts.records}
    for name, kms_key_id in sorted(facts.protection.items()):
        if not same_kms_key(kms_key_id, configured):
            key_id = layout.key_id_of(name)
            yield Finding(
                FindingCode.KMS_KEY_MISMATCH,
                instance_of.get(key_id or ""),
                key_id,
                f"{name} is encrypted with KMS key {kms_key_id or 'unknown'}, not {configured}",
            )


def same_kms_key(reported: str, configured: str) -> bool:
    """Equal as SSM reports them, ARNs reduced to their key ID or alias. SSM keeps the form
    the key was given in; an alias and a key ID of the same key are not resolved here."""
    return _kms_short(reported) == _kms_short(configured)


def _kms_short(kms_key_id: str) -> str:
    if kms_key_id.startswith("arn:"):
        kms_key_id = kms_key_id.split(":", 5)[-1]
    return kms_key_id.removeprefix("key/")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
