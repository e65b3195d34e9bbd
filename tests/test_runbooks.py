"""Runbooks: each parses, every `rotator` command in it is a valid CLI invocation, and every
procedure runs end to end against the sandbox, so a runbook cannot drift from the CLI. The
runner asks before each change, stops at the first failure and leaves an audit record.

Steps run through `main()` and make real keys: ROTATOR_KEY_SIZE=2048 keeps that quick. Scenario
states are built in the past with the pool keys (`world.service`), and the runbooks then run
at the real time, as on call.
"""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from rotator.adapters.lock import DEFAULT_LEASE, LockHolder
from rotator.adapters.runbook_audit import SsmRunbookAudit
from rotator.domain.history import HistoryEvent
from rotator.domain.keys import KeyMaterial, self_signed_material
from rotator.domain.rotation import RotationState, RotationStep
from rotator.domain.runbook import parse_runbook
from rotator.entrypoints.cli import main
from rotator.entrypoints.runbook import validate_command
from rotator.errors import AwsCallError, ConfigError
from rotator.sandbox.sample_flows import card_blocks, payment_flow_content, payment_module_content
from rotator.services.importing import import_from_blog
from rotator.services.runbook_runner import (
    Console,
    RunbookNotAudited,
    RunRecord,
    prepare,
    run_procedure,
)
from rotator.services.runbooks import (
    installed_runbooks_dir,
    list_runbooks,
    load_runbook,
    runbooks_dir,
)
from tests.conftest import keep_rotation
from tests.world import World

DAY = timedelta(days=1)
RUNBOOKS = {
    "routine-rotation",
    "emergency-rotation",
    "rollback",
    "certificate-expiry",
    "decrypt-failures",
    "stuck-rotation",
    "adopt-blog-deployment",
    "restore-key-parameter",
    "quarterly-evidence",
    "flow-drift",
}
SECTIONS = ("## Symptoms", "## Impact", "## Check that it worked", "## Back out")
# Values for placeholders when only the shape of a command matters.
SAMPLE_VALUES = {"NOW": "2026-11-23T12:00:00+00:00", "QUARTER": "2026-Q4"}


def sample(name: str) -> list[str]:
    return [SAMPLE_VALUES.get(name, f"sample-{name.lower().replace('_', '-')}")]


def all_steps() -> list[Any]:
    return [
        pytest.param(step, id=f"{runbook.name}:{procedure.name}:{step.line}")
        for runbook in list_runbooks()
        for procedure in runbook.procedures
        for step in procedure.steps
    ]


# -- the files -------------------------------------------------------------------------------


def test_every_runbook_is_there_and_parses_with_title_purpose_and_sections() -> None:
    runbooks = list_runbooks()
    assert {r.name for r in runbooks} == RUNBOOKS
    for runbook in runbooks:
        assert runbook.title and "\n" not in runbook.purpose
        assert len(runbook.purpose) <= 120, runbook.name
        assert runbook.procedure().steps, runbook.name
        missing = [s for s in SECTIONS if f"\n{s}" not in runbook.markdown]
        assert missing == [], f"{runbook.name} lacks {missing}"


def test_every_placeholder_of_a_runbook_is_described_in_its_parameter_table() -> None:
    for runbook in list_runbooks():
        used = {name for p in runbook.procedures for name in p.placeholders()}
        undescribed = [n for n in sorted(used) if f"| `<{n}>` |" not in runbook.markdown]
        assert undescribed == [], f"{runbook.name}: {undescribed}"


@pytest.mark.parametrize("step", all_steps())
def test_every_step_is_a_valid_cli_command(step: Any) -> None:
    filled = step.fill({name: sample(name) for name in step.placeholders()})
    assert validate_command(filled) is None, f"line {step.line}: {shlex.join(filled)}"


def prose_commands(markdown: str) -> list[str]:
    """`rotator ...` in inline code and at the start of lines (steps and illustrations alike;
    continuations joined, an environment prefix dropped, cut at the first shell operator)."""
    text = markdown.replace("\\\n", " ")
    found = re.findall(r"(?<!`)`(?:[A-Z_]+=\S* )*(rotator [^`\n]+)`(?!`)", text)
    found += [line.strip() for line in text.splitlines() if line.strip().startswith("rotator ")]
    return [re.split(r"\s(?:\||>|&&|;|#)\s?", command)[0].strip() for command in found]


