"""Fakes of the rotator's ports, for tests that need no Connect emulator."""

from __future__ import annotations

from rotator.adapters.connect import SecurityKey
from rotator.domain.flows import FlowRef
from rotator.errors import NotFound


class HeldKeys:
    """Connect's security keys per instance, as `ListSecurityKeys` would list them, and the
    content of the flows a test puts there."""

    def __init__(self, held: dict[str, dict[str, str]] | None = None) -> None:
        self.held = held or {}  # instance ID -> {association ID: public key PEM}
        self.flows: dict[tuple[str, str], str] = {}  # (instance ID, flow ID) -> content

    def flow(self, instance_id: str, flow_id: str, content: str) -> HeldKeys:
        self.flows[(instance_id, flow_id)] = content
        return self

    def flow_content(self, instance_id: str, ref: FlowRef) -> str:
        try:
            return self.flows[(instance_id, ref.flow_id)]
        except KeyError:
            raise NotFound(f"connect: {instance_id}/{ref.flow_id} not found") from None

    def hold(self, instance_id: str, key_id: str, public_key_pem: str) -> HeldKeys:
        self.held.setdefault(instance_id, {})[key_id] = public_key_pem
        return self

    def list_security_keys(self, instance_id: str) -> list[SecurityKey]:
        return [SecurityKey(k, pem) for k, pem in self.held.get(instance_id, {}).items()]
