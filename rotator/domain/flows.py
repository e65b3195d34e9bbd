"""Contact-flow content: the blocks that store customer input, which of them the rotator manages,
and pointing exactly those at a key (pure: JSON strings in, JSON strings out)."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from rotator.errors import ConnectKeyRotatorError, KeyMaterialError

INPUT_ACTION = "GetParticipantInput"
LAMBDA_ACTION = "InvokeLambdaFunction"
STORED_INPUT = "$.StoredCustomerInput"
CERTIFICATE_HEADER = "-----BEGIN CERTIFICATE-----"
CURRENT_FLOW_LANGUAGE = "2019-10-30"
# How far along a block's default path to look for what the flow does with the stored value:
# far enough to pass a prompt or two, short enough that the hint stays about this block.
USAGE_LOOKAHEAD = 8


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
    """Flow content is not flow-language JSON, or its blocks do not allow what was asked."""


class OldFlowFormat(FlowContentError):
    """The content is a pre-2019 export (`modules`, `StoreUserInput`), not the flow language."""


class UnknownBlock(FlowContentError):
    """A named block is not a block of this flow that stores customer input."""


class EncryptionNotAllowed(FlowContentError):
    """A named block's validation does not allow InputEncryption (for example a phone number)."""


class DynamicKeyReference(FlowContentError):
    """A block takes its key from a JSONPath that the rotator cannot keep current."""


class NoEncryptingBlock(FlowContentError):
    """The flow has no block to manage: none encrypts with a static key and none was named."""


class ValidationKind(StrEnum):
    CUSTOM = "custom"
    PHONE_NUMBER = "phone_number"
    NONE = "none"


VALIDATION_LABELS = {
    ValidationKind.CUSTOM: "custom validation",
    ValidationKind.PHONE_NUMBER: "phone-number validation",
    ValidationKind.NONE: "no validation",
}


class EncryptionKind(StrEnum):
    NONE = "none"
    STATIC = "static"  # a key ID (and certificate) written into the flow
    DYNAMIC = "dynamic"  # EncryptionKeyId or Key is a JSONPath (`$.Attributes.KeyId`)


@dataclass(frozen=True)
class Encryption:
    """A block's InputEncryption; for a dynamic one, key_id and certificate_pem hold the raw
    values as written (JSONPaths or text)."""

    kind: EncryptionKind
    key_id: str | None = None
    certificate_pem: str | None = None

    def __str__(self) -> str:
        if self.kind is EncryptionKind.NONE:
            return "no encryption"
        if self.kind is EncryptionKind.STATIC:
            return f"key {self.key_id}"
        reference = self.key_id if _is_dynamic(self.key_id) else self.certificate_pem
        return f"dynamic key reference {reference}"


NO_ENCRYPTION = Encryption(EncryptionKind.NONE)


@dataclass(frozen=True)
class StoringBlock:
    """A block that stores customer input: a `GetParticipantInput` with StoreInput true, which
    is either a *Store customer input* block or a *Set touchtone buffer behavior* block in its
    Stop-and-Clear form (`EnableDTMFBuffer` "false")."""

    identifier: str
    validation: ValidationKind
    encryption: Encryption
    usage: str | None  # what the flow does next with $.StoredCustomerInput, when easy to tell
    touchtone_buffer: bool = False

    @property
    def may_encrypt(self) -> bool:
        """Connect's flow language allows InputEncryption with CustomValidation only; the
        touchtone buffer's Stop-and-Clear stores without validation and may encrypt too."""
        if self.touchtone_buffer:
            return self.validation is not ValidationKind.PHONE_NUMBER
        return self.validation is ValidationKind.CUSTOM

    def describe(self) -> str:
        facts = [VALIDATION_LABELS[self.validation], str(self.encryption)]
        if self.touchtone_buffer:
            facts.insert(0, "touchtone buffer Stop-and-Clear")
        if self.usage:
            facts.append(self.usage)
        return f"{self.identifier} ({', '.join(facts)})"


@dataclass(frozen=True)
class ManagedBlock:
    """A block the rotator keeps pointed at the current key."""

    ref: FlowRef
    identifier: str

    def __str__(self) -> str:
        return f"{self.ref} block {self.identifier}"


