"""Contact-flow content: find the encrypting input blocks and point them at a key (pure JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rotator.errors import ConnectKeyRotatorError

INPUT_ACTION = "GetParticipantInput"


class FlowKind(StrEnum):
    FLOW = "flow"
    MODULE = "module"


@dataclass(frozen=True)
class FlowRef:
    """A contact flow or a flow module (public payment IVRs put the encrypting block in one)."""

    kind: FlowKind
    flow_id: str

    def __str__(self) -> str:
        return f"{self.kind} {self.flow_id}"


class FlowContentError(ConnectKeyRotatorError):
    """Flow content is not flow-language JSON, or has no block that stores encrypted input."""


@dataclass(frozen=True)
class EncryptingBlock:
    """A `GetParticipantInput` with `StoreInput: "True"`; key_id None until encryption is set."""

    identifier: str
    key_id: str | None
    certificate_pem: str | None


def encrypting_blocks(content: str) -> list[EncryptingBlock]:
    blocks = []
    for action in _store_input_actions(_parse(content)):
        encryption = action["Parameters"].get("InputEncryption") or {}
        blocks.append(
            EncryptingBlock(
                identifier=str(action.get("Identifier", "?")),
                key_id=encryption.get("EncryptionKeyId"),
                certificate_pem=encryption.get("Key"),
            )
        )
    return blocks


def referenced_key_ids(content: str) -> set[str]:
    return {b.key_id for b in encrypting_blocks(content) if b.key_id}


def point_at_key(content: str, key_id: str, certificate_pem: str) -> str | None:
    """The content with every encrypting block set to this key, or None if nothing changes.

    Only `EncryptionKeyId` and `Key` are written; every other field keeps its value and order.
    """
    document = _parse(content)
    actions = _store_input_actions(document)
    if not actions:
        raise FlowContentError("no 'Store customer input' block (GetParticipantInput, StoreInput)")
    changed = False
    for action in actions:
        encryption = action["Parameters"].setdefault("InputEncryption", {})
        if not isinstance(encryption, dict):
            raise FlowContentError("InputEncryption is not an object")
        if encryption.get("EncryptionKeyId") != key_id or encryption.get("Key") != certificate_pem:
            encryption["EncryptionKeyId"] = key_id
            encryption["Key"] = certificate_pem
            changed = True
    return json.dumps(document, ensure_ascii=False) if changed else None


def _parse(content: str) -> dict[str, Any]:
    try:
        document = json.loads(content)
    except ValueError:
        raise FlowContentError("flow content is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("Actions"), list):
        raise FlowContentError("flow content has no Actions list")
    return document


def _store_input_actions(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        action
        for action in document["Actions"]
        if isinstance(action, dict)
        and action.get("Type") == INPUT_ACTION
        and isinstance(action.get("Parameters"), dict)
        and str(action["Parameters"].get("StoreInput", "")).lower() == "true"
    ]
