"""End to end, as a user runs it: `rotator sandbox` in a subprocess, every product step through
the `rotator` command in subprocesses (configured by environment variables only), and the test
acting as Amazon Connect (console set-up, encrypting callers' input) and as the decrypt Lambda.

Each scenario uses its own KEYRING_PREFIX and Connect instance: the sandbox process keeps one
state for all of them.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from lambda_decrypt import handler
from rotator.clock import SANDBOX_CLOCK_PATH
from rotator.sandbox.sample_flows import CARD_INPUT_ACTION
from tests.simulated import unmark
from tests.world import Payments, create_payments

DAY = timedelta(days=1)
CLI_TIMEOUT = 90  # seconds for one command; a rotation makes one RSA-4096 key (< 1 s)
START_TIMEOUT = 30
STOP_TIMEOUT = 15
# Cards typed by callers; none of them may ever appear in the rotator's output.
CARD_BEFORE = "4000056655665556"
CARD_AFTER = "5555555555554444"
CARD_LATE = "378282246310005"
CARD_ROLLBACK = "6011111111111117"
ALL_CARDS = (CARD_BEFORE, CARD_AFTER, CARD_LATE, CARD_ROLLBACK)
# Variables of the caller's shell that would change what the rotator or the Lambda does.
INHERITED_SETTINGS = (
    "LOG_LEVEL",
    "ENCRYPTED_PARAMETERS",
    "DECRYPT_ATTRIBUTES",
    "RESPONSE_MODE",
)


def rotator_command() -> list[str]:
    """The installed console script (what a user runs), else the same entry point via -c."""
    script = shutil.which("rotator", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script]
    return [
        sys.executable,
        "-c",
        "from rotator.entrypoints.cli import main; raise SystemExit(main())",
    ]


def clean_environment(workdir: Path) -> dict[str, str]:
    """This process's environment without any AWS or project setting, and no AWS config file."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("AWS_", "KEYRING_", "ROTATOR_", "KEY_CACHE", "NEGATIVE_CACHE"))
        and not name.startswith("MAX_")
        and name not in INHERITED_SETTINGS
    }
    environment["AWS_CONFIG_FILE"] = str(workdir / "no-aws-config")
    environment["AWS_SHARED_CREDENTIALS_FILE"] = str(workdir / "no-aws-credentials")
    return environment


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def first_lines(stream: Any, count: int, timeout: float) -> list[str]:
    """`count` lines from a child's stdout, failing (not hanging) if they do not come in time."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for _ in range(count):
            lines.put(stream.readline())

    threading.Thread(target=read, daemon=True).start()
    try:
        return [lines.get(timeout=timeout).rstrip("\n") for _ in range(count)]
    except queue.Empty:
        pytest.fail(f"rotator sandbox printed fewer than {count} lines in {timeout} s")


@dataclass(frozen=True)
class SandboxProcess:
    exports: dict[str, str]  # what `rotator sandbox` printed as `export NAME=value`
    base_environment: dict[str, str]
    workdir: Path

    @property
    def url(self) -> str:
        return self.exports["AWS_ENDPOINT_URL"]


@pytest.fixture(scope="module")
def sandbox_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """`rotator sandbox --port P` as a user starts it; stopped with SIGTERM, exiting 0."""
    workdir = tmp_path_factory.mktemp("cli-e2e")
    base = clean_environment(workdir)
    port = free_port()
    stderr_path = workdir / "sandbox.stderr"
    with stderr_path.open("w") as stderr:  # a file: the request log must never fill a pipe
        process = subprocess.Popen(
            [*rotator_command(), "sandbox", "--port", str(port)],
            cwd=workdir,
            env=base,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        lines = first_lines(process.stdout, 5, START_TIMEOUT)
        assert all(line.startswith("export ") for line in lines[:4]), lines
        exports = dict(shlex.split(line)[1].split("=", 1) for line in lines[:4])
        assert exports["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
        assert exports["AWS_DEFAULT_REGION"] == "us-east-1"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= exports.keys()
        assert lines[4].startswith("# sandbox on "), lines[4]
        yield SandboxProcess(exports, base, workdir)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=STOP_TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    log = stderr_path.read_text()
    assert "Traceback" not in log, log[-2000:]


@dataclass(frozen=True)
class CliRun:
    argv: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class CliWorld(Payments):
    """Payments (tests/world.py) on `rotator sandbox`, the rotator run through its command only."""

    sandbox: SandboxProcess
    runs: list[CliRun] = field(default_factory=list)
    private_keys: dict[str, str] = field(default_factory=dict)  # parameter name -> PEM

    def stand_clock_at(self, moment: datetime | None) -> None:
        """The sandbox's simulated clock at `moment`; None: back on real time."""
        body = {"stand_at": moment.isoformat()} if moment else {"real_time": True}
        request = urllib.request.Request(
            self.sandbox.url + SANDBOX_CLOCK_PATH, data=json.dumps(body).encode()
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.loads(answer.read())["simulated"] is (moment is not None)

    def cli_environment(self, **overrides: str | None) -> dict[str, str]:
        environment = {
            **self.sandbox.base_environment,
            **self.sandbox.exports,
            "KEYRING_PREFIX": self.prefix,
        }
        for name, value in overrides.items():
            if value is None:
                environment.pop(name, None)
            else:
                environment[name] = value
        return environment

    def rotator(
        self,
        *argv: str,
        expect: int,
        environment: dict[str, str] | None = None,
        at: datetime | None = None,
    ) -> CliRun:
        """`rotator ARGV` as a user runs it; with `at`, at that simulated time of the sandbox
        (the output comes back without the marks that say so, after checking every line)."""
        if at is not None:
            self.stand_clock_at(at)
        completed = subprocess.run(
            [*rotator_command(), *argv],
            cwd=self.sandbox.workdir,
            env=environment or self.cli_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
        )
        stdout, stderr = unmark(completed.stdout, completed.stderr, at)
        run = CliRun(tuple(argv), completed.returncode, stdout, stderr)
        self.runs.append(run)
        self.remember_private_keys()
        assert run.code == expect, (
            f"rotator {' '.join(argv)} exited {run.code}, expected {expect}\n"
            f"stdout: {run.stdout}\nstderr: {run.stderr}"
        )
        return run

    def remember_private_keys(self) -> None:
        """Every private key now in the keyring (staged or stored), read from SSM."""
        for name in self.parameter_versions():
            if name.endswith("/private-key"):
                parameter = self.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
                self.private_keys[name] = parameter["Value"]

    def assert_no_secret_in_any_output(self, expected_keys: int) -> None:
        assert len(self.private_keys) >= expected_keys, sorted(self.private_keys)
        body_lines = {
            line.strip()
            for pem in self.private_keys.values()
            for line in pem.splitlines()
            if line.strip() and not line.startswith("-----") and len(line.strip()) >= 16
        }
        assert len(body_lines) >= 40 * expected_keys  # RSA-4096 PKCS#8: ~50 lines each
        assert self.runs
        for run in self.runs:
            for stream in (run.stdout, run.stderr):
                leaked = [line for line in body_lines if line in stream]
                assert not leaked, f"rotator {' '.join(run.argv)} printed a private key line"
                assert "PRIVATE KEY" not in stream, run.argv
                for card in ALL_CARDS:
                    assert card not in stream, f"rotator {' '.join(run.argv)} printed a card"


def lambda_decrypts(ciphertext: str, *, new_container: bool = False) -> dict[str, str]:
    """The decrypt Lambda, in-process, invoked as Connect invokes it (a new container if asked)."""
    if new_container:
        handler.reset_container()
    event = {
        "Details": {
            "ContactData": {"ContactId": "e2e-contact", "Attributes": {}},
            "Parameters": {"EncryptedCreditCard": ciphertext},
        },
        "Name": "ContactFlowEvent",
    }
    return handler.lambda_handler(event, None)


def ok(card: str) -> dict[str, str]:
    return {"status": "ok", "EncryptedCreditCard": card}


def at(moment: datetime) -> str:
    return moment.isoformat()


def table_row(table: str, key_id: str) -> list[str]:
    """The cells of the status table's row for a key (after its header line)."""
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("KEY ID"))
    (row,) = [line.split() for line in lines[header + 1 :] if line.startswith(key_id)]
    return row