def test_every_rotator_command_in_the_prose_is_valid() -> None:
    invalid = []
    for path in sorted(runbooks_dir().glob("*.md")):
        for command in prose_commands(path.read_text()):
            argv = shlex.split(command)[1:]
            filled = [re.sub(r"<([A-Z_]+)>", lambda m: sample(m.group(1))[0], a) for a in argv]
            problem = validate_command(filled)
            if problem:
                invalid.append(f"{path.name}: {command}: {problem}")
    assert invalid == []


def test_the_index_lists_every_runbook_and_every_link_resolves() -> None:
    folder = runbooks_dir()
    index = (folder / "README.md").read_text()
    assert set(re.findall(r"^\| \[([a-z-]+)\]\(\1\.md\)", index, re.MULTILINE)) == RUNBOOKS
    for path in folder.glob("*.md"):
        for target in re.findall(r"\]\(([^)#]+\.md)\)", path.read_text()):
            assert (folder / target).is_file(), f"{path.name} links to {target}"


# -- parsing and filling -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("```rotator\nrotator status\n", "not closed"),
        ("```rotator\nstatus\n```\n", "one `rotator COMMAND"),
        ("```rotator\nrotator --prefix /x status\n```\n", "global options"),
        ("```rotator\nrotator runbook run rollback\n```\n", "cannot be a runbook step"),
        ("```rotator\nrotator sandbox\n```\n", "cannot be a runbook step"),
        ("```rotator\nrotator status\n# dangling\n```\n", "has no command"),
        ("```rotator Back-Out\nrotator status\n```\n", "lower-case"),
        ("```rotator later\nrotator status\n```\n", "main procedure"),
        ("```rotator\n```\n", "without a step"),
        ("```rotator\nrotator status 'open\n```\n", "cannot split"),
    ],
)
def test_a_malformed_runbook_is_refused_with_its_line(body: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        parse_runbook("bad", f"# Bad\n\nPurpose.\n\n{body}")


def test_a_runbook_needs_a_title_and_a_purpose() -> None:
    with pytest.raises(ConfigError, match="Title"):
        parse_runbook("bad", "```rotator\nrotator status\n```\n")


def test_only_rotator_blocks_are_steps_and_comments_become_notes() -> None:
    runbook = parse_runbook(
        "r",
        "# T\n\nWhat it is for,\nin one paragraph.\n\n```sh\nrotator rotate\n```\n\n"
        "````rotator\n# looks first\nrotator status\n\nrotator rotate --dry-run\n````\n\n"
        "```rotator after\nrotator retire <KEY_ID>\n```\n\n```rotator\nrotator verify\n```\n",
    )
    assert runbook.purpose == "What it is for, in one paragraph."
    main_steps = runbook.procedure().steps
    assert [s.argv for s in main_steps] == [("status",), ("rotate", "--dry-run"), ("verify",)]
    assert main_steps[0].note == "looks first" and main_steps[1].note == ""
    assert runbook.procedure("after").placeholders() == ["KEY_ID"]
    with pytest.raises(ConfigError, match="has no 'nope'"):
        runbook.procedure("nope")


@pytest.mark.parametrize(
    ("argv", "changes"),
    [
        ("status --json", False),
        ("verify --instance-id i", False),
        ("report --format csv --output f.csv", False),
        ("rotate --dry-run --emergency", False),
        ("rotate --emergency", True),
        ("init --instance-id i --flow-id f", True),
        ("import --key-id k", True),
        ("retire k", True),
        ("destroy k --yes", True),
        ("rollback --instance-id i", True),
        ("package", True),  # anything not known to be read-only asks
    ],
)
def test_whether_a_step_changes_state_follows_from_its_command(argv: str, changes: bool) -> None:
    (step,) = (
        parse_runbook("r", f"# T\n\nP.\n\n```rotator\nrotator {argv}\n```\n").procedure().steps
    )
    assert step.changes is changes


def fill(line: str, **params: list[str]) -> tuple[str, ...]:
    (step,) = parse_runbook("r", f"# T\n\nP.\n\n```rotator\n{line}\n```\n").procedure().steps
    return step.fill(params)


def test_placeholders_fill_tokens_repeat_options_and_empty_drops_the_option() -> None:
    line = "rotator init --instance-id <I> --flow-id <F> --flow-module-id <M> --now <D>T00:00"
    assert fill(line, I=["i"], F=["f1", "f2"], M=[""], D=["2026-01-01"]) == (
        "init",
        "--instance-id",
        "i",
        "--flow-id",
        "f1",
        "--flow-id",
        "f2",
        "--now",
        "2026-01-01T00:00",
    )
    with pytest.raises(ConfigError, match="<K> in line 6 takes exactly one non-empty value"):
        fill("rotator retire <K>", K=["a", "b"])
    with pytest.raises(ConfigError, match="<D> in line 6"):
        fill("rotator status --now <D>T00:00", D=[""])


def test_a_run_refuses_to_start_without_every_value_or_with_an_unknown_one() -> None:
    runbook = load_runbook("restore-key-parameter")
    procedure = runbook.procedure()
    with pytest.raises(ConfigError, match=r"needs a value for <CERTIFICATE_FILE>, <KEY_ID>"):
        prepare(
            runbook, procedure, {"INSTANCE_ID": ["i"], "PRIVATE_KEY_FILE": ["k"]}, validate_command
        )
    every = {name: ["x"] for name in procedure.placeholders()}
    with pytest.raises(ConfigError, match=r"has no <NOW> \(it takes: CERTIFICATE_FILE"):
        prepare(runbook, procedure, {**every, "NOW": ["x"]}, validate_command)


def test_a_run_refuses_to_start_when_a_step_is_not_a_valid_command() -> None:
    runbook = parse_runbook(
        "r", "# T\n\nP.\n\n```rotator\nrotator status\nrotator rotate --sideways\n```\n"
    )
    with pytest.raises(ConfigError, match=r"line 7: rotator rotate --sideways: .*--sideways"):
        prepare(runbook, runbook.procedure(), {}, validate_command)


def test_unknown_runbooks_and_bad_names_are_refused_with_the_known_names() -> None:
    for name in ("no-such", "../README", "README"):
        with pytest.raises(ConfigError, match="known: adopt-blog-deployment, "):
            load_runbook(name)


# -- the runner, with fakes ---------------------------------------------------------------------


@dataclass
class Fakes:
    executed: list[tuple[str, ...]]
    records: list[RunRecord]
    out: io.StringIO

    def console(
        self,
        codes: dict[str, int] | None = None,
        confirm: Callable[[str], bool] = lambda _: True,
        audit_error: bool = False,
    ) -> Console:
        def execute(argv: Sequence[str]) -> int:
            self.executed.append(tuple(argv))
            return (codes or {}).get(argv[0], 0)

        def audit(record: RunRecord) -> None:
            if audit_error:
                raise AwsCallError("ssm:PutParameter", "/p/audit/runbook-runs", "AccessDenied")
            self.records.append(record)

        return Console(execute, confirm, audit, lambda: datetime.now(UTC), self.out)


@pytest.fixture
def fakes() -> Fakes:
    return Fakes([], [], io.StringIO())


def run_fake(fakes: Fakes, console: Console, *, yes: bool = False) -> int:
    runbook = load_runbook("rollback")
    procedure = runbook.procedure()
    params = {"INSTANCE_ID": ["i-1"]}
    planned = prepare(runbook, procedure, params, validate_command)
    return run_procedure(
        runbook, procedure, planned, params, console, actor="ann@host", assume_yes=yes
    )


def test_without_an_audit_record_nothing_runs(fakes: Fakes) -> None:
    with pytest.raises(RunbookNotAudited, match="nothing ran: ssm:PutParameter failed"):
        run_fake(fakes, fakes.console(audit_error=True), yes=True)
    assert fakes.executed == []


def test_ctrl_c_at_the_question_stops_and_is_recorded(fakes: Fakes) -> None:
    def interrupt(prompt: str) -> bool:
        raise KeyboardInterrupt

    assert run_fake(fakes, fakes.console(confirm=interrupt)) == 130
    assert fakes.executed == [("status",)]
    assert fakes.records[-1].outcome == "interrupted"
    assert "interrupted at step 2; the runbook stopped here" in fakes.out.getvalue()


def test_the_record_before_the_first_step_lists_the_plan(fakes: Fakes) -> None:
    assert run_fake(fakes, fakes.console(), yes=True) == 0
    events = [HistoryEvent.from_json(r.event().to_json()) for r in fakes.records]
    assert [(e.kind, e.scope) for e in events] == [("runbook_run", "runbooks")] * 2
    start, end = (e.details for e in events)
    assert events[0].at.isoformat() == start["started_at"]
    assert events[1].at.isoformat() == end["finished_at"]
    assert start["outcome"] == "running" and start["steps"] == []
    assert start["planned"] == [
        "rotator status",
        "rotator rollback --instance-id i-1",
        "rotator verify --instance-id i-1",
        "rotator status",
    ]
    assert start["run_id"] == end["run_id"] and end["outcome"] == "succeeded"
    assert [s["exit_code"] for s in end["steps"]] == [0, 0, 0, 0]


# -- through the CLI, against the sandbox -------------------------------------------------------


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


@dataclass
class Cli:
    world: World
    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch
    now: datetime

    def __call__(self, *argv: str, stdin: str = "") -> Result:
        self.capsys.readouterr()
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        out = io.StringIO()
        code = main(list(argv), out)
        return Result(code, out.getvalue(), self.capsys.readouterr().err)

    def run(self, name: str, *options: str, stdin: str = "", **params: str | list[str]) -> Result:
        argv = ["runbook", "run", name, *options]
        for key, value in params.items():
            for one in [value] if isinstance(value, str) else value:
                argv += ["--param", f"{key}={one}"]
        return self(*argv, stdin=stdin)

    def audit(self) -> list[dict[str, Any]]:
        return SsmRunbookAudit(self.world.ssm, self.world.prefix).records()

    # -- states built in the past with the pool keys --------------------------------------------

    def init(self, days_ago: float) -> str:
        w = self.world
        result = w.service.init(
            w.instance_id,
            [w.flow_id],
            [w.module_id],
            self.now - days_ago * DAY,
            encrypt_blocks=card_blocks(w.flow_id, w.module_id),
        )
        assert result.new_key_id is not None, result.detail
        return result.new_key_id

    def rotate(self, days_ago: float) -> str:
        (result,) = self.world.service.rotate(None, self.now - days_ago * DAY, force=True)
        assert result.new_key_id is not None, result.detail
        return result.new_key_id

    def state(self, key_id: str) -> str:
        return str(self.world.adapters.keyring.get_record(key_id).state)

    def current(self) -> str | None:
        return self.world.adapters.keyring.get_current(self.world.instance_id)

    def snapshot(self) -> tuple[Any, ...]:
        w = self.world
        paginator = w.ssm.get_paginator("get_parameters_by_path")
        versions = {
            p["Name"]: p["Version"]
            for page in paginator.paginate(Path=w.prefix, Recursive=True)
            for p in page["Parameters"]
            if "/history/runbooks/" not in p["Name"]
        }
        return (w.flow_content(), w.module_content(), w.associations(), versions)


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    monkeypatch.setenv("ROTATOR_KEY_SIZE", "2048")
    return Cli(world, capsys, monkeypatch, datetime.now(UTC))


@pytest.fixture(scope="module")
def blog_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


Check = Callable[[], None]
Scenario = Callable[[Cli, Path, rsa.RSAPrivateKey], tuple[dict[str, Any], Check]]


def blog_deployment(cli: Cli, tmp_path: Path, key: rsa.RSAPrivateKey) -> dict[str, Any]:
    """The AWS blog's setup: a key associated by hand, its certificate in the flow, two SSM
    parameters (own names, so that scenarios never share them)."""
    w = cli.world
    material: KeyMaterial = self_signed_material(key, now=cli.now - 30 * DAY, subject="CN=blog")
    key_id = w.connect.associate_security_key(
        InstanceId=w.instance_id, Key=material.public_key_pem
    )["AssociationId"]
    w.connect.update_contact_flow_content(
        InstanceId=w.instance_id,
        ContactFlowId=w.flow_id,
        Content=payment_flow_content(key_id, material.certificate_pem),
    )
    names = {"KEY_PARAMETER": f"/blog{w.prefix}/key", "KEY_ID_PARAMETER": f"/blog{w.prefix}/id"}
    w.ssm.put_parameter(
        Name=names["KEY_PARAMETER"], Value=material.private_key_pem, Type="SecureString"
    )
    w.ssm.put_parameter(Name=names["KEY_ID_PARAMETER"], Value=key_id, Type="SecureString")
    certificate = tmp_path / "blog-certificate.pem"
    certificate.write_text(material.certificate_pem)
    return {**names, "CERTIFICATE_FILE": str(certificate), "BLOG_KEY_ID": key_id}


def adopted(cli: Cli, blog: dict[str, Any], days_ago: float) -> None:
    w = cli.world
    import_from_blog(
        w.adapters.keyring,
        key_parameter=blog["KEY_PARAMETER"],
        key_id_parameter=blog["KEY_ID_PARAMETER"],
        certificate_pem=Path(blog["CERTIFICATE_FILE"]).read_text(),
        instance_id=w.instance_id,
        now=cli.now - days_ago * DAY,
        actor="test",
        connect=w.adapters.connect,
    )


def routine_main(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    first = cli.init(days_ago=400)  # older than the cryptoperiod: due

    def check() -> None:
        assert cli.current() not in (None, first) and cli.state(first) == "previous"
        assert cli.world.flow_key_id() == cli.current()

    return {"INSTANCE_ID": cli.world.instance_id}, check


def routine_retire(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    first, second = cli.init(days_ago=30), cli.rotate(days_ago=20)

    def check() -> None:
        assert cli.state(first) == "retired" and cli.world.associations() == [second]

    return {"INSTANCE_ID": cli.world.instance_id, "PREVIOUS_KEY_ID": first}, check


def routine_destroy(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    first = cli.init(days_ago=200)
    cli.rotate(days_ago=199)
    cli.world.service.retire(first, cli.now - 150 * DAY)

    def check() -> None:
        assert cli.state(first) == "destroyed"

    return {"RETIRED_KEY_ID": first}, check


def emergency_main(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    first, second = cli.init(days_ago=10), cli.rotate(days_ago=1)  # second in its grace period

    def check() -> None:
        assert (cli.state(first), cli.state(second)) == ("retired", "retired")
        assert cli.world.associations() == [cli.current()] != [second]
        reasons = [t.reason for t in cli.world.adapters.keyring.get_record(first).history]
        assert any("INC-7: key printed in a ticket" in reason for reason in reasons)

    return {"INSTANCE_ID": cli.world.instance_id, "REASON": "INC-7: key printed in a ticket"}, check


def emergency_previous(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    first, second = cli.init(days_ago=10), cli.rotate(days_ago=1)

    def check() -> None:
        assert cli.state(first) == "retired" and cli.world.associations() == [second]
        last = cli.world.adapters.keyring.get_record(first).history[-1]
        assert last.reason == "emergency, grace period overridden: INC-8"

    return {"INSTANCE_ID": cli.world.instance_id, "KEY_ID": first, "REASON": "INC-8"}, check


def rollback_main(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    first, second = cli.init(days_ago=10), cli.rotate(days_ago=1)

    def check() -> None:
        assert cli.world.flow_key_id() == cli.current() == first
        assert cli.state(second) == "previous"

    return {"INSTANCE_ID": cli.world.instance_id}, check


def rollback_forward(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    first, second = cli.init(days_ago=10), cli.rotate(days_ago=1)
    cli.world.service.rollback(cli.world.instance_id, cli.now - DAY / 2)

    def check() -> None:
        assert cli.world.flow_key_id() == cli.current() == second
        assert cli.state(first) == "previous"

    return {"INSTANCE_ID": cli.world.instance_id}, check


def expiry_main(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    first = cli.init(days_ago=720)  # the certificate (730 days) expires in 10 days

    def check() -> None:
        current = cli.current()
        assert current not in (None, first)
        record = cli.world.adapters.keyring.get_record(str(current))
        assert (record.days_to_expiry(datetime.now(UTC)) or 0) > 700

    return {"INSTANCE_ID": cli.world.instance_id}, check


def expiry_free_slot(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    first, second = cli.init(days_ago=720), cli.rotate(days_ago=2)
    cli.world.service.rollback(cli.world.instance_id, cli.now - DAY)  # second: previous, in grace

    def check() -> None:
        assert cli.state(second) == "retired" and cli.state(first) == "previous"
        assert cli.current() not in (first, second)

    params = {"INSTANCE_ID": cli.world.instance_id, "PREVIOUS_KEY_ID": second, "REASON": "CHG-9"}
    return params, check


def decrypt_main(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    cli.init(days_ago=1)
    before = cli.snapshot()

    def check() -> None:
        assert cli.snapshot() == before

    return {"INSTANCE_ID": cli.world.instance_id}, check


def module_stops_encrypting(cli: Cli) -> None:
    """Someone edits the managed module by hand: its card block no longer encrypts (drift)."""
    w = cli.world
    w.connect.update_contact_flow_module_content(
        InstanceId=w.instance_id,
        ContactFlowModuleId=w.module_id,
        Content=payment_module_content(None, None),
    )


def drift_main(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    cli.init(days_ago=1)
    module_stops_encrypting(cli)
    drifted = cli.world.module_content()

    def check() -> None:  # read-only: the drift is shown, not touched
        assert cli.world.module_content() == drifted
        assert [c.check for c in cli.world.adapters.invariants().check(None, cli.now) if not c.ok]

    return {"INSTANCE_ID": cli.world.instance_id}, check


def drift_repoint(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    first = cli.init(days_ago=1)
    module_stops_encrypting(cli)

    def check() -> None:
        current = cli.current()
        assert current not in (None, first) and current in cli.world.module_content()
        assert all(c.ok for c in cli.world.adapters.invariants().check(None, datetime.now(UTC)))

    return {"INSTANCE_ID": cli.world.instance_id}, check


def stuck_main(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    """A rotator on this machine that died right after starting a rotation, holding the lock."""
    w = cli.world
    first = cli.init(days_ago=1)
    started = cli.now - timedelta(hours=1)
    keep_rotation(
        w.adapters.keyring,
        RotationState("rot-crashed", w.instance_id, RotationStep.STARTED, started, "gone", first),
        at=started,
    )
    gone = subprocess.Popen(["true"])  # its process has exited
    gone.wait()
    holder = replace(LockHolder.this_process("rot-crashed", DEFAULT_LEASE), pid=gone.pid)
    w.ssm.put_parameter(
        Name=w.adapters.lock.layout.lock(w.instance_id),
        Value=holder.to_json(),
        Type="String",
    )

    def check() -> None:
        rotation = w.adapters.keyring.get_rotation(w.instance_id)
        assert rotation is not None and rotation.finished
        assert rotation.rotation_id == "rot-crashed"
        assert w.adapters.lock.holder(w.instance_id) is None
        assert cli.current() not in (None, first)

    return {"INSTANCE_ID": w.instance_id}, check


def adopt_main(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    blog = blog_deployment(cli, tmp, key)
    blog_key = blog.pop("BLOG_KEY_ID")
    keyring = cli.world.adapters.keyring
    kms_key = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    cli.monkeypatch.setenv("ROTATOR_KMS_KEY_ID", kms_key)  # the runbook's first step

    def check() -> None:
        assert cli.current() == blog_key and cli.state(blog_key) == "active"
        assert keyring.private_key_protection()[blog_key].kms_key_id == kms_key

    return {**blog, "INSTANCE_ID": cli.world.instance_id}, check


def adopt_take_over(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    blog = blog_deployment(cli, tmp, key)
    adopted(cli, blog, days_ago=1)
    w = cli.world

    def check() -> None:
        assert cli.state(blog["BLOG_KEY_ID"]) == "previous"
        assert w.flow_key_id() == cli.current() != blog["BLOG_KEY_ID"]
        instance = w.adapters.keyring.get_instance(w.instance_id)
        assert instance is not None and instance.flows == (w.flow_id,) and not instance.modules

    # The blog's module has no encrypting block: an empty MODULE_ID leaves the option out.
    return {"INSTANCE_ID": w.instance_id, "FLOW_ID": w.flow_id, "MODULE_ID": ""}, check


def adopt_retire(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    blog = blog_deployment(cli, tmp, key)
    adopted(cli, blog, days_ago=11)
    w = cli.world
    w.service.init(
        w.instance_id, [w.flow_id], [], cli.now - 10 * DAY, encrypt_blocks=card_blocks(w.flow_id)
    )

    def check() -> None:
        assert cli.state(blog["BLOG_KEY_ID"]) == "retired"
        assert w.associations() == [cli.current()]

    return {"INSTANCE_ID": w.instance_id, "BLOG_KEY_ID": blog["BLOG_KEY_ID"]}, check


def delete_private_key(cli: Cli, key_id: str) -> None:
    cli.world.ssm.delete_parameter(Name=cli.world.adapters.keyring.layout.private_key(key_id))


def restore_main(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    w = cli.world
    first = cli.init(days_ago=1)
    layout = w.adapters.keyring.layout
    private_key, certificate = tmp / "key.pem", tmp / "certificate.pem"
    private_key.write_text(w.adapters.keyring.read_private_key_pem(first))
    certificate.write_text(w.adapters.keyring.read_certificate(first))
    delete_private_key(cli, first)

    def check() -> None:
        assert w.ssm.get_parameter(Name=layout.private_key(first), WithDecryption=True)
        assert cli.current() == first and cli.state(first) == "active"

    return {
        "INSTANCE_ID": w.instance_id,
        "KEY_ID": first,
        "PRIVATE_KEY_FILE": str(private_key),
        "CERTIFICATE_FILE": str(certificate),
    }, check


def restore_lost_current(
    cli: Cli, tmp: Path, key: rsa.RSAPrivateKey
) -> tuple[dict[str, Any], Check]:
    first = cli.init(days_ago=1)
    delete_private_key(cli, first)

    def check() -> None:
        assert cli.state(first) == "destroyed" and cli.current() != first
        last = cli.world.adapters.keyring.get_record(first).history[-1]
        assert last.reason == "its private key was lost before the retention period ended"

    return {"INSTANCE_ID": cli.world.instance_id, "KEY_ID": first, "REASON": "lost"}, check


def restore_lost_other(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    first, second = cli.init(days_ago=10), cli.rotate(days_ago=9)
    delete_private_key(cli, first)

    def check() -> None:
        assert cli.state(first) == "destroyed" and cli.world.associations() == [second]

    return {"INSTANCE_ID": cli.world.instance_id, "KEY_ID": first, "REASON": "lost"}, check


def evidence_main(cli: Cli, tmp: Path, key: rsa.RSAPrivateKey) -> tuple[dict[str, Any], Check]:
    cli.init(days_ago=1)

    def check() -> None:
        for suffix in ("html", "csv", "json"):
            assert (tmp / f"connect-keys-2026-Q4.{suffix}").stat().st_size > 0

    return {"EVIDENCE_DIR": str(tmp), "QUARTER": "2026-Q4"}, check


SCENARIOS: dict[tuple[str, str], Scenario] = {
    ("routine-rotation", "main"): routine_main,
    ("routine-rotation", "retire-previous"): routine_retire,
    ("routine-rotation", "destroy-retired"): routine_destroy,
    ("emergency-rotation", "main"): emergency_main,
    ("emergency-rotation", "previous-key"): emergency_previous,
    ("rollback", "main"): rollback_main,
    ("rollback", "roll-forward"): rollback_forward,
    ("certificate-expiry", "main"): expiry_main,
    ("certificate-expiry", "free-slot"): expiry_free_slot,
    ("decrypt-failures", "main"): decrypt_main,
    ("stuck-rotation", "main"): stuck_main,
    ("flow-drift", "main"): drift_main,
    ("flow-drift", "repoint"): drift_repoint,
    ("adopt-blog-deployment", "main"): adopt_main,
    ("adopt-blog-deployment", "take-over"): adopt_take_over,
    ("adopt-blog-deployment", "retire-blog-key"): adopt_retire,
    ("restore-key-parameter", "main"): restore_main,
    ("restore-key-parameter", "lost-current"): restore_lost_current,
    ("restore-key-parameter", "lost-other"): restore_lost_other,
    ("quarterly-evidence", "main"): evidence_main,
}


def test_every_procedure_of_every_runbook_has_a_drift_scenario() -> None:
    procedures = {(r.name, p.name) for r in list_runbooks() for p in r.procedures}
    assert procedures == set(SCENARIOS)


@pytest.mark.parametrize(
    ("name", "procedure"), list(SCENARIOS), ids=[":".join(k) for k in SCENARIOS]
)
def test_every_runbook_runs_end_to_end_against_the_sandbox(
    cli: Cli, tmp_path: Path, blog_private_key: rsa.RSAPrivateKey, name: str, procedure: str
) -> None:
    params, check = SCENARIOS[(name, procedure)](cli, tmp_path, blog_private_key)
    planned = load_runbook(name).procedure(procedure).steps
    result = cli.run(name, "--procedure", procedure, "--yes", **params)
    assert result.code == 0, f"{result.out}\n{result.err}"
    assert f"runbook {name} ({procedure}): all {len(planned)} steps succeeded" in result.out
    start, end = cli.audit()
    assert start["outcome"] == "running" and end["outcome"] == "succeeded"
    assert end["runbook"] == name and end["procedure"] == procedure
    assert end["actor"].endswith(" (runbook)") and "@" in end["actor"]
    assert end["parameters"] == {k: [v] for k, v in params.items()}
    assert [s["command"] for s in end["steps"]] == start["planned"]
    assert [s["exit_code"] for s in end["steps"]] == [0] * len(planned)
    check()


def test_a_failing_step_stops_the_run_with_a_clear_message(cli: Cli) -> None:
    cli.init(days_ago=1)  # one key: nothing to roll back to
    instance = cli.world.instance_id
    result = cli.run("rollback", "--yes", INSTANCE_ID=instance)
    assert result.code == 1
    assert (
        f"step 2 failed (exit 1): rotator rollback --instance-id {instance}; "
        "the runbook stopped here; nothing after it ran" in result.out
    )
    assert "no previous key to roll back to" in result.err
    assert "[3/4]" not in result.out
    end = cli.audit()[-1]
    assert end["outcome"] == "failed" and [s["exit_code"] for s in end["steps"]] == [0, 1]


def test_answering_no_runs_no_changing_step_and_read_only_steps_do_not_ask(cli: Cli) -> None:
    first = cli.init(days_ago=400)  # due
    before = cli.snapshot()
    result = cli.run("routine-rotation", INSTANCE_ID=cli.world.instance_id, stdin="n\n")
    assert result.code == 1
    assert result.out.count("[y/N]") == 1 and "run step 4/6? it changes state [y/N]" in result.out
    assert "step 4 not run (declined): rotator rotate --instance-id" in result.out
    assert "would_rotate" in result.out  # step 3, the dry run, ran without asking
    assert cli.snapshot() == before and cli.current() == first
    end = cli.audit()[-1]
    assert end["outcome"] == "declined"
    assert [s["exit_code"] for s in end["steps"]] == [0, 0, 0, None]


def test_answering_yes_runs_the_changing_step(cli: Cli) -> None:
    first, second = cli.init(days_ago=10), cli.rotate(days_ago=1)
    result = cli.run("rollback", INSTANCE_ID=cli.world.instance_id, stdin="y\n")
    assert result.code == 0, result.out + result.err
    assert result.out.count("[y/N]") == 1
    assert cli.current() == first and cli.state(second) == "previous"


def test_dry_run_runs_nothing_and_writes_no_audit_record(cli: Cli) -> None:
    cli.init(days_ago=400)
    before = cli.snapshot()
    instance = cli.world.instance_id
    result = cli.run("emergency-rotation", "--dry-run", INSTANCE_ID=instance, REASON="INC-1")
    assert result.code == 0, result.err
    assert "dry run: nothing runs" in result.out
    assert (
        f"[3/5] rotator rotate --instance-id {instance} --force --emergency --reason INC-1    (ch"
        in result.out
    )
    assert result.out.count("(changes state)") == 1 and result.out.count("(read-only)") == 4
    assert "would_rotate" not in result.out and "all invariants hold" not in result.out
    assert cli.snapshot() == before and cli.audit() == []


def test_a_run_without_its_parameters_does_not_start(cli: Cli) -> None:
    result = cli.run("rollback", "--yes")
    assert result.code == 2
    assert "needs a value for <INSTANCE_ID>: give --param INSTANCE_ID=..." in result.err
    assert cli.run("rollback", "--yes", INSTANCE_ID="i", TYPO="x").code == 2
    with pytest.raises(SystemExit) as usage:
        cli("runbook", "run", "rollback", "--param", "lower=x")
    assert usage.value.code == 2 and "is not NAME=VALUE" in cli.capsys.readouterr().err
    assert cli.audit() == []


def test_list_and_show(cli: Cli) -> None:
    listing = cli("runbook", "list")
    assert listing.code == 0
    for name in RUNBOOKS:
        assert f"\n{name} " in f"\n{listing.out}"
    assert "procedures: main (4 steps), roll-forward (2 steps)" in listing.out
    shown = cli("runbook", "show", "rollback")
    assert shown.code == 0 and shown.out == (runbooks_dir() / "rollback.md").read_text()
    assert cli("runbook", "show", "nope").code == 2


def test_an_installed_wheel_finds_its_runbooks_among_its_data_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wheel installs runbooks/ as data files (pyproject `data-files`), outside the package."""
    site, share = tmp_path / "lib" / "site-packages", tmp_path / "share"
    info = site / "connect_key_rotator-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: connect-key-rotator\nVersion: 0.1.0\n"
    )
    (info / "RECORD").write_text("../../share/connect-key-rotator/runbooks/rollback.md,,\n")
    (share / "connect-key-rotator" / "runbooks").mkdir(parents=True)
    (share / "connect-key-rotator" / "runbooks" / "rollback.md").write_text("# R\n")
    monkeypatch.syspath_prepend(str(site))
    assert installed_runbooks_dir() == share / "connect-key-rotator" / "runbooks"
