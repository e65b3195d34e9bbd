"""Adversarial ciphertexts against the decrypt library: every stable error code, precisely.

Messages are made exactly as Connect makes them (`encrypt_like_connect`) or taken from Connect
itself (the real vector), then mutated at the byte level or re-serialized field by field with
`SdkMessage` (Encryption SDK message format v1: header, header authentication, framed body,
footer). Each refusal asserts the exact `DecryptError` subclass and its `code`, and, where the
structure alone condemns the message, that the key source was never asked.
"""

from __future__ import annotations

import base64
import random
import struct
import warnings
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aws_encryption_sdk import CommitmentPolicy, EncryptionSDKClient
from aws_encryption_sdk.identifiers import Algorithm, EncryptionKeyType
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKey
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lambda_decrypt import ConnectKey, Decrypted, DecryptError, Decryptor, StaticKeys
from lambda_decrypt.errors import (
    KeyDestroyed,
    MalformedMessage,
    MessageTooLarge,
    TamperedMessage,
    TruncatedMessage,
    UnknownKey,
    UnsupportedSuite,
    WrongProvider,
)
from lambda_decrypt.keyring import KeyringReader
from lambda_decrypt.keys import CONNECT_WRAPPING
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import KeyState
from tests.conftest import TEST_CARD, Vector, make_record

KEY_A = "3f1c2a9e-7b4d-4c1e-9a2b-5d6e7f8a9b0c"
KEY_B = "8e2d4c6b-1a3f-4e5d-8c7b-9a0b1c2d3e4f"
REAL_KEY_ID = "a5ecd749-4bd8-4a94-bfde-27eefe4f12b1"
BLOG_KEY_ID = "d4891de8-030f-4d96-90ab-95a99a40dab8"
PREFIX = "/connect-keys"
FINAL_FRAME = 0xFFFFFFFF
SIGNER_KEY_CONTEXT = b"aws-crypto-public-key"


# -- the message format, re-serializable field by field ------------------------------------------


def _sized(value: bytes) -> bytes:
    return struct.pack(">H", len(value)) + value


@dataclass(frozen=True)
class Frame:
    sequence: int
    iv: bytes
    content: bytes
    tag: bytes
    final: bool


@dataclass(frozen=True)
class DataKey:
    provider_id: bytes
    provider_info: bytes
    encrypted_key: bytes


@dataclass(frozen=True)
class SdkMessage:
    """An Encryption SDK v1 framed message; `to_bytes()` re-serializes whatever was changed."""

    version: int
    message_type: int
    suite: int
    message_id: bytes
    context: tuple[tuple[bytes, bytes], ...]
    data_keys: tuple[DataKey, ...]
    content_type: int
    reserved: bytes
    iv_length: int
    frame_length: int
    header_auth: bytes
    frames: tuple[Frame, ...]
    signature: bytes

    @classmethod
    def parse(cls, raw: bytes) -> SdkMessage:
        pos = 0

        def take(length: int) -> bytes:
            nonlocal pos
            chunk = raw[pos : pos + length]
            assert len(chunk) == length, "test vector is not a complete message"
            pos += length
            return chunk

        def uint(size: int) -> int:
            return int.from_bytes(take(size), "big")

        def sized() -> bytes:
            return take(uint(2))

        version, message_type, suite = uint(1), uint(1), uint(2)
        message_id = take(16)
        aad = take(uint(2))
        context: list[tuple[bytes, bytes]] = []
        if aad:
            cursor = 2
            for _ in range(int.from_bytes(aad[:2], "big")):
                pair: list[bytes] = []
                for _ in range(2):
                    length = int.from_bytes(aad[cursor : cursor + 2], "big")
                    pair.append(aad[cursor + 2 : cursor + 2 + length])
                    cursor += 2 + length
                context.append((pair[0], pair[1]))
        data_keys = tuple(DataKey(sized(), sized(), sized()) for _ in range(uint(2)))
        content_type, reserved = uint(1), take(4)
        iv_length, frame_length = uint(1), uint(4)
        header_auth = take(12 + 16)
        frames: list[Frame] = []
        while True:
            sequence = uint(4)
            if sequence == FINAL_FRAME:
                sequence, iv = uint(4), take(12)
                content = take(uint(4))
                frames.append(Frame(sequence, iv, content, take(16), final=True))
                break
            frames.append(Frame(sequence, take(12), take(frame_length), take(16), final=False))
        signature = sized()
        assert pos == len(raw), "test vector has bytes after its signature"
        return cls(
            version,
            message_type,
            suite,
            message_id,
            tuple(context),
            data_keys,
            content_type,
            reserved,
            iv_length,
            frame_length,
            header_auth,
            tuple(frames),
            signature,
        )

    def header_body(self) -> bytes:
        aad = b""
        if self.context:
            pairs = b"".join(_sized(k) + _sized(v) for k, v in self.context)
            aad = struct.pack(">H", len(self.context)) + pairs
        keys = b"".join(
            _sized(k.provider_id) + _sized(k.provider_info) + _sized(k.encrypted_key)
            for k in self.data_keys
        )
        return (
            struct.pack(">BBH", self.version, self.message_type, self.suite)
            + self.message_id
            + _sized(aad)
            + struct.pack(">H", len(self.data_keys))
            + keys
            + struct.pack(">B", self.content_type)
            + self.reserved
            + struct.pack(">BI", self.iv_length, self.frame_length)
        )

    def body(self) -> bytes:
        out = b""
        for frame in self.frames:
            if frame.final:
                out += struct.pack(">II", FINAL_FRAME, frame.sequence) + frame.iv
                out += struct.pack(">I", len(frame.content)) + frame.content + frame.tag
            else:
                out += struct.pack(">I", frame.sequence) + frame.iv + frame.content + frame.tag
        return out

    def to_bytes(self) -> bytes:
        return self.header_body() + self.header_auth + self.body() + _sized(self.signature)

    # -- variants ------------------------------------------------------------------------------

    def with_key_id(self, key_id: str | bytes) -> SdkMessage:
        info = key_id.encode("utf-8") if isinstance(key_id, str) else key_id
        return replace(self, data_keys=(replace(self.data_keys[0], provider_info=info),))

    def with_provider(self, provider_id: bytes) -> SdkMessage:
        return replace(self, data_keys=(replace(self.data_keys[0], provider_id=provider_id),))

    def with_signer_key(self, value: bytes) -> SdkMessage:
        context = tuple((k, value if k == SIGNER_KEY_CONTEXT else v) for k, v in self.context)
        assert context != self.context, "no signer key in the encryption context"
        return replace(self, context=context)

    def signer_key(self) -> bytes:
        return dict(self.context)[SIGNER_KEY_CONTEXT]

    def with_final_frame(self, **changes: Any) -> SdkMessage:
        return replace(self, frames=(*self.frames[:-1], replace(self.frames[-1], **changes)))


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[index] ^= mask
    return bytes(changed)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# -- keys, sources and samples -------------------------------------------------------------------


