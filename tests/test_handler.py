"""The decrypt Lambda against moto SSM: several keys per container, caching, response modes."""

from __future__ import annotations

from typing import Any

import pytest

import lambda_decrypt
from lambda_decrypt import handler, keyring
from lambda_decrypt.handler import lambda_handler, luhn_valid
from lambda_decrypt.keyring import default_ssm_client as keyring_default_client
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import KeyState
from tests.conftest import NOW, TEST_CARD, Vector, make_record

KEY_A = "11111111-1111-4111-8111-111111111111"
KEY_B = "22222222-2222-4222-8222-222222222222"


def event(parameters: dict[str, Any], attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {"ContactId": "contact-1", "Attributes": attributes or {}},
            "Parameters": parameters,
        },
    }


class CallCounter:
    """Counts the SSM calls made by every client the keyring reader creates."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def factory(self, timeout_seconds: float = 1.0) -> Any:
        client = keyring_default_client(timeout_seconds)
        client.meta.events.register(
            "before-call.ssm.*", lambda model, **_: self.calls.append(model.name)
        )
        return client


@pytest.fixture
def ssm_calls(monkeypatch: pytest.MonkeyPatch) -> CallCounter:
    counter = CallCounter()
    monkeypatch.setattr(keyring, "default_ssm_client", counter.factory)
    return counter


@pytest.fixture
def two_keys(
    ssm: Any,
    material_a: KeyMaterial,
    material_b: KeyMaterial,
    real_vector: Vector,
    fresh_container: None,
    monkeypatch: pytest.MonkeyPatch,
) -> SsmKeyring:
    """Key A (previous) and key B (active) for one instance, plus the real Connect vector's key."""
    store = SsmKeyring(ssm, "/connect-keys")
    store.store_key(KEY_A, material_a, make_record(KEY_A, material_a, state=KeyState.PREVIOUS))
    store.store_key(KEY_B, material_b, make_record(KEY_B, material_b))
    store.create_private_key(real_vector.key_id, real_vector.private_key_pem)
    monkeypatch.setenv("KEYRING_PREFIX", "/connect-keys")
    return store


def encrypt(material: KeyMaterial, key_id: str, plaintext: str = TEST_CARD) -> str:
    return encrypt_like_connect(
        plaintext.encode(), key_id=key_id, certificate_pem=material.certificate_pem
    )


def test_two_keys_decrypt_in_one_container_and_warm_calls_skip_ssm(
    two_keys: SsmKeyring,
    material_a: KeyMaterial,
    material_b: KeyMaterial,
    real_vector: Vector,
    ssm_calls: CallCounter,
) -> None:
    old = event({"Card": encrypt(material_a, KEY_A, "4000056655665556")})
    new = event({"Card": encrypt(material_b, KEY_B)})
    real = event({"Card": real_vector.ciphertext})

    assert lambda_handler(old, None) == {"status": "ok", "Card": "4000056655665556"}
    assert lambda_handler(new, None) == {"status": "ok", "Card": TEST_CARD}
    assert lambda_handler(real, None) == {"status": "ok", "Card": "112344567789"}
    assert ssm_calls.calls == ["GetParameters"] * 3  # one load per key, nothing else

    for _ in range(5):
        assert lambda_handler(old, None)["Card"] == "4000056655665556"
        assert lambda_handler(new, None)["Card"] == TEST_CARD
        assert lambda_handler(real, None)["Card"] == "112344567789"
    assert len(ssm_calls.calls) == 3


def test_unknown_key_is_answered_and_negatively_cached(
    two_keys: SsmKeyring, material_a: KeyMaterial, ssm_calls: CallCounter
) -> None:
    stranger = event({"Card": encrypt(material_a, "33333333-3333-4333-8333-333333333333")})
    for _ in range(20):
        assert lambda_handler(stranger, None) == {"status": "error", "error": "unknown_key"}
    assert ssm_calls.calls == ["GetParameters"]


def test_blog_truncated_vector_gets_a_stable_error(
    two_keys: SsmKeyring, blog_truncated: str, ssm_calls: CallCounter
) -> None:
    assert lambda_handler(event({"Card": blog_truncated}), None) == {
        "status": "error",
        "error": "truncated",
    }
    assert ssm_calls.calls == []  # refused on structure, before any key lookup


