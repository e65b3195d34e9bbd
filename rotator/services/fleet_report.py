"""The fleet's compliance report: a section per account region, totals, and the fleet's findings.

`build_fleet_report` is pure: it judges per-partition `KeyringState`s already read (time passed
in), each with the single keyring's `build_report`, then looks across them (`fleet_findings`:
a key pair in two account regions, a region that could not be read). `gather_fleet` reads each
partition once through its ports; a partition that cannot be read becomes a finding, never a
crash of the whole report. Each partition's evidence (its keyring key, its decrypt function's
environment) is read through that partition's own sources: a function that cannot be read is
said in its section ("function not found", "access denied"), and the rest stands.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from lambda_decrypt.logs import get_logger
from rotator.domain.checks import FleetFinding, ReportOptions, fleet_findings
from rotator.domain.findings import Severity
from rotator.domain.fleet import Partition
from rotator.domain.key_protection import DecryptFunctionCheck
from rotator.domain.lifecycle import KeyState
from rotator.domain.state import KeyringState
from rotator.errors import ConnectKeyRotatorError
from rotator.ports import ConnectReader, Keyring, Lock
from rotator.services.crypto_architecture import EvidenceSources
from rotator.services.custodians import current_text_sha256
from rotator.services.fleet import PARTITION_WORKERS, on_partitions
from rotator.services.report import REPORT_SCHEMA, UNKNOWN_STATE, KeyRow, Report, build_report
from rotator.services.report import gather as gather_one

log = get_logger("rotator.fleet_report")

# Every state a key row can have, in the order the totals list them.
KEY_STATES = (*(state.value for state in KeyState), UNKNOWN_STATE)


@dataclass(frozen=True)
class PartitionSources:
    """What one account region's report reads: its keyring, Connect and lock (ports), and where
    its evidence is read (None: not read, the section says so): the member's keyring key and
    its decrypt function's environment, both through the member's own role."""

    keyring: Keyring
    connect: ConnectReader
    lock: Lock
    evidence: EvidenceSources | None = None


@dataclass(frozen=True)
class PartitionSection:
    """One account region: its own report, or why it could not be read."""

    partition: Partition
    report: Report | None
    error: str | None = None

    @property
    def keys(self) -> tuple[KeyRow, ...]:
        return () if self.report is None else self.report.keys

    @property
    def decrypt_function(self) -> str | None:
        """What the member's decrypt function's environment showed (the names of the variables
        holding a private key, never a value), or why it was not checked; None: unread section."""
        if self.report is None:
            return None
        return (self.report.crypto.decrypt_function or DecryptFunctionCheck(None)).describe()

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.partition.account,
            "region": self.partition.region,
            "error": self.error,
            "report": None if self.report is None else self.report.to_dict(),
        }


@dataclass(frozen=True)
class FleetReport:
    generated_at: datetime
    options: ReportOptions
    sections: tuple[PartitionSection, ...]
    findings: tuple[FleetFinding, ...]  # the fleet's own; each section has its keyring's

    @property
    def readable(self) -> tuple[PartitionSection, ...]:
        return tuple(s for s in self.sections if s.report is not None)

    @property
    def unreadable(self) -> tuple[PartitionSection, ...]:
        return tuple(s for s in self.sections if s.report is None)

    def counts(self) -> dict[Severity, int]:
        """Findings by severity over the whole fleet: every section's and the fleet's own."""
        counts = {s: sum(f.finding.severity is s for f in self.findings) for s in Severity}
        for section in self.readable:
            assert section.report is not None
            for severity, n in section.report.counts().items():
                counts[severity] += n
        return counts

    def keys_by_state(self) -> dict[str, int]:
        states = [key.state for section in self.sections for key in section.keys]
        return {state: states.count(state) for state in KEY_STATES}

    def instance_count(self) -> int:
        return sum(len(s.report.instances) for s in self.sections if s.report is not None)

    def key_count(self) -> int:
        return sum(len(section.keys) for section in self.sections)

    def fails(self, fail_on: Severity | None) -> bool:
        """Whether a finding at or above `fail_on` exists anywhere in the fleet (None: never)."""
        if fail_on is None:
            return False
        return any(n for s, n in self.counts().items() if s.rank <= fail_on.rank)

    def findings_for(self, partition: Partition, key_id: str) -> list[FleetFinding]:
        """The fleet's findings naming this key of this account region."""
        return [
            f
            for f in self.findings
            if any(h.partition == partition and h.key_id == key_id for h in f.holders)
        ]

    def totals(self) -> dict[str, Any]:
        return {
            "partitions": len(self.sections),
            "unreadable_partitions": len(self.unreadable),
            "instances": self.instance_count(),
            "keys": self.key_count(),
            "keys_by_state": self.keys_by_state(),
            "findings": {s.value: n for s, n in self.counts().items()},
        }

    def to_dict(self) -> dict[str, Any]:
        """Follows report.schema.json's `fleet_report`: the fleet's totals and findings, then
        each account region's own report (the single keyring's document, unchanged)."""
        policy = self.options.policy
        return {
            "schema": REPORT_SCHEMA,
            "generated_at": self.generated_at.isoformat(),
            "policy": {
                "renew_before_days": policy.renew_before.days,
                "cryptoperiod_days": policy.cryptoperiod.days,
                "grace_days": self.options.grace.days,
                "min_key_size": self.options.min_key_size,
            },
            "fleet": {
                "totals": self.totals(),
                "findings": [f.to_dict() for f in self.findings],
            },
            "partitions": [section.to_dict() for section in self.sections],
        }