class SpyKeys:
    """A key source that records every key ID it is asked for."""

    def __init__(self, keys: dict[str, ConnectKey]) -> None:
        self.inner = StaticKeys(keys)
        self.requested: list[str] = []

    def get(self, key_id: str) -> ConnectKey:
        self.requested.append(key_id)
        return self.inner.get(key_id)


@dataclass(frozen=True)
class Sample:
    name: str
    raw: bytes
    key_id: str
    plaintext: bytes

    @property
    def text(self) -> str:
        return b64(self.raw)

    @property
    def message(self) -> SdkMessage:
        return SdkMessage.parse(self.raw)


@pytest.fixture(scope="module")
def loaded_keys(
    material_a: KeyMaterial, material_b: KeyMaterial, real_vector: Vector
) -> dict[str, ConnectKey]:
    return {
        KEY_A: ConnectKey.from_pem(KEY_A, material_a.private_key_pem, trusted=False),
        KEY_B: ConnectKey.from_pem(KEY_B, material_b.private_key_pem, trusted=False),
        REAL_KEY_ID: ConnectKey.from_pem(REAL_KEY_ID, real_vector.private_key_pem, trusted=False),
    }


@pytest.fixture
def spy(loaded_keys: dict[str, ConnectKey]) -> SpyKeys:
    return SpyKeys(loaded_keys)


@pytest.fixture
def decryptor(spy: SpyKeys) -> Decryptor:
    return Decryptor(spy)


@pytest.fixture(scope="module")
def sample_a(material_a: KeyMaterial) -> Sample:
    text = encrypt_like_connect(
        TEST_CARD.encode(), key_id=KEY_A, certificate_pem=material_a.certificate_pem
    )
    return Sample("generated", base64.b64decode(text), KEY_A, TEST_CARD.encode())


@pytest.fixture(scope="module")
def sample_b(material_b: KeyMaterial) -> Sample:
    plaintext = b"123-45-6789"
    text = encrypt_like_connect(plaintext, key_id=KEY_B, certificate_pem=material_b.certificate_pem)
    return Sample("generated-b", base64.b64decode(text), KEY_B, plaintext)


@pytest.fixture(scope="module")
def sample_real(real_vector: Vector) -> Sample:
    raw = base64.b64decode(real_vector.ciphertext)
    return Sample("connect-real", raw, real_vector.key_id, real_vector.plaintext)


@pytest.fixture(scope="module")
def sample_multiframe(material_a: KeyMaterial) -> Sample:
    """Two frames: one full 4096-byte frame and a final frame."""
    plaintext = bytes(random.Random(7).randrange(256) for _ in range(5000))
    text = encrypt_like_connect(plaintext, key_id=KEY_A, certificate_pem=material_a.certificate_pem)
    return Sample("multiframe", base64.b64decode(text), KEY_A, plaintext)


@pytest.fixture(scope="module", params=["connect-real", "generated"])
def sample(request: pytest.FixtureRequest) -> Sample:
    """Every tamper case runs on Connect's own message and on one made like Connect's."""
    name = "sample_real" if request.param == "connect-real" else "sample_a"
    value: Sample = request.getfixturevalue(name)
    return value


