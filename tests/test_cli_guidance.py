"""The CLI tells the next step: instances nothing manages, a keyring read at the wrong prefix,
a missing region or credentials, global options after the command, a key imported under
another KMS key than the keyring's (against moto)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.keys import KeyMaterial
from rotator.domain.rotation import ManagedInstance
from rotator.entrypoints.cli import main
from tests.conftest import REGION, make_record
from tests.fakes import HeldKeys

PREFIX = "/connect-keys"
MANAGED, ADOPTED = "managed-instance", "adopted-instance"
# Past material_a's 365-day cryptoperiod (it starts at NOW), before its certificate expires.
LATE = "2028-01-10T00:00:00+00:00"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out), out.getvalue()


def pair(folder: Path, material: KeyMaterial) -> tuple[str, str]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    key.write_text(material.private_key_pem)
    cert.write_text(material.certificate_pem)
    return str(key), str(cert)


@pytest.fixture
def keyring(ssm: Any) -> SsmKeyring:
    return SsmKeyring(ssm, PREFIX)


@pytest.fixture
def two_instances(keyring: SsmKeyring, material_a: KeyMaterial, material_b: KeyMaterial) -> None:
    """One instance `init` manages and one that holds an adopted key and was never `init`ed:
    their records, pointers and config written directly (status reads no key and no Connect)."""
    for key_id, material, instance in (
        ("key-m", material_b, MANAGED),
        ("key-a", material_a, ADOPTED),
    ):
        keyring.put_record(make_record(key_id, material, instance_id=instance))
        keyring.set_current(instance, key_id)
    keyring.put_instance(ManagedInstance(MANAGED, ("flow-1",)))


# -- every instance is seen ----------------------------------------------------------------------


@pytest.mark.usefixtures("two_instances")
def test_status_lists_an_unmanaged_instance_with_its_keys_and_the_command_that_manages_it(
    connect_holds: HeldKeys,
) -> None:
    connect_holds.flow(MANAGED, "flow-1", '{"Version": "2019-10-30", "Actions": []}')
    code, out = run("status", "--now", LATE)  # a what-if: evaluated at LATE
    assert code == 0
    banner, *lines = out.splitlines()
    assert banner == f"what-if at {LATE}: evaluated only, nothing was changed"
    assert lines[0].startswith(f"instance {MANAGED}: current key key-m; manages ")
    assert lines[2] == (
        f"instance {ADOPTED}: NOT MANAGED (nothing rotates its keys): holds key-a (active, "
        "current, expires 2028-11-22, 318 days left, OVERDUE: cryptoperiod ended on 2027-11-23)"
    )
    assert lines[3] == (
        f"  to manage it: rotator init --instance-id {ADOPTED} --flow-id FLOW "
        "[--flow-module-id MODULE]"
    )
    code, out = run("status", "--json", "--now", LATE)
    (unmanaged,) = json.loads(out)["unmanaged_instances"]
    assert (unmanaged["instance_id"], unmanaged["current_key_id"]) == (ADOPTED, "key-a")
    assert unmanaged["overdue"] is True and unmanaged["keys"][0]["due"] is True
    assert unmanaged["command"].startswith(f"rotator init --instance-id {ADOPTED} --flow-id ")


@pytest.mark.usefixtures("two_instances")
def test_status_narrows_to_one_instance(keyring: SsmKeyring) -> None:
    code, out = run("status", "--instance-id", ADOPTED)
    assert code == 0
    assert f"instance {ADOPTED}: NOT MANAGED" in out and "key-a" in out
    assert MANAGED not in out and "key-m" not in out
    code, out = run("status", "--instance-id", MANAGED, "--json")
    status = json.loads(out)
    assert [i["instance_id"] for i in status["instances"]] == [MANAGED]
    assert [k["key_id"] for k in status["keys"]] == ["key-m"]
    assert status["unmanaged_instances"] == []
    keyring.put_instance(ManagedInstance("bare", ("flow-2",)))  # managed, no key yet
    code, out = run("status", "--instance-id", "bare")
    assert code == 0
    assert out.splitlines()[-1] == f"Instance bare holds no keys in the keyring at {PREFIX}."


@pytest.mark.usefixtures("two_instances")
def test_status_of_an_unknown_instance_says_so_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out = run("status", "--instance-id", "typo-instance")
    assert (code, out) == (1, "")
    assert capsys.readouterr().err == (
        f"error: no instance typo-instance in the keyring at {PREFIX} "
        f"(instances it knows: {ADOPTED}, {MANAGED})\n"
    )


@pytest.mark.usefixtures("two_instances")
def test_rotate_dry_run_lists_what_it_would_never_rotate(keyring: SsmKeyring) -> None:
    # No Connect here: none managed.
    keyring.ssm.delete_parameter(Name=keyring.layout.instance_config(MANAGED))
    code, out = run("rotate", "--dry-run", "--now", LATE)
    assert code == 0
    assert out.splitlines() == [
        f"what-if at {LATE}: evaluated only, nothing was changed",
        "no managed instances (run rotator init first)",
        f"instance {ADOPTED}: NOT MANAGED (nothing rotates its keys): holds key-a (active, "
        "current, expires 2028-11-22, 318 days left, OVERDUE: cryptoperiod ended on 2027-11-23)",
        f"  to manage it: rotator init --instance-id {ADOPTED} --flow-id FLOW "
        "[--flow-module-id MODULE]",
        f"instance {MANAGED}: NOT MANAGED (nothing rotates its keys): holds key-m (active, "
        "current, expires 2028-11-22, 318 days left, OVERDUE: cryptoperiod ended on 2027-11-23)",
        f"  to manage it: rotator init --instance-id {MANAGED} --flow-id FLOW "
        "[--flow-module-id MODULE]",
        "summary: nothing to do",
    ]
    code, out = run("rotate", "--dry-run", "--json")
    assert [u["instance_id"] for u in json.loads(out)["unmanaged_instances"]] == [ADOPTED, MANAGED]
    code, out = run("rotate")  # not a dry run: only what it did
    assert "NOT MANAGED" not in out


# -- errors that tell the next step -----------------------------------------------------------


def test_an_empty_keyring_names_the_prefix_it_read(ssm: Any) -> None:
    code, out = run("--prefix", "/connect-keyz", "status")
    assert code == 0
    assert out.startswith("The keyring at /connect-keyz holds no keys. Start with `rotator import`")
    assert "check --prefix / KEYRING_PREFIX" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--prefix", "/connect-keyz", "status"],
        ["status", "--prefix", "/connect-keyz"],
        ["--prefix", "/elsewhere", "status", "--prefix", "/connect-keyz"],  # the later one wins
    ],
    ids=["before", "after", "both"],
)
def test_the_prefix_works_before_and_after_the_command(ssm: Any, argv: list[str]) -> None:
    code, out = run(*argv)
    assert (code, out.startswith("The keyring at /connect-keyz holds no keys.")) == (0, True)


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_the_log_level_works_before_and_after_the_command(
    ssm: Any, before: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    option = ["--log-level", "LOUD"]
    code, _ = run(*(option + ["status"] if before else ["status", *option]))
    assert code == 2
    assert "LOG_LEVEL" in capsys.readouterr().err
    option = ["--log-level", "DEBUG"]
    assert run(*(option + ["status"] if before else ["status", *option]))[0] == 0


@pytest.mark.parametrize("before", [True, False], ids=["before", "after"])
def test_the_kms_key_works_before_and_after_the_command(
    ssm: Any, tmp_path: Path, material_a: KeyMaterial, before: bool
) -> None:
    kms = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
    option = ["--kms-key-id", kms]
    key, cert = pair(tmp_path, material_a)
    command = ["import", "--key-id", "k", "--private-key", key, "--certificate", cert]
    assert run(*(option + command if before else command + option))[0] == 0
    assert protected_by(ssm, "k") == kms


def test_global_options_after_a_nested_command(
    ssm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    dry_run = ["runbook", "run", "rollback", "--dry-run", "--param", "INSTANCE_ID=i"]
    assert run(*dry_run, "--log-level", "LOUD")[0] == 2  # read: an invalid value is refused
    assert "LOG_LEVEL" in capsys.readouterr().err
    assert run(*dry_run, "--log-level", "DEBUG")[0] == 0


def test_a_missing_region_exits_2_and_names_aws_region(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert run("status") == (2, "")
    assert capsys.readouterr().err == (
        "error: configuration: AWS_REGION: no AWS region is configured: set AWS_REGION (for "
        "example `export AWS_REGION=eu-west-1`), or AWS_DEFAULT_REGION, or a region for your "
        "AWS_PROFILE in ~/.aws/config\n"
    )


def test_aws_region_alone_is_enough(ssm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")  # boto3 itself reads only this one
    assert run("status")[0] == 0


def test_missing_credentials_exit_2_and_name_the_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing real reachable
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it caches earlier tests' credentials
    assert run("status") == (2, "")
    err = capsys.readouterr().err
    assert err.startswith("error: configuration: AWS credentials: no AWS credentials found: ")
    for variable in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert variable in err


def test_an_unknown_profile_exits_2_and_names_aws_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "typo")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    assert run("status") == (2, "")
    assert capsys.readouterr().err == (
        "error: configuration: AWS_PROFILE: The config profile (typo) could not be found: "
        "set AWS_PROFILE to a profile of ~/.aws/config\n"
    )


# -- a key imported under another KMS key than the keyring's ---------------------------------


def protected_by(ssm: Any, key_id: str) -> str:
    name = f"{PREFIX}/keys/{key_id}/private-key"
    (parameter,) = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}])[
        "Parameters"
    ]
    return str(parameter["KeyId"])


def test_an_import_under_ssms_default_key_warns_and_its_commands_re_protect_it(
    ssm: Any,
    tmp_path: Path,
    material_a: KeyMaterial,
    monkeypatch: pytest.MonkeyPatch,
    connect_holds: HeldKeys,
) -> None:
    connect_holds.hold(ADOPTED, "blog", material_a.public_key_pem)
    kms = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["KeyId"]
    key, cert = pair(tmp_path, material_a)
    command = ["import", "--key-id", "blog", "--private-key", key, "--certificate", cert]
    code, out = run(*command, "--instance-id", ADOPTED)  # ROTATOR_KMS_KEY_ID forgotten
    assert code == 0 and "warning" not in out
    assert "  private key encrypted with KMS key alias/aws/ssm\n" in out

    monkeypatch.setenv("ROTATOR_KMS_KEY_ID", kms)
    code, out = run(*command)  # the same import, now with the keyring's KMS key
    assert code == 0
    lines = out.splitlines()
    assert lines[1] == (
        f"warning: the private key of blog is encrypted with KMS key alias/aws/ssm, not the "
        f"configured KMS key {kms}: the report flags it as not protected by the configured "
        "KMS key until it is re-protected. To re-protect it (the restore path, "
        "runbooks/restore-key-parameter.md), delete its private key parameter and import the "
        f"key again from its source under {kms} (restored, read back and test-decrypted):"
    )
    delete, again = lines[2].strip(), lines[3].strip()
    assert delete == f"aws ssm delete-parameter --name {PREFIX}/keys/blog/private-key"
    assert again == (
        f"rotator import --key-id blog --private-key {key} --certificate {cert} "
        f"--prefix {PREFIX} --kms-key-id {kms}"
    )

    ssm.delete_parameter(Name=delete.rsplit(" ", 1)[1])  # what the first command does
    monkeypatch.delenv("ROTATOR_KMS_KEY_ID")  # the second one names the key itself
    code, out = run(*again.split()[1:], "--json")
    assert code == 0
    result = json.loads(out)
    assert result["warnings"] == ["key blog (active) had no private-key: restored, test-decrypted"]
    assert (result["kms_key_id"], result["reprotect_commands"]) == (kms, [])
    assert protected_by(ssm, "blog") == kms


def test_an_import_with_no_kms_key_configured_warns_when_the_keyring_uses_one(
    ssm: Any, tmp_path: Path, material_a: KeyMaterial, material_b: KeyMaterial
) -> None:
    kms = boto3.client("kms", region_name=REGION).create_key()["KeyMetadata"]["Arn"]
    key, cert = pair(tmp_path, material_b)
    assert (
        run(
            "--kms-key-id",
            kms,
            "import",
            "--key-id",
            "first",
            "--private-key",
            key,
            "--certificate",
            cert,
        )[0]
        == 0
    )
    (tmp_path / "a").mkdir()
    key, cert = pair(tmp_path / "a", material_a)
    code, out = run(
        "import", "--key-id", "second", "--private-key", key, "--certificate", cert, "--json"
    )
    assert code == 0
    result = json.loads(out)
    assert result["warnings"][-1].startswith(
        "no KMS key is configured (ROTATOR_KMS_KEY_ID or --kms-key-id), so the private key of "
        f"second is encrypted with alias/aws/ssm, while the keyring's other private keys use "
        f"KMS key {kms}. To re-protect it "
    )
    assert result["reprotect_commands"][1].endswith(f"--kms-key-id {kms}")


def test_the_blog_import_re_protect_command_reads_the_blog_parameters_again(
    ssm: Any, material_2048: KeyMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    ssm.put_parameter(Name="/ivr/key", Value=material_2048.private_key_pem, Type="SecureString")
    ssm.put_parameter(Name="/ivr/id", Value="blog-key", Type="SecureString")
    blog = [
        "import",
        "--from-blog-parameters",
        "--key-parameter",
        "/ivr/key",
        "--key-id-parameter",
        "/ivr/id",
    ]
    assert run(*blog)[0] == 0
    monkeypatch.setenv("ROTATOR_KMS_KEY_ID", "alias/connect-keys")
    code, out = run(*blog, "--json")
    assert json.loads(out)["reprotect_commands"] == [
        f"aws ssm delete-parameter --name {PREFIX}/keys/blog-key/private-key",
        "rotator import --from-blog-parameters --key-parameter /ivr/key --key-id-parameter "
        f"/ivr/id --prefix {PREFIX} --kms-key-id alias/connect-keys",
    ]