# One partition's state as read, or why it could not be read.
PartitionRead = KeyringState | str


def build_fleet_report(
    states: Mapping[Partition, PartitionRead], options: ReportOptions, now: datetime
) -> FleetReport:
    """Judge the fleet as read (pure): each readable partition's own report, in the order given,
    and the fleet's findings across them. `options.kms_key_id` is each keyring's own (each
    member account has its own KMS key): it is not compared across accounts."""
    sections = []
    readable: dict[Partition, KeyringState] = {}
    unreadable: dict[Partition, str] = {}
    for partition, state in states.items():
        if isinstance(state, str):
            unreadable[partition] = state
            sections.append(PartitionSection(partition, None, state))
            continue
        readable[partition] = state
        sections.append(PartitionSection(partition, build_report(state, options, now)))
    return FleetReport(now, options, tuple(sections), tuple(fleet_findings(readable, unreadable)))


def gather_fleet(
    sources: Mapping[Partition, PartitionSources],
    now: datetime,
    *,
    describe: Callable[[ConnectKeyRotatorError], str] = str,
    workers: int = PARTITION_WORKERS,
) -> dict[Partition, PartitionRead]:
    """Each partition read once (everything the report reads), at most `workers` at once, in
    `sources`' order; one that cannot be read (its role not assumable, its keyring or Connect
    refusing) is why, and the others are read."""

    def read(partition: Partition, source: PartitionSources) -> PartitionRead:
        try:
            return gather_one(
                source.keyring, source.connect, source.lock, now, evidence=source.evidence
            )
        except ConnectKeyRotatorError as error:
            why = describe(error)
            log.error("fleet_report_partition_failed", partition=str(partition), error=why)
            return why
        except Exception as error:  # noqa: BLE001 - one partition must not lose the fleet's report
            # Its type only: an unexpected exception's text is not known to be free of secrets.
            log.error(
                "fleet_report_partition_crashed",
                partition=str(partition),
                error=type(error).__name__,
            )
            return f"unexpected {type(error).__name__}"

    return dict(zip(sources, on_partitions(read, sources, workers=workers), strict=True))


def make_fleet_report(
    sources: Mapping[Partition, PartitionSources],
    options: ReportOptions,
    now: datetime,
    *,
    describe: Callable[[ConnectKeyRotatorError], str] = str,
    workers: int = PARTITION_WORKERS,
) -> FleetReport:
    """Read every partition once (at most `workers` at once), then judge the fleet at `now`
    (what `rotator report` runs in fleet mode, and what the fleet's aggregation can publish)."""
    if options.custodian_text_sha256 is None:
        options = replace(options, custodian_text_sha256=current_text_sha256())
    states = gather_fleet(sources, now, describe=describe, workers=workers)
    return build_fleet_report(states, options, now)
