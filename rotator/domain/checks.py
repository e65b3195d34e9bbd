"""The rules over a KeyringState: verify's invariants and the report's findings, one set, pure."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rotator.domain.crypto_architecture import kek_findings
from rotator.domain.custodians import custodians
from rotator.domain.findings import Finding, FindingCode
from rotator.domain.fleet import Partition
from rotator.domain.keys import ALLOWED_KEY_SIZES
from rotator.domain.lambda_functions import (
    DECRYPT_ALIAS,
    LATEST,
    FunctionReference,
    parse_function,
    same_function,
)
from rotator.domain.lifecycle import KeyRecord, KeyState
from rotator.domain.policy import (
    RotationPolicy,
    cryptoperiod_end,
    key_age_start,
    renew_window_start,
)
from rotator.domain.state import FlowState, InstanceState, KeyringState, ProtectedKey
from rotator.domain.stored_ciphertext import last_inventories
from rotator.domain.window import RotationSchedule

# PCI DSS counts RSA of at least 2048 bits as strong cryptography; raise it with --min-key-size.
DEFAULT_MIN_KEY_SIZE = min(ALLOWED_KEY_SIZES)
# States whose key encrypts now or may again (rollback): the ones its size and age matter for.
ENCRYPTING_STATES = frozenset({KeyState.PENDING, KeyState.ACTIVE, KeyState.PREVIOUS})
# States whose key Connect should hold: the current key and the previous one.
ASSOCIATED_STATES = frozenset({KeyState.ACTIVE, KeyState.PREVIOUS})


@dataclass(frozen=True)
class ReportOptions:
    """The policy the keys are held against."""

    policy: RotationPolicy = field(default_factory=RotationPolicy)
    grace: timedelta = timedelta(days=7)
    min_key_size: int = DEFAULT_MIN_KEY_SIZE
    kms_key_id: str | None = None  # None: SSM's default key; no KMS finding is raised
    # When due rotations may run (rotation window, freezes); None: whenever they are due.
    schedule: RotationSchedule | None = None
    # The SHA-256 of the shipped key-custodian responsibilities (None: not known here).
    custodian_text_sha256: str | None = None
    # The registered stores of Connect ciphertexts (ROTATOR_CIPHERTEXT_STORES): the report
    # shows their last inventory per key; none registered, no stored-ciphertext finding.
    stores: tuple[str, ...] = ()


# -- verify's invariants ------------------------------------------------------------------------

# Each invariant `rotator verify` checks, and the findings that break it. A broken invariant
# IS the finding (see Verdict): the report shows every one (tests/test_verify_report.py).
ONE_CURRENT_KEY = "one current key"
CERTIFICATE_VALID = "current certificate valid"
NO_INTERRUPTED_ROTATION = "no interrupted rotation"
NO_STALE_LOCK = "no stale lock"
READABLE = "readable"
AT_MOST_TWO = "at most two associations"
NO_ORPHANED_ASSOCIATION = "no orphaned association"
STATE_MATCHES = "state matches Connect"
FLOWS_AS_MANAGED = "flows as managed"
ON_CURRENT_KEY = "flows use the current key"  # only ever holds: a block elsewhere is drift
REFERENCED_DECRYPT = "every referenced key decrypts"
PRIVATE_KEY_STORED = "private key stored"
NO_ORPHANED_STAGING = "no orphaned staged key"

_REFERENCED = frozenset(
    {
        FindingCode.DESTROYED_KEY_REFERENCED,
        FindingCode.REFERENCED_KEY_MISSING,
        FindingCode.KEY_RECORD_MISSING,
        FindingCode.CANARY_FAILED,
    }
)
_ASSOCIATED = _REFERENCED | {
    FindingCode.ASSOCIATION_ADDED,
    FindingCode.ASSOCIATION_REMOVED,
    FindingCode.ASSOCIATION_KEY_MISMATCH,
    FindingCode.ASSOCIATION_WITHOUT_PRIVATE_KEY,
    FindingCode.KEY_RECORD_MISSING,
    FindingCode.STATE_MISMATCH,
}
INVARIANT_CODES: dict[str, frozenset[FindingCode]] = {
    ONE_CURRENT_KEY: frozenset(
        {FindingCode.CURRENT_KEY_MISMATCH, FindingCode.DESTROYED_KEY_REFERENCED}
    ),
    CERTIFICATE_VALID: frozenset(
        {FindingCode.CERTIFICATE_EXPIRED, FindingCode.CERTIFICATE_NOT_YET_VALID}
    ),
    NO_INTERRUPTED_ROTATION: frozenset({FindingCode.INTERRUPTED_ROTATION}),
    NO_STALE_LOCK: frozenset({FindingCode.STALE_LOCK}),
    READABLE: frozenset({FindingCode.INSTANCE_UNREADABLE}),
    AT_MOST_TWO: frozenset({FindingCode.TOO_MANY_ASSOCIATIONS}),
    NO_ORPHANED_ASSOCIATION: _ASSOCIATED,
    STATE_MATCHES: _ASSOCIATED | {FindingCode.RETIRED_KEY_ASSOCIATED},
    FLOWS_AS_MANAGED: frozenset({FindingCode.FLOW_DRIFT, FindingCode.FLOW_CERTIFICATE_MISMATCH}),
    ON_CURRENT_KEY: frozenset(),
    REFERENCED_DECRYPT: _REFERENCED,
    PRIVATE_KEY_STORED: frozenset(
        {
            FindingCode.REFERENCED_KEY_MISSING,
            FindingCode.ASSOCIATION_WITHOUT_PRIVATE_KEY,
            FindingCode.PRIVATE_KEY_MISSING,
        }
    ),
    NO_ORPHANED_STAGING: frozenset({FindingCode.ORPHANED_STAGING}),
}


@dataclass(frozen=True)
class Verdict:
    """One invariant for one subject: it holds (finding None; `message` says what was seen),
    or the finding says why not."""

    check: str
    instance_id: str | None
    message: str
    finding: Finding | None = None

    @property
    def holds(self) -> bool:
        return self.finding is None


def invariants(state: KeyringState, now: datetime, instance_id: str | None = None) -> list[Verdict]:
    """Every invariant over the state's managed instances, in `rotator verify`'s order; the
    keys' and staging's checks are narrowed to `instance_id` if given."""
    verdicts: list[Verdict] = []
    for instance in state.instances:
        verdicts.extend(_instance_invariants(state, instance, now))
    for record in state.records:
        if not record.decrypts or instance_id not in (None, record.instance_id):
            continue
        if not state.private_key_stored(record.key_id):
            verdicts.append(
                Verdict(
                    PRIVATE_KEY_STORED,
                    record.instance_id,
                    "",
                    _missing_private_key(state, record.instance_id, record.key_id),
                )
            )
    verdicts.extend(
        Verdict(NO_ORPHANED_STAGING, None, "", finding) for finding in staging_findings(state)
    )
    return verdicts


def _instance_invariants(
    state: KeyringState, instance: InstanceState, now: datetime
) -> Iterator[Verdict]:
    instance_id = instance.instance_id

    def holds(check: str, message: str) -> Verdict:
        return Verdict(check, instance_id, message)

    def broken(check: str, finding: Finding) -> Verdict:
        return Verdict(check, instance_id, finding.message, finding)

    mine = [r for r in state.records if r.instance_id == instance_id]
    current = instance.current_key_id
    active = [r.key_id for r in mine if r.state is KeyState.ACTIVE]
    seen = f"current {current or 'none'}, active {', '.join(active) or 'none'}"
    if current is not None and active == [current]:
        yield holds(ONE_CURRENT_KEY, seen)
    else:
        yield broken(ONE_CURRENT_KEY, _no_single_current_key(state, instance, seen))
    record = None if current is None else state.record(current)
    if record is not None:
        finding = certificate_finding(record, now, current=True)
        if finding is None:
            yield holds(CERTIFICATE_VALID, _certificate_seen(record))
        else:
            yield broken(CERTIFICATE_VALID, finding)

    rotation = instance.rotation_state
    if instance.stopped_rotation is not None:
        yield broken(NO_INTERRUPTED_ROTATION, _interrupted(instance))
    elif rotation is not None and not rotation.finished:
        yield holds(
            NO_INTERRUPTED_ROTATION,
            f"rotation {rotation.rotation_id} is running (at step {rotation.step})",
        )
    else:
        yield holds(NO_INTERRUPTED_ROTATION, "none")

    lock = instance.lock
    if lock is not None and lock.stale_reason is not None:
        yield broken(NO_STALE_LOCK, _stale_lock(instance))
    else:
        yield holds(NO_STALE_LOCK, "no lock" if lock is None else f"lock {lock.description}")

    if instance.unreadable is not None:  # nothing Connect holds can be judged
        yield broken(READABLE, _unreadable(instance))
        return

    count = len(instance.associations)
    if count <= 2:
        yield holds(AT_MOST_TWO, f"{count} associated")
    else:
        yield broken(
            AT_MOST_TWO,
            Finding(
                FindingCode.TOO_MANY_ASSOCIATIONS,
                instance_id,
                None,
                f"{count} keys associated ({', '.join(instance.associations)}): the current "
                "and the previous key at most",
            ),
        )
    for key_id in instance.associations:
        finding = _association_problem(state, instance, key_id)
        if finding is None:
            yield holds(NO_ORPHANED_ASSOCIATION, f"association {key_id}: in the keyring")
        else:
            yield broken(NO_ORPHANED_ASSOCIATION, finding)
    for record in mine:
        finding = _state_problem(state, instance, record)
        if finding is not None:
            yield broken(STATE_MATCHES, finding)

    for flow in instance.flows:
        for finding in _drift_findings(instance_id, flow.drift):
            yield broken(FLOWS_AS_MANAGED, finding)
        for finding in flow_certificate_findings(state, instance_id, flow):
            yield broken(FLOWS_AS_MANAGED, finding)
        for identifier in flow.as_managed:
            yield holds(ON_CURRENT_KEY, f"{flow.flow} block {identifier} -> {current}")
    for key_id in sorted(instance.referenced()):
        finding = _referenced_problem(state, instance, key_id)
        if finding is not None:
            yield broken(REFERENCED_DECRYPT, finding)
        elif key_id in state.canaries:
            yield holds(REFERENCED_DECRYPT, state.canaries[key_id].message)
        else:
            yield holds(REFERENCED_DECRYPT, f"key {key_id}: private key stored (no canary run)")


# -- the findings each problem is (shared by the invariants and the report) --------------------


def _no_single_current_key(state: KeyringState, instance: InstanceState, seen: str) -> Finding:
    """A destroyed current key that a flow uses is said once, as the more urgent finding."""
    current = instance.current_key_id
    if current is not None and current in instance.referenced():
        record = state.record(current)
        if record is not None and record.state is KeyState.DESTROYED:
            referenced = _referenced_problem(state, instance, current)
            if referenced is not None:
                return referenced
    return Finding(
        FindingCode.CURRENT_KEY_MISMATCH,
        instance.instance_id,
        current,
        f"{seen}: the current key should be the one active key (an interrupted rotation or a "
        "hand edit)",
    )


def _referenced_problem(
    state: KeyringState, instance: InstanceState, key_id: str
) -> Finding | None:
    """Why contacts encrypted with a key a managed flow uses could not be decrypted."""
    where = ", ".join(instance.referenced().get(key_id, ()))
    record = state.record(key_id)

    def finding(code: FindingCode, message: str) -> Finding:
        return Finding(code, instance.instance_id, key_id, message)

    if record is not None and record.state is KeyState.DESTROYED:
        return finding(
            FindingCode.DESTROYED_KEY_REFERENCED,
            f"destroyed but still used by {where}: contacts encrypted with it cannot be decrypted",
        )
    if not state.private_key_stored(key_id):
        return finding(
            FindingCode.REFERENCED_KEY_MISSING,
            f"used by {where} but its private key is not in the keyring: contacts "
            "encrypted with it cannot be decrypted",
        )
    if record is None:
        return finding(
            FindingCode.KEY_RECORD_MISSING,
            f"used by {where}; its private key is stored but the keyring has no record of it",
        )
    canary = state.canaries.get(key_id)
    if canary is not None and not canary.ok:
        return finding(FindingCode.CANARY_FAILED, canary.message)
    return None


def _association_without_private_key(instance_id: str | None, key_id: str) -> Finding:
    return Finding(
        FindingCode.ASSOCIATION_WITHOUT_PRIVATE_KEY,
        instance_id,
        key_id,
        "associated with Connect but no private key is stored: any flow that uses it "
        "makes contacts that cannot be decrypted",
    )


def _association_problem(
    state: KeyringState, instance: InstanceState, key_id: str
) -> Finding | None:
    """What is wrong with one key Connect holds: the keyring does not hold it, or not the
    same key, or it no longer decrypts."""
    record = state.record(key_id)
    sha256 = instance.public_keys.get(key_id)
    if record is not None and sha256 is not None and record.public_key_sha256 != sha256:
        return Finding(
            FindingCode.ASSOCIATION_KEY_MISMATCH,
            instance.instance_id,
            key_id,
            "Connect holds another public key under this key ID than the keyring: contacts "
            "encrypted with it cannot be decrypted",
        )
    if record is not None and record.decrypts:
        return None
    if key_id in instance.referenced():
        return _referenced_problem(state, instance, key_id)
    if record is None and not state.private_key_stored(key_id):
        added = association_added(instance, key_id)
        if added is not None:
            return added
    if not state.private_key_stored(key_id):
        return _association_without_private_key(instance.instance_id, key_id)
    if record is None:
        return Finding(
            FindingCode.KEY_RECORD_MISSING,
            instance.instance_id,
            key_id,
            "associated with Connect; its private key is stored but the keyring has no "
            "record of it",
        )
    return _state_mismatch(instance.instance_id, record, associated=True)


def _state_problem(
    state: KeyringState, instance: InstanceState, record: KeyRecord
) -> Finding | None:
    """A keyring key whose state says Connect should (not) hold it, and Connect disagrees."""
    associated = record.key_id in instance.associations
    if (record.state in ASSOCIATED_STATES) == associated:
        return None
    if record.state is KeyState.RETIRED:
        return _retired_associated(record)
    if record.state is KeyState.DESTROYED:
        found = _association_problem(state, instance, record.key_id)
        if found is not None:
            return found
    if not associated:
        removed = association_removed(instance, record)
        if removed is not None:
            return removed
    return _state_mismatch(instance.instance_id, record, associated=associated)


def _state_mismatch(instance_id: str | None, record: KeyRecord, *, associated: bool) -> Finding:
    return Finding(
        FindingCode.STATE_MISMATCH,
        instance_id,
        record.key_id,
        f"key {record.key_id} is {record.state} but "
        + ("associated with Connect" if associated else "not associated with Connect"),
    )


def _retired_associated(record: KeyRecord) -> Finding:
    return Finding(
        FindingCode.RETIRED_KEY_ASSOCIATED,
        record.instance_id,
        record.key_id,
        "key is retired but still associated with Connect: disassociate it",
    )


def _missing_private_key(state: KeyringState, instance_id: str | None, key_id: str) -> Finding:
    """A key that still decrypts has no private key: said as what it breaks."""
    instance = state.instance(instance_id)
    if instance is not None and key_id in instance.referenced():
        referenced = _referenced_problem(state, instance, key_id)
        if referenced is not None:
            return referenced
    if instance is not None and key_id in instance.associations:
        return _association_without_private_key(instance_id, key_id)
    return Finding(
        FindingCode.PRIVATE_KEY_MISSING,
        instance_id,
        key_id,
        "its private key is missing from the keyring: contacts encrypted with it cannot be "
        "decrypted",
    )


def _interrupted(instance: InstanceState) -> Finding:
    return Finding(FindingCode.INTERRUPTED_ROTATION, instance.instance_id, None, instance.rotation)


def _stale_lock(instance: InstanceState) -> Finding:
    lock = instance.lock
    assert lock is not None  # noqa: S101 - only called for a held lock
    return Finding(
        FindingCode.STALE_LOCK,
        instance.instance_id,
        None,
        f"lock {lock.description} is stale: {lock.stale_reason}",
    )


def _unreadable(instance: InstanceState) -> Finding:
    return Finding(
        FindingCode.INSTANCE_UNREADABLE,
        instance.instance_id,
        None,
        f"{instance.unreadable}: its keys are unchecked",
    )


def _drift_findings(instance_id: str, drift: tuple[str, ...]) -> Iterator[Finding]:
    for what in drift:
        yield Finding(
            FindingCode.FLOW_DRIFT,
            instance_id,
            None,
            f"{what}: the rotator did not make this change",
        )


def staging_findings(state: KeyringState) -> Iterator[Finding]:
    """Staged private keys that no unfinished rotation owns (`rotator rotate` removes them)."""
    for rotation_id in state.orphaned_staging:
        yield Finding(
            FindingCode.ORPHANED_STAGING,
            None,
            None,
            f"a private key is staged under rotation {rotation_id}, which no unfinished rotation "
            "owns; the next rotator rotate removes it",
        )


def certificate_finding(record: KeyRecord, now: datetime, *, current: bool) -> Finding | None:
    """Connect encrypts with the certificate in the flow: it must be valid now."""
    if record.not_after is not None and now >= record.not_after:
        return Finding(
            FindingCode.CERTIFICATE_EXPIRED,
            record.instance_id,
            record.key_id,
            f"certificate expired on {record.not_after:%Y-%m-%d} and the key is "
            + ("still active" if record.state is KeyState.ACTIVE else "current"),
        )
    if record.not_before is not None and now < record.not_before:
        return Finding(
            FindingCode.CERTIFICATE_NOT_YET_VALID,
            record.instance_id,
            record.key_id,
            f"certificate is not valid before {record.not_before:%Y-%m-%d %H:%M} UTC and the "
            f"key is {'current' if current else 'active'}: Connect may refuse to encrypt with it",
        )
    return None


def _certificate_seen(record: KeyRecord) -> str:
    if record.not_after is None:
        return f"key {record.key_id}: certificate unknown (adopted without it)"
    return f"key {record.key_id}: valid until {record.not_after:%Y-%m-%d}"


# -- the report's findings: every broken invariant, and the policy's own -----------------------


def findings(state: KeyringState, options: ReportOptions, now: datetime) -> list[Finding]:
    """Every finding, each once, most severe first: the broken invariants (what `verify`
    fails on), then what the policy adds (dates, sizes, grace, KMS key)."""
    found = [v.finding for v in invariants(state, now) if v.finding is not None]
    current = set(state.current.values())
    associated = {k for i in state.instances for k in i.associations}
    for record in state.records:
        found.extend(key_findings(record, options, now, record.key_id in current, associated))
    found.extend(protection_findings(state, options))
    found.extend(copy_findings(state))
    found.extend(shared_key_findings(state.records))
    found.extend(custodian_findings(state, now))
    found.extend(kek_findings(state))
    found.extend(stored_ciphertext_findings(state, options))
    found.extend(unqualified_decrypt_findings(state))
    unique = list(dict.fromkeys(found))
    unique.sort(key=lambda f: (f.severity.rank, f.code, f.instance_id or "", f.key_id or ""))
    return unique


def key_findings(
    record: KeyRecord,
    options: ReportOptions,
    now: datetime,
    current: bool,
    associated: set[str],
) -> Iterator[Finding]:
    """What is wrong with one keyring key on its own: dates, size, leftover association."""

    def finding(code: FindingCode, message: str) -> Finding:
        return Finding(code, record.instance_id, record.key_id, message)

    state = record.state
    if state is KeyState.ACTIVE:
        if record.not_after is None:
            yield finding(
                FindingCode.CERTIFICATE_UNKNOWN,
                "the key was adopted without its certificate: its expiry is unknown",
            )
        else:
            yield from _dates(record, options, now, current)
        ends = cryptoperiod_end(record, options.policy)
        if ends is not None and now >= ends:
            age = (now - key_age_start(record)).total_seconds() / 86400
            yield finding(
                FindingCode.CRYPTOPERIOD_EXCEEDED,
                f"key is {age:.0f} days old; its {options.policy.cryptoperiod.days}-day "
                f"cryptoperiod ended on {ends:%Y-%m-%d}",
            )
    elif current:
        invalid = certificate_finding(record, now, current=True)
        if invalid is not None:
            yield invalid
    if state in ENCRYPTING_STATES and record.key_size < options.min_key_size:
        yield finding(
            FindingCode.KEY_BELOW_MINIMUM_SIZE,
            f"RSA-{record.key_size} is below the minimum of {options.min_key_size} bits",
        )
    if state is KeyState.RETIRED and record.key_id in associated:
        yield _retired_associated(record)
    grace_ends = grace_end(record, options)
    if grace_ends is not None and now >= grace_ends:
        yield finding(
            FindingCode.GRACE_PERIOD_OVER,
            f"grace period ended on {grace_ends:%Y-%m-%d}: the next rotation retires it",
        )


def _dates(
    record: KeyRecord,
    options: ReportOptions,
    now: datetime,
    current: bool,
) -> Iterator[Finding]:
    invalid = certificate_finding(record, now, current=current)
    if invalid is not None:
        yield invalid
        return
    renew_at = renew_window_start(record, options.policy)
    days = record.days_to_expiry(now)
    if renew_at is not None and now >= renew_at and record.not_after is not None:
        yield Finding(
            FindingCode.CERTIFICATE_EXPIRING,
            record.instance_id,
            record.key_id,
            f"certificate expires on {record.not_after:%Y-%m-%d} "
            f"({days or 0:.0f} days), inside the renew window",
        )


def grace_end(record: KeyRecord, options: ReportOptions) -> datetime | None:
    """When a previous key's grace period ends (None for any other state)."""
    since = record.entered(KeyState.PREVIOUS)
    if record.state is not KeyState.PREVIOUS or since is None:
        return None
    return since + options.grace


