"""Rotation against the sandbox (moto + Connect emulator on the wire): init, rotate, retire,
destroy, rollback, verify; every invariant of DESIGN.md section 3."""

from __future__ import annotations

import io
import json
import subprocess
import threading
from dataclasses import replace
from datetime import timedelta

import pytest

from lambda_decrypt import handler
from rotator.adapters.lock import DEFAULT_LEASE, LockHolder
from rotator.domain.findings import FindingCode, RunbookName
from rotator.domain.lifecycle import KeyState
from rotator.entrypoints.cli import main
from rotator.sandbox.sample_flows import CARD_INPUT_ACTION, card_blocks, payment_flow_content
from rotator.services.report import ReportOptions, make_report
from rotator.services.rotation import Outcome, RotationRefused
from tests.conftest import NOW, TEST_CARD
from tests.world import World

DAY = timedelta(days=1)


def init(world: World) -> str:
    result = world.init(NOW)
    assert result.outcome is Outcome.ROTATED, result.detail
    assert result.new_key_id is not None
    return result.new_key_id


def state_of(world: World, key_id: str) -> KeyState:
    return world.adapters.keyring.get_record(key_id).state


def assert_invariants_hold(world: World, at: object = None) -> None:
    findings = world.adapters.invariants().check(None, at or NOW)  # type: ignore[arg-type]
    broken = [f for f in findings if not f.ok]
    assert broken == [], broken
    assert findings, "verify checked nothing"


def test_init_points_flow_and_module_at_a_stored_verified_key(world: World) -> None:
    key_id = init(world)
    assert world.associations() == [key_id]
    assert world.flow_key_id() == key_id
    assert key_id in world.module_content()
    assert world.adapters.keyring.get_current(world.instance_id) == key_id
    assert state_of(world, key_id) is KeyState.ACTIVE
    assert not any("/staging/" in name for name in world.parameter_names())
    assert world.lambda_decrypts(world.caller_types()) == {"status": "ok", "Card": TEST_CARD}
    assert_invariants_hold(world)


def test_init_again_changes_nothing(world: World) -> None:
    key_id = init(world)
    flow_before, names_before = world.flow_content(), world.parameter_names()
    again = world.init(NOW)
    assert again.outcome is Outcome.NOT_DUE
    assert key_id in again.detail
    assert (world.flow_content(), world.parameter_names()) == (flow_before, names_before)
    assert world.sandbox.emulator.state.update_count(world.instance_id, world.flow_id) == 1


def test_init_refuses_a_flow_without_an_encrypting_block(world: World) -> None:
    plain = world.connect.create_contact_flow(
        InstanceId=world.instance_id,
        Name="plain",
        Type="CONTACT_FLOW",
        Content='{"Version": "2019-10-30", "StartAction": "bye", "Actions": [{"Identifier":'
        ' "bye", "Type": "DisconnectParticipant", "Parameters": {}, "Transitions": {}}]}',
    )["ContactFlowId"]
    with pytest.raises(RotationRefused, match="cannot be managed"):
        world.service.init(world.instance_id, [plain], [], NOW)
    assert world.associations() == []
    assert world.parameter_names() == []


def test_rotation_not_due_changes_nothing(world: World) -> None:
    init(world)
    names_before = world.parameter_names()
    (result,) = world.service.rotate(None, NOW + 30 * DAY)
    assert result.outcome is Outcome.NOT_DUE
    assert "next rotation due" in result.detail
    assert world.parameter_names() == names_before
    assert world.sandbox.emulator.state.update_count(world.instance_id, world.flow_id) == 1


def test_due_rotation_keeps_in_flight_contacts_decryptable(world: World) -> None:
    old_key = init(world)
    in_flight = world.caller_types("4000056655665556")
    due = NOW + 366 * DAY  # the cryptoperiod (365 days) ends before the renew window
    (result,) = world.service.rotate(None, due)
    assert result.outcome is Outcome.ROTATED, result.detail
    assert "cryptoperiod" in result.detail
    new_key = result.new_key_id
    assert new_key is not None and new_key != old_key
    assert world.flow_key_id() == new_key and new_key in world.module_content()
    assert (state_of(world, old_key), state_of(world, new_key)) == (
        KeyState.PREVIOUS,
        KeyState.ACTIVE,
    )
    assert world.associations() == sorted([old_key, new_key])
    assert world.lambda_decrypts(in_flight) == {"status": "ok", "Card": "4000056655665556"}
    assert world.lambda_decrypts(world.caller_types()) == {"status": "ok", "Card": TEST_CARD}
    assert world.sandbox.emulator.state.update_count(world.instance_id, world.flow_id) == 2
    assert_invariants_hold(world, due)