def refuse(
    decryptor: Decryptor, ciphertext: str | bytes, error: type[DecryptError], code: str
) -> DecryptError:
    """Decrypting must raise exactly `error` (not a subclass, not a sibling) with `code`."""
    with pytest.raises(DecryptError) as caught:
        decryptor.decrypt(ciphertext)
    assert type(caught.value) is error, f"{type(caught.value).__name__}: {caught.value}"
    assert caught.value.code == code
    return caught.value


def encrypt_with_suite(
    plaintext: bytes, *, key_id: str, public_key_pem: str, algorithm: Algorithm
) -> bytes:
    """A genuine SDK message for the key, in any suite (committing suites give format v2)."""
    policy = (
        CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        if algorithm.is_committing()
        else CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT
    )
    master_key = RawMasterKey(
        provider_id="AmazonConnect",
        key_id=key_id.encode("utf-8"),
        wrapping_key=WrappingKey(
            wrapping_algorithm=CONNECT_WRAPPING,
            wrapping_key=public_key_pem.encode("ascii"),
            wrapping_key_type=EncryptionKeyType.PUBLIC,
        ),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ciphertext, _ = EncryptionSDKClient(commitment_policy=policy).encrypt(
            source=plaintext, key_provider=master_key, algorithm=algorithm, frame_length=4096
        )
    assert isinstance(ciphertext, bytes)
    return ciphertext


# -- what must decrypt -----------------------------------------------------------------------------


def test_real_connect_vector_decrypts_despite_its_expired_certificate(
    real_vector: Vector, decryptor: Decryptor, spy: SpyKeys
) -> None:
    certificate = x509.load_pem_x509_certificate(real_vector.certificate_pem.encode("ascii"))
    assert certificate.not_valid_after_utc < datetime.now(UTC)
    decrypted = decryptor.decrypt(real_vector.ciphertext)
    assert decrypted.plaintext == b"112344567789"
    assert decrypted.key_id == REAL_KEY_ID
    assert spy.requested == [REAL_KEY_ID]


def test_each_key_decrypts_its_own_message_in_one_decryptor(
    loaded_keys: dict[str, ConnectKey], sample_a: Sample, sample_b: Sample, sample_real: Sample
) -> None:
    decryptor = Decryptor(StaticKeys(loaded_keys))
    for sample in (sample_a, sample_b, sample_real):
        for ciphertext in (sample.text, sample.raw):
            decrypted = decryptor.decrypt(ciphertext)
            assert (decrypted.key_id, decrypted.plaintext) == (sample.key_id, sample.plaintext)


def test_multiframe_message_decrypts(decryptor: Decryptor, sample_multiframe: Sample) -> None:
    assert len(sample_multiframe.message.frames) == 2
    assert decryptor.decrypt(sample_multiframe.text).plaintext == sample_multiframe.plaintext


def test_decrypted_repr_never_shows_the_plaintext(decryptor: Decryptor, sample_a: Sample) -> None:
    decrypted = decryptor.decrypt(sample_a.text)
    assert decrypted.plaintext == TEST_CARD.encode()
    for shown in (repr(decrypted), str(decrypted), f"{decrypted!r}"):
        assert TEST_CARD not in shown
        assert repr(TEST_CARD.encode()) not in shown
        assert KEY_A in shown
    assert TEST_CARD not in repr(Decrypted(key_id="k", plaintext=TEST_CARD.encode()))


def test_sdk_message_helper_round_trips(sample_real: Sample, sample_multiframe: Sample) -> None:
    """The re-serializer used below is exact, so every variant differs only where intended."""
    for sample in (sample_real, sample_multiframe):
        assert sample.message.to_bytes() == sample.raw


# -- malformed -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "not base64 at all!",
        "AYAD$$$$",
        "AYADeA==\x00",
        "AYADéAAA",
        "AYA",
        "AYADe",
        "====",
    ],
)
def test_not_base64_is_malformed(decryptor: Decryptor, spy: SpyKeys, text: str) -> None:
    refuse(decryptor, text, MalformedMessage, "malformed")
    assert spy.requested == []


def test_valid_message_with_a_non_base64_character_is_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample_a: Sample
) -> None:
    text = sample_a.text
    middle = len(text) // 2
    refuse(decryptor, text[:middle] + "*" + text[middle + 1 :], MalformedMessage, "malformed")
    assert spy.requested == []


@pytest.mark.parametrize("length", [1, 2, 16, 64, 881, 4000])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_base64_of_random_bytes_is_malformed(
    decryptor: Decryptor, spy: SpyKeys, length: int, seed: int
) -> None:
    rng = random.Random(seed * 1000 + length)
    # A first byte of 0x01 or 0x02 would start an SDK header (v1, v2): random, but not those.
    data = bytes([rng.randrange(3, 256)]) + rng.randbytes(length - 1)
    refuse(decryptor, b64(data), MalformedMessage, "malformed")
    refuse(decryptor, data, MalformedMessage, "malformed")
    assert spy.requested == []


