"""Drift and substitution (issue 11, PCI DSS 3.7.7) on the fakes: every change to Connect that
the rotator did not make (an association added or removed, a managed block edited to another key
or to another certificate) is a critical finding that `verify` fails on; the rotation job's drift
check publishes it (DriftFindings, a notice naming it) and the verify job fails on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from rotator.config import Settings
from rotator.domain.checks import FLOWS_AS_MANAGED, NO_ORPHANED_ASSOCIATION, STATE_MATCHES
from rotator.domain.checks import drift_findings as judge_drift
from rotator.domain.findings import Finding, FindingCode, RunbookName, Severity
from rotator.domain.flows import FlowRef, encrypting_blocks, point_blocks_at_key
from rotator.domain.keys import KeyMaterial, load_private_key, self_signed_material
from rotator.domain.lifecycle import KeyRecord
from rotator.domain.policy import RotationPolicy
from rotator.domain.rotation import RotationState, RotationStep
from rotator.domain.state import KeyringState
from rotator.sandbox.sample_flows import (
    CARD_INPUT_ACTION,
)
from rotator.services.jobs import (
    DRIFT_FINDINGS_METRIC,
    VERIFY_FAILURES_METRIC,
    rotation_job,
    verify_job,
)
from rotator.services.rotation import Outcome, RotationService
from rotator.services.state import read_state
from rotator.services.verify import InvariantChecker, judge
from tests.conftest import NOW, keep_rotation
from tests.fakes import (
    FakeClock,
    FakeConnect,
    FakeKeyring,
    FakeLock,
    FakePublisher,
    init_payment_instance,
)
from tests.world import KeyPool

AT = NOW + timedelta(days=1)
SETTINGS = Settings(keyring_prefix="/drift", key_size=2048)


@dataclass
class Managed:
    """A managed instance after `rotator init` at NOW: its payment flow and module on one key."""

    keyring: FakeKeyring
    connect: FakeConnect
    lock: FakeLock
    instance_id: str
    flow: FlowRef
    module: FlowRef
    key_id: str
    pool: KeyPool
    generate: Callable[[datetime], KeyMaterial]  # one cycle through the pool: a new key each

    def service(self) -> RotationService:
        return RotationService(
            self.keyring, self.connect, self.lock, SETTINGS, actor="test", generate=self.generate
        )

    def findings(self) -> list[Finding]:
        state = read_state(self.keyring, self.lock, connect=self.connect, protection=True)
        return judge_drift(state, AT)

    def failed_checks(self) -> dict[str, list[str]]:
        verification = InvariantChecker(self.keyring, self.connect, self.lock).verify(None, AT)
        failed: dict[str, list[str]] = {}
        for check in verification.checks:
            if not check.ok:
                failed.setdefault(check.check, []).append(check.message)
        return failed

    def block_certificate(self, ref: FlowRef) -> str:
        (block,) = encrypting_blocks(self.connect.flow_content(self.instance_id, ref))
        return block.certificate_pem

    def edit_block(self, ref: FlowRef, key_id: str, certificate_pem: str) -> None:
        """A hand edit in the Connect console: the card block's key ID and certificate."""
        content = self.connect.flow_content(self.instance_id, ref)
        edited = point_blocks_at_key(content, [CARD_INPUT_ACTION], key_id, certificate_pem)
        assert edited is not None
        self.connect.update_flow_content(self.instance_id, ref, edited)


@pytest.fixture
def managed(key_pool: KeyPool) -> Managed:
    keyring, connect, clock = FakeKeyring(), FakeConnect(), FakeClock(NOW)
    lock = FakeLock(clock.now)
    generate = key_pool.generator()
    service = RotationService(keyring, connect, lock, SETTINGS, actor="test", generate=generate)
    made = init_payment_instance(service, connect, NOW)
    return Managed(
        keyring,
        connect,
        lock,
        made.instance_id,
        made.flow,
        made.module,
        made.first_key_id,
        key_pool,
        generate,
    )


def stranger(pool: KeyPool) -> KeyMaterial:
    """A key the keyring never held (the pool's last: init used its first)."""
    return self_signed_material(pool.private_keys[-1], now=NOW, subject="CN=stranger")


