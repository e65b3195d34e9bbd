"""Importing a key again restores a deleted private key (or certificate), never another key and
never a destroyed one: the restore-key-parameter runbook stands on this."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.keys import KeyMaterial, load_private_key, self_signed_material
from rotator.domain.lifecycle import KeyState
from rotator.errors import KeyringConflict
from rotator.ports import KeyPart
from rotator.services.importing import import_from_blog, import_key
from tests.conftest import NOW
from tests.fakes import HeldKeys

KEY = "restore-me"
DAY_LATER = NOW.replace(day=24)


@pytest.fixture
def keyring(ssm: Any) -> SsmKeyring:
    return SsmKeyring(ssm, "/connect-keys")


def imported(keyring: SsmKeyring, material: KeyMaterial, **changes: Any) -> None:
    arguments: dict[str, Any] = {
        "key_id": KEY,
        "private_key_pem": material.private_key_pem,
        "certificate_pem": material.certificate_pem,
        "instance_id": "instance-1",
        "now": NOW,
        "actor": "test",
        "connect": HeldKeys().hold("instance-1", KEY, material.public_key_pem),
    }
    result = import_key(keyring, **(arguments | changes))
    assert result.created


def versions(ssm: Any, name: str) -> int:
    return len(ssm.get_parameter_history(Name=name)["Parameters"])


def test_a_deleted_private_key_is_restored_and_test_decrypted(
    keyring: SsmKeyring, ssm: Any, material_2048: KeyMaterial
) -> None:
    imported(keyring, material_2048)
    layout = keyring.layout
    ssm.delete_parameter(Name=layout.private_key(KEY))
    again = import_key(
        keyring,
        key_id=KEY,
        private_key_pem=material_2048.private_key_pem,
        certificate_pem=material_2048.certificate_pem,
        instance_id=None,
        now=DAY_LATER,
        actor="test",
    )
    assert again.created
    assert again.warnings == [f"key {KEY} (active) had no private-key: restored, test-decrypted"]
    assert keyring.read_material(KEY).public_key_sha256 == material_2048.public_key_sha256
    assert keyring.get_record(KEY).state is KeyState.ACTIVE  # the record is the one on file
    assert versions(ssm, layout.metadata(KEY)) == 1
    assert keyring.get_current("instance-1") == KEY


def test_a_deleted_certificate_is_restored_only_if_it_is_the_one_on_record(
    keyring: SsmKeyring, ssm: Any, material_2048: KeyMaterial
) -> None:
    imported(keyring, material_2048)
    name = keyring.layout.certificate(KEY)
    recertified = self_signed_material(
        load_private_key(material_2048.private_key_pem), now=DAY_LATER, subject="CN=other"
    )
    ssm.delete_parameter(Name=name)
    same_key_other_certificate = import_key(
        keyring,
        key_id=KEY,
        private_key_pem=recertified.private_key_pem,
        certificate_pem=recertified.certificate_pem,
        instance_id=None,
        now=DAY_LATER,
        actor="test",
    )
    assert not same_key_other_certificate.created
    assert keyring.stored_parts(KEY) == {KeyPart.PRIVATE_KEY}
    imported(keyring, material_2048, instance_id=None, now=DAY_LATER)
    assert keyring.stored_parts(KEY) == {KeyPart.PRIVATE_KEY, KeyPart.CERTIFICATE}
    assert keyring.read_certificate(KEY) == material_2048.certificate_pem


def test_another_key_under_the_id_and_a_destroyed_key_are_refused(
    keyring: SsmKeyring, ssm: Any, material_2048: KeyMaterial, material_a: KeyMaterial
) -> None:
    imported(keyring, material_2048)
    ssm.delete_parameter(Name=keyring.layout.private_key(KEY))
    with pytest.raises(KeyringConflict, match="different key"):
        imported(keyring, material_a)
    record = keyring.get_record(KEY)
    for state in (KeyState.RETIRED, KeyState.DESTROYED):
        record = record.transition(state, at=DAY_LATER, actor="test", reason="test")
    keyring.write_record(record)
    with pytest.raises(KeyringConflict, match="destroyed; a destroyed key is never restored"):
        imported(keyring, material_2048)
    assert keyring.stored_private_keys([KEY]) == set()


def test_the_blog_import_restores_a_deleted_private_key_too(
    keyring: SsmKeyring, ssm: Any, material_2048: KeyMaterial
) -> None:
    pkcs1 = (
        load_private_key(material_2048.private_key_pem)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        .decode()
    )
    ssm.put_parameter(Name="CONNECT_INPUT_DECRYPTION_KEY", Value=pkcs1, Type="SecureString")
    ssm.put_parameter(Name="CONNECT_INPUT_KEY_ID", Value=KEY, Type="SecureString")

    def adopt() -> list[str]:
        result = import_from_blog(
            keyring,
            certificate_pem=None,
            instance_id="instance-1",
            now=NOW,
            actor="test",
            connect=HeldKeys().hold("instance-1", KEY, material_2048.public_key_pem),
        )
        return result.warnings

    adopt()
    ssm.delete_parameter(Name=keyring.layout.private_key(KEY))
    assert adopt() == [f"key {KEY} (active) had no private-key: restored, test-decrypted"]
    assert adopt() == [f"key {KEY} was already imported"]
    assert keyring.read_private_key_pem(KEY) == material_2048.private_key_pem