def protection_findings(state: KeyringState, options: ReportOptions) -> Iterator[Finding]:
    """SecureStrings under the prefix whose KMS key is not the configured one."""
    configured = options.kms_key_id
    if configured is None:
        return
    instance_of = {r.key_id: r.instance_id for r in state.records}
    stored: list[tuple[str | None, ProtectedKey]] = list(state.protection.keys.items())
    staged: list[tuple[str | None, ProtectedKey]] = [
        (None, protected) for protected in state.protection.staged.values()
    ]
    for key_id, protected in sorted(stored + staged, key=lambda pair: pair[1].location):
        if not same_kms_key(protected.kms_key_id, configured):
            yield Finding(
                FindingCode.KMS_KEY_MISMATCH,
                instance_of.get(key_id or ""),
                key_id,
                f"{protected.location} is encrypted with KMS key "
                f"{protected.kms_key_id or 'unknown'}, not {configured}",
            )


def copy_findings(state: KeyringState) -> Iterator[Finding]:
    """Parameters outside the keyring that still hold an adopted private key (3.6.1.4): the
    finding names the parameter, never its value (which is not even read)."""
    for copy in state.copies:
        record = state.record(copy.key_ids[0]) if copy.key_ids else None
        yield Finding(
            FindingCode.PRIVATE_KEY_COPY,
            None if record is None else record.instance_id,
            copy.key_ids[0] if copy.key_ids else None,
            f"parameter {copy.parameter} still holds the private key adopted as key "
            f"{', '.join(copy.key_ids)}: delete it once the adoption is verified",
        )
    yield from function_copy_findings(state)