def reissued(managed: Managed) -> KeyMaterial:
    """The current key under a certificate the rotator did not make (same public key)."""
    private = load_private_key(managed.keyring.read_material(managed.key_id).private_key_pem)
    return self_signed_material(private, now=NOW + timedelta(hours=1), subject="CN=other")


def public_pem(material: KeyMaterial) -> str:
    key = load_private_key(material.private_key_pem).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def codes(findings: list[Finding]) -> set[tuple[FindingCode, str | None]]:
    return {(f.code, f.key_id) for f in findings}


def test_a_managed_instance_as_the_rotator_left_it_has_no_drift(managed: Managed) -> None:
    assert managed.findings() == []
    assert managed.failed_checks() == {}


# -- each change the rotator did not make: a critical finding, and `verify` fails -------------


def test_a_managed_flow_edited_to_another_key_names_the_flow_and_verify_fails(
    managed: Managed,
) -> None:
    """The issue's proof: a managed flow edited by hand gives a critical finding that names it,
    and verify fails."""
    other = stranger(managed.pool)
    key_id = managed.connect.associate_security_key(
        managed.instance_id, public_pem(other), client_token="by-hand"
    )
    managed.edit_block(managed.flow, key_id, other.certificate_pem)

    found = managed.findings()
    drift = [f for f in found if f.code is FindingCode.FLOW_DRIFT]
    assert len(drift) == 1 and drift[0].severity is Severity.CRITICAL
    assert str(managed.flow) in drift[0].message and CARD_INPUT_ACTION in drift[0].message
    assert key_id in drift[0].message and managed.key_id in drift[0].message
    assert drift[0].rule.runbook is RunbookName.FLOW_DRIFT
    failed = managed.failed_checks()
    assert any(str(managed.flow) in line for line in failed[FLOWS_AS_MANAGED]), failed


def swapped_public_key(state: KeyringState, ref: FlowRef, sha256: str) -> KeyringState:
    """The state with the managed block of `ref` on another public key under the same key ID
    (Connect refuses such content, as the emulator does: the read model must still judge it)."""
    (instance,) = state.instances
    flows = tuple(
        flow
        if flow.flow != str(ref)
        else replace(
            flow,
            certificates=tuple(
                replace(c, public_key_sha256=sha256, certificate_sha256="0" * 64)
                for c in flow.certificates
            ),
        )
        for flow in instance.flows
    )
    return replace(state, instances=(replace(instance, flows=flows),))


def test_a_certificate_for_another_public_key_under_the_current_key_id_is_a_substitution(
    managed: Managed,
) -> None:
    """The block still names the current key, but would encrypt with another public key: the
    key ID alone does not show it."""
    state = read_state(managed.keyring, managed.lock, connect=managed.connect, protection=True)
    (flow_state,) = [f for f in state.instances[0].flows if f.flow == str(managed.module)]
    assert [c.key_id for c in flow_state.certificates] == [managed.key_id]
    record = state.record(managed.key_id)
    assert record is not None
    assert flow_state.certificates[0].public_key_sha256 == record.public_key_sha256
    assert flow_state.certificates[0].certificate_sha256 == record.certificate_sha256

    swapped = swapped_public_key(state, managed.module, stranger(managed.pool).public_key_sha256)
    found = judge_drift(swapped, AT)
    assert codes(found) == {(FindingCode.FLOW_CERTIFICATE_MISMATCH, managed.key_id)}
    (finding,) = found
    assert finding.severity is Severity.CRITICAL and finding.instance_id == managed.instance_id
    assert str(managed.module) in finding.message and "another public key" in finding.message
    failed = [c for c in judge(swapped, AT).checks if not c.ok]
    assert [c.check for c in failed] == [FLOWS_AS_MANAGED]
    assert "flow-certificate-mismatch" in failed[0].message


def test_a_reissued_certificate_for_the_same_key_is_a_change_the_rotator_did_not_make(
    managed: Managed,
) -> None:
    certificate_pem = reissued(managed).certificate_pem
    assert certificate_pem != managed.block_certificate(managed.flow)
    managed.edit_block(managed.flow, managed.key_id, certificate_pem)

    (finding,) = managed.findings()
    assert finding.code is FindingCode.FLOW_CERTIFICATE_MISMATCH
    assert "same public key" in finding.message and str(managed.flow) in finding.message
    assert FLOWS_AS_MANAGED in managed.failed_checks()


