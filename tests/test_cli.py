"""`rotator import` and `rotator status` through the CLI entrypoint, against moto SSM."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from lambda_decrypt.handler import lambda_handler
from rotator.domain.keys import KeyMaterial, load_key_material
from rotator.entrypoints.cli import main
from tests.conftest import Vector
from tests.fakes import HeldKeys

KEY_A = "11111111-1111-4111-8111-111111111111"
INSTANCE = "instance-1"


def public_pem(vector: Vector) -> str:
    return load_key_material(vector.private_key_pem, vector.certificate_pem).public_key_pem


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out), out.getvalue()


def write_pair(folder: Path, private_pem: str, certificate_pem: str) -> tuple[str, str]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    key.write_text(private_pem)
    cert.write_text(certificate_pem)
    return str(key), str(cert)


def import_args(key_id: str, pair: tuple[str, str], *extra: str) -> list[str]:
    return [
        "import",
        "--key-id",
        key_id,
        "--private-key",
        pair[0],
        "--certificate",
        pair[1],
        *extra,
    ]


@pytest.fixture
def pair_a(tmp_path: Path, material_a: KeyMaterial) -> tuple[str, str]:
    return write_pair(tmp_path, material_a.private_key_pem, material_a.certificate_pem)


@pytest.fixture
def real_pair(tmp_path: Path, real_vector: Vector) -> tuple[str, str]:
    folder = tmp_path / "real"
    folder.mkdir()
    return write_pair(folder, real_vector.private_key_pem, real_vector.certificate_pem)


def test_import_makes_the_current_key_and_is_idempotent(
    ssm: Any, pair_a: tuple[str, str], material_a: KeyMaterial, connect_holds: HeldKeys
) -> None:
    connect_holds.hold(INSTANCE, KEY_A, material_a.public_key_pem)
    code, out = run(*import_args(KEY_A, pair_a, "--instance-id", INSTANCE, "--json"))
    assert code == 0
    result = json.loads(out)
    assert (result["state"], result["created"]) == ("active", True)
    assert result["public_key_sha256"] == material_a.public_key_sha256
    current = ssm.get_parameter(Name=f"/connect-keys/instances/{INSTANCE}/current")
    assert current["Parameter"]["Value"] == KEY_A
    stored = ssm.describe_parameters(
        ParameterFilters=[{"Key": "Name", "Values": [f"/connect-keys/keys/{KEY_A}/private-key"]}]
    )["Parameters"][0]
    assert stored["Type"] == "SecureString"

    code, out = run(*import_args(KEY_A, pair_a, "--instance-id", INSTANCE))
    assert code == 0
    assert "already in the keyring" in out


def test_import_refuses_a_different_key_under_an_existing_id(
    ssm: Any,
    pair_a: tuple[str, str],
    real_pair: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(*import_args(KEY_A, pair_a))[0] == 0
    assert run(*import_args(KEY_A, real_pair))[0] == 1
    assert "different key" in capsys.readouterr().err


def test_expired_certificate_is_imported_decrypt_only_never_current(
    ssm: Any,
    real_pair: tuple[str, str],
    real_vector: Vector,
    fresh_container: None,
    monkeypatch: pytest.MonkeyPatch,
    connect_holds: HeldKeys,
) -> None:
    connect_holds.hold(INSTANCE, real_vector.key_id, public_pem(real_vector))
    code, out = run(*import_args(real_vector.key_id, real_pair, "--instance-id", INSTANCE))
    assert code == 0
    assert "warning: certificate expired on 2022-10-12" in out
    assert "state retired" in out
    assert ssm.get_parameters(Names=[f"/connect-keys/instances/{INSTANCE}/current"])[
        "InvalidParameters"
    ] == [f"/connect-keys/instances/{INSTANCE}/current"]
    monkeypatch.setenv("KEYRING_PREFIX", "/connect-keys")
    answer = lambda_handler({"Details": {"Parameters": {"Card": real_vector.ciphertext}}}, None)
    assert answer == {"status": "ok", "Card": "112344567789"}


def test_a_second_current_key_for_an_instance_is_refused(
    ssm: Any,
    pair_a: tuple[str, str],
    tmp_path: Path,
    material_b: KeyMaterial,
    capsys: pytest.CaptureFixture[str],
    material_a: KeyMaterial,
    connect_holds: HeldKeys,
) -> None:
    connect_holds.hold(INSTANCE, KEY_A, material_a.public_key_pem)
    connect_holds.hold(INSTANCE, "key-b", material_b.public_key_pem)
    folder = tmp_path / "b"
    folder.mkdir()
    pair_b = write_pair(folder, material_b.private_key_pem, material_b.certificate_pem)
    assert run(*import_args(KEY_A, pair_a, "--instance-id", INSTANCE))[0] == 0
    assert run(*import_args("key-b", pair_b, "--instance-id", INSTANCE))[0] == 1
    assert f"already has current key {KEY_A}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["import", "--key-id", KEY_A],
        ["import", "--from-blog-parameters", "--key-id", KEY_A],
        ["--prefix", "connect-keys", "status"],
    ],
)
def test_usage_and_config_errors_exit_2(ssm: Any, argv: list[str]) -> None:
    assert run(*argv)[0] == 2


def test_bad_now_and_unknown_command_exit_2(ssm: Any) -> None:
    for argv in (["status", "--now", "yesterday"], ["explode"]):
        with pytest.raises(SystemExit) as exit_info:
            run(*argv)
        assert exit_info.value.code == 2


def test_unreadable_and_malformed_files_get_clear_errors(
    ssm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = ("/nonexistent/key.pem", "/nonexistent/cert.pem")
    assert run(*import_args(KEY_A, missing))[0] == 2
    assert "cannot read /nonexistent/key.pem" in capsys.readouterr().err
    garbage = write_pair(tmp_path, "not a key", "not a certificate")
    assert run(*import_args(KEY_A, garbage))[0] == 1
    assert "not a PEM private key" in capsys.readouterr().err


def test_invalid_key_id_is_refused(ssm: Any, pair_a: tuple[str, str]) -> None:
    assert run(*import_args("../../etc", pair_a))[0] == 1


def put_blog_parameters(ssm: Any, private_pem: str, key_id: str, prefix: str = "") -> None:
    ssm.put_parameter(
        Name=f"{prefix}CONNECT_INPUT_DECRYPTION_KEY", Value=private_pem, Type="SecureString"
    )
    ssm.put_parameter(Name=f"{prefix}CONNECT_INPUT_KEY_ID", Value=key_id, Type="SecureString")


def blog_parameter_versions(ssm: Any, prefix: str = "") -> list[tuple[int, str]]:
    names = [f"{prefix}CONNECT_INPUT_DECRYPTION_KEY", f"{prefix}CONNECT_INPUT_KEY_ID"]
    return [
        (p["Version"], p["Value"])
        for name in names
        for p in ssm.get_parameter_history(Name=name, WithDecryption=True)["Parameters"]
    ]


def test_adopting_a_blog_deployment_leaves_its_parameters_alone(
    ssm: Any,
    real_vector: Vector,
    fresh_container: None,
    monkeypatch: pytest.MonkeyPatch,
    connect_holds: HeldKeys,
) -> None:
    connect_holds.hold(INSTANCE, real_vector.key_id, public_pem(real_vector))
    put_blog_parameters(ssm, real_vector.private_key_pem, real_vector.key_id)
    before = blog_parameter_versions(ssm)

    code, out = run("import", "--from-blog-parameters", "--instance-id", INSTANCE, "--json")
    assert code == 0
    result = json.loads(out)
    assert (result["key_id"], result["state"]) == (real_vector.key_id, "active")
    assert any("expiry is unknown" in w for w in result["warnings"])
    assert blog_parameter_versions(ssm) == before

    monkeypatch.setenv("KEYRING_PREFIX", "/connect-keys")
    answer = lambda_handler({"Details": {"Parameters": {"Card": real_vector.ciphertext}}}, None)
    assert answer == {"status": "ok", "Card": "112344567789"}

    code, out = run("status", "--json")
    (row,) = json.loads(out)["keys"]
    assert (row["not_after"], row["current"]) == (None, True)
    assert "certificate unknown" in row["rotation"]


def test_blog_import_with_certificate_and_custom_names(
    ssm: Any, real_vector: Vector, real_pair: tuple[str, str]
) -> None:
    put_blog_parameters(ssm, real_vector.private_key_pem, real_vector.key_id, prefix="/ivr/")
    code, out = run(
        "import",
        "--from-blog-parameters",
        "--key-parameter",
        "/ivr/CONNECT_INPUT_DECRYPTION_KEY",
        "--key-id-parameter",
        "/ivr/CONNECT_INPUT_KEY_ID",
        "--certificate",
        real_pair[1],
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    assert result["state"] == "retired"  # the certificate expired in 2022
    assert result["not_after"].startswith("2022-10-12")


def test_blog_import_of_a_pkcs1_key_is_stored_as_pkcs8(
    ssm: Any, material_2048: KeyMaterial
) -> None:
    key = serialization.load_pem_private_key(material_2048.private_key_pem.encode(), None)
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    put_blog_parameters(ssm, pkcs1, "blog-key")
    assert run("import", "--from-blog-parameters")[0] == 0
    stored = ssm.get_parameter(Name="/connect-keys/keys/blog-key/private-key", WithDecryption=True)
    assert stored["Parameter"]["Value"] == material_2048.private_key_pem


def test_blog_import_names_a_missing_parameter(
    ssm: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("import", "--from-blog-parameters")[0] == 1
    assert "CONNECT_INPUT_DECRYPTION_KEY" in capsys.readouterr().err


def test_status_reports_days_to_expiry_at_the_given_time(
    ssm: Any, pair_a: tuple[str, str], material_a: KeyMaterial, connect_holds: HeldKeys
) -> None:
    connect_holds.hold(INSTANCE, KEY_A, material_a.public_key_pem)
    assert run(*import_args(KEY_A, pair_a, "--instance-id", INSTANCE))[0] == 0
    code, out = run("status", "--json", "--now", "2028-10-23T12:00:00Z")  # a what-if
    assert code == 0
    (row,) = json.loads(out)["keys"]
    expected = (
        material_a.not_after - datetime.fromisoformat("2028-10-23T12:00:00+00:00")
    ).total_seconds() / 86400
    assert row["days_to_expiry"] == round(expected, 1)
    assert "inside the renew window" in row["rotation"]

    code, table = run("status")
    headers = [line.split()[:3] for line in table.splitlines() if line.startswith("KEY ID")]
    assert headers == [["KEY", "ID", "INSTANCE"]]  # after the instance lines
    assert KEY_A in table and "active" in table


def test_status_of_an_empty_keyring_says_how_to_start(ssm: Any) -> None:
    code, out = run("status")
    assert code == 0
    assert "rotator import" in out