def test_destroyed_key_answers_key_destroyed(
    two_keys: SsmKeyring, ssm: Any, material_a: KeyMaterial
) -> None:
    destroyed = make_record(KEY_A, material_a, state=KeyState.RETIRED).transition(
        KeyState.DESTROYED, at=NOW, actor="test", reason="retention over"
    )
    ssm.delete_parameter(Name=two_keys.layout.private_key(KEY_A))
    two_keys.put_record(destroyed)
    answer = lambda_handler(event({"Card": encrypt(material_a, KEY_A)}), None)
    assert answer == {"status": "error", "error": "key_destroyed"}


def test_only_configured_parameters_and_attributes_are_decrypted(
    two_keys: SsmKeyring, material_b: KeyMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENCRYPTED_PARAMETERS", "Card")
    monkeypatch.setenv("DECRYPT_ATTRIBUTES", "Ssn")
    answer = lambda_handler(
        event(
            {"Card": encrypt(material_b, KEY_B), "Other": encrypt(material_b, KEY_B, "9")},
            {"Ssn": encrypt(material_b, KEY_B, "078051120"), "Lang": "en"},
        ),
        None,
    )
    assert answer == {"status": "ok", "Card": TEST_CARD, "Ssn": "078051120"}


def test_configured_parameter_missing_is_malformed(
    two_keys: SsmKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENCRYPTED_PARAMETERS", "Card")
    assert lambda_handler(event({"Other": "x"}), None) == {"status": "error", "error": "malformed"}


def test_plain_parameters_pass_untouched_and_an_event_without_ciphertext_is_malformed(
    two_keys: SsmKeyring, material_b: KeyMaterial
) -> None:
    plain = {"Agent": "AgentSmith", "Lang": "en-US", "Amount": "12.50"}
    assert lambda_handler(event(plain), None) == {"status": "error", "error": "malformed"}
    mixed = lambda_handler(event({**plain, "Card": encrypt(material_b, KEY_B)}), None)
    assert mixed == {"status": "ok", "Card": TEST_CARD}


def test_one_bad_value_fails_the_whole_answer_without_leaking_the_good_one(
    two_keys: SsmKeyring, material_b: KeyMaterial
) -> None:
    good = encrypt(material_b, KEY_B)
    bad = good[:-40] + "A" * 40
    answer = lambda_handler(event({"Card": good, "Cvv": bad}), None)
    assert answer["status"] == "error"
    assert TEST_CARD not in answer.values()


def test_masked_mode_returns_no_plaintext(
    two_keys: SsmKeyring, material_b: KeyMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESPONSE_MODE", "masked")
    answer = lambda_handler(event({"Card": encrypt(material_b, KEY_B)}), None)
    assert answer == {
        "status": "ok",
        "CardLast4": "1111",
        "CardLength": "16",
        "CardLuhnValid": "true",
    }
    assert TEST_CARD not in "".join(answer.values())


def test_bad_configuration_answers_internal_instead_of_raising(
    two_keys: SsmKeyring, material_b: KeyMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESPONSE_MODE", "loud")
    answer = lambda_handler(event({"Card": encrypt(material_b, KEY_B)}), None)
    assert answer == {"status": "error", "error": "internal"}


@pytest.mark.parametrize(
    "bad_event",
    [None, "text", 42, [], {}, {"Details": None}, {"Details": {"Parameters": "x"}}],
)
def test_events_that_are_not_connect_events_are_malformed(bad_event: Any) -> None:
    handler.reset_container()
    assert lambda_handler(bad_event, None) == {"status": "error", "error": "malformed"}


@pytest.mark.parametrize(
    ("digits", "valid"),
    [("4111111111111111", True), ("4111111111111112", False), ("79927398713", True), ("0", False)],
)
def test_luhn(digits: str, valid: bool) -> None:
    assert luhn_valid(digits) is valid


def test_library_decrypt_uses_the_keyring_from_the_environment(
    two_keys: SsmKeyring, material_a: KeyMaterial, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lambda_decrypt, "_default", None)
    decrypted = lambda_decrypt.decrypt(encrypt(material_a, KEY_A))
    assert (decrypted.key_id, decrypted.plaintext) == (KEY_A, TEST_CARD.encode())
