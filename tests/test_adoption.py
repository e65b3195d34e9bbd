"""Adopting a running blog deployment through the CLI, against the sandbox: a key in use must be
known, a private key must match what Connect holds, and an expired blog certificate ends with
`verify` passing (issue 8's proof)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from rotator.domain.keys import KeyMaterial, self_signed_material
from rotator.sandbox.sample_flows import payment_flow_content
from tests.conftest import NOW, TEST_CARD
from tests.test_cli_rotation import Cli
from tests.world import World

DAY = timedelta(days=1)


@dataclass(frozen=True)
class Blog:
    """The AWS blog's setup: a key associated by hand, its certificate in the flow's block,
    the private key and key ID in two SSM parameters, a contact encrypted before adoption."""

    key_id: str
    material: KeyMaterial
    certificate_file: Path
    key_parameter: str
    key_id_parameter: str
    contact: str

    def import_argv(self, *extra: str) -> list[str]:
        return [
            "import",
            "--from-blog-parameters",
            "--key-parameter",
            self.key_parameter,
            "--key-id-parameter",
            self.key_id_parameter,
            *extra,
        ]


@pytest.fixture(scope="module")
def blog_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def blog_deployment(world: World, tmp_path: Path, key: rsa.RSAPrivateKey, made: Any) -> Blog:
    material = self_signed_material(key, now=made, subject="CN=blog", validity_days=730)
    key_id = world.connect.associate_security_key(
        InstanceId=world.instance_id, Key=material.public_key_pem
    )["AssociationId"]
    world.connect.update_contact_flow_content(
        InstanceId=world.instance_id,
        ContactFlowId=world.flow_id,
        Content=payment_flow_content(key_id, material.certificate_pem),
    )
    names = (f"/blog{world.prefix}/key", f"/blog{world.prefix}/id")
    world.ssm.put_parameter(Name=names[0], Value=material.private_key_pem, Type="SecureString")
    world.ssm.put_parameter(Name=names[1], Value=key_id, Type="SecureString")
    certificate = tmp_path / "blog-certificate.pem"
    certificate.write_text(material.certificate_pem)
    return Blog(key_id, material, certificate, *names, contact=world.caller_types())


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    monkeypatch.setenv("ROTATOR_KEY_SIZE", "2048")
    return Cli(world, capsys)


def init_argv(world: World) -> list[str]:
    return ["init", "--instance-id", world.instance_id, "--flow-id", world.flow_id]


def test_init_refuses_a_flow_on_a_key_the_keyring_lacks_and_changes_nothing(
    cli: Cli, world: World, tmp_path: Path, blog_key: rsa.RSAPrivateKey
) -> None:
    blog = blog_deployment(world, tmp_path, blog_key, NOW - 30 * DAY)
    before = cli.snapshot()
    refused = cli(*init_argv(world), at=NOW, expect=1)
    assert f"encrypts with key {blog.key_id}, which is not in the keyring" in refused.err
    assert f"rotator import --key-id {blog.key_id}" in refused.err
    assert "--abandon-key" in refused.err and "Nothing was changed" in refused.err
    assert cli.snapshot() == before and world.parameter_names() == []
    # `--dry-run` (and `--now`) refuse the same way: the plan must not hide the loss.
    cli(*init_argv(world), "--dry-run", at=NOW, expect=1)
    assert cli.snapshot() == before


def test_abandoning_the_unknown_key_needs_a_reason_and_is_recorded(
    cli: Cli, world: World, tmp_path: Path, blog_key: rsa.RSAPrivateKey
) -> None:
    blog = blog_deployment(world, tmp_path, blog_key, NOW - 30 * DAY)
    unexplained = cli(*init_argv(world), "--abandon-key", blog.key_id, at=NOW, expect=2)
    assert "--abandon-key needs --reason TEXT" in unexplained.err
    done = cli(
        *init_argv(world), "--abandon-key", blog.key_id, "--reason", "CHG-3: key lost", at=NOW,
        expect=0,
    )  # fmt: skip
    assert f"abandons key {blog.key_id} (CHG-3: key lost)" in done.out
    steps = world.adapters.keyring.history.events(world.instance_id)
    assert any(f"abandons key {blog.key_id} (CHG-3: key lost)" in e.reason for e in steps)


@pytest.mark.parametrize("mode", ["files", "blog-parameters"])
def test_import_refuses_a_private_key_that_does_not_match_connect_and_stores_nothing(
    cli: Cli,
    world: World,
    tmp_path: Path,
    blog_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    mode: str,
) -> None:
    blog = blog_deployment(world, tmp_path, blog_key, NOW - 30 * DAY)
    wrong = self_signed_material(other_key, now=NOW - 30 * DAY, subject="CN=blog")
    if mode == "files":
        (tmp_path / "wrong.pem").write_text(wrong.private_key_pem)
        (tmp_path / "wrong-cert.pem").write_text(wrong.certificate_pem)
        argv = ["import", "--key-id", blog.key_id, "--private-key", str(tmp_path / "wrong.pem")]
        argv += ["--certificate", str(tmp_path / "wrong-cert.pem")]
    else:  # the blog parameter holds someone else's key
        world.ssm.put_parameter(
            Name=blog.key_parameter, Value=wrong.private_key_pem, Overwrite=True
        )
        argv = blog.import_argv()
    refused = cli(*argv, "--instance-id", world.instance_id, at=NOW, expect=1)
    assert "does not match the public key Connect holds for key" in refused.err
    assert "nothing was stored" in refused.err and "PRIVATE KEY" not in refused.err
    assert world.parameter_names() == []


def test_a_key_id_connect_does_not_list_is_stored_decrypt_only(
    cli: Cli, world: World, tmp_path: Path, blog_key: rsa.RSAPrivateKey
) -> None:
    blog = blog_deployment(world, tmp_path, blog_key, NOW - 30 * DAY)
    world.connect.disassociate_security_key(InstanceId=world.instance_id, AssociationId=blog.key_id)
    out = cli(*blog.import_argv("--instance-id", world.instance_id), at=NOW, expect=0).out
    assert f"Connect does not list key {blog.key_id} on instance {world.instance_id}" in out
    assert world.adapters.keyring.get_record(blog.key_id).state == "retired"
    assert world.adapters.keyring.get_current(world.instance_id) is None


def test_adopted_right_init_rotate_and_verify_pass_and_the_old_contact_decrypts(
    cli: Cli, world: World, tmp_path: Path, blog_key: rsa.RSAPrivateKey
) -> None:
    blog = blog_deployment(world, tmp_path, blog_key, NOW - 30 * DAY)
    argv = blog.import_argv("--certificate", str(blog.certificate_file))
    imported = cli(*argv, "--instance-id", world.instance_id, at=NOW, expect=0).out
    assert f"imported: key {blog.key_id} (2048 bits) state active" in imported
    taken = cli(*init_argv(world), at=NOW + DAY, expect=0).out
    assert f"rotated: {blog.key_id} -> " in taken
    assert "all invariants hold (" in cli("verify", at=NOW + DAY, expect=0).out
    rotated = cli("rotate", "--force", at=NOW + 9 * DAY, expect=0).out
    assert f"{world.instance_id}: rotated: " in rotated
    assert world.adapters.keyring.get_record(blog.key_id).state == "retired"
    assert "all invariants hold" in cli("verify", at=NOW + 9 * DAY, expect=0).out
    assert world.lambda_decrypts(blog.contact) == {"status": "ok", "Card": TEST_CARD}


def test_an_expired_blog_certificate_follows_the_runbook_to_a_passing_verify(
    cli: Cli, world: World, tmp_path: Path, blog_key: rsa.RSAPrivateKey
) -> None:
    """The adopt runbook's parts 1 and 2, step by step as it writes them, with a certificate
    that expired before the adoption."""
    blog = blog_deployment(world, tmp_path, blog_key, NOW - 740 * DAY)
    argv = blog.import_argv("--certificate", str(blog.certificate_file))
    out = cli(*argv, "--instance-id", world.instance_id, at=NOW, expect=0).out
    assert "imported as decrypt-only (retired), never as current" in out
    cli("status", at=NOW, expect=0)
    taken = cli(*init_argv(world), at=NOW, expect=0).out
    assert f"finished retiring {blog.key_id}" in taken
    verified = cli("verify", "--instance-id", world.instance_id, at=NOW, expect=0).out
    assert "FAIL" not in verified and "all invariants hold (" in verified, verified
    assert world.associations() == [world.flow_key_id()]
    assert world.lambda_decrypts(blog.contact) == {"status": "ok", "Card": TEST_CARD}
