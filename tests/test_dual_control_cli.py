"""Dual control through the CLI against moto: a destroy request approved by its own principal
is refused; approved by a second principal (an assumed role) it runs and the key is destroyed."""

from __future__ import annotations

import io
import json
import re
from typing import Any

import boto3
import pytest

from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.approval import RequestStatus, requests_from
from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import KeyState
from rotator.entrypoints.cli import main
from rotator.exit_codes import ExitCode
from tests.conftest import REGION, make_record
from tests.fakes import HeldKeys

KEY = "22222222-2222-4222-8222-222222222222"
ROLE_TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
    }
)
DESTROY = ["destroy", KEY, "--yes", "--override-retention"]


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out), out.getvalue()


@pytest.fixture
def retired_key(ssm: Any, material_a: KeyMaterial, connect_holds: HeldKeys) -> SsmKeyring:
    keyring = SsmKeyring(ssm, "/connect-keys")
    record = make_record(KEY, material_a, state=KeyState.RETIRED, instance_id=None)
    keyring.store_key(KEY, material_a, record)
    return keyring


def _as_second_principal(monkeypatch: pytest.MonkeyPatch) -> str:
    """Export the credentials of a role assumed in moto, as an approver's shell would."""
    iam = boto3.client("iam", region_name=REGION)
    role = iam.create_role(RoleName="approver", AssumeRolePolicyDocument=ROLE_TRUST)["Role"]
    sts = boto3.client("sts", region_name=REGION)
    credentials = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="bob")["Credentials"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", credentials["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", credentials["SecretAccessKey"])
    monkeypatch.setenv("AWS_SESSION_TOKEN", credentials["SessionToken"])
    # boto3's default session keeps the credentials it first found; the approver's shell is a
    # new process, which finds the exported ones.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    return str(boto3.client("sts", region_name=REGION).get_caller_identity()["Arn"])


def test_a_destroy_request_needs_a_second_principal(
    retired_key: SsmKeyring,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ROTATOR_DUAL_CONTROL", "true")
    code, _ = run(*DESTROY, "--reason", "compromised")
    assert code == ExitCode.NEEDS_APPROVAL
    assert "rotator request destroy" in capsys.readouterr().err
    assert retired_key.get_record(KEY).state is KeyState.RETIRED

    code, out = run("request", *DESTROY, "--reason", "compromised")
    assert code == ExitCode.OK, capsys.readouterr().err
    request_id = re.search(r"request (req-[0-9a-f]{12}):", out).group(1)  # type: ignore[union-attr]
    assert f"rotator destroy {KEY} --yes --override-retention --reason compromised" in out
    code, listed = run("request", "list", "--json")
    assert [r["request_id"] for r in json.loads(listed)["open"]] == [request_id]

    code, _ = run("approve", request_id)  # the requester itself
    assert code == ExitCode.NEEDS_APPROVAL
    assert "second principal must approve" in capsys.readouterr().err
    assert retired_key.get_record(KEY).state is KeyState.RETIRED

    approver = _as_second_principal(monkeypatch)
    assert ":assumed-role/approver/bob" in approver
    code, out = run("approve", request_id)
    assert code == ExitCode.OK, capsys.readouterr().err
    assert f"running: rotator destroy {KEY} --yes --override-retention" in out
    assert retired_key.get_record(KEY).state is KeyState.DESTROYED

    code, _ = run("approve", request_id)  # exactly once
    assert code == ExitCode.NEEDS_APPROVAL
    events = [e for e in retired_key.history_events() if e.details.get("request_id")]
    request = requests_from(events)[request_id]
    assert request.status(request.requested_at) is RequestStatus.EXECUTED
    assert (request.approver, request.exit_code) == (approver, 0)
    assert request.requester.endswith(":user/moto") and request.reason == "compromised"
    assert len(request.refusals) == 2


GATED = [
    ["destroy", KEY, "--yes"],
    ["destroy", KEY, "--yes", "--override-retention", "--reason", "r"],
    ["rotate", "--emergency", "--reason", "r"],
    ["retire", KEY, "--emergency", "--reason", "r"],
    ["init", "--instance-id", "i-1", "--flow-id", "f-1", "--abandon-key", "k", "--reason", "r"],
    ["rollback", "--instance-id", "i-1"],
    ["import", "--from-blog-parameters"],
]


@pytest.mark.parametrize("argv", GATED, ids=" ".join)
def test_every_gated_command_is_refused_directly_while_on_and_runs_while_off(
    aws: None, argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ROTATOR_DUAL_CONTROL", "true")
    assert run(*argv)[0] == ExitCode.NEEDS_APPROVAL
    assert "dual control is on" in capsys.readouterr().err
    monkeypatch.setenv("ROTATOR_DUAL_CONTROL", "false")
    # It runs: whatever it then finds in an empty keyring, it is not the gate that answers.
    assert run(*argv)[0] != ExitCode.NEEDS_APPROVAL
    assert "dual control" not in capsys.readouterr().err


def test_a_what_if_of_a_gated_command_needs_no_approval(
    retired_key: SsmKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROTATOR_DUAL_CONTROL", "true")
    dry_run = ("destroy", KEY, "--dry-run", "--override-retention", "--reason", "r")
    assert run(*dry_run)[0] == ExitCode.OK
    assert run("destroy", KEY, "--yes", "--now", "2027-03-01T00:00:00")[0] == ExitCode.OK
    assert retired_key.get_record(KEY).state is KeyState.RETIRED