@pytest.mark.parametrize("empty", ["", "   ", "\n", b""], ids=["str", "spaces", "newline", "bytes"])
def test_empty_input_is_malformed(decryptor: Decryptor, spy: SpyKeys, empty: str | bytes) -> None:
    """No message at all is not a message cut short."""
    refuse(decryptor, empty, MalformedMessage, "malformed")
    assert spy.requested == []


@pytest.mark.parametrize("version", [0x00, 0x03, 0x41, 0x80, 0xFF])
def test_wrong_version_byte_is_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample, version: int
) -> None:
    refuse(decryptor, b64(bytes([version]) + sample.raw[1:]), MalformedMessage, "malformed")
    assert spy.requested == []


@pytest.mark.parametrize("message_type", [0x00, 0x01, 0x7F, 0x81, 0xFF])
def test_wrong_type_byte_is_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample, message_type: int
) -> None:
    raw = replace(sample.message, message_type=message_type).to_bytes()
    refuse(decryptor, b64(raw), MalformedMessage, "malformed")
    assert spy.requested == []


def test_no_encrypted_data_key_is_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample
) -> None:
    raw = replace(sample.message, data_keys=()).to_bytes()
    refuse(decryptor, b64(raw), MalformedMessage, "malformed")
    assert spy.requested == []


@pytest.mark.parametrize("second", ["same", "other-key", "other-provider"])
def test_two_encrypted_data_keys_are_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample, second: str
) -> None:
    first = sample.message.data_keys[0]
    extra = {
        "same": first,
        "other-key": replace(first, provider_info=KEY_B.encode()),
        "other-provider": replace(first, provider_id=b"aws-kms"),
    }[second]
    raw = replace(sample.message, data_keys=(first, extra)).to_bytes()
    refuse(decryptor, b64(raw), MalformedMessage, "malformed")
    assert spy.requested == []


@pytest.mark.parametrize("content_type", [0x00, 0x01, 0x03, 0xFF])
def test_non_framed_content_type_is_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample, content_type: int
) -> None:
    raw = replace(sample.message, content_type=content_type).to_bytes()
    refuse(decryptor, b64(raw), MalformedMessage, "malformed")
    assert spy.requested == []


@pytest.mark.parametrize(
    "changes",
    [
        {"reserved": b"\x00\x00\x00\x01"},
        {"iv_length": 16},
        {"iv_length": 0},
        {"frame_length": 0},
    ],
    ids=["reserved-not-zero", "iv-length-16", "iv-length-0", "frame-length-0"],
)
def test_inconsistent_header_fields_are_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample, changes: dict[str, Any]
) -> None:
    raw = replace(sample.message, **changes).to_bytes()
    refuse(decryptor, b64(raw), MalformedMessage, "malformed")
    assert spy.requested == []


@pytest.mark.parametrize("sequence", [0, 2, 0xFFFFFFFE])
def test_final_frame_out_of_sequence_is_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample, sequence: int
) -> None:
    raw = sample.message.with_final_frame(sequence=sequence).to_bytes()
    refuse(decryptor, b64(raw), MalformedMessage, "malformed")
    assert spy.requested == []


def test_frames_in_the_wrong_order_are_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample_multiframe: Sample
) -> None:
    message = sample_multiframe.message
    first, final = message.frames
    swapped = replace(message, frames=(replace(first, sequence=2), replace(final, sequence=1)))
    refuse(decryptor, swapped.to_bytes(), MalformedMessage, "malformed")
    assert spy.requested == []


def test_final_frame_longer_than_the_frame_length_is_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample
) -> None:
    raw = replace(sample.message, frame_length=len(sample.message.frames[-1].content) - 1)
    refuse(decryptor, raw.to_bytes(), MalformedMessage, "malformed")
    assert spy.requested == []


@pytest.mark.parametrize("garbage", [b"\x00", b"\xff" * 16, b"AYAD", b"\x00\x00"])
def test_trailing_garbage_after_the_signature_is_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample, garbage: bytes
) -> None:
    refuse(decryptor, b64(sample.raw + garbage), MalformedMessage, "malformed")
    refuse(decryptor, sample.raw + garbage, MalformedMessage, "malformed")
    assert spy.requested == []


def test_a_second_message_appended_is_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample_a: Sample, sample_b: Sample
) -> None:
    refuse(decryptor, b64(sample_a.raw + sample_b.raw), MalformedMessage, "malformed")
    assert spy.requested == []


@pytest.mark.parametrize(
    "key_id",
    [
        f"../{KEY_A}",
        f"{KEY_A}/../{KEY_B}",
        f"{KEY_A}/private-key",
        "/connect-keys/keys/x",
        "..",
        ".",
        "..\\x",
        f"{KEY_A}\x00",
        f"{KEY_A} ",
    ],
    ids=[
        "dotdot-slash",
        "embedded-dotdot",
        "sub-parameter",
        "absolute",
        "dotdot",
        "dot",
        "backslash",
        "nul",
        "space",
    ],
)
def test_path_escaping_key_id_is_refused_before_any_lookup(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample, key_id: str
) -> None:
    raw = sample.message.with_key_id(key_id).to_bytes()
    refuse(decryptor, b64(raw), MalformedMessage, "malformed")
    assert spy.requested == []


