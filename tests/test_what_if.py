"""Issue 9's proof: `--now` on every command is a what-if that changes no parameter and no
Connect resource (snapshot before and after) and says what a real run would do; the same
commands at the sandbox's time do change state (the control that lets the proof fail).

The scene is built in the past through the service (time passed in); the sandbox's clock then
stands at PRESENT, when nothing is due, so a what-if that answered "would ..." evaluated at
its `--now`, not at the clock. ROTATOR_KEY_SIZE=2048 keeps the control runs' new keys quick.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rotator.domain.keys import KeyMaterial
from rotator.entrypoints.cli import main
from rotator.sandbox.sample_flows import PaymentInstance, create_payment_instance
from tests.conftest import NOW
from tests.world import World

DAY = timedelta(days=1)
PRESENT = NOW + 11 * DAY  # the sandbox's clock: nothing due, the second key in its grace period
INSIDE = NOW + 12 * DAY  # the second key still in its grace, the first inside its retention
LATER = NOW + 20 * DAY  # the second key past its grace, the current one not due
DUE = NOW + 376 * DAY  # the current key's cryptoperiod over, the first key past its retention
REASON = "INC-9"


@dataclass(frozen=True)
class Scene:
    """Keys of the payments instance (first retired, second previous, third current), an
    unmanaged second instance, a key pair in files and the AWS blog's two parameters."""

    world: World
    first: str
    second: str
    third: str
    other: PaymentInstance
    adopting: str  # an instance whose two keys Connect holds and the keyring does not (yet)
    new_key_id: str
    private_key_file: Path
    certificate_file: Path
    blog_key_parameter: str
    blog_key_id_parameter: str
    blog_key_id: str

    @property
    def instance(self) -> str:
        return self.world.instance_id


def blog_path(world: World) -> str:
    """Where this world's AWS blog deployment keeps its two parameters (outside the keyring)."""
    return f"/blog{world.prefix}/"


@pytest.fixture
def scene(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    material_a: KeyMaterial,
    material_b: KeyMaterial,
) -> Scene:
    monkeypatch.setenv("ROTATOR_KEY_SIZE", "2048")
    service, instance = world.service, world.instance_id
    first = world.init(NOW).new_key_id
    service.rotate(instance, NOW + DAY, force=True)
    assert first is not None
    service.retire(first, NOW + 9 * DAY)
    (rotated,) = service.rotate(instance, NOW + 10 * DAY, force=True)
    second, third = rotated.old_key_id, rotated.new_key_id
    assert second is not None and third is not None

    private_key_file = tmp_path / "private.key.pem"
    private_key_file.write_text(material_a.private_key_pem)
    certificate_file = tmp_path / "certificate.pem"
    certificate_file.write_text(material_a.certificate_pem)
    blog_key_parameter, blog_key_id_parameter = blog_path(world) + "key", blog_path(world) + "id"
    # The instance the imports adopt keys for: Connect holds both keys (import checks that).
    adopting = create_payment_instance(world.connect, "adopting").instance_id
    new_key_id, blog_key_id = (
        world.connect.associate_security_key(InstanceId=adopting, Key=m.public_key_pem)[
            "AssociationId"
        ]
        for m in (material_a, material_b)
    )
    world.ssm.put_parameter(
        Name=blog_key_parameter, Value=material_b.private_key_pem, Type="SecureString"
    )
    world.ssm.put_parameter(Name=blog_key_id_parameter, Value=blog_key_id, Type="SecureString")

    world.sandbox.clock.stand_at(PRESENT)
    return Scene(
        world,
        first,
        second,
        third,
        create_payment_instance(world.connect, "other"),
        adopting,
        new_key_id,
        private_key_file,
        certificate_file,
        blog_key_parameter,
        blog_key_id_parameter,
        blog_key_id,
    )


