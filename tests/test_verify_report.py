"""Every broken state `rotator verify` knows is a `report` finding (issue 10's one read model):
each invariant is broken on the sandbox, and verify fails it while the report names it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from rotator.adapters.lock import DEFAULT_LEASE, LockHolder
from rotator.domain import checks
from rotator.domain.findings import RULES, FindingCode, Severity
from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import KeyState
from rotator.domain.rotation import RotationState, RotationStep
from rotator.domain.state import KeyringState
from rotator.sandbox.sample_flows import CARD_INPUT_ACTION
from rotator.services.custodians import acknowledge, responsibilities
from rotator.services.report import ReportOptions, build_report, gather, make_report
from rotator.services.verify import ARGUMENT_CHECKS, CHECKS, judge
from tests.conftest import NOW, keep_rotation, make_record
from tests.world import World

DAY = timedelta(days=1)


@dataclass(frozen=True)
class Broken:
    """A way to break one invariant on a freshly initialised instance, and when to look."""

    seed: Callable[[World, str, KeyMaterial], None]
    at: datetime = NOW + DAY
    # Broken only where the live canary runs (`verify`, or a report made with canaries).
    needs_canary: bool = False
    # A state the sandbox refuses to hold (Connect keeps two keys at most): the state read
    # from it, edited, is judged instead.
    edit: Callable[[KeyringState], KeyringState] | None = None


def stray_public_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def no_active_key(world: World, key_id: str, material: KeyMaterial) -> None:
    keyring = world.adapters.keyring
    record = keyring.get_record(key_id)
    keyring.write_record(record.transition(KeyState.PREVIOUS, at=NOW, actor="test", reason="t"))


def rotation_stopped(world: World, key_id: str, material: KeyMaterial) -> None:
    keep_rotation(
        world.adapters.keyring,
        RotationState("crashed", world.instance_id, RotationStep.STAGED, NOW, "test", key_id),
        at=NOW,
    )


def stale_lock(world: World, key_id: str, material: KeyMaterial) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    holder = replace(LockHolder.this_process("crashed", DEFAULT_LEASE), pid=gone.pid)
    world.ssm.put_parameter(
        Name=f"{world.prefix}/locks/{world.instance_id}", Value=holder.to_json(), Type="String"
    )


def flow_gone(world: World, key_id: str, material: KeyMaterial) -> None:
    keyring = world.adapters.keyring
    config = keyring.get_instance(world.instance_id)
    assert config is not None
    keyring.put_instance(replace(config, flows=(*config.flows, "no-such-flow")))


def nothing(world: World, key_id: str, material: KeyMaterial) -> None:
    """The state is edited after the read (see Broken.edit)."""


def three_associations(state: KeyringState) -> KeyringState:
    (instance,) = state.instances
    stray = ("stray-1", "stray-2")
    more = replace(instance, associations=(*instance.associations, *stray))
    return replace(state, instances=(more,))


def stray_association(world: World, key_id: str, material: KeyMaterial) -> None:
    world.connect.associate_security_key(InstanceId=world.instance_id, Key=stray_public_pem())


def current_key_disassociated(world: World, key_id: str, material: KeyMaterial) -> None:
    world.connect.disassociate_security_key(InstanceId=world.instance_id, AssociationId=key_id)


def dynamic_reference(world: World, key_id: str, material: KeyMaterial) -> None:
    document = json.loads(world.module_content())
    for action in document["Actions"]:
        if action["Identifier"] == CARD_INPUT_ACTION:
            action["Parameters"]["InputEncryption"]["EncryptionKeyId"] = "$.Attributes.KeyId"
    world.connect.update_contact_flow_module_content(
        InstanceId=world.instance_id,
        ContactFlowModuleId=world.module_id,
        Content=json.dumps(document),
    )


def private_key_deleted(world: World, key_id: str, material: KeyMaterial) -> None:
    world.ssm.delete_parameter(Name=f"{world.prefix}/keys/{key_id}/private-key")


def private_key_replaced(world: World, key_id: str, material: KeyMaterial) -> None:
    """Another key's private key under this key ID: only a canary decrypt can tell."""
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    name = f"{world.prefix}/keys/{key_id}/private-key"
    world.ssm.delete_parameter(Name=name)
    world.ssm.put_parameter(Name=name, Value=pem, Type="SecureString")


def unreferenced_key_lost(world: World, key_id: str, material: KeyMaterial) -> None:
    """A key of another (unmanaged) instance whose record says it decrypts, without its
    private key."""
    world.adapters.keyring.put_record(make_record("lost-key", material, instance_id="other"))