@pytest.mark.parametrize(
    "info",
    [b"", b"\xff\xfe", b"a" * 129, "ключ".encode()],
    ids=["empty", "not-utf8", "too-long", "non-ascii"],
)
def test_unusable_key_id_is_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample, info: bytes
) -> None:
    raw = sample.message.with_key_id(info).to_bytes()
    refuse(decryptor, b64(raw), MalformedMessage, "malformed")
    assert spy.requested == []


def test_empty_encrypted_data_key_is_malformed(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample
) -> None:
    message = sample.message
    data_key = replace(message.data_keys[0], encrypted_key=b"")
    refuse(
        decryptor, replace(message, data_keys=(data_key,)).to_bytes(), MalformedMessage, "malformed"
    )
    assert spy.requested == []


# -- truncated -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sample_real", "sample_a", "sample_multiframe"])
def test_every_prefix_of_a_message_is_truncated(
    request: pytest.FixtureRequest, decryptor: Decryptor, spy: SpyKeys, name: str
) -> None:
    """Every proper, non-empty prefix: the structure of a prefix is never inconsistent, only short.

    A prefix holds the same field values as the whole message, so `truncated` is the one right
    answer at every offset; the key source is never asked (no SSM call for a cut message).
    """
    sample: Sample = request.getfixturevalue(name)
    wrong = {}
    for length in range(1, len(sample.raw)):
        try:
            decryptor.decrypt(sample.raw[:length])
        except DecryptError as error:
            if type(error) is not TruncatedMessage or error.code != "truncated":
                wrong[length] = f"{type(error).__name__}/{error.code}"
        else:
            wrong[length] = "decrypted"
    assert wrong == {}
    assert spy.requested == []


def test_every_prefix_as_base64_text_is_truncated(
    decryptor: Decryptor, spy: SpyKeys, sample_real: Sample
) -> None:
    wrong = {}
    for length in range(1, len(sample_real.raw)):
        try:
            decryptor.decrypt(b64(sample_real.raw[:length]))
        except TruncatedMessage as error:
            assert error.code == "truncated"
        except DecryptError as error:
            wrong[length] = f"{type(error).__name__}/{error.code}"
        else:
            wrong[length] = "decrypted"
    assert wrong == {}
    assert spy.requested == []


def test_base64_text_cut_at_every_character(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample
) -> None:
    """A cut on a 4-character boundary decodes to a prefix: truncated. A cut inside a base64
    quantum is not valid base64: malformed (a decoder cannot tell it from other bad text), or
    truncated (it is, in fact, a cut). Nothing else, and nothing decrypts."""
    text = sample.text
    unexpected = {}
    for length in range(1, len(text)):
        allowed = {"truncated"} if length % 4 == 0 else {"truncated", "malformed"}
        try:
            decryptor.decrypt(text[:length])
        except DecryptError as error:
            expected_type = type(error) in (TruncatedMessage, MalformedMessage)
            if error.code not in allowed or not expected_type:
                unexpected[length] = f"{type(error).__name__}/{error.code}"
        else:
            unexpected[length] = "decrypted"
    assert unexpected == {}
    assert spy.requested == []


def test_blog_truncated_vector_is_truncated_or_unknown_key(
    blog_truncated: str, decryptor: Decryptor, spy: SpyKeys
) -> None:
    assert BLOG_KEY_ID.encode() in base64.b64decode(blog_truncated)
    with pytest.raises(DecryptError) as caught:
        decryptor.decrypt(blog_truncated)
    assert type(caught.value) in (TruncatedMessage, UnknownKey)
    assert caught.value.code in ("truncated", "unknown_key")
    assert set(spy.requested) <= {BLOG_KEY_ID}


def test_blog_truncated_vector_is_truncated_even_when_its_key_is_known(
    blog_truncated: str, loaded_keys: dict[str, ConnectKey]
) -> None:
    """The cut is found by the structure check, before the key is fetched or used."""
    spy = SpyKeys({BLOG_KEY_ID: loaded_keys[KEY_A]})
    refuse(Decryptor(spy), blog_truncated, TruncatedMessage, "truncated")
    assert spy.requested == []


@pytest.mark.parametrize("missing", [1, 2, 16, 17, 103])
def test_signature_cut_short_is_truncated(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample, missing: int
) -> None:
    refuse(decryptor, b64(sample.raw[:-missing]), TruncatedMessage, "truncated")
    assert spy.requested == []


def test_declared_lengths_beyond_the_end_are_truncated(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample
) -> None:
    message = sample.message
    final = message.frames[-1]
    # The final frame claims more content than the message holds (still within the frame length).
    longer = struct.pack(">I", len(final.content) + 1000)
    raw = message.to_bytes()
    header_len = len(message.header_body()) + len(message.header_auth)
    length_at = header_len + 4 + 4 + 12
    assert raw[length_at : length_at + 4] == struct.pack(">I", len(final.content))
    refuse(
        decryptor, raw[:length_at] + longer + raw[length_at + 4 :], TruncatedMessage, "truncated"
    )
    assert spy.requested == []


