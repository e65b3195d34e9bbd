"""Property tests of the decrypt Lambda: whatever Connect (or anyone) sends, a flat answer.

The handler runs against moto SSM holding key A and the real Connect vector's key, in a fresh
container. Three families of input: arbitrary JSON-ish events, byte-level mutations of valid
messages, and base64 text shaped like an Encryption SDK message ("AYAD..."). The answer is always
a dict of strings with status "ok" or "error"; an error carries exactly one stable code; a
mutated message never decrypts to a different plaintext and never gets `internal` (which means an
unexpected exception, not a bad message).
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lambda_decrypt.handler import lambda_handler
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.keys import KeyMaterial
from tests.conftest import TEST_CARD, Vector, make_record

KEY_A = "5b7c9d1e-2f3a-4b5c-8d6e-7f8091a2b3c4"
PREFIX = "/connect-keys"
PARAMETER = "card"
STABLE_CODES = frozenset(
    {
        "malformed",
        "truncated",
        "unsupported_suite",
        "wrong_provider",
        "unknown_key",
        "key_destroyed",
        "tampered",
        "too_large",
        "internal",
    }
)
BAD_INPUT_CODES = STABLE_CODES - {"internal"}
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Original:
    name: str
    raw: bytes
    plaintext: str

    @property
    def text(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")


def connect_event(parameters: Any, contact_data: Any = None) -> dict[str, Any]:
    return {
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": contact_data
            if contact_data is not None
            else {"ContactId": "contact-1", "Attributes": {}},
            "Parameters": parameters,
        },
    }


def check_shape(response: Any) -> dict[str, str]:
    """The contract with Connect: a flat map of strings, and a well-formed error."""
    assert isinstance(response, dict)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in response.items()), response
    assert response.get("status") in ("ok", "error"), response
    if response["status"] == "error":
        assert set(response) == {"status", "error"}, response
        assert response["error"] in STABLE_CODES, response
    else:
        assert "error" not in response, response
    return response


def invoke(event: Any) -> dict[str, str]:
    """Call the handler; an exception escaping it fails the property with its type."""
    try:
        response = lambda_handler(event, None)
    except BaseException as error:  # the property is precisely that nothing escapes
        pytest.fail(f"lambda_handler raised {type(error).__name__}: {error}")
    return check_shape(response)


@pytest.fixture
def originals(
    ssm: Any,
    material_a: KeyMaterial,
    real_vector: Vector,
    fresh_container: None,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[Original, ...]:
    """Key A and the real vector's key in the moto keyring; one valid message for each."""
    keyring = SsmKeyring(ssm, PREFIX)
    keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    keyring.create_private_key(real_vector.key_id, real_vector.private_key_pem)
    monkeypatch.setenv("KEYRING_PREFIX", PREFIX)
    generated = encrypt_like_connect(
        TEST_CARD.encode(), key_id=KEY_A, certificate_pem=material_a.certificate_pem
    )
    return (
        Original("generated", base64.b64decode(generated), TEST_CARD),
        Original("connect-real", base64.b64decode(real_vector.ciphertext), "112344567789"),
    )


@pytest.fixture
def configured(originals: tuple[Original, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """Decrypt the named parameter whatever it looks like (no auto-detection to slip past)."""
    monkeypatch.setenv("ENCRYPTED_PARAMETERS", PARAMETER)


# -- positive controls: the fuzzing below runs against a keyring that works -----------------------


def test_valid_messages_decrypt_through_the_handler(originals: tuple[Original, ...]) -> None:
    for original in originals:
        response = invoke(connect_event({PARAMETER: original.text, "lang": "en"}))
        assert response == {"status": "ok", PARAMETER: original.plaintext}


def test_valid_messages_decrypt_with_configured_parameter(
    originals: tuple[Original, ...], configured: None
) -> None:
    for original in originals:
        response = invoke(connect_event({PARAMETER: original.text}))
        assert response == {"status": "ok", PARAMETER: original.plaintext}


# -- 1. arbitrary events ---------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=24)
)


def json_values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=10), children, max_size=4)
        ),
        max_leaves=12,
    )