def function_copy_findings(state: KeyringState) -> Iterator[Finding]:
    """Environment variables of the decrypt function holding private-key text (3.6.1.4):
    the finding names the function and the variable, never the value (the adapter keeps it)."""
    checked = state.decrypt_function
    environment = None if checked is None else checked.environment
    if environment is None:
        return
    for variable in environment.private_key_variables:
        yield Finding(
            FindingCode.PRIVATE_KEY_COPY,
            None,
            None,
            f"environment variable {variable} of the decrypt function {environment.function} "
            "holds a private key: the keyring is its one home; remove the variable",
        )


def shared_key_findings(records: tuple[KeyRecord, ...]) -> Iterator[Finding]:
    """One public key (so one private key) under two key IDs or instances: PCI DSS forbids a
    key shared between environments, e.g. production and test."""
    by_fingerprint: dict[str, list[KeyRecord]] = {}
    for record in records:
        by_fingerprint.setdefault(record.public_key_sha256, []).append(record)
    for fingerprint, group in sorted(by_fingerprint.items()):
        if len(group) < 2:
            continue
        group.sort(key=lambda r: (r.key_id, r.instance_id or ""))
        holders = ", ".join(f"{r.key_id} ({r.instance_id or 'no instance'})" for r in group)
        instances = {r.instance_id for r in group}
        yield Finding(
            FindingCode.KEY_SHARED,
            group[0].instance_id if len(instances) == 1 else None,
            group[0].key_id,
            f"keys {holders} share one key pair (public key SHA-256 {fingerprint[:16]}...): "
            "give each its own key",
        )


