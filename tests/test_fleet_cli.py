"""The CLI in fleet mode: `status`, `verify`, `rotate`, `report` and `init` over the member
accounts' keyrings (moto, assumed roles), filtered by --account / --region; without accounts the
filters and --concurrency are refused with what to set."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from rotator.config import Settings
from rotator.domain.fleet import Account
from rotator.domain.keys import KeyMaterial
from rotator.domain.rotation import ManagedInstance
from rotator.entrypoints import cli
from rotator.entrypoints.bootstrap import build_account_adapters
from rotator.exit_codes import ExitCode
from tests.conftest import REGION, make_record
from tests.fakes import HeldKeys

FLOW = "bbbbbbbb-1111-4222-8333-444444444444"
PROD_INSTANCE = "aaaaaaaa-1111-4222-8333-444444444444"
TEST_INSTANCE = "cccccccc-1111-4222-8333-444444444444"
ACCOUNTS = [
    Account("prod", "arn:aws:iam::111111111111:role/member", "ext-prod", (REGION,)),
    Account("test", "arn:aws:iam::222222222222:role/member", "ext-test", (REGION, "eu-west-2")),
]


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out), out.getvalue()


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch, aws: None) -> Settings:
    monkeypatch.setenv("ROTATOR_ACCOUNTS", json.dumps([a.to_dict() for a in ACCOUNTS]))
    settings = Settings.load()
    for account, region, instance in (
        (ACCOUNTS[0], REGION, PROD_INSTANCE),
        (ACCOUNTS[1], "eu-west-2", TEST_INSTANCE),
    ):
        build_account_adapters(settings, account, region).keyring.put_instance(
            ManagedInstance(instance, (FLOW,), ())
        )
    real = cli.build_fleet_adapters

    def no_connect(*args: Any, **kwargs: Any) -> Any:
        # moto has no Connect security keys: each partition's Connect holds none.
        return {p: replace(a, connect=HeldKeys()) for p, a in real(*args, **kwargs).items()}

    monkeypatch.setattr(cli, "build_fleet_adapters", no_connect)
    return settings


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--account", "prod"],
        ["verify", "--region", "eu-west-2"],
        ["rotate", "--account", "prod", "--region", REGION],
        ["report", "--account", "prod"],
    ],
)
def test_filters_without_accounts_are_refused(
    aws: None, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _run(*argv)
    assert code == ExitCode.USAGE
    assert "no accounts are configured (set ROTATOR_ACCOUNTS" in capsys.readouterr().err


def test_concurrency_without_accounts_is_refused(
    aws: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = _run("rotate", "--concurrency", "4")
    assert code == ExitCode.USAGE and "--concurrency" in capsys.readouterr().err


def test_rotate_evaluates_the_fleet_and_runs_a_unit_per_due_instance(fleet: Settings) -> None:
    code, output = _run("rotate", "--dry-run", "--concurrency", "3", "--json")
    assert code == ExitCode.OK, output
    document = json.loads(output)
    assert [
        (r["account"], r["region"], r["instance_id"], r["outcome"]) for r in document["results"]
    ] == [
        ("prod", REGION, PROD_INSTANCE, "would_rotate"),
        ("test", "eu-west-2", TEST_INSTANCE, "would_rotate"),
    ]
    assert document["evaluation"]["counts"] == {
        "partitions": 3,
        "managed": 2,
        "due": 2,
        "waiting": 0,
    }
    code, output = _run("rotate", "--dry-run", "--account", "test")
    assert code == ExitCode.OK
    assert f"test/eu-west-2/{TEST_INSTANCE}: would_rotate" in output
    assert PROD_INSTANCE not in output


def test_status_is_per_account_and_region(fleet: Settings) -> None:
    code, output = _run("status", "--json")
    assert code == ExitCode.OK, output
    partitions = json.loads(output)["partitions"]
    assert [(p["account"], p["region"]) for p in partitions] == [
        ("prod", REGION),
        ("test", REGION),
        ("test", "eu-west-2"),
    ]
    code, output = _run("status", "--region", "eu-west-2")
    assert output.startswith("== account test, region eu-west-2 ==\n")
    assert TEST_INSTANCE in output and PROD_INSTANCE not in output
    code, output = _run("status", "--account", "nope")
    assert code == ExitCode.USAGE


def test_report_covers_the_selection_and_init_needs_one_keyring(
    fleet: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    # The report is one document over every selected account region, a section each.
    code, output = _run("report", "--account", "test", "--format", "json")
    assert code == ExitCode.OK, output
    document = json.loads(output)
    assert document["generated_at"]
    sections = [(p["account"], p["region"]) for p in document["partitions"]]
    assert sections == [("test", REGION), ("test", "eu-west-2")]
    code, output = _run("report", "--account", "test", "--region", "eu-west-2", "--format", "json")
    assert code == ExitCode.OK, output
    (section,) = json.loads(output)["partitions"]
    assert (section["account"], section["region"], section["error"]) == ("test", "eu-west-2", None)
    assert [i["instance_id"] for i in section["report"]["instances"]] == [TEST_INSTANCE]
    assert PROD_INSTANCE not in output
    # init reads the flow from the chosen partition's Connect (here: one that holds none).
    code, _ = _run(
        "init", "--account", "prod", "--instance-id", PROD_INSTANCE, "--flow-id", FLOW, "--dry-run"
    )
    assert code == ExitCode.FAILURE
    assert f"connect: {PROD_INSTANCE}/{FLOW} not found" in capsys.readouterr().err
    code, _ = _run("init", "--instance-id", PROD_INSTANCE, "--flow-id", FLOW)
    assert code == ExitCode.USAGE and "choose one of prod/" in capsys.readouterr().err


def test_serve_refuses_a_fleet_rather_than_rotate_one_account(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "rotator.toml"
    account = ACCOUNTS[0].to_dict()
    config.write_text(
        "[[accounts]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in account.items())
    )
    code, _ = _run("serve", "--config", str(config), "--once")
    assert code == ExitCode.USAGE
    assert "rotator serve runs one account" in capsys.readouterr().err


def test_each_section_describes_its_member_keyring_key_through_the_member_role(
    fleet: Settings, material_2048: KeyMaterial
) -> None:
    """Evidence across accounts (3.6.1.1): prod's private key is a SecureString under prod's
    own keyring key; the fleet report describes that key with prod's role (moto keeps each
    account's KMS apart), and says prod's decrypt function was not found (none deployed here;
    tests/test_member_decrypt_scan.py scans one)."""
    from rotator.entrypoints.bootstrap import MEMBER_KEYRING_KEY_ALIAS, assumed_role_session

    session = assumed_role_session(ACCOUNTS[0], REGION)
    kms = session.client("kms", region_name=REGION)
    key = kms.create_key(Description="prod keyring key")["KeyMetadata"]
    kms.create_alias(AliasName=MEMBER_KEYRING_KEY_ALIAS, TargetKeyId=key["KeyId"])
    adapters = build_account_adapters(fleet, ACCOUNTS[0], REGION, session=session)
    adapters.keyring.store_key(
        "prod-key", material_2048, make_record("prod-key", material_2048, instance_id=PROD_INSTANCE)
    )
    adapters.keyring.set_current(PROD_INSTANCE, "prod-key")
    code, output = _run("report", "--account", "prod", "--format", "json")
    assert code == ExitCode.OK, output
    (section,) = json.loads(output)["partitions"]
    architecture = section["report"]["cryptographic_architecture"]
    (kek,) = architecture["key_encrypting_keys"]
    assert (kek["arn"], kek["key_spec"], kek["unreadable"]) == (
        key["Arn"],
        "SYMMETRIC_DEFAULT",
        None,
    )
    assert ":111111111111:" in kek["arn"] and kek["protects"] == ["prod-key"]
    assert architecture["decrypt_function"]["status"] == (
        "not checked: connect-key-rotator-decrypt could not be read: function not found"
    )
    assert "BEGIN" not in output


def test_report_flags_one_key_pair_in_two_accounts(
    fleet: Settings, material_2048: KeyMaterial
) -> None:
    """The issue's proof over the wire: each account's keyring read through its assumed role
    (moto), the same public key recorded in prod and in test."""
    for account, region, instance, key_id in (
        (ACCOUNTS[0], REGION, PROD_INSTANCE, "prod-key"),
        (ACCOUNTS[1], "eu-west-2", TEST_INSTANCE, "test-key"),
    ):
        keyring = build_account_adapters(fleet, account, region).keyring
        keyring.put_record(make_record(key_id, material_2048, instance_id=instance))
        keyring.set_current(instance, key_id)
    code, output = _run("report", "--format", "json")
    assert code == ExitCode.OK, output
    document = json.loads(output)
    (shared,) = [f for f in document["fleet"]["findings"] if f["code"] == "key-shared"]
    assert shared["holders"] == [
        {"account": "prod", "region": REGION, "instance_id": PROD_INSTANCE, "key_id": "prod-key"},
        {
            "account": "test",
            "region": "eu-west-2",
            "instance_id": TEST_INSTANCE,
            "key_id": "test-key",
        },
    ]
    assert f"prod/{REGION} prod-key ({PROD_INSTANCE})" in shared["message"]
    assert f"test/eu-west-2 test-key ({TEST_INSTANCE})" in shared["message"]
    assert "BEGIN" not in output  # fingerprints, never key material
    code, _ = _run("report", "--format", "json", "--fail-on", "critical")
    assert code == ExitCode.FAILURE
    code, output = _run("report", "--account", "prod", "--format", "json")
    assert json.loads(output)["fleet"]["findings"] == []  # one account: nothing to compare
