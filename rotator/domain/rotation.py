"""A rotation's progress and an instance's managed flows: records kept in the keyring."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from rotator.domain.flows import FlowKind, FlowRef
from rotator.errors import KeyringError


class Step(StrEnum):
    """Steps in order; each is recorded after it is done, and each is safe to redo."""

    STARTED = "started"  # rotation ID chosen, nothing written yet
    STAGED = "staged"  # new private key stored under the rotation, read back, canary decrypted
    ASSOCIATED = "associated"  # public key associated with Connect: the key ID is known
    STORED = (
        "stored"  # key stored under its key ID, read back, canary decrypted via the Lambda path
    )
    FLOWS_UPDATED = "flows_updated"  # managed flows and modules point at the new key
    PROMOTED = "promoted"  # new key active and current, old key previous
    DONE = "done"  # staging cleaned up


STEP_ORDER = list(Step)


@dataclass(frozen=True)
class RotationState:
    rotation_id: str
    instance_id: str
    step: Step
    started_at: datetime
    actor: str
    old_key_id: str | None
    new_key_id: str | None = None
    new_public_key_sha256: str | None = None
    emergency: bool = False
    reason: str = ""

    @property
    def finished(self) -> bool:
        return self.step is Step.DONE

    def reached(self, step: Step) -> bool:
        return STEP_ORDER.index(self.step) >= STEP_ORDER.index(step)

    def advance(self, step: Step, **changes: Any) -> RotationState:
        return replace(self, step=step, **changes)

    def to_json(self) -> str:
        data = asdict(self)
        data["started_at"] = self.started_at.isoformat()
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> RotationState:
        try:
            data = json.loads(raw)
            data["step"] = Step(data["step"])
            data["started_at"] = datetime.fromisoformat(data["started_at"])
            return cls(**data)
        except (ValueError, KeyError, TypeError) as error:
            raise KeyringError(f"rotation record is not readable: {type(error).__name__}") from None


@dataclass(frozen=True)
class ManagedInstance:
    """An instance under management: which flows and modules hold its encrypting blocks."""

    instance_id: str
    flows: tuple[str, ...]
    modules: tuple[str, ...] = ()

    @property
    def refs(self) -> list[FlowRef]:
        return [FlowRef(FlowKind.FLOW, f) for f in self.flows] + [
            FlowRef(FlowKind.MODULE, m) for m in self.modules
        ]

    def to_json(self) -> str:
        return json.dumps(
            {"instance_id": self.instance_id, "flows": self.flows, "modules": self.modules},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: str) -> ManagedInstance:
        try:
            data = json.loads(raw)
            return cls(data["instance_id"], tuple(data["flows"]), tuple(data.get("modules", ())))
        except (ValueError, KeyError, TypeError) as error:
            raise KeyringError(f"instance record is not readable: {type(error).__name__}") from None