def events(sdk_strings: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    anything = json_values(scalars)
    with_ciphertexts = json_values(scalars | sdk_strings)
    names = st.sampled_from([PARAMETER, "Card", "status", "error", "x"]) | st.text(max_size=10)
    parameters = st.dictionaries(names, scalars | sdk_strings, max_size=4)
    return st.one_of(
        anything,
        st.dictionaries(st.text(max_size=10), anything, max_size=4),
        st.builds(lambda details: {"Details": details}, with_ciphertexts),
        st.builds(
            lambda p, c: {"Details": {"Parameters": p, "ContactData": c}},
            with_ciphertexts,
            with_ciphertexts,
        ),
        st.builds(connect_event, parameters),
        st.builds(connect_event, parameters, with_ciphertexts),
    )


@FUZZ
@given(data=st.data())
def test_any_event_gets_a_flat_stable_answer(
    originals: tuple[Original, ...], data: st.DataObject
) -> None:
    valid = {original.text: original.plaintext for original in originals}
    sdk_strings = st.sampled_from(sorted(valid)) | st.text(B64_ALPHABET, max_size=200).map(
        lambda s: "AY" + s
    )
    contact_event = data.draw(events(sdk_strings), label="event")

    response = invoke(contact_event)
    event(f"answer: {response.get('error', 'ok')}")

    details = contact_event.get("Details") if isinstance(contact_event, Mapping) else None
    if not isinstance(details, Mapping):
        assert response == {"status": "error", "error": "malformed"}
    if response["status"] == "error":
        # The keyring is healthy: `internal` could only mean an unexpected exception.
        assert response["error"] in BAD_INPUT_CODES, response
    else:
        parameters = details.get("Parameters") if isinstance(details, Mapping) else None
        assert isinstance(parameters, Mapping)
        for name, value in parameters.items():
            if isinstance(value, str) and value in valid and name not in ("status", "error"):
                assert response[name] == valid[value]


# -- 2. mutated valid messages ---------------------------------------------------------------------

POSITION = st.integers(min_value=0, max_value=1 << 16)
BIT_FLIP = st.tuples(st.just("flip"), POSITION, st.integers(min_value=0, max_value=7))
mutations = st.one_of(
    # One flipped bit: the message keeps its structure, so the cryptography has to answer.
    BIT_FLIP.map(lambda operation: [operation]),
    st.lists(
        st.one_of(
            BIT_FLIP,
            st.tuples(st.just("set"), POSITION, st.integers(min_value=0, max_value=255)),
            st.tuples(st.just("insert"), POSITION, st.binary(min_size=1, max_size=8)),
            st.tuples(st.just("delete"), POSITION, st.integers(min_value=1, max_value=32)),
            st.tuples(st.just("truncate"), POSITION),
        ),
        min_size=1,
        max_size=4,
    ),
)
text_mutations = st.one_of(
    st.tuples(st.just("replace"), POSITION, st.sampled_from(B64_ALPHABET + "=")),
    st.tuples(st.just("insert"), POSITION, st.sampled_from([" ", "\n", "=", "A", "é", "\x00"])),
    st.tuples(st.just("delete"), POSITION),
    st.tuples(st.just("pad"), st.sampled_from([" ", "\n", "==", "\t"])),
)
# About half the examples re-encode the mutated bytes cleanly, the rest also damage the text.
maybe_text_mutation = st.sampled_from([("none",)] * 3) | text_mutations


def mutate(raw: bytes, operations: list[tuple[Any, ...]]) -> bytes:
    data = bytearray(raw)
    for operation in operations:
        kind, position = operation[0], operation[1] % (len(data) + 1)
        if kind == "flip" and position < len(data):
            data[position] ^= 1 << operation[2]
        elif kind == "set" and position < len(data):
            data[position] = operation[2]
        elif kind == "insert":
            data[position:position] = operation[2]
        elif kind == "delete":
            del data[position : position + operation[2]]
        elif kind == "truncate":
            del data[position:]
    return bytes(data)


def mutate_text(text: str, operation: tuple[Any, ...]) -> str:
    kind = operation[0]
    if kind == "none":
        return text
    if kind == "pad":
        return text + str(operation[1])
    position = operation[1] % (len(text) + 1)
    if kind == "replace":
        return text[:position] + str(operation[2]) + text[position + 1 :]
    if kind == "insert":
        return text[:position] + str(operation[2]) + text[position:]
    return text[:position] + text[position + 1 :]


def test_mutation_helpers_change_what_they_say() -> None:
    raw = bytes(range(10))
    assert mutate(raw, [("flip", 3, 0)]) == bytes([0, 1, 2, 2, 4, 5, 6, 7, 8, 9])
    assert mutate(raw, [("insert", 2, b"\xff")]) == bytes([0, 1, 0xFF, *range(2, 10)])
    assert mutate(raw, [("delete", 8, 5)]) == bytes(range(8))
    assert mutate(raw, [("truncate", 4)]) == bytes(range(4))
    assert mutate(raw, [("set", 11 + 3, 7)]) == bytes([0, 1, 2, 7, 4, 5, 6, 7, 8, 9])
    assert mutate_text("ABCD", ("replace", 1, "x")) == "AxCD"
    assert mutate_text("ABCD", ("delete", 0)) == "BCD"
    assert mutate_text("ABCD", ("pad", "\n")) == "ABCD\n"


@FUZZ
@given(
    which=st.integers(min_value=0, max_value=1),
    operations=mutations,
    text_operation=maybe_text_mutation,
)
def test_mutated_message_never_decrypts_to_something_else(
    originals: tuple[Original, ...],
    configured: None,
    which: int,
    operations: list[tuple[Any, ...]],
    text_operation: tuple[Any, ...],
) -> None:
    original = originals[which]
    mutated = mutate(original.raw, operations)
    text = mutate_text(base64.b64encode(mutated).decode("ascii"), text_operation)

    response = invoke(connect_event({PARAMETER: text}))
    event(f"answer: {response.get('error', 'ok')}")

    if response["status"] == "ok":
        assert response == {"status": "ok", PARAMETER: original.plaintext}
    else:
        assert response["error"] in BAD_INPUT_CODES, (original.name, operations, text_operation)


# -- 3. base64 text shaped like an SDK message -----------------------------------------------------


def _sized(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


def plausible_message(
    message_id: bytes, key_id: bytes, provider: bytes, data_key: bytes, rest: bytes | None
) -> bytes:
    """A v1 / 0x0378 header that passes the first checks. `rest` None: a structurally complete
    message (header auth, one final frame, a signature) of random bytes, which reaches the key
    lookup and the cryptography; otherwise the header followed by `rest`."""
    context = struct.pack(">H", 1) + _sized(b"aws-crypto-public-key") + _sized(b"A" * 68)
    header = (
        b"\x01\x80\x03\x78"
        + message_id
        + _sized(context)
        + struct.pack(">H", 1)
        + _sized(provider)
        + _sized(key_id)
        + _sized(data_key)
        + b"\x02\x00\x00\x00\x00\x0c"
        + struct.pack(">I", 4096)
    )
    if rest is not None:
        return header + rest
    content = message_id[:12]
    final_frame = (
        struct.pack(">II", 0xFFFFFFFF, 1)
        + bytes(12)
        + struct.pack(">I", len(content))
        + content
        + bytes(16)
    )
    return header + bytes(28) + final_frame + _sized(b"\x30" + message_id + data_key[:50])


@FUZZ
@given(data=st.data())
def test_text_shaped_like_an_sdk_message_gets_a_stable_error(
    originals: tuple[Original, ...], configured: None, data: st.DataObject
) -> None:
    key_ids = st.sampled_from([KEY_A.encode(), b"a5ecd749-4bd8-4a94-bfde-27eefe4f12b1"]) | (
        st.text("0123456789abcdef-", min_size=1, max_size=40).map(str.encode)
    )
    shaped = st.one_of(
        st.text(B64_ALPHABET, max_size=1500).map(lambda s: "AYAD" + s),
        st.text(B64_ALPHABET, max_size=1500).map(lambda s: "AYAD" + s + "=" * (-len(s) % 4)),
        st.binary(max_size=1200).map(
            lambda b: base64.b64encode(b"\x01\x80\x03" + b).decode("ascii")
        ),
        st.builds(
            plausible_message,
            st.binary(min_size=16, max_size=16),
            key_ids,
            st.sampled_from([b"AmazonConnect", b"aws-kms"]),
            st.binary(min_size=1, max_size=600),
            st.binary(max_size=300),
        ).map(lambda b: base64.b64encode(b).decode("ascii")),
        st.builds(
            plausible_message,
            st.binary(min_size=16, max_size=16),
            key_ids,
            st.just(b"AmazonConnect"),
            st.binary(min_size=1, max_size=600),
            st.none(),
        ).map(lambda b: base64.b64encode(b).decode("ascii")),
    )
    text = data.draw(shaped, label="text")
    assert text.startswith("AYAD")

    response = invoke(connect_event({PARAMETER: text}))
    event(f"answer: {response.get('error', 'ok')}")

    assert response["status"] == "error"
    assert response["error"] in BAD_INPUT_CODES, response