def keys_by_id(run: CliRun) -> dict[str, dict[str, Any]]:
    return {row["key_id"]: row for row in run.json()["keys"]}


def use_sandbox_for_the_lambda(
    monkeypatch: pytest.MonkeyPatch, sandbox: SandboxProcess, environment: dict[str, str]
) -> None:
    """The Lambda's configuration: only environment variables, as its deployment sets them."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "KEYRING_")) or name in INHERITED_SETTINGS:
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(sandbox.workdir / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(sandbox.workdir / "no-aws-credentials"))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)


def new_scenario(
    sandbox: SandboxProcess, monkeypatch: pytest.MonkeyPatch, name: str
) -> Iterator[CliWorld]:
    prefix = f"/e2e-{name}"
    session = boto3.session.Session(
        aws_access_key_id=sandbox.exports["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=sandbox.exports["AWS_SECRET_ACCESS_KEY"],
        region_name=sandbox.exports["AWS_DEFAULT_REGION"],
    )
    ssm = session.client("ssm", endpoint_url=sandbox.url)
    connect = session.client("connect", endpoint_url=sandbox.url)
    payments = create_payments(prefix, ssm, connect, f"payments{prefix.replace('/', '-')}")
    scenario = CliWorld(**vars(payments), sandbox=sandbox)
    assert scenario.parameter_versions() == {}, f"{prefix} is not fresh"
    use_sandbox_for_the_lambda(
        monkeypatch,
        sandbox,
        {
            **sandbox.exports,
            "KEYRING_PREFIX": prefix,
            "LOG_LEVEL": "ERROR",  # the Lambda's own log goes to stdout; keep it quiet here
        },
    )
    handler.reset_container()
    scenario.stand_clock_at(None)  # each scenario starts on real time
    yield scenario
    handler.reset_container()


@pytest.fixture
def lifecycle(
    sandbox_process: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliWorld]:
    yield from new_scenario(sandbox_process, monkeypatch, "lifecycle")


@pytest.fixture
def rollback(
    sandbox_process: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliWorld]:
    yield from new_scenario(sandbox_process, monkeypatch, "rollback")


@pytest.fixture
def per_service(
    sandbox_process: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliWorld]:
    yield from new_scenario(sandbox_process, monkeypatch, "per-service")


def test_full_key_lifecycle_through_the_cli(lifecycle: CliWorld) -> None:
    s = lifecycle
    t0 = datetime.now(UTC)
    due = t0 + 366 * DAY  # the cryptoperiod (365 days) is over, the certificate (730) is not
    in_grace = due + DAY  # the old key stays associated for 7 days after the rotation
    after_grace = due + 8 * DAY
    retained = after_grace + DAY  # a retired key is kept 90 days
    after_retention = after_grace + 91 * DAY

    # Before anything: an empty keyring, said in words.
    assert "holds no keys" in s.rotator("status", expect=0).stdout

    # init: the first key, stored and proven, then put into the flow and the module.
    init = s.rotator(
        *s.init_argv(),
        "--json",
        expect=0,
    ).json()
    assert init["ok"] is True
    (result,) = init["results"]
    assert (result["instance_id"], result["outcome"]) == (s.instance_id, "rotated")
    first = result["new_key_id"]
    assert first and result["old_key_id"] is None
    assert s.flow_block().key_id == first and s.module_block().key_id == first
    assert s.associations() == [first]
    assert not any("/staging/" in name for name in s.parameter_versions())

    status = s.rotator("status", "--json", expect=0)
    row = keys_by_id(status)[first]
    assert (row["state"], row["current"], row["instance_id"]) == ("active", True, s.instance_id)
    assert row["key_size"] == 4096
    (instance,) = status.json()["instances"]
    assert (instance["instance_id"], instance["current_key_id"]) == (s.instance_id, first)
    table = s.rotator("status", expect=0).stdout
    assert f"instance {s.instance_id}: current key {first}" in table
    assert table_row(table, first)[2:4] == ["active", "yes"]
    verified = s.rotator("verify", expect=0).stdout
    assert "all invariants hold" in verified and "FAIL" not in verified

    # A caller pays: Connect encrypts with the flow's key, the Lambda decrypts it.
    before = s.caller_types(CARD_BEFORE)
    assert lambda_decrypts(before) == ok(CARD_BEFORE)

    # The daily run: not due, nothing changes.
    unchanged = s.snapshot()
    daily = s.rotator("rotate", expect=0).stdout
    assert f"{s.instance_id}: not_due: next rotation due" in daily
    assert "summary: 1 not due" in daily
    assert s.snapshot() == unchanged

    # A dry run at a time when it is due says so and changes nothing.
    dry = s.rotator("rotate", "--dry-run", at=due, expect=0).stdout
    assert f"{s.instance_id}: would_rotate: would rotate (cryptoperiod ended" in dry
    assert s.snapshot() == unchanged

    # Due: rotated; the contact encrypted before still decrypts, warm and in a new container.
    rotated = s.rotator("rotate", "--json", at=due, expect=0).json()
    (result,) = rotated["results"]
    assert result["outcome"] == "rotated" and "cryptoperiod" in result["detail"]
    assert result["old_key_id"] == first
    second = result["new_key_id"]
    assert second and second != first
    assert s.flow_block().key_id == second and s.module_block().key_id == second
    assert s.associations() == sorted([first, second])
    assert lambda_decrypts(before) == ok(CARD_BEFORE)
    assert lambda_decrypts(before, new_container=True) == ok(CARD_BEFORE)
    after = s.caller_types(CARD_AFTER)
    assert lambda_decrypts(after) == ok(CARD_AFTER)

    rows = keys_by_id(s.rotator("status", "--json", at=due, expect=0))
    assert (rows[first]["state"], rows[first]["current"]) == ("previous", False)
    assert (rows[second]["state"], rows[second]["current"]) == ("active", True)
    table = s.rotator("status", at=due, expect=0).stdout
    assert table_row(table, first)[2] == "previous"
    assert table_row(table, second)[2:4] == ["active", "yes"]

    # Inside the grace period: a forced rotation is refused, and nothing changes.
    unchanged = s.snapshot()
    refused = s.rotator("rotate", "--force", at=in_grace, expect=1)
    assert f"{s.instance_id}: failed: two keys are associated" in refused.stdout
    assert f"{first} is in its grace period" in refused.stdout
    assert "nothing changed" in refused.stdout and "summary: 1 failed" in refused.stdout
    assert s.snapshot() == unchanged

    # Retire waits for the grace period; destroy needs --yes, then a retired key.
    early = s.rotator("retire", first, at=in_grace, expect=1)
    assert f"error: key {first} is in its grace period until" in early.stderr
    assert s.snapshot() == unchanged
    unconfirmed = s.rotator("destroy", first, at=after_retention, expect=2)
    assert "--yes is required" in unconfirmed.stderr
    assert s.snapshot() == unchanged

    retired = s.rotator("retire", first, at=after_grace, expect=0).stdout
    assert f"key {first} retired: disassociated from {s.instance_id}" in retired
    assert s.associations() == [second]
    assert s.flow_block().key_id == second
    assert lambda_decrypts(before, new_container=True) == ok(CARD_BEFORE)  # still decrypts

    unchanged = s.snapshot()
    kept = s.rotator("destroy", first, "--yes", at=retained, expect=1)
    assert f"error: key {first} is retained until" in kept.stderr
    assert s.snapshot() == unchanged
    assert lambda_decrypts(before, new_container=True) == ok(CARD_BEFORE)

    destroyed = s.rotator("destroy", first, "--yes", at=after_retention, expect=0)
    assert f"key {first} destroyed" in destroyed.stdout
    names = s.parameter_versions()
    assert f"{s.prefix}/keys/{first}/private-key" not in names
    assert f"{s.prefix}/keys/{first}/metadata" in names
    rows = keys_by_id(s.rotator("status", "--json", at=after_retention, expect=0))
    assert rows[first]["state"] == "destroyed" and rows[second]["state"] == "active"

    # The old contact now answers key_destroyed; contacts on the current key still decrypt.
    assert lambda_decrypts(before, new_container=True) == {
        "status": "error",
        "error": "key_destroyed",
    }
    assert lambda_decrypts(after) == ok(CARD_AFTER)
    late = s.caller_types(CARD_LATE)
    assert lambda_decrypts(late) == ok(CARD_LATE)
    assert lambda_decrypts(late, new_container=True) == ok(CARD_LATE)

    final = s.rotator("verify", "--json", expect=0).json()
    assert final["ok"] is True
    assert final["findings"] and all(f["ok"] for f in final["findings"])
    assert {f["check"] for f in final["findings"]} >= {
        "one current key",
        "flows use the current key",
        "every referenced key decrypts",
    }
    s.assert_no_secret_in_any_output(expected_keys=2)


def test_rollback_through_the_cli_on_a_fresh_instance(rollback: CliWorld) -> None:
    s = rollback
    t0 = datetime.now(UTC)
    later = t0 + DAY

    init = s.rotator(
        *s.init_argv(),
        expect=0,
    ).stdout
    first = s.flow_block().key_id
    assert first is not None
    assert f"{s.instance_id}: rotated: no key -> {first} (first key)" in init
    assert "summary: 1 rotated" in init

    unchanged = s.snapshot()
    nothing = s.rotator("rollback", "--instance-id", s.instance_id, expect=1)
    assert f"instance {s.instance_id} has no previous key to roll back to" in nothing.stderr
    assert s.snapshot() == unchanged

    on_first = s.caller_types(CARD_BEFORE)
    (result,) = s.rotator("rotate", "--force", "--json", at=later, expect=0).json()["results"]
    second = result["new_key_id"]
    assert (result["outcome"], result["old_key_id"]) == ("rotated", first)
    assert s.flow_block().key_id == second
    on_second = s.caller_types(CARD_AFTER)

    back = s.rotator("rollback", "--instance-id", s.instance_id, at=later, expect=0)
    assert f"{s.instance_id}: flows point at {first} again; {second} is previous" in back.stdout
    assert s.flow_block().key_id == first and s.module_block().key_id == first
    assert s.associations() == sorted([first, second])
    rows = keys_by_id(s.rotator("status", "--json", at=later, expect=0))
    assert (rows[first]["state"], rows[first]["current"]) == ("active", True)
    assert (rows[second]["state"], rows[second]["current"]) == ("previous", False)

    # Contacts made on either key decrypt, and new callers encrypt with the first key again.
    assert lambda_decrypts(on_first, new_container=True) == ok(CARD_BEFORE)
    assert lambda_decrypts(on_second) == ok(CARD_AFTER)
    again = s.caller_types(CARD_ROLLBACK)
    assert lambda_decrypts(again) == ok(CARD_ROLLBACK)

    verified = s.rotator("verify", "--json", at=later, expect=0).json()
    assert verified["ok"] is True and all(f["ok"] for f in verified["findings"])
    s.assert_no_secret_in_any_output(expected_keys=2)


def test_per_service_endpoint_variables_are_enough(
    per_service: CliWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_ENDPOINT_URL_SSM, _CONNECT and _STS alone (the general variable points at nothing):
    a command that records a change asks STS who is calling, for the history's principal."""
    s = per_service
    dead = f"http://127.0.0.1:{free_port()}"
    environment = s.cli_environment(
        AWS_ENDPOINT_URL=dead,
        AWS_ENDPOINT_URL_SSM=s.sandbox.url,
        AWS_ENDPOINT_URL_CONNECT=s.sandbox.url,
        AWS_ENDPOINT_URL_STS=s.sandbox.url,
    )
    s.rotator(
        *s.init_argv(),
        expect=0,
        environment=environment,
    )
    key_id = s.flow_block().key_id
    assert key_id is not None and s.associations() == [key_id]
    verified = s.rotator("verify", "--json", expect=0, environment=environment).json()
    assert verified["ok"] is True

    # The Lambda too: only SSM is configured, the general endpoint is dead.
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", s.sandbox.url)
    assert lambda_decrypts(s.caller_types(CARD_LATE), new_container=True) == ok(CARD_LATE)
    s.assert_no_secret_in_any_output(expected_keys=1)