# -- unsupported suite -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "algorithm",
    [
        Algorithm.AES_128_GCM_IV12_TAG16,
        Algorithm.AES_256_GCM_IV12_TAG16_HKDF_SHA256,
        Algorithm.AES_128_GCM_IV12_TAG16_HKDF_SHA256_ECDSA_P256,
        Algorithm.AES_192_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384,
        Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
        Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384,
    ],
    ids=lambda a: f"0x{a.algorithm_id:04x}",
)
def test_genuine_message_in_another_suite_is_unsupported(
    decryptor: Decryptor, spy: SpyKeys, material_a: KeyMaterial, algorithm: Algorithm
) -> None:
    """Real SDK messages for a key the decryptor holds: refused for their suite, not their key."""
    raw = encrypt_with_suite(
        b"4111", key_id=KEY_A, public_key_pem=material_a.public_key_pem, algorithm=algorithm
    )
    assert raw[0] == (0x02 if algorithm.is_committing() else 0x01)
    refuse(decryptor, b64(raw), UnsupportedSuite, "unsupported_suite")
    assert spy.requested == []


def test_genuine_message_in_connect_suite_decrypts(
    decryptor: Decryptor, material_a: KeyMaterial
) -> None:
    """Control for the test above: the same helper with Connect's suite gives a good message."""
    raw = encrypt_with_suite(
        b"4111",
        key_id=KEY_A,
        public_key_pem=material_a.public_key_pem,
        algorithm=Algorithm.AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384,
    )
    assert decryptor.decrypt(b64(raw)).plaintext == b"4111"


@pytest.mark.parametrize("suite", [0x0014, 0x0178, 0x0214, 0x0578, 0x0478, 0x0346, 0x0000, 0xFFFF])
def test_suite_changed_in_a_connect_header_is_unsupported(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample, suite: int
) -> None:
    """A downgrade attempt: Connect's message with another suite ID written into its header."""
    raw = replace(sample.message, suite=suite).to_bytes()
    refuse(decryptor, b64(raw), UnsupportedSuite, "unsupported_suite")
    assert spy.requested == []


def test_version_2_header_is_unsupported(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample
) -> None:
    raw = replace(sample.message, version=0x02).to_bytes()
    refuse(decryptor, b64(raw), UnsupportedSuite, "unsupported_suite")
    assert spy.requested == []


# -- wrong provider --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "provider",
    [b"AmazonConnecT", b"amazonconnect", b"AmazonConnecX", b"aws-kms", b"AmazonConnect2", b"x"],
    ids=["same-length-case", "lowercase", "same-length", "aws-kms", "longer", "shorter"],
)
def test_other_key_provider_is_wrong_provider(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample, provider: bytes
) -> None:
    raw = sample.message.with_provider(provider).to_bytes()
    refuse(decryptor, b64(raw), WrongProvider, "wrong_provider")
    assert spy.requested == []


def test_same_length_provider_flip_in_place_is_wrong_provider(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample
) -> None:
    at = sample.raw.index(b"AmazonConnect") + len("AmazonConnect") - 1
    refuse(decryptor, b64(flip(sample.raw, at, 0x20)), WrongProvider, "wrong_provider")
    assert spy.requested == []


# -- unknown key -----------------------------------------------------------------------------------


def test_key_id_not_in_the_source_is_unknown_key(
    loaded_keys: dict[str, ConnectKey], sample: Sample
) -> None:
    others = {k: v for k, v in loaded_keys.items() if k != sample.key_id}
    spy = SpyKeys(others)
    refuse(Decryptor(spy), sample.text, UnknownKey, "unknown_key")
    assert spy.requested == [sample.key_id]


def test_empty_source_is_unknown_key(sample: Sample) -> None:
    spy = SpyKeys({})
    refuse(Decryptor(spy), sample.raw, UnknownKey, "unknown_key")
    assert spy.requested == [sample.key_id]


def test_uuid_rewritten_to_an_unknown_key_is_unknown_key(
    decryptor: Decryptor, spy: SpyKeys, sample: Sample
) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    refuse(decryptor, sample.message.with_key_id(unknown).to_bytes(), UnknownKey, "unknown_key")
    assert spy.requested == [unknown]


# -- key destroyed (SSM keyring) -------------------------------------------------------------------


def _reader(ssm: Any) -> KeyringReader:
    return KeyringReader(PREFIX, ssm_client_factory=lambda: ssm)


def test_destroyed_key_with_deleted_private_key_is_key_destroyed(
    ssm: Any, material_a: KeyMaterial, sample_a: Sample
) -> None:
    keyring = SsmKeyring(ssm, PREFIX)
    keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a))
    assert Decryptor(_reader(ssm)).decrypt(sample_a.text).plaintext == sample_a.plaintext

    keyring.put_record(make_record(KEY_A, material_a, state=KeyState.DESTROYED))
    ssm.delete_parameter(Name=keyring.layout.private_key(KEY_A))

    refuse(Decryptor(_reader(ssm)), sample_a.text, KeyDestroyed, "key_destroyed")