def test_dry_run_changes_nothing(world: World) -> None:
    init(world)
    flow_before, names_before = world.flow_content(), world.parameter_names()
    (result,) = world.service.rotate(None, NOW + 400 * DAY, dry_run=True)
    assert result.outcome is Outcome.WOULD_ROTATE
    assert (world.flow_content(), world.parameter_names()) == (flow_before, names_before)


def test_rotation_inside_the_grace_period_is_refused_and_emergency_proceeds(world: World) -> None:
    first = init(world)
    (second,) = world.service.rotate(None, NOW + DAY, force=True)
    assert second.outcome is Outcome.ROTATED
    contact_on_first = world.caller_types()  # encrypted before the second rotation
    flow_before, names_before = world.flow_content(), world.parameter_names()

    (refused,) = world.service.rotate(None, NOW + 2 * DAY, force=True)
    assert refused.outcome is Outcome.FAILED
    assert "grace period" in refused.detail and "nothing changed" in refused.detail
    assert (world.flow_content(), world.parameter_names()) == (flow_before, names_before)
    assert len(world.associations()) == 2

    (emergency,) = world.service.rotate(
        None, NOW + 2 * DAY, force=True, emergency=True, override_reason="test"
    )
    assert emergency.outcome is Outcome.ROTATED, emergency.detail
    assert "can no longer encrypt" in emergency.detail
    assert world.associations() == [emergency.new_key_id]
    assert state_of(world, first) is KeyState.RETIRED
    assert state_of(world, second.new_key_id or "") is KeyState.RETIRED
    assert world.lambda_decrypts(contact_on_first)["status"] == "ok"  # retired still decrypts
    assert_invariants_hold(world, NOW + 2 * DAY)


def test_rotation_after_the_grace_period_retires_the_oldest_key(world: World) -> None:
    first = init(world)
    (second,) = world.service.rotate(None, NOW + DAY, force=True)
    (third,) = world.service.rotate(None, NOW + 9 * DAY, force=True)
    assert third.outcome is Outcome.ROTATED, third.detail
    assert state_of(world, first) is KeyState.RETIRED
    assert world.associations() == sorted([second.new_key_id or "", third.new_key_id or ""])
    assert_invariants_hold(world, NOW + 9 * DAY)


def test_retire_and_destroy_follow_grace_and_retention(world: World) -> None:
    old = init(world)
    contact = world.caller_types()
    world.service.rotate(None, NOW + DAY, force=True)

    with pytest.raises(RotationRefused, match="grace period"):
        world.service.retire(old, NOW + 2 * DAY)
    with pytest.raises(RotationRefused, match="only retired keys"):
        world.service.destroy(old, NOW + 2 * DAY)
    world.service.retire(old, NOW + 9 * DAY)
    assert state_of(world, old) is KeyState.RETIRED
    assert old not in world.associations()
    assert world.lambda_decrypts(contact)["status"] == "ok"

    with pytest.raises(RotationRefused, match="retained until"):
        world.service.destroy(old, NOW + 10 * DAY)
    world.service.destroy(old, NOW + 100 * DAY)
    assert state_of(world, old) is KeyState.DESTROYED
    assert f"{world.prefix}/keys/{old}/metadata" in world.parameter_names()
    assert f"{world.prefix}/keys/{old}/private-key" not in world.parameter_names()
    handler.reset_container()  # a new container: nothing cached from before the destruction
    assert world.lambda_decrypts(contact) == {"status": "error", "error": "key_destroyed"}
    assert_invariants_hold(world, NOW + 100 * DAY)


def test_the_current_key_cannot_be_retired(world: World) -> None:
    current = init(world)
    with pytest.raises(RotationRefused, match="current key"):
        world.service.retire(current, NOW + 400 * DAY)


def test_rollback_points_the_flows_back_to_the_previous_key(world: World) -> None:
    old = init(world)
    (rotated,) = world.service.rotate(None, NOW + DAY, force=True)
    on_new = world.caller_types()
    world.service.rollback(world.instance_id, NOW + DAY)
    assert world.flow_key_id() == old
    assert world.adapters.keyring.get_current(world.instance_id) == old
    assert state_of(world, rotated.new_key_id or "") is KeyState.PREVIOUS
    assert world.lambda_decrypts(on_new)["status"] == "ok"
    assert world.lambda_decrypts(world.caller_types())["status"] == "ok"
    assert_invariants_hold(world, NOW + DAY)