@pytest.fixture
def dual_control(
    sandbox_process: SandboxProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliWorld]:
    yield from new_scenario(sandbox_process, monkeypatch, "dual-control")


def test_dual_control_on_the_sandbox_needs_a_second_principal(dual_control: CliWorld) -> None:
    """Issue 11's proof through real processes against `rotator sandbox`: an emergency
    rotation waits for a request; its requester cannot approve it; a role assumed in the
    sandbox (another principal) can, and the rotation runs."""
    s = dual_control
    s.rotator(*s.init_argv(), expect=0)
    first = s.flow_block().key_id
    on = s.cli_environment(ROTATOR_DUAL_CONTROL="true")
    emergency = (
        *("rotate", "--instance-id", s.instance_id, "--force"),
        *("--emergency", "--reason", "suspected leak"),
    )
    refused = s.rotator(*emergency, environment=on, expect=3)
    assert "rotator request rotate --instance-id" in refused.stderr
    assert s.flow_block().key_id == first

    asked = s.rotator("request", *emergency, environment=on, expect=0).stdout
    request_id = asked.split("request ", 1)[1].split(":", 1)[0]
    assert request_id.startswith("req-")
    own = s.rotator("approve", request_id, environment=on, expect=3)
    assert "second principal must approve" in own.stderr
    assert s.flow_block().key_id == first

    session = boto3.session.Session(
        aws_access_key_id=s.sandbox.exports["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s.sandbox.exports["AWS_SECRET_ACCESS_KEY"],
        region_name=s.sandbox.exports["AWS_DEFAULT_REGION"],
    )
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
    }
    role = session.client("iam", endpoint_url=s.sandbox.url).create_role(
        RoleName="e2e-approver", AssumeRolePolicyDocument=json.dumps(trust)
    )["Role"]
    granted = session.client("sts", endpoint_url=s.sandbox.url).assume_role(
        RoleArn=role["Arn"], RoleSessionName="second-person"
    )["Credentials"]
    approver = s.cli_environment(
        ROTATOR_DUAL_CONTROL="true",
        AWS_ACCESS_KEY_ID=granted["AccessKeyId"],
        AWS_SECRET_ACCESS_KEY=granted["SecretAccessKey"],
        AWS_SESSION_TOKEN=granted["SessionToken"],
    )
    ran = s.rotator("approve", request_id, environment=approver, expect=0).stdout
    assert "running: rotator rotate --instance-id" in ran, ran
    second = s.flow_block().key_id
    assert second not in (None, first), ran
    s.rotator("approve", request_id, environment=approver, expect=3)  # exactly once
    listed = s.rotator("request", "list", "--json", environment=on, expect=0).json()
    assert listed["open"] == []
    s.assert_no_secret_in_any_output(expected_keys=2)


