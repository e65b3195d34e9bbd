"""Flow content: which blocks store customer input, which the rotator manages, rewriting exactly
those, dry-run plans and drift, on flow-language fixtures in tests/flows/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from rotator.domain.flows import (
    ChangeKind,
    DriftKind,
    DynamicKeyReference,
    EncryptionKind,
    EncryptionNotAllowed,
    FlowContentError,
    FlowKind,
    FlowRef,
    ManagedBlock,
    NoEncryptingBlock,
    OldFlowFormat,
    UnknownBlock,
    ValidationKind,
    encrypting_blocks,
    flow_drift,
    managed_blocks,
    planned_changes,
    point_blocks_at_key,
    storing_blocks,
)
from rotator.domain.rotation import ManagedInstance
from rotator.errors import KeyMaterialError, KeyringError
from rotator.sandbox.sample_flows import payment_flow_content
from tests.conftest import VECTORS

FLOWS = Path(__file__).parent / "flows"
FIXTURE_KEY_ID = "a5ecd749-4bd8-4a94-bfde-27eefe4f12b1"  # the real vector's key, in the fixtures
NEW_KEY_ID = "0b6c2f4e-9d3a-4e1b-8f27-5c1d9a7e3b60"
CERTIFICATE = (VECTORS / "connect-real" / "certificate.pem").read_text()
# Any certificate-shaped text will do as the new key's: only its bytes are compared.
NEW_CERTIFICATE = CERTIFICATE.replace("MIIF", "MIIG", 1)


def content(name: str) -> str:
    return (FLOWS / f"{name}.json").read_text()


def ref(name: str, kind: FlowKind = FlowKind.FLOW) -> FlowRef:
    return FlowRef(kind, name)


def blocks_by_id(name: str) -> dict[str, Any]:
    return {b.identifier: b for b in storing_blocks(content(name))}


def actions(document: str) -> dict[str, Any]:
    return {a["Identifier"]: a for a in json.loads(document)["Actions"]}


def without_encryption_of(document: str, identifiers: set[str], before: str) -> str:
    """The document with the written values of these blocks put back as they were `before`,
    dumped in its own key order: equal text means equal values in the same order."""
    data = json.loads(document)
    original = actions(before)
    for action in data["Actions"]:
        if action["Identifier"] in identifiers:
            was = original[action["Identifier"]]["Parameters"].get("InputEncryption")
            if was is None:
                del action["Parameters"]["InputEncryption"]
            else:
                action["Parameters"]["InputEncryption"] = was
    return json.dumps(data)


def canonical(document: str) -> str:
    return json.dumps(json.loads(document))


# -- the fixtures are what they claim --------------------------------------------------------


def test_every_static_key_in_the_fixtures_is_the_real_certificate() -> None:
    found = 0
    for path in FLOWS.glob("*.json"):
        if path.stem == "old-format":
            continue
        for block in storing_blocks(path.read_text()):
            if block.encryption.kind is EncryptionKind.STATIC:
                assert block.encryption.key_id == FIXTURE_KEY_ID
                assert block.encryption.certificate_pem is not None
                x509.load_pem_x509_certificate(block.encryption.certificate_pem.encode())
                found += 1
    assert found == 4  # payment flow 1, payment module 2, touchtone 1


def test_transfer_to_queue_without_parameters_is_read() -> None:
    transfer = actions(content("main-ivr"))["transfer"]
    assert transfer["Type"] == "TransferContactToQueue" and "Parameters" not in transfer
    assert [b.identifier for b in storing_blocks(content("main-ivr"))] == [
        "language-menu",
        "main-menu",
        "support-menu",
    ]


# -- storing blocks ----------------------------------------------------------------------------


def test_main_ivr_menus_store_in_plaintext_with_their_usage() -> None:
    blocks = blocks_by_id("main-ivr")
    assert {b.validation for b in blocks.values()} == {ValidationKind.CUSTOM}
    assert {b.encryption.kind for b in blocks.values()} == {EncryptionKind.NONE}
    assert blocks["main-menu"].usage == "compared in a condition"
    assert blocks["support-menu"].usage == "compared in a condition"
    assert blocks["language-menu"].usage == "saved as attribute Language"


def test_callback_number_has_phone_number_validation_and_may_not_encrypt() -> None:
    (block,) = storing_blocks(content("callback-queue"))
    assert block.identifier == "callback-number"
    assert block.validation is ValidationKind.PHONE_NUMBER
    assert block.usage == "set as the callback number"
    assert not block.may_encrypt


def test_payment_blocks_encrypt_card_and_bank_account_only() -> None:
    flow, module = blocks_by_id("payment-flow"), blocks_by_id("payment-module")
    static = EncryptionKind.STATIC
    assert [i for i, b in flow.items() if b.encryption.kind is static] == ["card-number"]
    assert [i for i, b in module.items() if b.encryption.kind is static] == [
        "card-number",
        "bank-account",
    ]
    assert flow["amount"].usage == "saved as attribute PaymentAmount"
    assert flow["expiry-date"].encryption.kind is EncryptionKind.NONE
    assert module["routing-number"].usage == "passed to Lambda as RoutingNumber"
    assert module["routing-number"].encryption.kind is EncryptionKind.NONE


def test_touchtone_stop_and_clear_stores_with_lowercase_true() -> None:
    blocks = blocks_by_id("touchtone-buffer")
    # Enable buffering ("EnableDTMFBuffer": "true") stores nothing; both Stop-and-Clear blocks do.
    assert list(blocks) == ["buffer-account", "buffer-card"]
    assert actions(content("touchtone-buffer"))["buffer-card"]["Parameters"]["StoreInput"] == "true"
    card, account = blocks["buffer-card"], blocks["buffer-account"]
    assert card.touchtone_buffer and card.validation is ValidationKind.NONE and card.may_encrypt
    assert card.encryption.kind is EncryptionKind.STATIC
    assert card.usage == "passed to Lambda as EncryptedCreditCard"
    assert account.encryption.kind is EncryptionKind.NONE and account.may_encrypt


def test_dynamic_key_reference_is_recognised() -> None:
    (block,) = storing_blocks(content("dynamic-key"))
    assert block.encryption.kind is EncryptionKind.DYNAMIC
    assert block.encryption.key_id == "$.Attributes.KeyId"


def test_the_sandbox_payment_flow_reads_as_before() -> None:
    (block,) = storing_blocks(payment_flow_content(FIXTURE_KEY_ID, CERTIFICATE))
    assert block.encryption.key_id == FIXTURE_KEY_ID
    assert block.usage == "passed to Lambda as EncryptedCreditCard"


# -- which blocks are managed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "named", "expected"),
    [
        ("payment-flow", set(), ["card-number"]),
        ("payment-module", set(), ["card-number", "bank-account"]),
        ("touchtone-buffer", set(), ["buffer-card"]),
        ("touchtone-buffer", {"buffer-account"}, ["buffer-account", "buffer-card"]),
        ("main-ivr", {"main-menu"}, ["main-menu"]),
        ("dynamic-key", {"card-number"}, ["card-number"]),
    ],
)
def test_managed_blocks(name: str, named: set[str], expected: list[str]) -> None:
    assert managed_blocks(ref(name), content(name), named) == [
        ManagedBlock(ref(name), identifier) for identifier in expected
    ]


def test_a_flow_storing_only_in_plaintext_needs_named_blocks() -> None:
    with pytest.raises(NoEncryptingBlock) as raised:
        managed_blocks(ref("main-ivr"), content("main-ivr"), set())
    message = str(raised.value)
    assert "--encrypt-block main-ivr:BLOCK" in message
    assert "main-menu (custom validation, no encryption, compared in a condition)" in message
    assert "language-menu (custom validation, no encryption, saved as attribute Language)" in (
        message
    )


def test_a_flow_that_stores_nothing_has_nothing_to_manage() -> None:
    document = json.loads(content("main-ivr"))
    for action in document["Actions"]:
        action.get("Parameters", {}).pop("StoreInput", None)
    with pytest.raises(NoEncryptingBlock, match="stores no customer input"):
        managed_blocks(ref("main-ivr"), json.dumps(document), set())


def test_naming_a_block_that_does_not_store_input_lists_the_ones_that_do() -> None:
    with pytest.raises(UnknownBlock) as raised:
        managed_blocks(ref("payment-flow"), content("payment-flow"), {"card-numbr", "greeting"})
    message = str(raised.value)
    assert "card-numbr, greeting" in message
    assert "card-number (custom validation, key " + FIXTURE_KEY_ID in message
    assert "expiry-date (custom validation, no encryption, saved as attribute CardExpiry)" in (
        message
    )


def test_naming_a_phone_number_block_is_refused() -> None:
    with pytest.raises(EncryptionNotAllowed) as raised:
        managed_blocks(ref("callback-queue"), content("callback-queue"), {"callback-number"})
    assert "callback-number has phone-number validation" in str(raised.value)
    assert "allows InputEncryption only with InputValidation.CustomValidation" in str(raised.value)


def test_an_unnamed_dynamic_reference_is_refused() -> None:
    with pytest.raises(DynamicKeyReference) as raised:
        managed_blocks(ref("dynamic-key"), content("dynamic-key"), set())
    message = str(raised.value)
    assert "uses a dynamic key reference $.Attributes.KeyId" in message
    assert "name it with --encrypt-block dynamic-key:card-number to make it static" in message


@pytest.mark.parametrize(
    "call",
    [
        lambda c: storing_blocks(c),
        lambda c: managed_blocks(ref("old"), c, set()),
        lambda c: point_blocks_at_key(c, {"x"}, NEW_KEY_ID, CERTIFICATE),
        lambda c: flow_drift(ref("old"), c, {"x"}, NEW_KEY_ID),
        lambda c: encrypting_blocks(c),
    ],
)
def test_an_old_format_export_is_named_with_what_to_do(call: Any) -> None:
    with pytest.raises(OldFlowFormat) as raised:
        call(content("old-format"))
    message = str(raised.value)
    assert "exported before 2019" in message and "'modules'" in message
    assert "the flow APIs do not take" in message
    assert "export the flow again from Connect, or rebuild it there" in message
    assert "2019-10-30" in message


@pytest.mark.parametrize("text", ["not json", "[]", '{"Version": "2019-10-30"}'])
def test_content_that_is_not_a_flow_is_refused(text: str) -> None:
    with pytest.raises(FlowContentError):
        storing_blocks(text)


def test_a_malformed_input_encryption_is_refused() -> None:
    document = json.loads(content("payment-flow"))
    for action in document["Actions"]:
        if action["Identifier"] == "card-number":
            action["Parameters"]["InputEncryption"] = "a5ecd749"
    with pytest.raises(FlowContentError, match="card-number: InputEncryption is not an object"):
        storing_blocks(json.dumps(document))


# -- rewriting exactly the managed blocks ------------------------------------------------------

REWRITES = [
    ("payment-flow", {"card-number"}),
    ("payment-module", {"card-number", "bank-account"}),
    ("touchtone-buffer", {"buffer-card", "buffer-account"}),
    ("main-ivr", {"main-menu"}),
    ("dynamic-key", {"card-number"}),
]


@pytest.mark.parametrize(("name", "managed"), REWRITES)
def test_rewrite_changes_only_the_managed_encryption(name: str, managed: set[str]) -> None:
    before = content(name)
    after = point_blocks_at_key(before, managed, NEW_KEY_ID, NEW_CERTIFICATE)
    assert after is not None
    assert without_encryption_of(after, managed, before) == canonical(before)
    written = blocks_by_id_of(after)
    for identifier in managed:
        encryption = written[identifier].encryption
        assert (encryption.kind, encryption.key_id) == (EncryptionKind.STATIC, NEW_KEY_ID)
        assert encryption.certificate_pem == NEW_CERTIFICATE
    untouched = {i: b for i, b in blocks_by_id(name).items() if i not in managed}
    assert {i: b for i, b in written.items() if i not in managed} == untouched


@pytest.mark.parametrize(("name", "managed"), REWRITES)
def test_a_second_rewrite_writes_nothing(name: str, managed: set[str]) -> None:
    once = point_blocks_at_key(content(name), managed, NEW_KEY_ID, NEW_CERTIFICATE)
    assert once is not None
    assert point_blocks_at_key(once, managed, NEW_KEY_ID, NEW_CERTIFICATE) is None


def test_rewrite_keeps_the_key_order_of_the_managed_block() -> None:
    after = point_blocks_at_key(content("payment-flow"), {"card-number"}, NEW_KEY_ID, CERTIFICATE)
    assert after is not None
    parameters = actions(after)["card-number"]["Parameters"]
    assert list(parameters) == list(actions(content("payment-flow"))["card-number"]["Parameters"])
    assert list(parameters["InputEncryption"]) == ["EncryptionKeyId", "Key"]


def test_a_block_that_starts_encrypting_gains_input_encryption_last() -> None:
    after = point_blocks_at_key(content("main-ivr"), {"main-menu"}, NEW_KEY_ID, CERTIFICATE)
    assert after is not None
    parameters = actions(after)["main-menu"]["Parameters"]
    assert list(parameters)[-1] == "InputEncryption"
    assert parameters["InputEncryption"] == {"EncryptionKeyId": NEW_KEY_ID, "Key": CERTIFICATE}


def test_rewrite_to_the_key_already_there_writes_nothing() -> None:
    managed = {"card-number", "bank-account"}
    assert point_blocks_at_key(content("payment-module"), managed, FIXTURE_KEY_ID, CERTIFICATE) is (
        None
    )


def test_rewrite_refuses_an_unknown_block() -> None:
    with pytest.raises(UnknownBlock, match="no block card-numbr"):
        point_blocks_at_key(content("payment-flow"), {"card-numbr"}, NEW_KEY_ID, CERTIFICATE)


def test_rewrite_refuses_a_phone_number_block() -> None:
    with pytest.raises(EncryptionNotAllowed):
        point_blocks_at_key(content("callback-queue"), {"callback-number"}, NEW_KEY_ID, CERTIFICATE)


@pytest.mark.parametrize(
    ("key_id", "pem"),
    [
        (NEW_KEY_ID, "-----BEGIN PUBLIC KEY-----\nMIIC\n-----END PUBLIC KEY-----\n"),
        ("$.Attributes.KeyId", CERTIFICATE),
        ("", CERTIFICATE),
    ],
)
def test_rewrite_takes_a_static_key_id_and_a_certificate(key_id: str, pem: str) -> None:
    with pytest.raises(KeyMaterialError):
        point_blocks_at_key(content("payment-flow"), {"card-number"}, key_id, pem)


def blocks_by_id_of(document: str) -> dict[str, Any]:
    return {b.identifier: b for b in storing_blocks(document)}


ENCRYPTABLE = {
    name: [b.identifier for b in storing_blocks(content(name)) if b.may_encrypt]
    for name in ("main-ivr", "payment-flow", "payment-module", "touchtone-buffer", "dynamic-key")
}


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    name=st.sampled_from(sorted(ENCRYPTABLE)),
    key_id=st.uuids().map(str),
)
def test_any_rewrite_touches_exactly_the_chosen_blocks(
    data: st.DataObject, name: str, key_id: str
) -> None:
    chosen = set(data.draw(st.lists(st.sampled_from(ENCRYPTABLE[name]), unique=True)))
    before = content(name)
    after = point_blocks_at_key(before, chosen, key_id, CERTIFICATE)
    if after is None:
        assert not chosen
        return
    assert without_encryption_of(after, chosen, before) == canonical(before)
    written = blocks_by_id_of(after)
    assert all(written[i].encryption.key_id == key_id for i in chosen)
    assert point_blocks_at_key(after, chosen, key_id, CERTIFICATE) is None


# -- dry-run plan -------------------------------------------------------------------------------


def test_planned_changes_name_each_kind_of_change() -> None:
    plan = planned_changes(
        ref("touchtone-buffer"), content("touchtone-buffer"), {"buffer-card", "buffer-account"}
    )
    assert [(p.block.identifier, p.change) for p in plan] == [
        ("buffer-account", ChangeKind.STARTS_ENCRYPTING),
        ("buffer-card", ChangeKind.NEW_KEY),
    ]
    assert (
        str(plan[0])
        == "flow touchtone-buffer block buffer-account: starts encrypting with the new key"
    )
    assert str(plan[1]) == (
        f"flow touchtone-buffer block buffer-card: key {FIXTURE_KEY_ID} -> the new key"
    )
    (dynamic,) = planned_changes(
        ref("dynamic-key"), content("dynamic-key"), {"card-number"}, NEW_KEY_ID
    )
    assert dynamic.change is ChangeKind.DYNAMIC_TO_STATIC
    assert str(dynamic) == (
        "flow dynamic-key block card-number: dynamic key reference $.Attributes.KeyId becomes "
        f"static: key {NEW_KEY_ID}"
    )


def test_planned_changes_see_an_unchanged_key_and_a_new_certificate() -> None:
    blocks = {"card-number", "bank-account"}
    module = ref("payment-module", FlowKind.MODULE)
    same = planned_changes(module, content("payment-module"), blocks, FIXTURE_KEY_ID, CERTIFICATE)
    assert {p.change for p in same} == {ChangeKind.UNCHANGED}
    assert str(same[0]) == (
        f"module payment-module block card-number: already uses key {FIXTURE_KEY_ID}"
    )
    renewed = planned_changes(
        module, content("payment-module"), blocks, FIXTURE_KEY_ID, NEW_CERTIFICATE
    )
    assert {p.change for p in renewed} == {ChangeKind.NEW_CERTIFICATE}


def test_planned_changes_refuse_what_the_rewrite_refuses() -> None:
    with pytest.raises(EncryptionNotAllowed):
        planned_changes(ref("callback-queue"), content("callback-queue"), {"callback-number"})


# -- drift ------------------------------------------------------------------------------------


def edited(name: str, identifier: str, change: Any) -> str:
    document = json.loads(content(name))
    for action in document["Actions"]:
        if action["Identifier"] == identifier:
            change(action)
    return json.dumps(document)


def test_no_drift_when_the_flow_is_as_managed() -> None:
    managed = {"card-number", "bank-account"}
    module = ref("payment-module", FlowKind.MODULE)
    assert flow_drift(module, content("payment-module"), managed, FIXTURE_KEY_ID) == []


def test_drift_a_managed_block_disappeared() -> None:
    document = json.loads(content("payment-flow"))
    document["Actions"] = [a for a in document["Actions"] if a["Identifier"] != "card-number"]
    (drift,) = flow_drift(
        ref("payment-flow"), json.dumps(document), {"card-number"}, FIXTURE_KEY_ID
    )
    assert drift.kind is DriftKind.MISSING
    assert str(drift).startswith("flow payment-flow block card-number: managed block is gone")


def test_drift_a_managed_block_points_at_another_key() -> None:
    (drift,) = flow_drift(ref("payment-flow"), content("payment-flow"), {"card-number"}, NEW_KEY_ID)
    assert drift.kind is DriftKind.OTHER_KEY
    assert str(drift) == (
        f"flow payment-flow block card-number: managed block points at key {FIXTURE_KEY_ID}, "
        f"expected {NEW_KEY_ID}"
    )


def test_drift_a_managed_block_became_dynamic() -> None:
    (drift,) = flow_drift(ref("dynamic-key"), content("dynamic-key"), {"card-number"}, NEW_KEY_ID)
    assert drift.kind is DriftKind.DYNAMIC
    assert "now uses a dynamic key reference $.Attributes.KeyId" in str(drift)


def test_drift_a_managed_block_stopped_encrypting() -> None:
    text = edited("payment-flow", "card-number", lambda a: a["Parameters"].pop("InputEncryption"))
    (drift,) = flow_drift(ref("payment-flow"), text, {"card-number"}, FIXTURE_KEY_ID)
    assert drift.kind is DriftKind.NOT_ENCRYPTING


@pytest.mark.parametrize(
    ("encryption", "shown"),
    [
        ({"EncryptionKeyId": NEW_KEY_ID, "Key": CERTIFICATE}, f"key {NEW_KEY_ID}"),
        (
            {"EncryptionKeyId": "$.Attributes.KeyId", "Key": "$.Attributes.Certificate"},
            "dynamic key reference $.Attributes.KeyId",
        ),
    ],
)
def test_drift_a_new_encrypting_block_is_not_managed(
    encryption: dict[str, str], shown: str
) -> None:
    text = edited(
        "payment-flow",
        "expiry-date",
        lambda a: a["Parameters"].__setitem__("InputEncryption", encryption),
    )
    (drift,) = flow_drift(ref("payment-flow"), text, {"card-number"}, FIXTURE_KEY_ID)
    assert drift.kind is DriftKind.UNMANAGED
    assert str(drift).startswith(f"flow payment-flow block expiry-date: encrypts with {shown}")
    assert "--encrypt-block payment-flow:expiry-date" in str(drift)


def test_drift_without_a_current_key_still_sees_unmanaged_blocks() -> None:
    found = flow_drift(ref("payment-module"), content("payment-module"), {"card-number"}, None)
    assert [(d.identifier, d.kind) for d in found] == [("bank-account", DriftKind.UNMANAGED)]


# -- the instance record ------------------------------------------------------------------------

LEGACY_JSON = '{"flows": ["payment-flow"], "instance_id": "i-1", "modules": ["payment-module"]}'


def test_a_legacy_record_reads_and_writes_unchanged() -> None:
    instance = ManagedInstance.from_json(LEGACY_JSON)
    assert instance.blocks is None
    assert instance.to_json() == LEGACY_JSON


def test_a_legacy_record_manages_every_static_block() -> None:
    instance = ManagedInstance.from_json(LEGACY_JSON)
    module = ref("payment-module", FlowKind.MODULE)
    assert instance.recorded_blocks(module) is None
    assert instance.managed_identifiers(module, content("payment-module")) == [
        "card-number",
        "bank-account",
    ]
    assert instance.managed_identifiers(ref("payment-flow"), content("payment-flow")) == [
        "card-number"
    ]


def test_a_record_with_blocks_round_trips() -> None:
    module = ref("payment-module", FlowKind.MODULE)
    blocks = (
        ManagedBlock(ref("payment-flow"), "card-number"),
        ManagedBlock(module, "bank-account"),
    )
    instance = ManagedInstance("i-1", ("payment-flow",), ("payment-module",), blocks)
    again = ManagedInstance.from_json(instance.to_json())
    assert again == instance
    # Recorded blocks win over what the flow holds: card-number encrypts but is not recorded.
    assert again.managed_identifiers(module, content("payment-module")) == ["bank-account"]
    assert json.loads(instance.to_json())["blocks"][1] == {
        "kind": "module",
        "flow_id": "payment-module",
        "identifier": "bank-account",
    }


def test_a_block_outside_the_managed_flows_is_refused() -> None:
    with pytest.raises(ValueError, match="flow other"):
        ManagedInstance("i-1", ("payment-flow",), (), (ManagedBlock(ref("other"), "card"),))


@pytest.mark.parametrize(
    "blocks",
    [
        [{"kind": "flow", "flow_id": "payment-flow"}],
        [{"kind": "queue", "flow_id": "payment-flow", "identifier": "card-number"}],
        [{"kind": "flow", "flow_id": "payment-flow", "identifier": 7}],
        [{"kind": "flow", "flow_id": "elsewhere", "identifier": "card-number"}],
        "card-number",
    ],
)
def test_an_unreadable_blocks_record_is_a_keyring_error(blocks: Any) -> None:
    raw = json.dumps({"instance_id": "i-1", "flows": ["payment-flow"], "blocks": blocks})
    with pytest.raises(KeyringError, match="instance record is not readable"):
        ManagedInstance.from_json(raw)