# -- the fleet (issue 12): what only a look across accounts and regions finds ----------------------


@dataclass(frozen=True, order=True)
class KeyHolder:
    """Where a key pair was found: an account's region, a key ID and its instance."""

    partition: Partition
    key_id: str
    instance_id: str | None

    def __str__(self) -> str:
        return f"{self.partition} {self.key_id} ({self.instance_id or 'no instance'})"

    def to_dict(self) -> dict[str, str | None]:
        return {
            "account": self.partition.account,
            "region": self.partition.region,
            "instance_id": self.instance_id,
            "key_id": self.key_id,
        }


@dataclass(frozen=True)
class FleetFinding:
    """A finding about the fleet rather than one keyring: an account's region that could not be
    read (`partition`), or one key pair held in several account regions (`holders`)."""

    finding: Finding
    partition: Partition | None = None
    holders: tuple[KeyHolder, ...] = ()

    @property
    def partitions(self) -> tuple[Partition, ...]:
        """The account regions it concerns, each once, in order."""
        found = [self.partition] if self.partition is not None else []
        found += [holder.partition for holder in self.holders]
        return tuple(dict.fromkeys(found))

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.finding.to_dict(),
            "account": None if self.partition is None else self.partition.account,
            "region": None if self.partition is None else self.partition.region,
            "holders": [holder.to_dict() for holder in self.holders],
        }