@pytest.fixture
def served(sandbox_process: SandboxProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliWorld]:
    yield from new_scenario(sandbox_process, monkeypatch, "serve")


def test_serve_once_brings_a_configured_instance_under_management(served: CliWorld) -> None:
    """`rotator serve --once` against `rotator sandbox`: the config file declares the instance;
    the first run gives it its first key, the second finds nothing due."""
    s = served
    config = s.sandbox.workdir / "serve.toml"
    config.write_text(
        f'[settings]\nkeyring_prefix = "{s.prefix}"\n\n'
        f'[[instances]]\nid = "{s.instance_id}"\nflows = ["{s.flow_id}"]\n'
        f'modules = ["{s.module_id}"]\n'
        f'encrypt_blocks = ["{s.flow_id}:{CARD_INPUT_ACTION}",\n'
        f'                  "{s.module_id}:{CARD_INPUT_ACTION}"]\n'
    )
    environment = s.cli_environment(KEYRING_PREFIX=None)  # the file names the keyring
    first = s.rotator("serve", "--once", "--config", str(config), expect=0, environment=environment)
    assert "1 rotated" in first.stdout
    key_id = s.flow_block().key_id
    assert key_id is not None and s.module_block().key_id == key_id
    assert lambda_decrypts(s.caller_types(CARD_BEFORE)) == ok(CARD_BEFORE)

    before = s.snapshot()
    second = s.rotator(
        "serve", "--once", "--config", str(config), expect=0, environment=environment
    )
    assert "not due" in second.stdout or "1 not due" in second.stdout
    assert s.snapshot() == before
    s.rotator("verify", expect=0)
    s.assert_no_secret_in_any_output(expected_keys=1)