class ChangeKind(StrEnum):
    NEW_KEY = "new_key"
    STARTS_ENCRYPTING = "starts_encrypting"
    DYNAMIC_TO_STATIC = "dynamic_to_static"
    NEW_CERTIFICATE = "new_certificate"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class PlannedChange:
    """What pointing one managed block at a key would change (for `--dry-run`)."""

    block: ManagedBlock
    before: Encryption
    key_id: str | None  # None: the key the rotation is about to create
    change: ChangeKind

    def __str__(self) -> str:
        new = f"key {self.key_id}" if self.key_id else "the new key"
        text = {
            ChangeKind.NEW_KEY: f"key {self.before.key_id} -> {new}",
            ChangeKind.STARTS_ENCRYPTING: f"starts encrypting with {new}",
            ChangeKind.DYNAMIC_TO_STATIC: f"{self.before} becomes static: {new}",
            ChangeKind.NEW_CERTIFICATE: f"certificate of {new} replaced",
            ChangeKind.UNCHANGED: f"already uses {new}",
        }[self.change]
        return f"{self.block}: {text}"


class DriftKind(StrEnum):
    MISSING = "missing"  # a managed block is gone (or no longer stores input)
    NOT_ENCRYPTING = "not_encrypting"  # a managed block lost its InputEncryption
    OTHER_KEY = "other_key"  # a managed block points at another key than the current one
    DYNAMIC = "dynamic"  # a managed block now takes its key from a JSONPath
    UNMANAGED = "unmanaged"  # a block encrypts that the rotator does not manage


@dataclass(frozen=True)
class Drift:
    """A difference between a flow and what the rotator recorded and wrote into it."""

    ref: FlowRef
    identifier: str
    kind: DriftKind
    detail: str

    def __str__(self) -> str:
        return f"{self.ref} block {self.identifier}: {self.detail}"


def storing_blocks(content: str) -> list[StoringBlock]:
    """Every block of the flow that stores customer input, in the flow's order."""
    return [block for block, _ in _storing(_document(content, "flow content"), "flow content")]


def static_block_identifiers(content: str) -> list[str]:
    """The blocks that encrypt with a static key: what a record from before managed blocks
    were recorded (legacy `ManagedInstance`) manages."""
    return [
        b.identifier for b in storing_blocks(content) if b.encryption.kind is EncryptionKind.STATIC
    ]


def managed_blocks(ref: FlowRef, content: str, named: Collection[str]) -> list[ManagedBlock]:
    """The blocks to manage: those that encrypt with a static key, plus the named ones.

    Refuses a named block that does not exist or may not encrypt, a dynamic key reference that
    was not named (the rotator would leave it pointing elsewhere), and a flow where nothing would
    be managed (listing its storing blocks so the operator can name the right ones)."""
    where = str(ref)
    blocks = [block for block, _ in _storing(_document(content, where), where)]
    _check_named(ref, blocks, named)
    unnamed_dynamic = [
        b
        for b in blocks
        if b.encryption.kind is EncryptionKind.DYNAMIC and b.identifier not in named
    ]
    if unnamed_dynamic:
        block = unnamed_dynamic[0]
        raise DynamicKeyReference(
            f"{ref} block {block.identifier} uses a {block.encryption}, which the rotator cannot "
            f"keep current; name it with --encrypt-block {ref.flow_id}:{block.identifier} to make "
            "it static (it then follows every rotation)"
        )
    managed = [
        ManagedBlock(ref, b.identifier)
        for b in blocks
        if b.identifier in named or b.encryption.kind is EncryptionKind.STATIC
    ]
    if managed:
        return managed
    if not blocks:
        raise NoEncryptingBlock(
            f"{ref} stores no customer input (no GetParticipantInput with StoreInput true): "
            "there is nothing in it to encrypt"
        )
    raise NoEncryptingBlock(
        f"{ref} has no block that encrypts with a static key, and none was named; name each "
        f"block to encrypt with --encrypt-block {ref.flow_id}:BLOCK (a block with custom "
        f"validation). Its blocks that store customer input: {_listing(blocks)}"
    )


def point_blocks_at_key(
    content: str, identifiers: Iterable[str], key_id: str, certificate_pem: str
) -> str | None:
    """The content with exactly these blocks encrypting with this key, or None if nothing changes.

    Writes only `InputEncryption.EncryptionKeyId` and `InputEncryption.Key` of those blocks
    (adding InputEncryption where a block had none); every other value keeps its value and its
    place in the document."""
    _check_key(key_id, certificate_pem)
    document = _document(content, "flow content")
    storing = _storing(document, "flow content")
    wanted = set(identifiers)
    _check_named(None, [block for block, _ in storing], wanted)
    changed = False
    for block, action in storing:
        if block.identifier not in wanted:
            continue
        parameters = action["Parameters"]
        encryption = parameters.get("InputEncryption")
        if encryption is None:  # absent, or null: the block starts encrypting
            encryption = parameters["InputEncryption"] = {}
        for member, value in (("EncryptionKeyId", key_id), ("Key", certificate_pem)):
            if encryption.get(member) != value:
                encryption[member] = value
                changed = True
    return json.dumps(document, ensure_ascii=False) if changed else None


