"""The report's findings: severities, runbooks, and the one table that maps each finding."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rotator.domain.lambda_functions import DECRYPT_ALIAS


class Severity(StrEnum):
    """critical: contacts fail or will; warning: out of policy; info: housekeeping."""

    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        """0 for the most severe."""
        return list(Severity).index(self)


class RunbookName(StrEnum):
    """The runbooks under runbooks/<name>.md."""

    ROUTINE_ROTATION = "routine-rotation"
    EMERGENCY_ROTATION = "emergency-rotation"
    ROLLBACK = "rollback"
    CERTIFICATE_EXPIRY = "certificate-expiry"
    DECRYPT_FAILURES = "decrypt-failures"
    STUCK_ROTATION = "stuck-rotation"
    ADOPT_BLOG_DEPLOYMENT = "adopt-blog-deployment"
    RESTORE_KEY_PARAMETER = "restore-key-parameter"
    QUARTERLY_EVIDENCE = "quarterly-evidence"
    FLOW_DRIFT = "flow-drift"

    @property
    def path(self) -> str:
        return f"runbooks/{self.value}.md"


class FindingCode(StrEnum):
    CERTIFICATE_EXPIRED = "certificate-expired"
    CERTIFICATE_NOT_YET_VALID = "certificate-not-yet-valid"
    CERTIFICATE_EXPIRING = "certificate-expiring"
    CERTIFICATE_UNKNOWN = "certificate-unknown"
    CRYPTOPERIOD_EXCEEDED = "cryptoperiod-exceeded"
    REFERENCED_KEY_MISSING = "referenced-key-missing"
    DESTROYED_KEY_REFERENCED = "destroyed-key-referenced"
    ASSOCIATION_WITHOUT_PRIVATE_KEY = "association-without-private-key"
    RETIRED_KEY_ASSOCIATED = "retired-key-associated"
    GRACE_PERIOD_OVER = "grace-period-over"
    KEY_BELOW_MINIMUM_SIZE = "key-below-minimum-size"
    STALE_LOCK = "stale-lock"
    INTERRUPTED_ROTATION = "interrupted-rotation"
    ORPHANED_STAGING = "orphaned-staging"
    FLOW_DRIFT = "flow-drift"
    KMS_KEY_MISMATCH = "kms-key-mismatch"
    INSTANCE_UNREADABLE = "instance-unreadable"
    # What `rotator verify` checks that the report did not show before (issue 10).
    CURRENT_KEY_MISMATCH = "current-key-mismatch"
    TOO_MANY_ASSOCIATIONS = "too-many-associations"
    ASSOCIATION_KEY_MISMATCH = "association-key-mismatch"
    KEY_RECORD_MISSING = "key-record-missing"
    STATE_MISMATCH = "state-mismatch"
    PRIVATE_KEY_MISSING = "private-key-missing"
    CANARY_FAILED = "canary-failed"
    # Drift and substitution (issue 11, PCI DSS 3.7.7): a change the rotator did not make.
    ASSOCIATION_ADDED = "association-added"
    ASSOCIATION_REMOVED = "association-removed"
    FLOW_CERTIFICATE_MISMATCH = "flow-certificate-mismatch"
    # Evidence (issue 11): a private key kept in the fewest places, each key used once (3.6.1).
    PRIVATE_KEY_COPY = "private-key-copy"
    KEY_SHARED = "key-shared"
    # Custodians (issue 11, PCI DSS 3.7.8): who ran key operations acknowledged their duties.
    CUSTODIAN_UNACKNOWLEDGED = "custodian-unacknowledged"
    # Evidence (issue 11, PCI DSS 3.6.1.1): a KEK at least as strong as the keys it protects.
    KEK_WEAKER_THAN_KEY = "kek-weaker-than-key"
    # Stored ciphertexts (issue 13): an old key's values still in the registered stores.
    STORED_CIPHERTEXTS_UNDER_COMPROMISED_KEY = "stored-ciphertexts-under-compromised-key"
    STORED_CIPHERTEXTS_UNDER_RETIRED_KEY = "stored-ciphertexts-under-retired-key"
    # Fleet (issue 12): an account's region whose keyring or Connect could not be read.
    PARTITION_UNREADABLE = "partition-unreadable"
    # SnapStart upgrade: a flow still invoking the decrypt function off its `live` alias.
    FLOW_INVOKES_UNQUALIFIED_DECRYPT = "flow-invokes-unqualified-decrypt"


@dataclass(frozen=True)
class Rule:
    severity: Severity
    runbook: RunbookName
    title: str


# The one table: what each finding weighs and which runbook resolves it.
RULES: dict[FindingCode, Rule] = {
    FindingCode.CERTIFICATE_EXPIRED: Rule(
        Severity.CRITICAL, RunbookName.CERTIFICATE_EXPIRY, "certificate expired while active"
    ),
    FindingCode.CERTIFICATE_NOT_YET_VALID: Rule(
        Severity.CRITICAL, RunbookName.CERTIFICATE_EXPIRY, "current certificate not yet valid"
    ),
    FindingCode.CERTIFICATE_EXPIRING: Rule(
        Severity.WARNING, RunbookName.CERTIFICATE_EXPIRY, "certificate inside the renew window"
    ),
    FindingCode.CERTIFICATE_UNKNOWN: Rule(
        Severity.WARNING,
        RunbookName.ADOPT_BLOG_DEPLOYMENT,
        "active key without a known certificate",
    ),
    FindingCode.CRYPTOPERIOD_EXCEEDED: Rule(
        Severity.WARNING, RunbookName.ROUTINE_ROTATION, "cryptoperiod exceeded"
    ),
    FindingCode.REFERENCED_KEY_MISSING: Rule(
        Severity.CRITICAL,
        RunbookName.RESTORE_KEY_PARAMETER,
        "a flow uses a key whose private key is missing",
    ),
    FindingCode.DESTROYED_KEY_REFERENCED: Rule(
        Severity.CRITICAL, RunbookName.EMERGENCY_ROTATION, "a flow uses a destroyed key"
    ),
    FindingCode.ASSOCIATION_WITHOUT_PRIVATE_KEY: Rule(
        Severity.WARNING, RunbookName.DECRYPT_FAILURES, "association with no stored private key"
    ),
    FindingCode.RETIRED_KEY_ASSOCIATED: Rule(
        Severity.WARNING, RunbookName.ROUTINE_ROTATION, "retired key still associated"
    ),
    FindingCode.GRACE_PERIOD_OVER: Rule(
        Severity.INFO, RunbookName.ROUTINE_ROTATION, "previous key past its grace period"
    ),
    FindingCode.KEY_BELOW_MINIMUM_SIZE: Rule(
        Severity.WARNING, RunbookName.ROUTINE_ROTATION, "key below the minimum size"
    ),
    FindingCode.STALE_LOCK: Rule(
        Severity.WARNING, RunbookName.STUCK_ROTATION, "stale rotation lock"
    ),
    FindingCode.INTERRUPTED_ROTATION: Rule(
        Severity.WARNING, RunbookName.STUCK_ROTATION, "interrupted rotation"
    ),
    FindingCode.ORPHANED_STAGING: Rule(
        Severity.WARNING, RunbookName.STUCK_ROTATION, "staged private key no rotation owns"
    ),
    FindingCode.FLOW_DRIFT: Rule(
        Severity.CRITICAL, RunbookName.FLOW_DRIFT, "managed flow changed outside the rotator"
    ),
    FindingCode.KMS_KEY_MISMATCH: Rule(
        Severity.WARNING, RunbookName.ROUTINE_ROTATION, "not protected by the configured KMS key"
    ),
    FindingCode.INSTANCE_UNREADABLE: Rule(
        Severity.CRITICAL, RunbookName.QUARTERLY_EVIDENCE, "instance could not be read"
    ),
    FindingCode.CURRENT_KEY_MISMATCH: Rule(
        Severity.WARNING, RunbookName.STUCK_ROTATION, "not exactly one current, active key"
    ),
    FindingCode.TOO_MANY_ASSOCIATIONS: Rule(
        Severity.WARNING, RunbookName.ROUTINE_ROTATION, "more than two keys associated"
    ),
    FindingCode.ASSOCIATION_KEY_MISMATCH: Rule(
        Severity.CRITICAL,
        RunbookName.DECRYPT_FAILURES,
        "associated public key differs from the keyring's",
    ),
    FindingCode.KEY_RECORD_MISSING: Rule(
        Severity.CRITICAL,
        RunbookName.RESTORE_KEY_PARAMETER,
        "a key Connect uses has no record in the keyring",
    ),
    FindingCode.STATE_MISMATCH: Rule(
        Severity.WARNING, RunbookName.STUCK_ROTATION, "key state does not match Connect"
    ),
    FindingCode.PRIVATE_KEY_MISSING: Rule(
        Severity.WARNING,
        RunbookName.RESTORE_KEY_PARAMETER,
        "private key missing for a key that still decrypts",
    ),
    FindingCode.CANARY_FAILED: Rule(
        Severity.CRITICAL, RunbookName.DECRYPT_FAILURES, "a stored key failed its canary decrypt"
    ),
    FindingCode.ASSOCIATION_ADDED: Rule(
        Severity.CRITICAL,
        RunbookName.FLOW_DRIFT,
        "a key associated with Connect that the rotator did not associate",
    ),
    FindingCode.ASSOCIATION_REMOVED: Rule(
        Severity.CRITICAL,
        RunbookName.FLOW_DRIFT,
        "a key the rotator associated was removed from Connect",
    ),
    FindingCode.FLOW_CERTIFICATE_MISMATCH: Rule(
        Severity.CRITICAL,
        RunbookName.FLOW_DRIFT,
        "a managed block's certificate is not the keyring's for its key",
    ),
    # Out of policy (PCI DSS 3.6.1.4: the fewest locations), but no contact fails: a warning.
    FindingCode.PRIVATE_KEY_COPY: Rule(
        Severity.WARNING,
        RunbookName.ADOPT_BLOG_DEPLOYMENT,
        "an adopted private key is still stored outside the keyring",
    ),
    # One key pair serving two key IDs or instances (production and test): a compromise of
    # either is a compromise of both, and rotating one leaves the other in use.
    FindingCode.KEY_SHARED: Rule(
        Severity.CRITICAL,
        RunbookName.EMERGENCY_ROTATION,
        "one key pair under two key IDs or instances",
    ),
    # A gap in the evidence (3.7.8), not in the keys: no contact fails and no key is exposed
    # by it, so a warning, resolved at the next quarterly evidence run.
    FindingCode.CUSTODIAN_UNACKNOWLEDGED: Rule(
        Severity.WARNING,
        RunbookName.QUARTERLY_EVIDENCE,
        "a principal ran key operations without acknowledging the custodian duties",
    ),
    # The private key is only as safe as its KEK; no contact fails: out of policy, a warning.
    FindingCode.KEK_WEAKER_THAN_KEY: Rule(
        Severity.WARNING,
        RunbookName.ROUTINE_ROTATION,
        "a private key is protected by a weaker key-encrypting key",
    ),
    # PCI DSS 3.7.5: data under a key that may be compromised is re-encrypted before the key
    # is destroyed. Whoever holds the key can read those values now: critical.
    FindingCode.STORED_CIPHERTEXTS_UNDER_COMPROMISED_KEY: Rule(
        Severity.CRITICAL,
        RunbookName.EMERGENCY_ROTATION,
        "stored ciphertexts remain under a compromised key",
    ),
    # A retired (or destroyed) key with values left: no contact fails and nothing is exposed,
    # but destroy is refused (or, once destroyed, those values are lost): out of policy.
    FindingCode.STORED_CIPHERTEXTS_UNDER_RETIRED_KEY: Rule(
        Severity.WARNING,
        RunbookName.ROUTINE_ROTATION,
        "stored ciphertexts remain under a retired key",
    ),
    # The fleet report cannot vouch for what it could not read: no evidence for that account's
    # region, as for an unreadable instance.
    FindingCode.PARTITION_UNREADABLE: Rule(
        Severity.CRITICAL, RunbookName.QUARTERLY_EVIDENCE, "an account's region could not be read"
    ),
    # Contacts still decrypt (the unqualified permission was kept for the upgrade), but on
    # the caller's line without SnapStart or the provisioned concurrency, and that permission
    # can never be removed while a flow needs it: out of the deployment's design, a warning.
    FindingCode.FLOW_INVOKES_UNQUALIFIED_DECRYPT: Rule(
        Severity.WARNING,
        RunbookName.DECRYPT_FAILURES,
        f"a flow invokes the decrypt function without its {DECRYPT_ALIAS} alias",
    ),
}


@dataclass(frozen=True)
class Finding:
    """One problem; its severity and runbook come from RULES."""

    code: FindingCode
    instance_id: str | None
    key_id: str | None
    message: str

    @property
    def rule(self) -> Rule:
        return RULES[self.code]

    @property
    def severity(self) -> Severity:
        return self.rule.severity

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity.value,
            "code": self.code.value,
            "title": self.rule.title,
            "instance_id": self.instance_id,
            "key_id": self.key_id,
            "message": self.message,
            "runbook": self.rule.runbook.value,
        }