def test_a_key_associated_by_hand_is_a_critical_finding(managed: Managed) -> None:
    added = managed.connect.associate_security_key(
        managed.instance_id, public_pem(stranger(managed.pool)), client_token="by-hand"
    )
    found = managed.findings()
    assert codes(found) == {(FindingCode.ASSOCIATION_ADDED, added)}
    assert found[0].severity is Severity.CRITICAL
    assert "did not associate" in found[0].message
    assert list(managed.failed_checks()) == [NO_ORPHANED_ASSOCIATION]


def test_an_association_during_an_unfinished_rotation_is_that_rotations_not_drift(
    managed: Managed,
) -> None:
    """A rotation associates its key before it records it: a crash in between leaves an
    unrecorded association that the next run finishes, which is not a substitution."""
    added = managed.connect.associate_security_key(
        managed.instance_id, public_pem(stranger(managed.pool)), client_token="rotation-1"
    )
    keep_rotation(
        managed.keyring,
        RotationState("rotation-1", managed.instance_id, RotationStep.STAGED, AT, "test", "r"),
        at=AT,
    )
    found = managed.findings()
    assert FindingCode.ASSOCIATION_ADDED not in {f.code for f in found}
    state = read_state(managed.keyring, managed.lock, connect=managed.connect, protection=True)
    report_codes = {f.code for f in judge(state, AT).findings if f.key_id == added}
    assert report_codes == {FindingCode.ASSOCIATION_WITHOUT_PRIVATE_KEY}


def test_the_current_key_disassociated_by_hand_is_a_critical_finding(managed: Managed) -> None:
    managed.connect.disassociate_security_key(managed.instance_id, managed.key_id)
    found = managed.findings()
    assert codes(found) == {(FindingCode.ASSOCIATION_REMOVED, managed.key_id)}
    assert found[0].severity is Severity.CRITICAL and "removed by hand" in found[0].message
    assert list(managed.failed_checks()) == [STATE_MATCHES]


def test_a_disassociation_during_an_unfinished_rotation_stays_a_state_mismatch(
    managed: Managed,
) -> None:
    managed.connect.disassociate_security_key(managed.instance_id, managed.key_id)
    keep_rotation(
        managed.keyring,
        RotationState("rotation-1", managed.instance_id, RotationStep.STAGED, AT, "test", "r"),
        at=AT,
    )
    found = managed.findings()
    assert codes(found) == {(FindingCode.STATE_MISMATCH, managed.key_id)}
    assert found[0].severity is Severity.WARNING


def test_a_rotation_leaves_no_drift(managed: Managed) -> None:
    """What the rotator itself changes (new association, blocks on the new key and its
    certificate, the old key previous and still associated) is never drift."""
    (result,) = managed.service().rotate(None, AT, force=True)
    assert result.outcome is Outcome.ROTATED, result.detail
    assert managed.findings() == []
    assert managed.failed_checks() == {}


# -- the jobs surface it ------------------------------------------------------------------------


def run_rotation_job(
    managed: Managed, *, what_if: bool = False
) -> tuple[FakePublisher, dict[str, Any]]:
    published = FakePublisher()
    run = rotation_job(
        managed.service(), managed.keyring, published, RotationPolicy(), AT, what_if=what_if
    )
    return published, run.to_dict()


def drift_metrics(published: FakePublisher) -> dict[str, float]:
    return {
        dict(m.dimensions)["Severity"]: m.value
        for m, _ in published.metrics
        if m.name == DRIFT_FINDINGS_METRIC
    }