def test_two_rotations_started_together_rotate_once(world: World) -> None:
    init(world)
    other = world.new_service()
    barrier = threading.Barrier(2)
    outcomes: list[Outcome] = []

    def run(service: object) -> None:
        barrier.wait()
        (result,) = service.rotate(None, NOW + 400 * DAY)  # type: ignore[attr-defined]
        outcomes.append(result.outcome)

    threads = [threading.Thread(target=run, args=(s,)) for s in (world.service, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(Outcome.ROTATED) == 1, outcomes
    assert len(world.associations()) == 2
    assert_invariants_hold(world, NOW + 400 * DAY)


def test_status_and_verify_report_a_stale_lock(world: World) -> None:
    init(world)
    gone = subprocess.Popen(["true"])  # noqa: S607 - a process that has exited
    gone.wait()
    stale = replace(LockHolder.this_process("crashed", DEFAULT_LEASE), pid=gone.pid)
    world.ssm.put_parameter(
        Name=f"{world.prefix}/locks/{world.instance_id}",
        Value=stale.to_json(),
        Type="String",
    )
    out = io.StringIO()
    assert main(["status", "--json", "--now", NOW.isoformat()], out) == 0
    (instance,) = json.loads(out.getvalue())["instances"]
    assert instance["lock_stale"] is True and "no longer running" in instance["lock"]
    findings = world.adapters.invariants().check(None, NOW)
    assert [f.check for f in findings if not f.ok] == ["no stale lock"]

    (result,) = world.service.rotate(None, NOW)  # a plain run clears it first
    assert result.outcome is Outcome.NOT_DUE
    assert_invariants_hold(world)


def test_a_dynamic_key_reference_is_refused_unless_named_and_then_said_to_become_static(
    world: World,
) -> None:
    document = json.loads(payment_flow_content(None, None))
    for action in document["Actions"]:
        if action["Identifier"] == CARD_INPUT_ACTION:
            action["Parameters"]["InputEncryption"] = {
                "EncryptionKeyId": "$.Attributes.KeyId",
                "Key": "$.Attributes.Certificate",
            }
    world.connect.update_contact_flow_content(
        InstanceId=world.instance_id, ContactFlowId=world.flow_id, Content=json.dumps(document)
    )
    before = world.flow_content()
    with pytest.raises(RotationRefused, match="uses a dynamic key reference"):
        world.service.init(world.instance_id, [world.flow_id], [], NOW)
    assert world.flow_content() == before and world.parameter_names() == []

    named = world.service.init(
        world.instance_id, [world.flow_id], [], NOW, encrypt_blocks=card_blocks(world.flow_id)
    )
    assert named.outcome is Outcome.ROTATED, named.detail
    assert f"flow {world.flow_id} block {CARD_INPUT_ACTION}: dynamic key reference" in named.detail
    assert "becomes static" in named.detail
    assert world.flow_key_id() == named.new_key_id


def test_status_verify_and_report_show_a_dynamic_reference_that_appears_in_a_managed_flow(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A block changed by hand to take its key from a contact attribute: the rotator does not
    manage it, and every read-out says so with the runbook that explains the choice."""
    init(world)
    document = json.loads(world.module_content())
    for action in document["Actions"]:
        if action["Identifier"] == CARD_INPUT_ACTION:
            action["Parameters"]["InputEncryption"]["EncryptionKeyId"] = "$.Attributes.KeyId"
    world.connect.update_contact_flow_module_content(
        InstanceId=world.instance_id,
        ContactFlowModuleId=world.module_id,
        Content=json.dumps(document),
    )
    expected = f"module {world.module_id} block {CARD_INPUT_ACTION}"
    out = io.StringIO()
    assert main(["status", "--instance-id", world.instance_id], out) == 0
    (drift,) = [line for line in out.getvalue().splitlines() if "DRIFT" in line]
    assert expected in drift and "$.Attributes.KeyId" in drift and "flow-drift.md" in drift
    out = io.StringIO()
    assert main(["verify", "--instance-id", world.instance_id], out) == 1
    assert any(expected in line and line.startswith("FAIL") for line in out.getvalue().splitlines())
    a = world.adapters
    report = make_report(a.keyring, a.connect, a.lock, ReportOptions(), NOW)
    (finding,) = [f for f in report.findings if f.code is FindingCode.FLOW_DRIFT]
    assert expected in finding.message and finding.rule.runbook is RunbookName.FLOW_DRIFT
