"""Connect IDs: a security key's key ID, and resource IDs as pasted (bare, or the console's ARN)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rotator.errors import ConfigError

# One path segment of the keyring (an instance ID is one): what Connect's UUIDs always are.
_ID = r"[A-Za-z0-9_.-]{1,128}"
_ID_PATTERN = re.compile(rf"^{_ID}$")
_INSTANCE_ARN = re.compile(rf"^arn:aws[a-z-]*:connect:[a-z0-9-]+:\d{{12}}:instance/(?P<id>{_ID})$")
_FLOW_ARN = re.compile(
    rf"^arn:aws[a-z-]*:connect:[a-z0-9-]+:\d{{12}}:instance/{_ID}/"
    rf"(?:contact-flow|flow-module)/(?P<id>{_ID})$"
)


def key_id_of_association(association_id: str) -> str:
    """The key ID Connect writes into an encrypted message's header, and into a flow's
    EncryptionKeyId, for a security key: its AssociationId (DESIGN.md section 2, the working
    assumption). The one place that makes it; everything else asks here or `SecurityKey.key_id`."""
    return association_id


def association_id_of_key(key_id: str) -> str:
    """The AssociationId that Connect's (Dis)AssociateSecurityKey calls need for a key ID: the
    inverse of `key_id_of_association`."""
    return key_id


@dataclass(frozen=True)
class SecurityKey:
    """A public key Connect holds for an instance, as ListSecurityKeys lists it."""

    association_id: str
    public_key_pem: str

    @property
    def key_id(self) -> str:
        """The key ID that messages encrypted for this key carry (see key_id_of_association)."""
        return key_id_of_association(self.association_id)


def instance_id_of(value: str, setting: str = "--instance-id") -> str:
    """The instance ID in an ID or an instance ARN (arn:aws:connect:R:A:instance/ID)."""
    return _id_of(value, _INSTANCE_ARN, setting, "an instance ID or instance ARN")


def flow_id_of(value: str, setting: str = "--flow-id") -> str:
    """The flow or module ID in an ID or its ARN (.../contact-flow/ID or .../flow-module/ID)."""
    return _id_of(value, _FLOW_ARN, setting, "a flow or module ID, or its ARN")


def encrypt_block_of(value: str, setting: str = "--encrypt-block") -> tuple[str, str]:
    """(flow or module ID, block identifier) from `ID:BLOCK` (the ID may be an ARN)."""
    flow, _, block = value.rpartition(":") if value.startswith("arn:") else value.partition(":")
    if not flow or not block.strip():
        raise ConfigError(setting, f"{value!r} is not FLOW_ID:BLOCK_IDENTIFIER")
    return flow_id_of(flow, setting), block


def _id_of(value: str, arn: re.Pattern[str], setting: str, expected: str) -> str:
    text = value.strip()
    match = arn.match(text)
    if match is not None:
        return match.group("id")
    if _ID_PATTERN.match(text) and not text.startswith("arn"):
        return text
    raise ConfigError(setting, f"{value[:200]!r} is not {expected}")
