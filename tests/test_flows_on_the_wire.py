"""The export-shaped fixtures through the Connect emulator: what `init` would write into each is
accepted exactly as Connect accepts it, and a rewrite Connect would refuse is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from rotator.domain.flows import (
    FlowContentError,
    FlowKind,
    FlowRef,
    managed_blocks,
    point_blocks_at_key,
)
from rotator.domain.keys import KeyMaterial
from tests.world import World

FLOWS = Path(__file__).parent / "flows"
# What each fixture's operator names with --encrypt-block, and what `init` then manages.
NAMED = {
    "main-ivr": set(),  # menus only: refused, nothing to encrypt unless the operator names one
    "callback-queue": set(),
    "payment-flow": set(),
    "payment-module": set(),
    "touchtone-buffer": set(),
    "dynamic-key": {"card-number"},
}

# Stores input but nothing encrypts and nothing is named: init refuses (listing the blocks).
REFUSED = {"main-ivr", "callback-queue"}


def fixture(name: str) -> str:
    return (FLOWS / f"{name}.json").read_text()


def associate(world: World, material: KeyMaterial) -> str:
    return str(
        world.connect.associate_security_key(
            InstanceId=world.instance_id, Key=material.public_key_pem
        )["AssociationId"]
    )


def upload(world: World, name: str, content: str) -> Any:
    kind = FlowKind.MODULE if "module" in name else FlowKind.FLOW
    if kind is FlowKind.MODULE:
        return world.connect.create_contact_flow_module(
            InstanceId=world.instance_id, Name=name, Content=content
        )
    return world.connect.create_contact_flow(
        InstanceId=world.instance_id, Name=name, Type="CONTACT_FLOW", Content=content
    )


@pytest.mark.parametrize("name", sorted(NAMED))
def test_what_init_writes_into_each_export_is_accepted_by_connect(
    world: World, material_a: KeyMaterial, name: str
) -> None:
    content = fixture(name)
    kind = FlowKind.MODULE if "module" in name else FlowKind.FLOW
    if name in REFUSED:  # init refuses these, so nothing is ever written into them
        with pytest.raises(FlowContentError):
            managed_blocks(FlowRef(kind, name), content, NAMED[name])
        return
    managed = managed_blocks(FlowRef(kind, name), content, NAMED[name])
    key_id = associate(world, material_a)
    written = point_blocks_at_key(
        content, [b.identifier for b in managed], key_id, material_a.certificate_pem
    )
    assert written is not None
    upload(world, name, written)  # Connect's validation passes: no exception


def test_connect_refuses_encryption_on_a_phone_number_block(
    world: World, material_a: KeyMaterial
) -> None:
    """The rule the domain enforces before writing is Connect's own: the emulator refuses it."""
    document = json.loads(fixture("callback-queue"))
    key_id = associate(world, material_a)
    for action in document["Actions"]:
        parameters = action.get("Parameters") or {}
        if "PhoneNumberValidation" in (parameters.get("InputValidation") or {}):
            parameters["InputEncryption"] = {
                "EncryptionKeyId": key_id,
                "Key": material_a.certificate_pem,
            }
    with pytest.raises(ClientError) as refused:
        upload(world, "callback-queue", json.dumps(document))
    assert refused.value.response["Error"]["Code"] == "InvalidContactFlowException"