def test_destroyed_state_wins_over_a_leftover_private_key(
    ssm: Any, material_a: KeyMaterial, sample_a: Sample
) -> None:
    keyring = SsmKeyring(ssm, PREFIX)
    keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a, state=KeyState.DESTROYED))
    assert keyring.read_private_key_pem(KEY_A) == material_a.private_key_pem
    refuse(Decryptor(_reader(ssm)), sample_a.text, KeyDestroyed, "key_destroyed")


def test_destroyed_answer_is_stable_on_repeat(
    ssm: Any, material_a: KeyMaterial, sample_a: Sample
) -> None:
    keyring = SsmKeyring(ssm, PREFIX)
    keyring.store_key(KEY_A, material_a, make_record(KEY_A, material_a, state=KeyState.DESTROYED))
    ssm.delete_parameter(Name=keyring.layout.private_key(KEY_A))
    decryptor = Decryptor(_reader(ssm))
    for _ in range(3):
        refuse(decryptor, sample_a.text, KeyDestroyed, "key_destroyed")


def test_keyring_without_the_key_is_unknown_key(
    ssm: Any, material_b: KeyMaterial, sample_a: Sample
) -> None:
    SsmKeyring(ssm, PREFIX).store_key(KEY_B, material_b, make_record(KEY_B, material_b))
    refuse(Decryptor(_reader(ssm)), sample_a.text, UnknownKey, "unknown_key")


# -- tampered --------------------------------------------------------------------------------------