def fleet_findings(
    states: Mapping[Partition, KeyringState], unreadable: Mapping[Partition, str]
) -> list[FleetFinding]:
    """The fleet's own findings, most severe first: each account region that could not be read
    (why, as the caller describes it), and each key pair found in more than one account region
    (PCI DSS 3.6.1.1: no key shared between production and test). One keyring's duplicates are
    that keyring's `key-shared` already."""
    found = [
        FleetFinding(
            Finding(
                FindingCode.PARTITION_UNREADABLE,
                None,
                None,
                f"account {partition.account}, region {partition.region} could not be read: "
                f"{why}; its keys, instances and findings are missing from this report",
            ),
            partition=partition,
        )
        for partition, why in unreadable.items()
    ]
    found += shared_across_partitions(states)
    found.sort(key=lambda f: (f.finding.severity.rank, f.finding.code, f.partitions))
    return found


def shared_across_partitions(states: Mapping[Partition, KeyringState]) -> list[FleetFinding]:
    """`key-shared` across the fleet: one public key (so one private key) in two account regions,
    from the keyrings' records and the public keys Connect holds for keys no record describes.
    Named by account, region, instance and key ID, with a fingerprint prefix: never material."""
    by_fingerprint: dict[str, set[KeyHolder]] = {}
    for partition, state in states.items():
        for record in state.records:
            holder = KeyHolder(partition, record.key_id, record.instance_id)
            by_fingerprint.setdefault(record.public_key_sha256, set()).add(holder)
        recorded = {record.key_id for record in state.records}
        for instance in state.instances:
            for key_id, fingerprint in instance.public_keys.items():
                if key_id not in recorded:
                    holder = KeyHolder(partition, key_id, instance.instance_id)
                    by_fingerprint.setdefault(fingerprint, set()).add(holder)
    found = []
    for fingerprint, holders in sorted(by_fingerprint.items()):
        where = sorted(holders)
        partitions = sorted({holder.partition for holder in where})
        if len(partitions) < 2:
            continue
        found.append(
            FleetFinding(
                Finding(
                    FindingCode.KEY_SHARED,
                    None,
                    None,
                    f"one key pair (public key SHA-256 {fingerprint[:16]}...) in "
                    f"{len(partitions)} account regions: {', '.join(str(h) for h in where)}: "
                    "give each its own key",
                ),
                holders=tuple(where),
            )
        )
    return found