def staged_key_orphaned(world: World, key_id: str, material: KeyMaterial) -> None:
    name = world.adapters.keyring.layout.staged_private_key("orphan-rotation")
    world.ssm.put_parameter(Name=name, Value="not a key", Type="SecureString")


# One broken state per invariant verify checks (a check verify cannot fail is not listed).
CASES: dict[str, list[Broken]] = {
    checks.ONE_CURRENT_KEY: [Broken(no_active_key)],
    checks.CERTIFICATE_VALID: [Broken(nothing, at=NOW + 800 * DAY)],
    checks.NO_INTERRUPTED_ROTATION: [Broken(rotation_stopped)],
    checks.NO_STALE_LOCK: [Broken(stale_lock)],
    checks.READABLE: [Broken(flow_gone)],
    checks.AT_MOST_TWO: [Broken(nothing, edit=three_associations)],
    checks.NO_ORPHANED_ASSOCIATION: [Broken(stray_association)],
    checks.STATE_MATCHES: [Broken(current_key_disassociated)],
    checks.FLOWS_AS_MANAGED: [Broken(dynamic_reference)],
    checks.REFERENCED_DECRYPT: [
        Broken(private_key_deleted),
        Broken(private_key_replaced, needs_canary=True),
    ],
    checks.PRIVATE_KEY_STORED: [Broken(private_key_deleted), Broken(unreferenced_key_lost)],
    checks.NO_ORPHANED_STAGING: [Broken(staged_key_orphaned)],
}
NEVER_FAILS = {checks.ON_CURRENT_KEY}  # a managed block elsewhere is `flows as managed`


def test_every_check_verify_can_fail_has_a_broken_state_here() -> None:
    """A new verify check without a case here (and so without a report finding) fails."""
    assert set(CASES) | NEVER_FAILS | ARGUMENT_CHECKS == CHECKS
    assert set(checks.INVARIANT_CODES) == set(CASES) | NEVER_FAILS
    for check, codes in checks.INVARIANT_CODES.items():
        assert codes <= set(FindingCode), check
        # What breaks an invariant needs action: never an info finding, always a runbook.
        assert all(RULES[c].severity is not Severity.INFO for c in codes), check


@pytest.mark.parametrize(
    ("check", "case"),
    [(check, case) for check, cases in CASES.items() for case in cases],
    ids=[f"{check}-{case.seed.__name__}" for check, cases in CASES.items() for case in cases],
)
def test_each_broken_invariant_fails_verify_and_is_a_report_finding(
    world: World, material_2048: KeyMaterial, check: str, case: Broken
) -> None:
    key_id = world.init(NOW).new_key_id
    assert key_id is not None
    case.seed(world, key_id, material_2048)
    a = world.adapters

    if case.edit is None:
        verification = a.invariants().verify(None, case.at)
        report = make_report(a.keyring, a.connect, a.lock, ReportOptions(), case.at, canaries=True)
        plain = make_report(a.keyring, a.connect, a.lock, ReportOptions(), case.at)
    else:
        state = case.edit(gather(a.keyring, a.connect, a.lock, case.at, canaries=True))
        verification = judge(state, case.at)
        report = plain = build_report(state, ReportOptions(), case.at)
    failed = [c for c in verification.checks if not c.ok]
    assert check in {c.check for c in failed}, verification.checks
    broken = [v for v in verification.verdicts if v.finding is not None]
    assert all(v.finding.code in checks.INVARIANT_CODES[v.check] for v in broken if v.finding)

    for verdict in broken:
        finding = verdict.finding
        assert finding is not None
        assert finding in report.findings, (verdict, report.findings)
        assert finding.severity in (Severity.CRITICAL, Severity.WARNING)
        assert finding.rule.runbook.path.startswith("runbooks/")
        if not case.needs_canary:
            assert finding in plain.findings, (verdict, plain.findings)
    if case.needs_canary:
        assert FindingCode.CANARY_FAILED in {f.code for f in report.findings}
    # The same findings from the state verify read: one set of rules.
    assert set(verification.findings) <= set(report.findings)


def test_a_healthy_keyring_passes_both(world: World) -> None:
    world.service.identity = world.adapters.identity  # init recorded with its principal ...
    assert world.init(NOW).new_key_id is not None
    a = world.adapters
    # ... who accepted the custodian duties (3.7.8): healthy includes the custodians.
    acknowledge(a.keyring, a.identity, responsibilities(), NOW, "test")
    verification = a.invariants().verify(None, NOW + DAY)
    assert verification.checks and all(c.ok for c in verification.checks), verification.checks
    report = make_report(a.keyring, a.connect, a.lock, ReportOptions(), NOW + DAY, canaries=True)
    assert [f for f in report.findings if f.severity is not Severity.INFO] == []