def test_the_rotation_job_publishes_no_drift_for_a_healthy_instance(managed: Managed) -> None:
    published, summary = run_rotation_job(managed)
    assert summary["ok"] is True and summary["drift"] == []
    assert drift_metrics(published) == {"critical": 0, "warning": 0, "info": 0}
    assert published.notices == []


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (
            lambda m: m.edit_block(m.flow, m.key_id, reissued(m).certificate_pem),
            FindingCode.FLOW_CERTIFICATE_MISMATCH,
        ),
        (
            lambda m: m.connect.disassociate_security_key(m.instance_id, m.key_id),
            FindingCode.ASSOCIATION_REMOVED,
        ),
    ],
    ids=["certificate-swapped", "association-removed"],
)
def test_the_rotation_job_counts_drift_and_names_each_critical_finding(
    managed: Managed, edit: Callable[[Managed], None], code: FindingCode
) -> None:
    edit(managed)
    published, summary = run_rotation_job(managed)
    assert summary["ok"] is False
    assert [d["code"] for d in summary["drift"]] == [code.value]
    assert drift_metrics(published) == {"critical": 1, "warning": 0, "info": 0}
    (notice,) = published.notices
    assert "1 critical drift finding" in notice.subject
    assert code.value in notice.message and managed.key_id in notice.message
    assert "runbooks/flow-drift.md" in notice.message
    assert "PRIVATE KEY" not in notice.message


def test_a_what_if_rotation_job_reports_drift_and_publishes_nothing(managed: Managed) -> None:
    managed.connect.disassociate_security_key(managed.instance_id, managed.key_id)
    published, summary = run_rotation_job(managed, what_if=True)
    assert [d["code"] for d in summary["drift"]] == ["association-removed"]
    assert published.metrics == [] and published.notices == []


def test_the_drift_check_is_one_read_after_the_rotations(
    managed: Managed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing due: the job reads Connect as the rotation pass does, plus the drift check's one
    list per managed instance and one read per managed flow; nothing is written."""
    calls: list[str] = []
    for name in ("list_security_keys", "flow_content", "update_flow_content"):
        method = getattr(managed.connect, name)

        def counted(*args: Any, _name: str = name, _method: Any = method) -> Any:
            calls.append(_name)
            return _method(*args)

        monkeypatch.setattr(managed.connect, name, counted)
    (result,) = managed.service().rotate(None, AT)
    assert result.outcome is not Outcome.ROTATED
    by_rotation = list(calls)
    calls.clear()
    _, summary = run_rotation_job(managed)
    assert summary["counts"]["rotated"] == 0
    assert calls.count("list_security_keys") == by_rotation.count("list_security_keys") + 1
    assert calls.count("flow_content") == by_rotation.count("flow_content") + 2
    assert "update_flow_content" not in calls


def test_the_verify_job_fails_on_drift_with_a_metric_and_a_notice(managed: Managed) -> None:
    checker = InvariantChecker(managed.keyring, managed.connect, managed.lock)
    published = FakePublisher()
    healthy = verify_job(checker, published, AT)
    assert healthy.ok and healthy.to_dict()["counts"]["failed"] == 0
    assert published.value(VERIFY_FAILURES_METRIC) == 0 and published.notices == []

    managed.edit_block(managed.flow, managed.key_id, reissued(managed).certificate_pem)
    published = FakePublisher()
    run = verify_job(checker, published, AT)
    summary = run.to_dict()
    assert summary["ok"] is False and summary["job"] == "verify"
    assert summary["counts"]["failed"] == 1
    assert published.value(VERIFY_FAILURES_METRIC) == 1
    (notice,) = published.notices
    assert "1 check(s)" in notice.subject
    assert FLOWS_AS_MANAGED in notice.message and "flow-certificate-mismatch" in notice.message
    assert str(managed.flow) in notice.message

    published = FakePublisher()
    what_if = verify_job(checker, published, AT, what_if=True)
    assert not what_if.ok and published.metrics == [] and published.notices == []


def test_the_verify_job_that_cannot_read_says_so(managed: Managed) -> None:
    from rotator.errors import AwsCallError

    class Unreadable(FakeKeyring):
        def records(self) -> list[KeyRecord]:
            raise AwsCallError("ssm:GetParametersByPath", "/drift", "AccessDeniedException")

    checker = InvariantChecker(Unreadable(), managed.connect, managed.lock)
    published = FakePublisher()
    run = verify_job(checker, published, AT)
    assert not run.ok and "AccessDeniedException" in run.to_dict()["error"]
    assert published.metrics == []  # no count of checks that never ran
    (notice,) = published.notices
    assert "could not run" in notice.subject