def same_kms_key(reported: str, configured: str) -> bool:
    """Equal as SSM reports them, ARNs reduced to their key ID or alias. SSM keeps the form
    the key was given in; an alias and a key ID of the same key are not resolved here."""
    return _kms_short(reported) == _kms_short(configured)


def _kms_short(kms_key_id: str) -> str:
    if kms_key_id.startswith("arn:"):
        kms_key_id = kms_key_id.split(":", 5)[-1]
    return kms_key_id.removeprefix("key/")


# -- drift and substitution (PCI DSS 3.7.7): what the rotator recorded against what is live ----

# The findings that say Connect differs from what the rotator recorded and wrote: the rotation
# job's drift check counts these (DriftFindings), and names each critical one in a notice.
DRIFT_CODES = frozenset(
    {
        FindingCode.FLOW_DRIFT,
        FindingCode.FLOW_CERTIFICATE_MISMATCH,
        FindingCode.ASSOCIATION_ADDED,
        FindingCode.ASSOCIATION_REMOVED,
        FindingCode.ASSOCIATION_KEY_MISMATCH,
        FindingCode.KEY_RECORD_MISSING,
        FindingCode.STATE_MISMATCH,
        FindingCode.TOO_MANY_ASSOCIATIONS,
        FindingCode.RETIRED_KEY_ASSOCIATED,
    }
)


