"""The report's evidence reads: the keyring's KMS keys and the decrypt function's environment."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rotator.domain.key_protection import DecryptFunctionCheck, KekDescription
from rotator.domain.state import KeyringState
from rotator.errors import AwsCallError, ConnectKeyRotatorError, NotFound
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
        return DecryptFunctionCheck(name, None, unreadable_reason(error))
    except Exception as error:  # noqa: BLE001 - the scan is one line of the report, not all of it
        # Its type only: an unexpected exception's text is not known to be free of the values.
        return DecryptFunctionCheck(name, None, f"unexpected {type(error).__name__}")


# AWS error codes that mean the caller may not read the function (its role's policy): Lambda
# answers AccessDeniedException; STS and older endpoints AccessDenied.
ACCESS_DENIED_CODES = frozenset({"AccessDeniedException", "AccessDenied"})


def unreadable_reason(error: ConnectKeyRotatorError) -> str:
    """Why the decrypt function could not be read, in the words an auditor reads first: "function
    not found", "access denied (CODE)", or the failed call and its AWS error code."""
    if isinstance(error, NotFound):
        return "function not found"
    if isinstance(error, AwsCallError) and error.reason in ACCESS_DENIED_CODES:
        return f"access denied ({error.call}: {error.reason})"
    return str(error)