def snapshot(world: World) -> dict[str, Any]:
    """Every SSM parameter of the world's keyring and of its blog deployment (SecureStrings too)
    with its version and last change, and every Connect instance's keys, flows and modules."""
    # The sandbox's moto outlives a world: other tests' parameters are left out by name.
    mine = [
        {"Key": "Name", "Option": "BeginsWith", "Values": [world.prefix + "/", blog_path(world)]}
    ]
    parameters = {
        p["Name"]: (p["Type"], p["Version"], p["LastModifiedDate"])
        for page in world.ssm.get_paginator("describe_parameters").paginate(ParameterFilters=mine)
        for p in page["Parameters"]
    }
    assert any(name.startswith(blog_path(world)) for name in parameters), parameters
    connect = world.connect
    instances: dict[str, Any] = {}
    for summary in connect.list_instances()["InstanceSummaryList"]:
        instance_id = summary["Id"]
        flows = {
            f["Id"]: _described(
                connect.describe_contact_flow(InstanceId=instance_id, ContactFlowId=f["Id"]),
                "ContactFlow",
            )
            for f in connect.list_contact_flows(InstanceId=instance_id)["ContactFlowSummaryList"]
        }
        modules = {
            m["Id"]: _described(
                connect.describe_contact_flow_module(
                    InstanceId=instance_id, ContactFlowModuleId=m["Id"]
                ),
                "ContactFlowModule",
            )
            for m in connect.list_contact_flow_modules(InstanceId=instance_id)[
                "ContactFlowModulesSummaryList"
            ]
        }
        keys = connect.list_security_keys(InstanceId=instance_id)["SecurityKeys"]
        instances[instance_id] = {
            "keys": sorted((k["AssociationId"], k["Key"]) for k in keys),
            "flows": flows,
            "modules": modules,
        }
    return {"parameters": parameters, "instances": instances}


def _described(answer: dict[str, Any], member: str) -> dict[str, Any]:
    described = dict(answer[member])
    assert described["Content"], described
    return described


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Run:
    capsys.readouterr()
    out = io.StringIO()
    code = main(argv, out)
    return Run(code, out.getvalue(), capsys.readouterr().err)


def banner(at: datetime) -> str:
    return f"what-if at {at.isoformat(timespec='seconds')}: evaluated only, nothing was changed\n"


def what_if_output(result: Run, at: datetime, *, machine: bool) -> str:
    """The command's own output, after checking the banner and, as the sandbox's clock is
    simulated, the mark on every line of human output."""
    if machine:
        assert result.err.startswith(banner(at)), result.err
        assert banner(at) not in result.out, result.out  # the document stays parseable
        return result.out
    lines = result.out.splitlines(keepends=True)
    assert lines and lines[0] == banner(at), result.out
    prefix = f"[simulated {at:%Y-%m-%d}] "
    assert all(line.startswith(prefix) for line in lines[1:]), result.out
    return "".join(line[len(prefix) :] for line in lines[1:])


Argv = Callable[[Scene], list[str]]
Words = Callable[[Scene], list[str]]


@dataclass(frozen=True)
class Case:
    """A command at a time where a real run would act (or, for the read-only ones, report):
    what its what-if says, and what the real run says it did (None: it changes nothing)."""

    argv: Argv
    at: datetime
    would: Words
    did: Words | None = None
    machine: bool = False


def _init_other(s: Scene) -> list[str]:
    return [
        "init",
        "--instance-id",
        s.other.instance_id,
        "--flow-id",
        s.other.flow_id,
        "--flow-module-id",
        s.other.module_id,
        *s.other.encrypt_block_args(),
    ]


def _import_files(s: Scene) -> list[str]:
    return [
        "import",
        "--key-id",
        s.new_key_id,
        "--private-key",
        str(s.private_key_file),
        "--certificate",
        str(s.certificate_file),
        "--instance-id",
        s.adopting,
    ]


def _import_blog(s: Scene) -> list[str]:
    return [
        "import",
        "--from-blog-parameters",
        "--key-parameter",
        s.blog_key_parameter,
        "--key-id-parameter",
        s.blog_key_id_parameter,
        "--instance-id",
        s.adopting,
    ]


REPORT_WORDS = {
    "md": ["0 critical, 1 warning, 1 info", "cryptoperiod exceeded", "past its grace period"],
    "html": ["cryptoperiod exceeded", "previous key past its grace period"],
    "json": [f'"generated_at": "{DUE.isoformat()}"', '"warning": 1'],
    "csv": ["warning cryptoperiod-exceeded", "info grace-period-over"],
}


