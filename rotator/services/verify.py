"""`rotator verify`: check every promise of DESIGN.md section 3 against the live state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rotator.adapters.connect import ConnectGateway
from rotator.adapters.lock import SsmLock, stale_reason
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.findings import RunbookName
from rotator.domain.flows import EncryptionKind, flow_drift, storing_blocks
from rotator.domain.keys import public_key_sha256_of_pem
from rotator.domain.lifecycle import KeyRecord, KeyState
from rotator.errors import ConnectKeyRotatorError
from rotator.services.canary import verify_key_decrypts

ASSOCIATED_STATES = frozenset({KeyState.ACTIVE, KeyState.PREVIOUS})
# Where an operator learns what a drifted or dynamic block means and what to do about it.
FLOW_DRIFT_RUNBOOK = RunbookName.FLOW_DRIFT.path


@dataclass(frozen=True)
class Finding:
    check: str
    instance_id: str | None
    ok: bool
    message: str


class InvariantChecker:
    def __init__(self, keyring: SsmKeyring, connect: ConnectGateway, lock: SsmLock) -> None:
        self.keyring = keyring
        self.connect = connect
        self.lock = lock

    def check(self, instance_id: str | None, now: datetime) -> list[Finding]:
        records = {r.key_id: r for r in self.keyring.records()}
        instances = self.keyring.managed_instances()
        if instance_id is not None:
            instances = [m for m in instances if m.instance_id == instance_id]
            if not instances:
                return [Finding("managed", instance_id, False, "instance is not managed")]
        findings: list[Finding] = []
        for instance in instances:
            try:
                findings.extend(self._instance(instance.instance_id, records, now))
            except ConnectKeyRotatorError as error:
                findings.append(Finding("readable", instance.instance_id, False, str(error)))
        findings.extend(self._private_keys_present(records, instance_id))
        for rotation_id in sorted(self.keyring.orphaned_staging()):
            findings.append(
                Finding(
                    "no orphaned staged key",
                    None,
                    False,
                    f"a private key is staged under rotation {rotation_id}, which no unfinished "
                    "rotation owns (rotator rotate removes it)",
                )
            )
        return findings

    def _instance(
        self, instance_id: str, records: dict[str, KeyRecord], now: datetime
    ) -> list[Finding]:
        found: list[Finding] = []

        def add(check: str, ok: bool, message: str) -> None:
            found.append(Finding(check, instance_id, ok, message))

        mine = [r for r in records.values() if r.instance_id == instance_id]
        current = self.keyring.get_current(instance_id)
        active = [r.key_id for r in mine if r.state is KeyState.ACTIVE]
        add(
            "one current key",
            current is not None and active == [current],
            f"current {current or 'none'}, active {', '.join(active) or 'none'}",
        )
        if current is not None and current in records:
            add("current certificate valid", *_certificate_valid(records[current], now))

        rotation = self.keyring.get_rotation(instance_id)
        add(
            "no interrupted rotation",
            rotation is None or rotation.finished,
            "none"
            if rotation is None or rotation.finished
            else f"rotation {rotation.rotation_id} stopped after step {rotation.step}: "
            "run rotator rotate to resume it",
        )

        holder = self.lock.holder(instance_id)
        stale = stale_reason(holder) if holder else None
        add(
            "no stale lock",
            stale is None,
            "no lock"
            if holder is None
            else f"lock {holder.describe()}" + (f" is stale: {stale}" if stale else ""),
        )

        associations = self.connect.list_security_keys(instance_id)
        add("at most two associations", len(associations) <= 2, f"{len(associations)} associated")
        associated = {a.association_id for a in associations}
        for association in associations:
            record = records.get(association.association_id)
            matches = record is not None and record.public_key_sha256 == public_key_sha256_of_pem(
                association.public_key_pem
            )
            add(
                "no orphaned association",
                matches and record is not None and record.decrypts,
                f"association {association.association_id}: "
                + ("in the keyring" if matches else "no matching key in the keyring"),
            )
        for record in mine:
            should = record.state in ASSOCIATED_STATES
            is_associated = record.key_id in associated
            if should != is_associated:
                add(
                    "state matches Connect",
                    False,
                    f"key {record.key_id} is {record.state} but "
                    + ("associated" if is_associated else "not associated"),
                )

        instance = self.keyring.get_instance(instance_id)
        referenced: set[str] = set()
        for ref in instance.refs if instance else []:
            content = self.connect.flow_content(instance_id, ref)
            managed = instance.managed_identifiers(ref, content) if instance else []
            drifts = flow_drift(ref, content, managed, current)
            drifted = {d.identifier for d in drifts}
            for drift in drifts:
                add("flows as managed", False, f"{drift} (runbook: {FLOW_DRIFT_RUNBOOK})")
            for block in storing_blocks(content):
                if block.encryption.kind is EncryptionKind.STATIC and block.encryption.key_id:
                    referenced.add(block.encryption.key_id)
                if block.identifier in managed and block.identifier not in drifted:
                    add(
                        "flows use the current key",
                        True,
                        f"{ref} block {block.identifier} -> {current}",
                    )
        for key_id in sorted(referenced):
            add("every referenced key decrypts", *self._decrypts(key_id, records))
        return found

    def _decrypts(self, key_id: str, records: dict[str, KeyRecord]) -> tuple[bool, str]:
        record = records.get(key_id)
        if record is None or not record.decrypts:
            state = record.state if record else "not in the keyring"
            return False, f"key {key_id} is {state}: contacts cannot be decrypted"
        try:
            certificate = self.keyring.read_certificate(key_id)
            verify_key_decrypts(self.keyring.ssm, self.keyring.layout.prefix, key_id, certificate)
        except ConnectKeyRotatorError as error:
            return False, f"key {key_id}: {error}"
        return True, f"key {key_id} decrypts a canary from the keyring"

    def _private_keys_present(
        self, records: dict[str, KeyRecord], instance_id: str | None
    ) -> list[Finding]:
        layout = self.keyring.layout
        wanted = [
            record
            for record in records.values()
            if record.decrypts and (instance_id is None or record.instance_id == instance_id)
        ]
        present = self.keyring.existing([layout.private_key(r.key_id) for r in wanted])
        findings = []
        for record in wanted:
            if layout.private_key(record.key_id) not in present:
                findings.append(
                    Finding(
                        "private key stored",
                        record.instance_id,
                        False,
                        f"key {record.key_id} is {record.state} but its private key is missing",
                    )
                )
        return findings


def _certificate_valid(record: KeyRecord, now: datetime) -> tuple[bool, str]:
    """Connect encrypts with the certificate in the flow: it must be valid now."""
    if record.not_before is not None and now < record.not_before:
        return False, (
            f"key {record.key_id}: certificate not valid before "
            f"{record.not_before:%Y-%m-%d %H:%M} UTC"
        )
    if record.not_after is not None and now >= record.not_after:
        return False, f"key {record.key_id}: certificate expired on {record.not_after:%Y-%m-%d}"
    if record.not_after is None:
        return True, f"key {record.key_id}: certificate unknown (adopted without it)"
    return True, f"key {record.key_id}: valid until {record.not_after:%Y-%m-%d}"
