"""A rotation's progress and an instance's managed flows: records kept in the keyring."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from rotator.domain.flows import FlowKind, FlowRef, ManagedBlock, static_block_identifiers
from rotator.domain.lifecycle import KeyRecord
from rotator.errors import KeyringError


class RotationStep(StrEnum):
    """Steps in order, each safe to redo; each one's event is recorded once it is done (the
    steps are written together: rotator.services.rotation.WRITTEN_AFTER)."""

    STARTED = "started"  # rotation ID chosen, nothing written yet
    STAGED = "staged"  # new private key stored under the rotation, read back, canary decrypted
    ASSOCIATED = "associated"  # public key associated with Connect: the key ID is known
    STORED = (
        "stored"  # key stored under its key ID, read back, canary decrypted via the Lambda path
    )
    FLOWS_UPDATED = "flows_updated"  # managed flows and modules point at the new key
    PROMOTED = "promoted"  # new key active and current, old key previous
    DONE = "done"  # staging cleaned up


STEP_ORDER = list(RotationStep)


@dataclass(frozen=True)
class RotationState:
    rotation_id: str
    instance_id: str
    step: RotationStep
    started_at: datetime
    actor: str
    old_key_id: str | None
    new_key_id: str | None = None
    new_public_key_sha256: str | None = None
    emergency: bool = False
    reason: str = ""
    principal: str = ""  # the AWS principal ARN that started it ("" when not known)

    @property
    def finished(self) -> bool:
        return self.step is RotationStep.DONE

    def reached(self, step: RotationStep) -> bool:
        return STEP_ORDER.index(self.step) >= STEP_ORDER.index(step)

    def advance(self, step: RotationStep, **changes: Any) -> RotationState:
        return replace(self, step=step, **changes)

    def to_json(self) -> str:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        if not self.principal:  # a record without one stays what older readers can load
            del data["principal"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> RotationState:
        try:
            data = json.loads(raw)
            data["step"] = RotationStep(data["step"])
            data["started_at"] = datetime.fromisoformat(data["started_at"])
            return cls(**data)
        except (ValueError, KeyError, TypeError) as error:
            raise KeyringError(f"rotation record is not readable: {type(error).__name__}") from None


@dataclass(frozen=True)
class StepDone:
    """A rotation step done: the rotation as the step left it, and the key records the step
    changed (each one transition past what is stored or recorded by an earlier step)."""

    state: RotationState
    records: tuple[KeyRecord, ...] = ()


@dataclass(frozen=True)
class ManagedInstance:
    """An instance under management: its flows and modules, and the blocks in them that the
    rotator points at each new key. A record written before blocks were recorded has blocks
    None (legacy): it manages every block that encrypts with a static key."""

    instance_id: str
    flows: tuple[str, ...]
    modules: tuple[str, ...] = ()
    blocks: tuple[ManagedBlock, ...] | None = None

    def __post_init__(self) -> None:
        if self.blocks is not None:
            outside = sorted({str(b.ref) for b in self.blocks} - {str(r) for r in self.refs})
            if outside:
                raise ValueError(f"managed blocks in unmanaged flows: {', '.join(outside)}")

    @property
    def refs(self) -> list[FlowRef]:
        return [FlowRef(FlowKind.FLOW, f) for f in self.flows] + [
            FlowRef(FlowKind.MODULE, m) for m in self.modules
        ]

    def recorded_blocks(self, ref: FlowRef) -> tuple[str, ...] | None:
        """The identifiers recorded for this flow, or None for a legacy record."""
        if self.blocks is None:
            return None
        return tuple(b.identifier for b in self.blocks if b.ref == ref)

    def managed_identifiers(self, ref: FlowRef, content: str) -> list[str]:
        """The blocks of this flow to manage, given its current content."""
        recorded = self.recorded_blocks(ref)
        return static_block_identifiers(content) if recorded is None else list(recorded)

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "instance_id": self.instance_id,
            "flows": self.flows,
            "modules": self.modules,
        }
        if self.blocks is not None:  # a legacy record stays byte for byte what it was
            data["blocks"] = [
                {"kind": str(b.ref.kind), "flow_id": b.ref.flow_id, "identifier": b.identifier}
                for b in self.blocks
            ]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> ManagedInstance:
        try:
            data = json.loads(raw)
            blocks = data.get("blocks")
            return cls(
                data["instance_id"],
                tuple(data["flows"]),
                tuple(data.get("modules", ())),
                None if blocks is None else tuple(_managed_block(b) for b in blocks),
            )
        except (ValueError, KeyError, TypeError) as error:
            raise KeyringError(f"instance record is not readable: {type(error).__name__}") from None


def _managed_block(data: dict[str, Any]) -> ManagedBlock:
    kind, flow_id, identifier = data["kind"], data["flow_id"], data["identifier"]
    if not all(isinstance(value, str) for value in (flow_id, identifier)):
        raise TypeError("a managed block's flow_id and identifier are strings")
    return ManagedBlock(FlowRef(FlowKind(kind), flow_id), identifier)