def _report(fmt: str, words: list[str]) -> Case:
    return Case(
        lambda s: ["report", "--format", fmt],
        DUE,
        would=lambda s: [s.third, *words],
        machine=fmt in ("json", "csv"),
    )


CASES: dict[str, Case] = {
    "import": Case(
        _import_files,
        DUE,
        would=lambda s: [
            f"would import: key {s.new_key_id} (4096 bits) state active",
            "what-if: every check passed; nothing was stored",
        ],
        did=lambda s: [f"imported: key {s.new_key_id} (4096 bits) state active"],
    ),
    "import-json": Case(
        lambda s: [*_import_files(s), "--json"],
        DUE,
        would=lambda s: [
            f'"key_id": "{s.new_key_id}"',
            '"created": false',
            '"what_if": true',
            "nothing was stored",
        ],
        machine=True,
    ),
    "import-blog": Case(
        _import_blog,
        DUE,
        would=lambda s: [
            f"would import: key {s.blog_key_id} (4096 bits) state active",
            "what-if: every check passed; nothing was stored",
        ],
        did=lambda s: [f"imported: key {s.blog_key_id} (4096 bits) state active"],
    ),
    "status": Case(
        lambda s: ["status"],
        DUE,
        would=lambda s: [
            f"instance {s.instance}: current key {s.third}",
            "cryptoperiod ended on",  # the current key's ROTATION column: due at --now
        ],
    ),
    "status-json": Case(
        lambda s: ["status", "--json"],
        DUE,
        would=lambda s: [f'"now": "{DUE.isoformat()}"', "cryptoperiod ended on"],
        machine=True,
    ),
    "init": Case(
        _init_other,
        DUE,
        would=lambda s: [
            f"{s.other.instance_id}: would_rotate: would manage 2 block(s) and point them at a "
            f"new key (first key): flow {s.other.flow_id} block card-number: starts encrypting "
            f"with the new key; module {s.other.module_id} block card-number: starts encrypting "
            "with the new key",
            "summary: 1 would rotate",
        ],
        did=lambda s: [f"{s.other.instance_id}: rotated: no key -> ", "summary: 1 rotated"],
    ),
    "rotate": Case(
        lambda s: ["rotate"],
        DUE,
        would=lambda s: [
            f"{s.instance}: would_rotate: would rotate (cryptoperiod ended on",
            f"would first retire {s.second}",
            "summary: 1 would rotate",
        ],
        did=lambda s: [f"{s.instance}: rotated: {s.third} -> ", "summary: 1 rotated"],
    ),
    "rotate-instance-json": Case(
        lambda s: ["rotate", "--instance-id", s.instance, "--json"],
        DUE,
        would=lambda s: ['"outcome": "would_rotate"', f'"old_key_id": "{s.third}"'],
        machine=True,
    ),
    "rotate-force": Case(
        lambda s: ["rotate", "--force"],
        LATER,
        would=lambda s: [
            f"{s.instance}: would_rotate: would rotate (forced); would first retire {s.second}"
        ],
        did=lambda s: [f"{s.instance}: rotated: {s.third} -> "],
    ),
    "rotate-emergency": Case(
        lambda s: ["rotate", "--force", "--emergency", "--reason", REASON],
        INSIDE,
        would=lambda s: [
            f"would rotate (emergency ({REASON}): forced); would first retire {s.second}; "
            f"emergency: would retire {s.third} at once",
        ],
        did=lambda s: [f"{s.instance}: rotated: {s.third} -> ", f"emergency: {s.third} retired"],
    ),
    "retire": Case(
        lambda s: ["retire", s.second],
        DUE,
        would=lambda s: [
            f"would retire key {s.second}: disassociate it from {s.instance} (grace period over)"
        ],
        did=lambda s: [f"key {s.second} retired: disassociated from {s.instance}"],
    ),
    "retire-emergency-json": Case(
        lambda s: ["retire", s.second, "--emergency", "--reason", REASON, "--json"],
        INSIDE,
        would=lambda s: [
            f"would retire key {s.second}: disassociate it from {s.instance} "
            f"(emergency, grace period overridden: {REASON})"
        ],
        did=lambda s: [f"key {s.second} retired: disassociated from {s.instance}"],
        machine=True,
    ),
    "destroy": Case(
        lambda s: ["destroy", s.first, "--yes"],
        DUE,
        would=lambda s: [
            f"would destroy key {s.first}: delete its private key, keep its record "
            "(retention period over)"
        ],
        did=lambda s: [f"key {s.first} destroyed: its private key is deleted"],
    ),
    "destroy-without-yes": Case(  # a what-if needs no confirmation; a real run refuses
        lambda s: ["destroy", s.first],
        DUE,
        would=lambda s: [f"would destroy key {s.first}: delete its private key"],
    ),
    "destroy-override": Case(
        lambda s: ["destroy", s.first, "--yes", "--override-retention", "--reason", REASON],
        INSIDE,
        would=lambda s: [
            f"would destroy key {s.first}: delete its private key, keep its record "
            f"(retention period overridden: {REASON})"
        ],
        did=lambda s: [
            f"key {s.first} destroyed: its private key is deleted, its record kept "
            f"(retention period overridden: {REASON})"
        ],
    ),
    "rollback": Case(
        lambda s: ["rollback", "--instance-id", s.instance],
        DUE,
        would=lambda s: [
            f"would point the flows of {s.instance} back at {s.second}; "
            f"{s.third} would become previous"
        ],
        did=lambda s: [f"{s.instance}: flows point at {s.second} again; {s.third} is previous"],
    ),
    "verify": Case(
        lambda s: ["verify"],
        DUE,
        would=lambda s: [
            f"ok    {s.instance}  current certificate valid: key {s.third}",
            "all invariants hold (10 checks)",
        ],
    ),
    "verify-json": Case(
        lambda s: ["verify", "--instance-id", s.instance, "--json"],
        DUE,
        would=lambda s: ['"ok": true', f"key {s.third} decrypts a canary"],
        machine=True,
    ),
    **{f"report-{fmt}": _report(fmt, words) for fmt, words in REPORT_WORDS.items()},
}


