"""The report's evidence reads: the keyring's KMS keys and the decrypt function's environment."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rotator.domain.key_protection import DecryptFunctionCheck, KekDescription
from rotator.domain.state import KeyringState
from rotator.errors import ConnectKeyRotatorError
from rotator.ports import FunctionEnvironments, KeyEncryptionKeys


@dataclass(frozen=True)
class EvidenceSources:
    """Where the report reads its cryptographic-architecture evidence; a part left None is not
    read (the report says so): `decrypt_function` None means the copy inventory skips it."""

    keks: KeyEncryptionKeys | None = None
    functions: FunctionEnvironments | None = None
    decrypt_function: str | None = None


def with_evidence(
    state: KeyringState, sources: EvidenceSources, configured_kms_key: str | None
) -> KeyringState:
    """The state with each KMS key reference described (every one SSM reports for a stored
    private key, and the configured one) and the decrypt function's environment scanned. A
    reference or function that cannot be read is said in the report, never raised: the rest of
    the report stands."""
    references = {p.kms_key_id for p in state.protection.keys.values() if p.kms_key_id}
    if configured_kms_key:
        references.add(configured_kms_key)
    keks: dict[str, KekDescription] = {}
    errors: dict[str, str] = {}
    if sources.keks is not None:
        for reference in sorted(references):
            try:
                keks[reference] = sources.keks.describe(reference)
            except ConnectKeyRotatorError as error:
                errors[reference] = str(error)
    return replace(state, keks=keks, kek_errors=errors, decrypt_function=_decrypt_function(sources))


def _decrypt_function(sources: EvidenceSources) -> DecryptFunctionCheck:
    name = sources.decrypt_function
    if not name or sources.functions is None:
        return DecryptFunctionCheck(None)
    try:
        return DecryptFunctionCheck(name, sources.functions.private_key_variables(name))
    except ConnectKeyRotatorError as error:  # the adapter's errors carry no value
        return DecryptFunctionCheck(name, None, str(error))
