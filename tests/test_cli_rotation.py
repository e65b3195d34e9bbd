"""The rotation commands through the CLI entrypoint, in-process, against the sandbox (`world`):
exit codes 0/1/2 and both output formats of init, rotate, retire, destroy, rollback, verify
and status.

`main()` builds its own adapters and makes real keys; ROTATOR_KEY_SIZE=2048 keeps that quick.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest

from lambda_decrypt import handler
from rotator.entrypoints.cli import main
from rotator.sandbox.sample_flows import CARD_INPUT_ACTION
from tests.conftest import NOW, TEST_CARD
from tests.simulated import unmark
from tests.world import World

DAY = timedelta(days=1)


def at(moment: datetime) -> str:
    return moment.isoformat()


@dataclass(frozen=True)
class Output:
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Cli:
    world: World
    capsys: pytest.CaptureFixture[str]

    def __call__(self, *argv: str, expect: int, at: datetime | None = None) -> Output:
        """Run at the sandbox's simulated time `at` (the real time if None); the output comes
        back without the simulated-time marks, after checking that every line carries one."""
        if at is not None:
            self.world.sandbox.clock.stand_at(at)
        self.capsys.readouterr()  # only this command's stderr below
        out = io.StringIO()
        code = main(list(argv), out)
        output = Output(*unmark(out.getvalue(), self.capsys.readouterr().err, at))
        assert code == expect, f"rotator {' '.join(argv)} -> {code}: {output}"
        return output

    def init(self, *extra: str, expect: int = 0) -> Output:
        w = self.world
        return self(
            "init",
            "--instance-id",
            w.instance_id,
            "--flow-id",
            w.flow_id,
            "--flow-module-id",
            w.module_id,
            "--encrypt-block",
            f"{w.flow_id}:{CARD_INPUT_ACTION}",
            "--encrypt-block",
            f"{w.module_id}:{CARD_INPUT_ACTION}",
            *extra,
            at=NOW,
            expect=expect,
        )

    def first_key(self) -> str:
        self.init()
        key_id = self.world.flow_key_id()
        assert key_id is not None
        return key_id

    def rotated_once(self) -> tuple[str, str, str]:
        """Init, a contact on the first key, a forced rotation a day later: (first, second,
        the contact's ciphertext)."""
        first = self.first_key()
        contact = self.world.caller_types()
        (result,) = self("rotate", "--force", "--json", at=NOW + DAY, expect=0).json()["results"]
        second = result["new_key_id"]
        assert second == self.world.flow_key_id() != first
        return first, second, contact

    def snapshot(self) -> tuple[Any, ...]:
        w = self.world
        versions = {
            p["Name"]: p["Version"]
            for page in w.ssm.get_paginator("get_parameters_by_path").paginate(
                Path=w.prefix, Recursive=True
            )
            for p in page["Parameters"]
        }
        return (w.flow_content(), w.module_content(), w.associations(), versions)


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    monkeypatch.setenv("ROTATOR_KEY_SIZE", "2048")
    return Cli(world, capsys)


def state_of(world: World, key_id: str) -> str:
    return str(world.adapters.keyring.get_record(key_id).state)


# -- init -----------------------------------------------------------------------------------


def test_init_prints_the_first_key_and_init_again_is_not_due(cli: Cli, world: World) -> None:
    out = cli.init().out
    key_id = world.flow_key_id()
    assert key_id is not None and key_id in world.module_content()
    assert out == (
        f"{world.instance_id}: rotated: no key -> {key_id} (first key); "
        f"flow {world.flow_id} block card-number: starts encrypting with the new key; "
        f"module {world.module_id} block card-number: starts encrypting with the new key\n"
        "summary: 1 rotated\n"
    )
    assert world.adapters.keyring.get_record(key_id).key_size == 2048  # ROTATOR_KEY_SIZE

    again = cli.init().out
    assert f"{world.instance_id}: not_due: already initialised: current key {key_id}" in again
    assert again.endswith("summary: 1 not due\n")
    assert world.associations() == [key_id]


def test_init_json_names_the_new_key_and_rotation(cli: Cli, world: World) -> None:
    payload = cli.init("--json").json()
    assert payload["ok"] is True
    (result,) = payload["results"]
    assert result["instance_id"] == world.instance_id
    assert result["outcome"] == "rotated"
    assert result["old_key_id"] is None
    assert result["new_key_id"] == world.flow_key_id() is not None
    assert isinstance(result["rotation_id"], str) and result["rotation_id"]
    assert world.lambda_decrypts(world.caller_types()) == {"status": "ok", "Card": TEST_CARD}


def test_init_without_flows_is_a_usage_error(cli: Cli, world: World) -> None:
    output = cli("init", "--instance-id", world.instance_id, expect=2)
    assert output.out == ""
    assert output.err == (
        "error: configuration: init: name at least one --flow-id or --flow-module-id\n"
    )
    assert world.parameter_names() == [] and world.associations() == []


def test_init_of_a_flow_without_an_encrypting_block_fails_clearly(cli: Cli, world: World) -> None:
    plain = world.connect.create_contact_flow(
        InstanceId=world.instance_id,
        Name="plain",
        Type="CONTACT_FLOW",
        Content='{"Version": "2019-10-30", "StartAction": "bye", "Actions": [{"Identifier":'
        ' "bye", "Type": "DisconnectParticipant", "Parameters": {}, "Transitions": {}}]}',
    )["ContactFlowId"]
    output = cli("init", "--instance-id", world.instance_id, "--flow-id", plain, expect=1)
    assert output.err.startswith(f"error: flow {plain} cannot be managed: ")
    assert world.parameter_names() == [] and world.associations() == []


@pytest.mark.parametrize(
    "argv",
    [
        ["init", "--flow-id", "f"],  # no --instance-id
        ["rotate", "--now", "next tuesday"],
        ["rollback"],  # no --instance-id
        ["retire"],  # no KEY_ID
    ],
    ids=["init-no-instance", "bad-now", "rollback-no-instance", "retire-no-key"],
)
def test_argument_errors_exit_2(cli: Cli, world: World, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(*argv, expect=2)
    assert exit_info.value.code == 2
    assert "usage: rotator" in cli.capsys.readouterr().err
    assert world.parameter_names() == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [("KEYRING_PREFIX", "connect-keys/"), ("ROTATOR_KEY_SIZE", "big"), ("ROTATOR_GRACE_DAYS", "0")],
)
def test_configuration_errors_exit_2_and_name_the_setting(
    cli: Cli, world: World, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    output = cli("rotate", at=NOW, expect=2)
    assert output.err.startswith(f"error: configuration: {variable}: ")
    assert output.out == ""


# -- rotate ---------------------------------------------------------------------------------


def test_rotate_an_unknown_instance_fails_clearly(cli: Cli, world: World) -> None:
    cli.init()
    before = cli.snapshot()
    output = cli("rotate", "--instance-id", "unknown", at=NOW + 400 * DAY, expect=1)
    assert output.out == ""
    assert output.err == "error: instance unknown is not managed (run rotator init first)\n"
    assert cli.snapshot() == before


def test_rotate_with_nothing_managed_says_how_to_start(cli: Cli) -> None:
    human = cli("rotate", at=NOW, expect=0).out
    assert human == "no managed instances (run rotator init first)\nsummary: nothing to do\n"
    assert cli("rotate", "--json", at=NOW, expect=0).json() == {
        "ok": True,
        "results": [],
    }


def test_rotate_not_due_in_both_formats_changes_nothing(cli: Cli, world: World) -> None:
    key_id = cli.first_key()
    before = cli.snapshot()
    human = cli("rotate", at=NOW + 30 * DAY, expect=0).out
    lines = human.splitlines()
    assert lines[0].startswith(f"{world.instance_id}: not_due: next rotation due ")
    assert lines[1:] == ["summary: 1 not due"]

    payload = cli("rotate", "--json", at=NOW + 30 * DAY, expect=0).json()
    assert payload["ok"] is True
    (result,) = payload["results"]
    assert (result["outcome"], result["old_key_id"], result["new_key_id"]) == (
        "not_due",
        key_id,
        None,
    )
    assert cli.snapshot() == before


def test_dry_run_in_both_formats_changes_nothing(cli: Cli, world: World) -> None:
    key_id = cli.first_key()
    before = cli.snapshot()
    due = NOW + 366 * DAY
    human = cli("rotate", "--dry-run", at=due, expect=0).out
    assert f"{world.instance_id}: would_rotate: would rotate (cryptoperiod ended" in human
    assert human.endswith("summary: 1 would rotate\n")
    (result,) = cli("rotate", "--dry-run", "--json", at=due, expect=0).json()["results"]
    assert (result["outcome"], result["old_key_id"], result["new_key_id"]) == (
        "would_rotate",
        key_id,
        None,
    )
    assert cli.snapshot() == before


def test_due_rotation_prints_old_and_new_key(cli: Cli, world: World) -> None:
    first = cli.first_key()
    contact = world.caller_types()
    out = cli("rotate", at=NOW + 366 * DAY, expect=0).out
    second = world.flow_key_id()
    assert second is not None and second != first
    assert out.startswith(f"{world.instance_id}: rotated: {first} -> {second} (cryptoperiod ")
    assert out.endswith("summary: 1 rotated\n")
    assert (state_of(world, first), state_of(world, second)) == ("previous", "active")
    assert world.lambda_decrypts(contact) == {"status": "ok", "Card": TEST_CARD}


def test_rotation_inside_the_grace_period_fails_in_both_formats_and_emergency_proceeds(
    cli: Cli, world: World
) -> None:
    first, second, contact = cli.rotated_once()
    before = cli.snapshot()
    in_grace = NOW + 2 * DAY

    human = cli("rotate", "--force", at=in_grace, expect=1).out
    assert f"{world.instance_id}: failed: two keys are associated" in human
    assert f"{first} is in its grace period until" in human and "nothing changed" in human
    assert human.endswith("summary: 1 failed\n")
    payload = cli("rotate", "--force", "--json", at=in_grace, expect=1).json()
    assert payload["ok"] is False
    (result,) = payload["results"]
    assert result["outcome"] == "failed" and "grace period" in result["detail"]
    assert cli.snapshot() == before

    unexplained = cli("rotate", "--force", "--emergency", at=in_grace, expect=2)
    assert "--emergency needs --reason TEXT (recorded in the history)" in unexplained.err
    assert cli.snapshot() == before

    (emergency,) = cli(
        "rotate", "--force", "--emergency", "--reason", "INC-42", "--json", at=in_grace, expect=0
    ).json()["results"]
    assert emergency["outcome"] == "rotated" and "can no longer encrypt" in emergency["detail"]
    assert "emergency (INC-42)" in emergency["detail"]
    history = world.adapters.keyring.get_record(first).history
    assert history[-1].reason == "freeing Connect's second key slot (emergency (INC-42): forced)"
    assert history[-1].at == in_grace and "[simulated clock]" in history[-1].actor
    assert world.associations() == [emergency["new_key_id"]]
    assert state_of(world, first) == state_of(world, second) == "retired"
    assert world.lambda_decrypts(contact) == {"status": "ok", "Card": TEST_CARD}


# -- retire, destroy, rollback --------------------------------------------------------------


def test_retire_waits_for_the_grace_period(cli: Cli, world: World) -> None:
    first, second, contact = cli.rotated_once()
    before = cli.snapshot()
    current = cli("retire", second, at=NOW + 9 * DAY, expect=1)
    assert current.err.startswith(f"error: key {second} is the current key of {world.instance_id}")
    early = cli("retire", first, at=NOW + 2 * DAY, expect=1)
    assert early.err.startswith(f"error: key {first} is in its grace period until ")
    assert early.out == ""
    assert cli.snapshot() == before

    done = cli("retire", first, at=NOW + 9 * DAY, expect=0)
    assert (
        done.out == f"key {first} retired: disassociated from {world.instance_id}, still decrypts\n"
    )
    assert world.associations() == [second]
    assert state_of(world, first) == "retired"
    again = cli("retire", first, "--json", at=NOW + 9 * DAY, expect=0).json()
    assert again == {"ok": True, "message": f"key {first} is retired (decrypt-only); nothing to do"}
    handler.reset_container()
    assert world.lambda_decrypts(contact) == {"status": "ok", "Card": TEST_CARD}


def test_destroy_needs_yes_a_retired_key_and_the_retention_period(cli: Cli, world: World) -> None:
    first, second, contact = cli.rotated_once()
    cli("retire", first, at=NOW + 9 * DAY, expect=0)
    before = cli.snapshot()

    unconfirmed = cli("destroy", first, at=NOW + 200 * DAY, expect=2)
    assert "--yes is required" in unconfirmed.err
    active = cli("destroy", second, "--yes", at=NOW + 200 * DAY, expect=1)
    assert active.err.startswith(f"error: key {second} is active; only retired keys")
    kept = cli("destroy", first, "--yes", at=NOW + 10 * DAY, expect=1)
    assert kept.err.startswith(f"error: key {first} is retained until ")
    assert cli.snapshot() == before

    done = cli("destroy", first, "--yes", at=NOW + 100 * DAY, expect=0)
    assert done.out == (
        f"key {first} destroyed: its private key is deleted, its record kept "
        "(retention period over)\n"
    )
    assert state_of(world, first) == "destroyed"
    assert f"{world.prefix}/keys/{first}/private-key" not in world.parameter_names()
    again = cli("destroy", first, "--yes", "--json", at=NOW + 100 * DAY, expect=0)
    assert again.json() == {"ok": True, "message": f"key {first} is destroyed"}

    handler.reset_container()
    assert world.lambda_decrypts(contact) == {"status": "error", "error": "key_destroyed"}
    assert world.lambda_decrypts(world.caller_types()) == {"status": "ok", "Card": TEST_CARD}


def test_rollback_in_both_formats(cli: Cli, world: World) -> None:
    cli.first_key()
    nothing = cli("rollback", "--instance-id", world.instance_id, at=NOW, expect=1)
    assert nothing.err == (
        f"error: instance {world.instance_id} has no previous key to roll back to\n"
    )
    unknown = cli("rollback", "--instance-id", "unknown", at=NOW, expect=1)
    assert "instance unknown has no previous key" in unknown.err

    first, second, contact = rotated_on(cli, world)
    back = cli("rollback", "--instance-id", world.instance_id, at=NOW + DAY, expect=0)
    assert back.out == f"{world.instance_id}: flows point at {first} again; {second} is previous\n"
    assert world.flow_key_id() == first and first in world.module_content()
    assert (state_of(world, first), state_of(world, second)) == ("active", "previous")
    assert world.lambda_decrypts(contact) == {"status": "ok", "Card": TEST_CARD}

    forth = cli(
        "rollback", "--instance-id", world.instance_id, "--json", at=NOW + DAY, expect=0
    ).json()
    assert forth == {
        "ok": True,
        "message": f"{world.instance_id}: flows point at {second} again; {first} is previous",
    }
    assert world.flow_key_id() == second


def rotated_on(cli: Cli, world: World) -> tuple[str, str, str]:
    """After `first_key`: a contact on the second key of a forced rotation a day later."""
    first = world.flow_key_id()
    assert first is not None
    cli("rotate", "--force", at=NOW + DAY, expect=0)
    second = world.flow_key_id()
    assert second is not None and second != first
    return first, second, world.caller_types()


# -- verify and status ----------------------------------------------------------------------


def test_verify_in_both_formats_when_every_invariant_holds(cli: Cli, world: World) -> None:
    key_id = cli.first_key()
    human = cli("verify", at=NOW, expect=0).out.splitlines()
    assert len(human) >= 6
    assert all(line.startswith("ok    ") for line in human[:-1]), human
    assert human[-1] == f"all invariants hold ({len(human) - 1} checks)"
    assert any(f"key {key_id} decrypts a canary" in line for line in human)

    payload = cli("verify", "--json", at=NOW, expect=0).json()
    assert payload["ok"] is True
    assert len(payload["findings"]) == len(human) - 1
    for finding in payload["findings"]:
        assert set(finding) == {"check", "instance_id", "ok", "message"}
        assert finding["ok"] is True and finding["instance_id"] == world.instance_id


def test_verify_reports_a_broken_invariant_in_both_formats(cli: Cli, world: World) -> None:
    key_id = cli.first_key()
    world.ssm.delete_parameter(Name=f"{world.prefix}/keys/{key_id}/private-key")

    human = cli("verify", at=NOW, expect=1).out.splitlines()
    failed = [line for line in human if line.startswith("FAIL")]
    assert failed and human[-1].startswith(f"{len(failed)} invariant(s) broken (")
    assert any("private key stored" in line and key_id in line for line in failed)

    payload = cli("verify", "--json", at=NOW, expect=1).json()
    assert payload["ok"] is False
    broken = {f["check"] for f in payload["findings"] if not f["ok"]}
    assert {"private key stored", "every referenced key decrypts"} <= broken


def test_verify_of_an_unmanaged_instance_fails(cli: Cli) -> None:
    output = cli("verify", "--instance-id", "unknown", at=NOW, expect=1).out
    assert output.splitlines() == [
        "FAIL  unknown  managed: instance is not managed",
        "1 invariant(s) broken (1 checks)",
    ]


def test_status_in_both_formats_after_a_rotation(cli: Cli, world: World) -> None:
    first, second, _ = cli.rotated_once()
    payload = cli("status", "--json", at=NOW + DAY, expect=0).json()
    keys = {row["key_id"]: row for row in payload["keys"]}
    assert set(keys) == {first, second}
    assert (keys[first]["state"], keys[first]["current"]) == ("previous", False)
    assert (keys[second]["state"], keys[second]["current"]) == ("active", True)
    assert keys[second]["key_size"] == 2048
    assert [i["current_key_id"] for i in payload["instances"]] == [second]

    table = cli("status", at=NOW + DAY, expect=0).out.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("KEY ID"))
    rows = {line.split()[0]: line.split() for line in table[header + 1 :]}
    assert set(rows) == {first, second}
    assert rows[first][1:3] == [world.instance_id, "previous"]
    assert rows[second][1:4] == [world.instance_id, "active", "yes"]
    assert any(
        line.startswith(f"instance {world.instance_id}: current key {second}") for line in table
    )
