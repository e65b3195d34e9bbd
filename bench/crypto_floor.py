"""The cost floor of one Connect decrypt: the message's cryptography alone, on cryptography."""

from __future__ import annotations

import base64
import io
import struct
from dataclasses import dataclass

from aws_encryption_sdk.identifiers import ContentAADString
from aws_encryption_sdk.internal.formatting.deserialize import (
    deserialize_frame,
    deserialize_header,
    deserialize_header_auth,
)
from aws_encryption_sdk.internal.structures import MessageFrameBody
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SIGNER_KEY_CONTEXT = "aws-crypto-public-key"
DATA_KEY_BYTES = 32
RSA_OAEP_SHA512 = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA512()), algorithm=hashes.SHA512(), label=None
)
ECDSA_P384_PREHASHED = ec.ECDSA(utils.Prehashed(hashes.SHA384()))


@dataclass(frozen=True)
class SealedFrame:
    """One body frame: AES-GCM IV, ciphertext with its tag appended, and its AAD."""

    iv: bytes
    ciphertext_and_tag: bytes
    aad: bytes


@dataclass(frozen=True)
class ParsedMessage:
    """Every field the floor's cryptography reads, taken out of the message once."""

    suite_id: int
    message_id: bytes
    encrypted_data_key: bytes
    signer_point: bytes
    raw_header: bytes
    header_iv: bytes
    header_tag: bytes
    frames: tuple[SealedFrame, ...]
    signed_bytes: bytes
    signature: bytes
    total_bytes: int


def parse_message(message: bytes) -> ParsedMessage:
    """Split a v1 framed message with the Encryption SDK's own deserializer (not timed)."""
    stream = io.BytesIO(message)
    header, raw_header = deserialize_header(stream)
    header_auth = deserialize_header_auth(header.version, stream, header.algorithm)
    (data_key,) = header.encrypted_data_keys
    frames = []
    final = False
    while not final:
        frame, final = deserialize_frame(stream, header)
        frames.append(_sealed(header.message_id, frame, final))
    signed_length = stream.tell()
    (signature_length,) = struct.unpack(">H", stream.read(2))
    signature = stream.read(signature_length)
    if len(signature) != signature_length or stream.read():
        raise ValueError("message footer is not one signature")
    return ParsedMessage(
        suite_id=header.algorithm.algorithm_id,
        message_id=header.message_id,
        encrypted_data_key=data_key.encrypted_data_key,
        signer_point=base64.b64decode(header.encryption_context[SIGNER_KEY_CONTEXT]),
        raw_header=raw_header,
        header_iv=header_auth.iv,
        header_tag=header_auth.tag,
        frames=tuple(frames),
        signed_bytes=message[:signed_length],
        signature=signature,
        total_bytes=len(message),
    )


def _sealed(message_id: bytes, frame: MessageFrameBody, final: bool) -> SealedFrame:
    """Body AAD (message format v1): message ID, content string, sequence number, length."""
    content_string = (
        ContentAADString.FINAL_FRAME_STRING_ID if final else ContentAADString.FRAME_STRING_ID
    )
    length_fields = struct.pack(">IQ", frame.sequence_number, len(frame.ciphertext))
    aad = message_id + content_string.value + length_fields
    return SealedFrame(frame.iv, frame.ciphertext + frame.tag, aad)


def decrypt_floor(message: ParsedMessage, private_key: rsa.RSAPrivateKey) -> bytes:
    """RSA-OAEP unwrap, ECDSA P-384 verify, HKDF-SHA384, AES-256-GCM: all a decrypt must do."""
    data_key = private_key.decrypt(message.encrypted_data_key, RSA_OAEP_SHA512)
    signer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), message.signer_point)
    digest = hashes.Hash(hashes.SHA384())
    digest.update(message.signed_bytes)
    signer.verify(message.signature, digest.finalize(), ECDSA_P384_PREHASHED)
    derived_key = HKDF(
        algorithm=hashes.SHA384(),
        length=DATA_KEY_BYTES,
        salt=None,
        info=struct.pack(">H16s", message.suite_id, message.message_id),
    ).derive(data_key)
    aead = AESGCM(derived_key)
    aead.decrypt(message.header_iv, message.header_tag, message.raw_header)
    return b"".join(
        aead.decrypt(frame.iv, frame.ciphertext_and_tag, frame.aad) for frame in message.frames
    )