def test_bit_flip_in_the_encrypted_data_key_is_tampered(
    decryptor: Decryptor, sample: Sample
) -> None:
    message = sample.message
    data_key = message.data_keys[0]
    for index in (0, len(data_key.encrypted_key) // 2, len(data_key.encrypted_key) - 1):
        changed = replace(data_key, encrypted_key=flip(data_key.encrypted_key, index))
        raw = replace(message, data_keys=(changed,)).to_bytes()
        refuse(decryptor, b64(raw), TamperedMessage, "tampered")


@pytest.mark.parametrize("field", ["content", "tag", "iv"])
def test_bit_flip_in_the_final_frame_is_tampered(
    decryptor: Decryptor, sample: Sample, field: str
) -> None:
    final = sample.message.frames[-1]
    value: bytes = getattr(final, field)
    for index in (0, len(value) - 1):
        raw = sample.message.with_final_frame(**{field: flip(value, index, 0x80)}).to_bytes()
        refuse(decryptor, b64(raw), TamperedMessage, "tampered")


def test_bit_flip_in_a_regular_frame_is_tampered(
    decryptor: Decryptor, sample_multiframe: Sample
) -> None:
    message = sample_multiframe.message
    first = message.frames[0]
    for changed in (
        replace(first, content=flip(first.content, 2048)),
        replace(first, tag=flip(first.tag, 0)),
        replace(first, iv=flip(first.iv, 11)),
    ):
        raw = replace(message, frames=(changed, message.frames[1])).to_bytes()
        refuse(decryptor, raw, TamperedMessage, "tampered")


def test_bit_flip_in_the_signature_is_tampered(decryptor: Decryptor, sample: Sample) -> None:
    signature = sample.message.signature
    for index in (0, 1, len(signature) // 2, len(signature) - 1):
        raw = replace(sample.message, signature=flip(signature, index)).to_bytes()
        refuse(decryptor, b64(raw), TamperedMessage, "tampered")


def test_signature_replaced_by_another_messages_signature_is_tampered(
    decryptor: Decryptor, sample_a: Sample, sample_b: Sample
) -> None:
    raw = replace(sample_a.message, signature=sample_b.message.signature).to_bytes()
    refuse(decryptor, raw, TamperedMessage, "tampered")


def test_bit_flip_in_the_message_id_is_tampered(decryptor: Decryptor, sample: Sample) -> None:
    message_id = sample.message.message_id
    for index in (0, 15):
        raw = replace(sample.message, message_id=flip(message_id, index)).to_bytes()
        refuse(decryptor, b64(raw), TamperedMessage, "tampered")


@pytest.mark.parametrize(
    "index", [0, 11, 12, 27], ids=["iv-first", "iv-last", "tag-first", "tag-last"]
)
def test_bit_flip_in_the_header_authentication_is_tampered(
    decryptor: Decryptor, sample: Sample, index: int
) -> None:
    header_auth = sample.message.header_auth
    raw = replace(sample.message, header_auth=flip(header_auth, index)).to_bytes()
    refuse(decryptor, b64(raw), TamperedMessage, "tampered")


def test_bit_flip_in_the_signing_public_key_is_tampered(
    decryptor: Decryptor, sample: Sample
) -> None:
    """The base64 text of the signer's public key, changed to another base64 character."""
    value = sample.message.signer_key()
    index = next(i for i in range(len(value) // 2, len(value)) if chr(value[i] ^ 0x01).isalnum())
    raw = sample.message.with_signer_key(flip(value, index)).to_bytes()
    refuse(decryptor, b64(raw), TamperedMessage, "tampered")


def test_signing_public_key_replaced_by_another_valid_key_is_tampered(
    decryptor: Decryptor, sample: Sample
) -> None:
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    encoded = base64.b64encode(other.public_bytes(Encoding.X962, PublicFormat.CompressedPoint))
    assert len(encoded) == len(sample.message.signer_key())
    raw = sample.message.with_signer_key(encoded).to_bytes()
    refuse(decryptor, b64(raw), TamperedMessage, "tampered")


def test_message_for_key_a_naming_key_b_is_tampered(
    decryptor: Decryptor, spy: SpyKeys, sample_a: Sample
) -> None:
    """Both keys are held; the header names B, the data key was wrapped for A."""
    raw = sample_a.message.with_key_id(KEY_B).to_bytes()
    refuse(decryptor, b64(raw), TamperedMessage, "tampered")
    assert spy.requested == [KEY_B]


def test_real_vector_naming_another_held_key_is_tampered(
    decryptor: Decryptor, spy: SpyKeys, sample_real: Sample
) -> None:
    raw = sample_real.message.with_key_id(KEY_A).to_bytes()
    refuse(decryptor, raw, TamperedMessage, "tampered")
    assert spy.requested == [KEY_A]


def test_data_key_of_another_message_is_tampered(
    decryptor: Decryptor, sample_a: Sample, material_a: KeyMaterial
) -> None:
    """A's header with the data key of another message for A: it unwraps, but to the wrong key."""
    other = SdkMessage.parse(
        base64.b64decode(
            encrypt_like_connect(
                TEST_CARD.encode(), key_id=KEY_A, certificate_pem=material_a.certificate_pem
            )
        )
    )
    raw = replace(sample_a.message, data_keys=other.data_keys).to_bytes()
    refuse(decryptor, raw, TamperedMessage, "tampered")


def test_low_bit_flip_at_every_offset_never_decrypts(
    decryptor: Decryptor, sample_real: Sample
) -> None:
    """Flip the low bit of each byte of Connect's message: no flip may decrypt, and every answer
    is one of the codes a bad message can get (never a crash, never a different plaintext)."""
    allowed = {
        "malformed",
        "truncated",
        "unsupported_suite",
        "wrong_provider",
        "unknown_key",
        "tampered",
    }
    unexpected = {}
    for index in range(len(sample_real.raw)):
        try:
            decrypted = decryptor.decrypt(flip(sample_real.raw, index))
        except DecryptError as error:
            if error.code not in allowed:
                unexpected[index] = error.code
        else:
            unexpected[index] = f"decrypted {len(decrypted.plaintext)} bytes"
    assert unexpected == {}


# -- too large -------------------------------------------------------------------------------------


def test_oversized_base64_text_is_too_large(decryptor: Decryptor, spy: SpyKeys) -> None:
    cap = decryptor.max_message_bytes
    for text in ("A" * ((cap + 2) // 3 * 4 + 4), "AYAD" * 10_000, "é" * 20_000, "!" * 50_000):
        refuse(decryptor, text, MessageTooLarge, "too_large")
    assert spy.requested == []


def test_oversized_raw_bytes_are_too_large(decryptor: Decryptor, spy: SpyKeys) -> None:
    cap = decryptor.max_message_bytes
    for raw in (b"\x01\x80\x03\x78" + bytes(cap), bytes(cap + 1), b"\xff" * (cap * 4)):
        refuse(decryptor, raw, MessageTooLarge, "too_large")
    assert spy.requested == []


def test_genuine_message_above_the_cap_is_too_large(
    decryptor: Decryptor, spy: SpyKeys, material_a: KeyMaterial
) -> None:
    plaintext = b"x" * (decryptor.max_message_bytes + 1)
    text = encrypt_like_connect(plaintext, key_id=KEY_A, certificate_pem=material_a.certificate_pem)
    refuse(decryptor, text, MessageTooLarge, "too_large")
    refuse(decryptor, base64.b64decode(text), MessageTooLarge, "too_large")
    assert spy.requested == []


def test_cap_is_exact(spy: SpyKeys, sample: Sample) -> None:
    at_cap = Decryptor(spy, max_message_bytes=len(sample.raw))
    assert at_cap.decrypt(sample.text).plaintext == sample.plaintext
    assert at_cap.decrypt(sample.raw).plaintext == sample.plaintext
    spy.requested.clear()
    below = Decryptor(spy, max_message_bytes=len(sample.raw) - 1)
    refuse(below, sample.text, MessageTooLarge, "too_large")
    refuse(below, sample.raw, MessageTooLarge, "too_large")
    assert spy.requested == []


# -- no secret in any refusal ----------------------------------------------------------------------


def test_refusals_never_carry_the_plaintext(decryptor: Decryptor, sample_a: Sample) -> None:
    message = sample_a.message
    variants = (
        replace(message, signature=flip(message.signature, 5)).to_bytes(),
        message.with_final_frame(tag=flip(message.frames[-1].tag, 3)).to_bytes(),
        message.with_key_id(KEY_B).to_bytes(),
        sample_a.raw[:-1],
    )
    for raw in variants:
        with pytest.raises(DecryptError) as caught:
            decryptor.decrypt(raw)
        assert TEST_CARD not in str(caught.value)
        assert TEST_CARD not in repr(caught.value)
