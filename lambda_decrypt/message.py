"""Read an Encryption SDK message's header and check its framing before any key is touched.

This is parsing, not cryptography: it finds the key ID (which sits in the header in clear
text), refuses everything Connect never sends, and detects truncation, so that a bad message
never costs an SSM call or an RSA operation. The Encryption SDK then does the decryption.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from lambda_decrypt.errors import (
    MalformedMessage,
    MessageTooLarge,
    TruncatedMessage,
    UnsupportedSuite,
    WrongProvider,
)

CONNECT_PROVIDER_ID = "AmazonConnect"
# AES-256-GCM, HKDF-SHA384, ECDSA P-384: the only suite Connect uses.
CONNECT_SUITE_ID = 0x0378
MESSAGE_FORMAT_V1 = 0x01
CUSTOMER_AE_DATA = 0x80
FRAMED_CONTENT = 0x02
GCM_IV_LENGTH = 12
GCM_TAG_LENGTH = 16
FINAL_FRAME_MARKER = 0xFFFFFFFF
# Connect's key IDs are UUIDs; anything that could escape the keyring path is refused.
KEY_ID_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
MAX_KEY_ID_LENGTH = 128


@dataclass(frozen=True)
class ConnectHeader:
    """What the decryptor needs to know about a message before choosing a key."""

    key_id: str
    suite_id: int
    frame_length: int
    message_bytes: int


class _Reader:
    """A cursor over bytes whose every read reports truncation as such."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, length: int, what: str) -> bytes:
        end = self.offset + length
        if end > len(self.data):
            raise TruncatedMessage(f"message ends inside the {what}")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def uint(self, size: int, what: str) -> int:
        fmt = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}[size]
        value: int = struct.unpack(fmt, self.take(size, what))[0]
        return value

    def skip(self, length: int, what: str) -> None:
        self.take(length, what)

    def sized(self, what: str) -> bytes:
        return self.take(self.uint(2, f"{what} length"), what)


def decode_base64(value: str | bytes, max_message_bytes: int) -> bytes:
    """Decode Connect's base64 text, refusing oversized input before decoding it."""
    text = value.encode("ascii", "replace") if isinstance(value, str) else value
    text = text.strip()
    if len(text) > (max_message_bytes + 2) // 3 * 4:
        raise MessageTooLarge(
            f"input is {len(text)} base64 characters, cap is {max_message_bytes} bytes"
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedMessage("input is not valid base64") from None


def read_header(message: bytes, max_message_bytes: int) -> ConnectHeader:
    """Parse and check a whole message's structure (header, frames, footer) without decrypting."""
    if len(message) > max_message_bytes:
        raise MessageTooLarge(f"message is {len(message)} bytes, cap is {max_message_bytes}")
    if not message:
        raise MalformedMessage("input is empty")
    reader = _Reader(message)
    version = reader.uint(1, "version")
    if version != MESSAGE_FORMAT_V1:
        if version == 0x02:
            raise UnsupportedSuite("message format version 2 is not what Connect sends")
        raise MalformedMessage("not an Encryption SDK message (unknown version byte)")
    if reader.uint(1, "message type") != CUSTOMER_AE_DATA:
        raise MalformedMessage("not an Encryption SDK message (unknown message type)")
    suite_id = reader.uint(2, "algorithm suite")
    if suite_id != CONNECT_SUITE_ID:
        raise UnsupportedSuite(f"algorithm suite 0x{suite_id:04x} is not Connect's 0x0378")
    reader.skip(16, "message ID")
    _skip_encryption_context(reader)
    key_id = _read_single_data_key(reader)
    if reader.uint(1, "content type") != FRAMED_CONTENT:
        raise MalformedMessage("body is not framed, Connect always frames")
    if reader.take(4, "reserved field") != b"\x00\x00\x00\x00":
        raise MalformedMessage("reserved header field is not zero")
    if reader.uint(1, "IV length") != GCM_IV_LENGTH:
        raise MalformedMessage("IV length does not match the suite")
    frame_length = reader.uint(4, "frame length")
    if frame_length == 0:
        raise MalformedMessage("frame length is zero")
    reader.skip(GCM_IV_LENGTH + GCM_TAG_LENGTH, "header authentication")
    _skip_frames(reader, frame_length)
    reader.skip(reader.uint(2, "signature length"), "signature")
    if reader.offset != len(message):
        raise MalformedMessage("bytes follow the end of the message")
    return ConnectHeader(key_id, suite_id, frame_length, len(message))


def _skip_encryption_context(reader: _Reader) -> None:
    context_length = reader.uint(2, "encryption context length")
    if context_length == 0:
        return
    context = _Reader(reader.take(context_length, "encryption context"))
    for _ in range(context.uint(2, "encryption context count")):
        context.sized("encryption context key")
        context.sized("encryption context value")
    if context.offset != context_length:
        raise MalformedMessage("encryption context length does not match its content")


def _read_single_data_key(reader: _Reader) -> str:
    count = reader.uint(2, "encrypted data key count")
    if count != 1:
        raise MalformedMessage(f"message carries {count} encrypted data keys, Connect sends one")
    try:
        provider_id = reader.sized("key provider ID").decode("utf-8")
        key_id = reader.sized("key provider info").decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage("key provider fields are not UTF-8") from None
    if not reader.sized("encrypted data key"):
        raise MalformedMessage("encrypted data key is empty")
    if provider_id != CONNECT_PROVIDER_ID:
        raise WrongProvider("data key provider is not AmazonConnect")
    if not is_valid_key_id(key_id):
        raise MalformedMessage("key ID in the header is not a valid key ID")
    return key_id


def is_valid_key_id(key_id: str) -> bool:
    """Key IDs are one SSM path segment: letters, digits, '-', '_', '.' (not '.' or '..')."""
    return (
        0 < len(key_id) <= MAX_KEY_ID_LENGTH
        and set(key_id) <= KEY_ID_ALPHABET
        and key_id not in (".", "..")
    )


def _skip_frames(reader: _Reader, frame_length: int) -> None:
    expected_sequence = 1
    while True:
        sequence = reader.uint(4, "frame sequence number")
        if sequence == FINAL_FRAME_MARKER:
            if reader.uint(4, "final frame sequence number") != expected_sequence:
                raise MalformedMessage("frames are out of sequence")
            reader.skip(GCM_IV_LENGTH, "final frame IV")
            content_length = reader.uint(4, "final frame content length")
            if content_length > frame_length:
                raise MalformedMessage("final frame is longer than the frame length")
            reader.skip(content_length + GCM_TAG_LENGTH, "final frame content")
            return
        if sequence != expected_sequence:
            raise MalformedMessage("frames are out of sequence")
        reader.skip(GCM_IV_LENGTH + frame_length + GCM_TAG_LENGTH, "frame")
        expected_sequence += 1


def looks_like_sdk_message(value: object) -> bool:
    """True for a string that starts like a base64 Encryption SDK message (any version/suite).

    Used to find the encrypted parameters when none are configured; deliberately broad so a
    downgraded or foreign message is answered with an error instead of passing through.
    """
    return (
        isinstance(value, str)
        and len(value) >= 64
        and value[:2] in ("AY", "Ag")
        and value[:64].isascii()
        and all(c.isalnum() or c in "+/=" for c in value[:64])
    )