def planned_changes(
    ref: FlowRef,
    content: str,
    identifiers: Iterable[str],
    key_id: str | None = None,
    certificate_pem: str | None = None,
) -> list[PlannedChange]:
    """What `point_blocks_at_key` would do to each of these blocks, in the flow's order; key_id
    None stands for a key that does not exist yet (a dry run before the key is created)."""
    where = str(ref)
    blocks = [block for block, _ in _storing(_document(content, where), where)]
    wanted = set(identifiers)
    _check_named(ref, blocks, wanted)
    return [
        PlannedChange(
            ManagedBlock(ref, b.identifier),
            b.encryption,
            key_id,
            _change(b.encryption, key_id, certificate_pem),
        )
        for b in blocks
        if b.identifier in wanted
    ]


def flow_drift(
    ref: FlowRef, content: str, managed: Collection[str], expected_key_id: str | None
) -> list[Drift]:
    """How the flow differs from what the rotator manages in it: a managed block that is gone,
    no longer encrypts, or points at another key (or a JSONPath) than `expected_key_id`; and a
    block that encrypts but is not managed. expected_key_id None: no current key to compare."""
    where = str(ref)
    blocks = {b.identifier: b for b, _ in _storing(_document(content, where), where)}
    found = []
    for identifier in sorted(managed):
        block = blocks.get(identifier)
        if block is None:
            found.append(
                Drift(
                    ref,
                    identifier,
                    DriftKind.MISSING,
                    "managed block is gone: no block that stores customer input has this "
                    "identifier any more",
                )
            )
            continue
        encryption = block.encryption
        if encryption.kind is EncryptionKind.NONE:
            found.append(
                Drift(
                    ref,
                    identifier,
                    DriftKind.NOT_ENCRYPTING,
                    "managed block no longer encrypts (its InputEncryption was removed)",
                )
            )
        elif encryption.kind is EncryptionKind.DYNAMIC:
            found.append(
                Drift(
                    ref,
                    identifier,
                    DriftKind.DYNAMIC,
                    f"managed block now uses a {encryption} instead of "
                    f"key {expected_key_id or 'the current key'}",
                )
            )
        elif expected_key_id is not None and encryption.key_id != expected_key_id:
            found.append(
                Drift(
                    ref,
                    identifier,
                    DriftKind.OTHER_KEY,
                    f"managed block points at key {encryption.key_id}, expected {expected_key_id}",
                )
            )
    found.extend(
        Drift(
            ref,
            block.identifier,
            DriftKind.UNMANAGED,
            f"encrypts with {block.encryption} but is not managed: rotations will not update "
            f"it; name it with --encrypt-block {ref.flow_id}:{block.identifier} or remove its "
            "encryption",
        )
        for block in blocks.values()
        if block.identifier not in managed and block.encryption.kind is not EncryptionKind.NONE
    )
    return found


# -- what Connect encrypts with ------------------------------------------------------------------


@dataclass(frozen=True)
class EncryptingBlock:
    """A block that encrypts with a static key: the key ID and certificate Connect uses."""

    identifier: str
    key_id: str
    certificate_pem: str


def encrypting_blocks(content: str) -> list[EncryptingBlock]:
    """Every block that encrypts with a static key, in the flow's order."""
    return [
        EncryptingBlock(b.identifier, b.encryption.key_id, b.encryption.certificate_pem)
        for b in storing_blocks(content)
        if b.encryption.kind is EncryptionKind.STATIC
        and b.encryption.key_id is not None
        and b.encryption.certificate_pem is not None
    ]


def referenced_key_ids(content: str) -> set[str]:
    """The static key IDs the flow encrypts with (a dynamic reference names no key here)."""
    return {b.key_id for b in encrypting_blocks(content)}


# -- what the flow invokes -----------------------------------------------------------------------