def command_of(name: str) -> str:
    return name.split("-")[0]


@pytest.mark.parametrize("command", sorted({command_of(name) for name in CASES}))
def test_now_is_a_what_if_that_changes_nothing_and_says_what_would_happen(
    scene: Scene,
    capsys: pytest.CaptureFixture[str],
    subtests: pytest.Subtests,
    command: str,
) -> None:
    """Every variant of the command in one scene: each proves it changed nothing, so the next
    one starts from the same state."""
    for name, case in CASES.items():
        if command_of(name) != command:
            continue
        with subtests.test(name):
            before = snapshot(scene.world)
            result = run(capsys, [*case.argv(scene), "--now", case.at.isoformat()])
            assert snapshot(scene.world) == before
            assert result.code == 0, result
            output = what_if_output(result, case.at, machine=case.machine)
            for words in case.would(scene):
                assert words in output, output
            if name.endswith("json"):
                json.loads(output)
            if name == "report-csv":
                assert len(list(csv.DictReader(io.StringIO(output)))) == 3  # a row a key


@pytest.mark.parametrize("name", [name for name, case in CASES.items() if case.did])
def test_the_same_command_at_the_sandboxs_time_does_what_the_what_if_said(
    scene: Scene, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """The control: without `--now`, with the sandbox's clock at the what-if's time, the real
    run acts, so the snapshot of the what-if test would have seen a change."""
    case = CASES[name]
    assert case.did is not None
    scene.world.sandbox.clock.stand_at(case.at)
    before = snapshot(scene.world)
    result = run(capsys, case.argv(scene))
    assert snapshot(scene.world) != before
    assert result.code == 0, result
    assert "what-if" not in result.out + result.err
    assert "would" not in result.out, result.out
    for words in case.did(scene):
        assert words in result.out, result.out


def test_a_real_retire_and_rotate_at_the_sandboxs_time_change_connect_and_the_keyring(
    scene: Scene, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the what-ifs of retire and rotate at DUE announced, done for real."""
    world = scene.world
    world.sandbox.clock.stand_at(DUE)
    assert world.associations() == sorted([scene.second, scene.third])
    assert run(capsys, ["retire", scene.second]).code == 0
    assert world.associations() == [scene.third]
    assert str(world.adapters.keyring.get_record(scene.second).state) == "retired"

    flow, module = world.flow_content(), world.module_content()
    assert run(capsys, ["rotate"]).code == 0
    fourth = world.flow_key_id()
    assert fourth not in (None, scene.third) and fourth in world.module_content()
    assert (world.flow_content(), world.module_content()) != (flow, module)
    assert world.associations() == sorted([scene.third, str(fourth)])
    assert str(world.adapters.keyring.get_record(scene.third).state) == "previous"


def test_a_what_if_import_of_a_key_that_lost_its_private_key_says_it_would_restore_it(
    scene: Scene, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Importing a key the keyring already holds is a no-op, unless its private key was
    deleted: the what-if says the real run would restore it, and the real run does."""
    keyring = scene.world.adapters.keyring
    private_key, certificate = tmp_path / "third.key.pem", tmp_path / "third.cert.pem"
    private_key.write_text(keyring.read_private_key_pem(scene.third))
    certificate.write_text(keyring.read_certificate(scene.third))
    lost = keyring.layout.private_key(scene.third)
    keyring.delete_private_key(scene.third)
    argv = ["import", "--key-id", scene.third, "--private-key", str(private_key)]
    argv += ["--certificate", str(certificate)]

    before = snapshot(scene.world)
    result = run(capsys, [*argv, "--now", DUE.isoformat()])
    assert snapshot(scene.world) == before
    assert result.code == 0, result
    would = f"key {scene.third} (active) has no private-key: would restore and test-decrypt it"
    assert would in what_if_output(result, DUE, machine=False)
    assert lost not in snapshot(scene.world)["parameters"]

    scene.world.sandbox.clock.stand_at(DUE)
    restored = run(capsys, argv)
    assert restored.code == 0, restored
    did = f"key {scene.third} (active) had no private-key: restored, test-decrypted"
    assert did in restored.out, restored
    assert lost in snapshot(scene.world)["parameters"]


REFUSALS: dict[str, tuple[Argv, Words]] = {
    "retire-in-grace": (
        lambda s: ["retire", s.second],
        lambda s: [f"error: key {s.second} is in its grace period until "],
    ),
    "destroy-in-retention": (
        lambda s: ["destroy", s.first, "--yes"],
        lambda s: [f"error: key {s.first} is retained until "],
    ),
    "import-a-key-connect-does-not-hold": (  # the files' key under the blog key's ID
        lambda s: [*_import_files(s)[:2], s.blog_key_id, *_import_files(s)[3:]],
        lambda s: [
            "error: the private key does not match the public key Connect holds for key "
            f"{s.blog_key_id} on instance {s.adopting}"
        ],
    ),
    "rollback-unmanaged": (
        lambda s: ["rollback", "--instance-id", s.other.instance_id],
        lambda s: [f"error: instance {s.other.instance_id} has no previous key to roll back to"],
    ),
    "rotate-force-in-grace": (  # a failed outcome, printed with the others, not an error
        lambda s: ["rotate", "--force"],
        lambda s: [
            f"{s.instance}: failed: two keys are associated with {s.instance} and {s.second} "
            "is in its grace period until ",
            "summary: 1 failed",
        ],
    ),
}


def test_a_what_if_where_the_real_run_is_refused_exits_1_with_the_refusal_and_changes_nothing(
    scene: Scene, capsys: pytest.CaptureFixture[str], subtests: pytest.Subtests
) -> None:
    for name, (argv, words) in REFUSALS.items():
        with subtests.test(name):
            before = snapshot(scene.world)
            result = run(capsys, [*argv(scene), "--now", INSIDE.isoformat()])
            assert snapshot(scene.world) == before
            assert result.code == 1, result
            assert result.out.startswith(banner(INSIDE)), result
            for expected in words(scene):
                assert expected in result.out + result.err, result


def test_every_command_that_takes_now_has_a_what_if_case(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    commands = re.findall(r"^    ([a-z]+) ", capsys.readouterr().out, flags=re.MULTILINE)
    assert "import" in commands and "report" in commands
    taking_now = set()
    for command in commands:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        if "--now" in capsys.readouterr().out:
            taking_now.add(command)
    assert taking_now == {command_of(name) for name in CASES}
    assert len(taking_now) == 9
