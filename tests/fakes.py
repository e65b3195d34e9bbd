"""Fakes of the rotator's ports, for tests that need no Connect emulator."""

from __future__ import annotations

from rotator.adapters.connect import SecurityKey


class HeldKeys:
    """Connect's security keys per instance, as `ListSecurityKeys` would list them."""

    def __init__(self, held: dict[str, dict[str, str]] | None = None) -> None:
        self.held = held or {}  # instance ID -> {association ID: public key PEM}

    def hold(self, instance_id: str, key_id: str, public_key_pem: str) -> HeldKeys:
        self.held.setdefault(instance_id, {})[key_id] = public_key_pem
        return self

    def list_security_keys(self, instance_id: str) -> list[SecurityKey]:
        return [SecurityKey(k, pem) for k, pem in self.held.get(instance_id, {}).items()]