def drift_findings(state: KeyringState, now: datetime) -> list[Finding]:
    """The broken invariants that are drift: Connect's associations and the managed blocks'
    keys and certificates against the keyring's records; each once, most severe first."""
    found = [
        v.finding
        for v in invariants(state, now)
        if v.finding is not None and v.finding.code in DRIFT_CODES
    ]
    unique = list(dict.fromkeys(found))
    unique.sort(key=lambda f: (f.severity.rank, f.code, f.instance_id or "", f.key_id or ""))
    return unique


def association_added(instance: InstanceState, key_id: str) -> Finding | None:
    """A key Connect holds that the keyring has no trace of (no record, no private key): the
    rotator associates a key only inside a rotation, which records it next. While a rotation
    is unfinished it may be that rotation's (None: the interrupted rotation is the finding)."""
    if instance.rotation_interrupted:
        return None
    return Finding(
        FindingCode.ASSOCIATION_ADDED,
        instance.instance_id,
        key_id,
        f"key {key_id} is associated with Connect but the rotator did not associate it (no "
        "record, no private key, no rotation running): a key added by hand, or a substitution",
    )


def association_removed(instance: InstanceState, record: KeyRecord) -> Finding | None:
    """A current or previous key Connect no longer holds: the rotator disassociates a key only
    after recording it retired. While a rotation is unfinished it may be that rotation's."""
    if record.state not in ASSOCIATED_STATES or instance.rotation_interrupted:
        return None
    return Finding(
        FindingCode.ASSOCIATION_REMOVED,
        instance.instance_id,
        record.key_id,
        f"key {record.key_id} is {record.state} but no longer associated with Connect, and the "
        "rotator did not disassociate it: removed by hand",
    )


def flow_certificate_findings(
    state: KeyringState, instance_id: str, flow: FlowState
) -> Iterator[Finding]:
    """A managed block on the right key ID whose certificate is not the one the keyring
    recorded for that key: Connect encrypts with the block's certificate, so another public
    key means contacts the keyring cannot decrypt (or someone else can)."""
    for block in flow.certificates:
        if block.identifier not in flow.as_managed:
            continue  # a block on another key is flow drift already
        record = state.record(block.key_id)
        if record is None:
            continue  # the key's missing record is its own finding
        where = f"{flow.flow} block {block.identifier}"
        if block.public_key_sha256 is None:
            problem = "holds no readable certificate"
        elif block.public_key_sha256 != record.public_key_sha256:
            problem = (
                "encrypts with a certificate for another public key than the keyring's: "
                "contacts it encrypts cannot be decrypted by the rotator's key"
            )
        elif record.certificate_sha256 not in (None, block.certificate_sha256):
            problem = "holds another certificate (same public key) than the one the rotator wrote"
        else:
            continue
        yield Finding(
            FindingCode.FLOW_CERTIFICATE_MISMATCH,
            instance_id,
            block.key_id,
            f"{where} names key {block.key_id} but {problem}: the rotator did not make this change",
        )


# -- custodians (PCI DSS 3.7.8) -----------------------------------------------------------------


def custodian_findings(state: KeyringState, now: datetime) -> Iterator[Finding]:
    """A person (not a scheduled job's role) who ran a key operation in the 12 months before
    `now` with no acknowledgement of the custodian responsibilities in those 12 months."""
    for custodian in custodians(state.events, now, with_acknowledgers=False):
        if custodian.unacknowledged:
            yield Finding(
                FindingCode.CUSTODIAN_UNACKNOWLEDGED,
                None,
                None,
                f"{custodian.principal} ran {custodian.operations} key operation(s) in the 12 "
                f"months to {now:%Y-%m-%d} and {custodian.describe()}: run `rotator custodian "
                "acknowledge` with its credentials",
            )


# -- stored ciphertexts (issue 13) --------------------------------------------------------------