@dataclass(frozen=True)
class LambdaInvocation:
    """An *Invoke AWS Lambda function* block: its LambdaFunctionARN as written (an ARN, a name,
    or a JSONPath the flow resolves when it runs)."""

    identifier: str
    function: str

    @property
    def dynamic(self) -> bool:
        return _is_dynamic(self.function)


def lambda_invocations(content: str) -> list[LambdaInvocation]:
    """Every InvokeLambdaFunction block that names its function with a string, in the flow's
    order (one without an Identifier or a LambdaFunctionARN is Connect's to refuse)."""
    found = []
    for action in _document(content, "flow content")["Actions"]:
        if not isinstance(action, dict) or action.get("Type") != LAMBDA_ACTION:
            continue
        parameters = action.get("Parameters")
        identifier = action.get("Identifier")
        function = parameters.get("LambdaFunctionARN") if isinstance(parameters, dict) else None
        if isinstance(identifier, str) and isinstance(function, str) and function.strip():
            found.append(LambdaInvocation(identifier, function.strip()))
    return found


# -- reading the document ----------------------------------------------------------------------


def _document(content: str, where: str) -> dict[str, Any]:
    try:
        document = json.loads(content)
    except ValueError:
        raise FlowContentError(f"{where} is not JSON") from None
    if not isinstance(document, dict):
        raise FlowContentError(f"{where} is not a JSON object")
    if "Actions" not in document and isinstance(document.get("modules"), list):
        raise OldFlowFormat(
            f"{where} is a flow exported before 2019 (top-level 'modules', 'StoreUserInput' "
            "blocks), a format the flow APIs do not take; export the flow again from Connect, "
            f"or rebuild it there, in the flow language (Version {CURRENT_FLOW_LANGUAGE}), "
            "then run this again"
        )
    if not isinstance(document.get("Actions"), list):
        raise FlowContentError(f"{where} has no Actions list")
    return document


def _stores_input(action: Any) -> bool:
    return (
        isinstance(action, dict)
        and action.get("Type") == INPUT_ACTION
        and isinstance(action.get("Parameters"), dict)
        and str(action["Parameters"].get("StoreInput", "")).lower() == "true"
    )


