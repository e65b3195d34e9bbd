"""The one-port sandbox: boto3 clients reach moto and the Connect emulator via AWS_ENDPOINT_URL."""

from __future__ import annotations

import io
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from rotator.entrypoints.cli import main as cli
from rotator.sandbox.server import Sandbox, run_sandbox, start_sandbox

pytestmark = pytest.mark.wire  # the sandbox over HTTP, and `rotator sandbox` as a child process

SERVICES = ["ssm", "kms", "s3", "sns", "cloudwatch", "events", "scheduler", "connect"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox() as running:
        yield running


@pytest.fixture
def sandbox_env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only what the sandbox prints, as a user's shell would have it; no AWS config files."""
    _use_environment(sandbox.environment(), monkeypatch, tmp_path)
    sandbox.reset()


def _use_environment(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for name, value in environment.items():
        monkeypatch.setenv(name, value)


def test_environment_names_the_endpoint_region_and_dummy_credentials(sandbox: Sandbox) -> None:
    environment = sandbox.environment()
    assert environment["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{sandbox.port}" == sandbox.url
    assert environment["AWS_DEFAULT_REGION"] == "us-east-1"
    assert environment["AWS_ACCESS_KEY_ID"] and environment["AWS_SECRET_ACCESS_KEY"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_client_finds_the_sandbox_through_the_environment(
    sandbox: Sandbox, sandbox_env: None, service: str
) -> None:
    client = boto3.client(service)  # type: ignore[call-overload]
    assert client.meta.endpoint_url == sandbox.url
    assert client.meta.region_name == "us-east-1"


def test_moto_services_answer_on_the_one_port(sandbox_env: None) -> None:
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/connect-keys/probe", Value="hello", Type="SecureString")
    parameter = ssm.get_parameter(Name="/connect-keys/probe", WithDecryption=True)["Parameter"]
    assert parameter["Value"] == "hello"

    kms = boto3.client("kms")
    key_id = kms.create_key(Description="sandbox")["KeyMetadata"]["KeyId"]
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "sandbox"

    sns = boto3.client("sns")
    topic = sns.create_topic(Name="rotations")["TopicArn"]
    assert topic in [t["TopicArn"] for t in sns.list_topics()["Topics"]]

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="compliance-reports")
    s3.put_object(Bucket="compliance-reports", Key="report.json", Body=b"{}")
    assert s3.get_object(Bucket="compliance-reports", Key="report.json")["Body"].read() == b"{}"

    assert boto3.client("events").list_event_buses()["EventBuses"]
    assert boto3.client("scheduler").list_schedules()["Schedules"] == []


def test_connect_requests_reach_the_emulator(sandbox: Sandbox, sandbox_env: None) -> None:
    connect = boto3.client("connect")
    instance_id = connect.create_instance(
        IdentityManagementType="CONNECT_MANAGED",
        InboundCallsEnabled=True,
        OutboundCallsEnabled=True,
    )["Id"]
    # moto has no security-key API: an answer here can only come from the emulator.
    assert connect.list_security_keys(InstanceId=instance_id)["SecurityKeys"] == []
    [listed] = connect.list_instances()["InstanceSummaryList"]
    assert listed["Arn"] == f"arn:aws:connect:us-east-1:123456789012:instance/{instance_id}"
    with pytest.raises(connect.exceptions.ResourceNotFoundException) as raised:
        connect.describe_contact_flow(InstanceId=instance_id, ContactFlowId="missing")
    assert "missing" in raised.value.response["Error"]["Message"]
    with pytest.raises(connect.exceptions.ResourceNotFoundException) as raised:
        connect.describe_contact_flow(InstanceId="another-instance", ContactFlowId="missing")
    assert "another-instance" in raised.value.response["Error"]["Message"]


def test_reset_empties_moto_and_the_emulator(sandbox: Sandbox, sandbox_env: None) -> None:
    ssm = boto3.client("ssm")
    connect = boto3.client("connect")
    ssm.put_parameter(Name="/probe", Value="x", Type="String")
    instance_id = connect.create_instance(
        IdentityManagementType="SAML", InboundCallsEnabled=True, OutboundCallsEnabled=False
    )["Id"]
    sandbox.reset()
    assert ssm.describe_parameters()["Parameters"] == []
    with pytest.raises(connect.exceptions.ResourceNotFoundException):
        connect.describe_instance(InstanceId=instance_id)


def test_a_project_command_runs_against_the_sandbox_unchanged(sandbox_env: None) -> None:
    out = io.StringIO()
    assert cli(["status"], out) == 0
    assert "holds no keys" in out.getvalue()


def test_a_busy_port_is_an_error_not_an_exit(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert run_sandbox(port, io.StringIO()) == 1
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_run_sandbox_prints_the_environment_starts_empty_and_stops_cleanly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    port = _free_port()
    script = (
        "import sys; from rotator.sandbox.server import run_sandbox; "
        f"sys.exit(run_sandbox({port}, sys.stdout))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _first_lines(process, 5)
        exports = dict(shlex.split(line)[1].split("=", 1) for line in lines[:4])
        assert exports["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
        assert exports["AWS_DEFAULT_REGION"] == "us-east-1"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= exports.keys()
        assert all(line.startswith("export ") for line in lines[:4])
        assert lines[4].startswith("# ") and "Connect emulator" in lines[4]

        _use_environment(exports, monkeypatch, tmp_path)
        assert boto3.client("ssm").describe_parameters()["Parameters"] == []
        assert boto3.client("sns").list_topics()["Topics"] == []
        connect = boto3.client("connect")
        with pytest.raises(connect.exceptions.ResourceNotFoundException):
            connect.list_security_keys(InstanceId="any")

        process.send_signal(stop_signal)
        assert process.wait(timeout=15) == 0
        assert "Traceback" not in process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def _first_lines(process: subprocess.Popen[str], count: int, timeout: float = 30) -> list[str]:
    """Lines from the child's stdout, failing (not hanging) if they do not come in time."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for _ in range(count):
            lines.put(process.stdout.readline())  # type: ignore[union-attr]

    threading.Thread(target=read, daemon=True).start()
    try:
        return [lines.get(timeout=timeout).rstrip("\n") for _ in range(count)]
    except queue.Empty:
        pytest.fail(f"run_sandbox printed fewer than {count} lines in {timeout} s")