# The states whose stored ciphertexts should be gone: retired ones are destroyed next, and a
# destroyed key's values no longer decrypt.
RETIRED_STATES = frozenset({KeyState.RETIRED, KeyState.DESTROYED})
EMERGENCY_REASON = "emergency"  # how rotation.py begins the reason of an emergency retire


def compromised_keys(state: KeyringState) -> set[str]:
    """Keys taken out of service as compromised: the old key of an emergency rotation, or a
    key retired inside its grace period with --emergency (both recorded reasons start so)."""
    found = {
        run.old_key_id
        for instance in state.instances
        for run in instance.rotations
        if run.emergency and run.old_key_id
    }
    for record in state.records:
        if any(
            t.state is KeyState.RETIRED and t.reason.startswith(EMERGENCY_REASON)
            for t in record.history
        ):
            found.add(record.key_id)
    return found


def stored_ciphertext_findings(state: KeyringState, options: ReportOptions) -> Iterator[Finding]:
    """A retired, destroyed or compromised key whose ciphertexts the newest inventory of the
    registered stores still counted (from the history; nothing is read from the stores)."""
    if not options.stores:
        return
    counted = last_inventories(state.events, options.stores)
    compromised = compromised_keys(state)
    for record in state.records:
        last = counted.get(record.key_id)
        if last is None or last.count <= 0:
            continue
        if record.key_id in compromised:
            code = FindingCode.STORED_CIPHERTEXTS_UNDER_COMPROMISED_KEY
        elif record.state in RETIRED_STATES:
            code = FindingCode.STORED_CIPHERTEXTS_UNDER_RETIRED_KEY
        else:
            continue
        if record.state is KeyState.DESTROYED:
            todo = "the key is destroyed, so they no longer decrypt: purge them"
        elif code is FindingCode.STORED_CIPHERTEXTS_UNDER_COMPROMISED_KEY:
            todo = (
                "the key was taken out of service as compromised: rewrap them before it is "
                f"destroyed (PCI DSS 3.7.5; rotator rewrap --from {record.key_id})"
            )
        else:
            todo = (
                "destroy is refused until they are rewrapped "
                f"(rotator rewrap --from {record.key_id})"
            )
        yield Finding(
            code,
            record.instance_id,
            record.key_id,
            f"{last.count} stored ciphertexts under this {record.state.value} key in the "
            f"registered stores at the last inventory ({last.at:%Y-%m-%d %H:%M} UTC); {todo}",
        )


# -- the decrypt function's alias (SnapStart) ---------------------------------------------------


def unqualified_decrypt_findings(state: KeyringState) -> Iterator[Finding]:
    """A report finding, not an invariant: a block off the alias still decrypts, so `verify`
    (contacts decrypt, keys are where they must be) does not fail on it."""
    for instance in state.instances:
        for flow in instance.flows:
            yield from decrypt_invocations(state, instance.instance_id, flow)


def decrypt_invocations(
    state: KeyringState, instance_id: str, flow: FlowState
) -> Iterator[Finding]:
    """A finding for each block of a managed flow that invokes the decrypt function
    (ROTATOR_DECRYPT_FUNCTION, compared by name, and by account and region where both give them)
    without naming the `live` alias: unqualified, $LATEST or a version runs without SnapStart
    and the provisioned concurrency, and keeps the unqualified invoke permission needed. Nothing
    is judged without the setting, nor a JSONPath (the function is known only when the flow
    runs)."""
    configured = state.decrypt_function_setting
    decrypt = None if configured is None else parse_function(configured)
    if decrypt is None:
        return
    for invocation in flow.lambda_invocations:
        invoked = None if invocation.dynamic else parse_function(invocation.function)
        if invoked is None or not same_function(invoked, decrypt):
            continue
        if invoked.qualifier == DECRYPT_ALIAS:
            continue
        yield Finding(
            FindingCode.FLOW_INVOKES_UNQUALIFIED_DECRYPT,
            instance_id,
            None,
            f"{flow.flow} block {invocation.identifier} invokes the decrypt function "
            f"{invocation.function} ({invoked.describe_qualifier()}): {_off_alias(invoked)}; "
            f"point the block at the alias ARN {invoked.qualified(DECRYPT_ALIAS)} (the "
            "stack's DecryptFunctionArn output)",
        )


def _off_alias(invoked: FunctionReference) -> str:
    """What a block off the alias costs, by what it names instead."""
    if invoked.qualifier in (None, LATEST):
        return (
            "Connect runs $LATEST, without SnapStart or the provisioned concurrency, through the "
            "invoke permission on the unqualified function, which cannot be removed while a flow "
            "needs it"
        )
    if invoked.qualifier is not None and invoked.qualifier.isdigit():
        return (
            "a fixed version that deployments do not update, without the provisioned "
            "concurrency, which Connect's invoke permissions (the alias and the unqualified "
            "function) do not name"
        )
    return (
        f"not the {DECRYPT_ALIAS} alias, which the template deploys to, provisions and lets "
        "Connect invoke"
    )