def _storing_actions(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [action for action in document["Actions"] if _stores_input(action)]


def _storing(document: dict[str, Any], where: str) -> list[tuple[StoringBlock, dict[str, Any]]]:
    """Each storing block with the action it was read from (the one to write into)."""
    by_id = {
        action["Identifier"]: action
        for action in document["Actions"]
        if isinstance(action, dict) and isinstance(action.get("Identifier"), str)
    }
    found: list[tuple[StoringBlock, dict[str, Any]]] = []
    seen: set[str] = set()
    for action in _storing_actions(document):
        identifier = action.get("Identifier")
        if not isinstance(identifier, str) or not identifier:
            raise FlowContentError(f"{where}: a block that stores customer input has no Identifier")
        if identifier in seen:
            raise FlowContentError(f"{where}: two blocks are identified as {identifier}")
        seen.add(identifier)
        parameters = action["Parameters"]
        block = StoringBlock(
            identifier=identifier,
            validation=_validation(parameters),
            encryption=_encryption(parameters, f"{where} block {identifier}"),
            usage=_usage(action, by_id),
            touchtone_buffer="EnableDTMFBuffer" in parameters,
        )
        found.append((block, action))
    return found


def _validation(parameters: dict[str, Any]) -> ValidationKind:
    validation = parameters.get("InputValidation")
    if not isinstance(validation, dict):
        return ValidationKind.NONE
    # Both at once is not valid flow language; the phone number wins so nothing encrypts it.
    if "PhoneNumberValidation" in validation:
        return ValidationKind.PHONE_NUMBER
    if "CustomValidation" in validation:
        return ValidationKind.CUSTOM
    return ValidationKind.NONE


def _encryption(parameters: dict[str, Any], where: str) -> Encryption:
    encryption = parameters.get("InputEncryption")
    if encryption is None:
        return NO_ENCRYPTION
    if not isinstance(encryption, dict):
        raise FlowContentError(f"{where}: InputEncryption is not an object")
    key_id, key = encryption.get("EncryptionKeyId"), encryption.get("Key")
    for member, value in (("EncryptionKeyId", key_id), ("Key", key)):
        if value is not None and not isinstance(value, str):
            raise FlowContentError(f"{where}: InputEncryption.{member} is not a string")
    if _is_dynamic(key_id) or _is_dynamic(key):
        return Encryption(EncryptionKind.DYNAMIC, key_id, key)
    if key_id:
        return Encryption(EncryptionKind.STATIC, key_id, key)
    # An InputEncryption without a key ID encrypts with nothing.
    return NO_ENCRYPTION


def _is_dynamic(value: str | None) -> bool:
    return value is not None and value.strip().startswith("$.")


def _usage(action: dict[str, Any], by_id: dict[str, Any]) -> str | None:
    """Follow the default path until an action uses $.StoredCustomerInput or stores anew."""
    visited: set[str] = set()
    current = _next_action(action)
    for _ in range(USAGE_LOOKAHEAD):
        if current is None or current in visited or current not in by_id:
            return None
        visited.add(current)
        step = by_id[current]
        use = _use_of_stored_input(step)
        if use is not None:
            return use
        if _stores_input(step):
            return None  # a later block replaces the stored value
        current = _next_action(step)
    return None


def _next_action(action: dict[str, Any]) -> str | None:
    transitions = action.get("Transitions")
    if isinstance(transitions, dict) and isinstance(transitions.get("NextAction"), str):
        return str(transitions["NextAction"])
    return None


def _use_of_stored_input(action: dict[str, Any]) -> str | None:
    parameters = action.get("Parameters")
    if not isinstance(parameters, dict):
        return None
    kind = action.get("Type")
    if kind == "Compare" and parameters.get("ComparisonValue") == STORED_INPUT:
        return "compared in a condition"
    if kind == LAMBDA_ACTION:
        names = _names_of_stored_input(parameters.get("LambdaInvocationAttributes"))
        if names:
            return f"passed to Lambda as {', '.join(names)}"
    if kind == "UpdateContactAttributes":
        names = _names_of_stored_input(parameters.get("Attributes"))
        if names:
            return f"saved as attribute {', '.join(names)}"
    if kind == "UpdateContactCallbackNumber" and parameters.get("CallbackNumber") == STORED_INPUT:
        return "set as the callback number"
    if STORED_INPUT in json.dumps(parameters):
        return f"used by {kind}"
    return None


def _names_of_stored_input(mapping: Any) -> list[str]:
    if not isinstance(mapping, dict):
        return []
    return [str(name) for name, value in mapping.items() if value == STORED_INPUT]


# -- checks --------------------------------------------------------------------------------------


def _check_named(ref: FlowRef | None, blocks: list[StoringBlock], named: Collection[str]) -> None:
    where = "the flow" if ref is None else str(ref)
    by_id = {block.identifier: block for block in blocks}
    unknown = sorted(set(named) - by_id.keys())
    if unknown:
        listing = _listing(blocks) if blocks else "none"
        raise UnknownBlock(
            f"{where} has no block {', '.join(unknown)} that stores customer input "
            f"(GetParticipantInput with StoreInput true); its blocks that do: {listing}"
        )
    for block in blocks:
        if block.identifier in named and not block.may_encrypt:
            raise EncryptionNotAllowed(
                f"{where} block {block.identifier} has {VALIDATION_LABELS[block.validation]}: "
                "Connect's flow language allows InputEncryption only with "
                "InputValidation.CustomValidation (or on a touchtone buffer's Stop-and-Clear), "
                "so this block cannot be encrypted"
            )


def _check_key(key_id: str, certificate_pem: str) -> None:
    if not key_id or _is_dynamic(key_id):
        raise KeyMaterialError(f"a flow block needs a static key ID, not {key_id!r}")
    # The block takes the certificate; the public key PEM goes to AssociateSecurityKey only.
    if not certificate_pem.lstrip().startswith(CERTIFICATE_HEADER):
        raise KeyMaterialError("a flow block's Key must be the key's certificate PEM")


def _change(before: Encryption, key_id: str | None, certificate_pem: str | None) -> ChangeKind:
    if before.kind is EncryptionKind.NONE:
        return ChangeKind.STARTS_ENCRYPTING
    if before.kind is EncryptionKind.DYNAMIC:
        return ChangeKind.DYNAMIC_TO_STATIC
    if key_id is None or before.key_id != key_id:
        return ChangeKind.NEW_KEY
    if certificate_pem is not None and before.certificate_pem != certificate_pem:
        return ChangeKind.NEW_CERTIFICATE
    return ChangeKind.UNCHANGED


def _listing(blocks: Iterable[StoringBlock]) -> str:
    return "; ".join(block.describe() for block in blocks)
