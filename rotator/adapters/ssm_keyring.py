"""The keyring in SSM Parameter Store: the rotator's writer and its metadata/history reader."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from lambda_decrypt.errors import aws_reason
from lambda_decrypt.keyring import KeyringLayout
from rotator.domain.keys import KeyMaterial, load_key_material
from rotator.domain.lifecycle import KeyRecord
from rotator.errors import AwsCallError, KeyringConflict, NotFound

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

AWS_ERRORS = (ClientError, BotoCoreError)


class SsmKeyring:
    """Reads and writes `{prefix}/keys/...` and `{prefix}/instances/...` (see KeyringLayout).

    A private key parameter is only ever created, never overwritten: a key ID names one key
    for life. Metadata is overwritten, so its parameter history is the key's audit trail.
    """

    def __init__(self, ssm: SSMClient, prefix: str, *, kms_key_id: str | None = None) -> None:
        self.ssm = ssm
        self.layout = KeyringLayout(prefix)
        self.kms_key_id = kms_key_id

    # -- keys --------------------------------------------------------------------------------

    def store_key(self, key_id: str, material: KeyMaterial, record: KeyRecord) -> None:
        """Create the key's three parameters; a re-run with the same material is a no-op."""
        self.create_private_key(key_id, material.private_key_pem)
        self._put(self.layout.certificate(key_id), material.certificate_pem, overwrite=True)
        self.put_record(record)

    def create_private_key(self, key_id: str, private_key_pem: str) -> None:
        """Create the SecureString once; the same PEM again is fine, a different one refused."""
        name = self.layout.private_key(key_id)
        secure: dict[str, str] = {"KeyId": self.kms_key_id} if self.kms_key_id else {}
        try:
            self.ssm.put_parameter(
                Name=name,
                Value=private_key_pem,
                Type="SecureString",
                Overwrite=False,
                Description=f"connect-key-rotator private key {key_id}",
                **secure,  # type: ignore[arg-type]
            )
        except ClientError as error:
            if aws_reason(error) != "ParameterAlreadyExists":
                raise _aws_error("ssm:PutParameter", name, error) from error
            if self.private_key_digest(key_id) != _digest(private_key_pem):
                raise KeyringConflict(
                    f"key ID {key_id} already holds a different private key; it is never replaced"
                ) from None
        except BotoCoreError as error:
            raise _aws_error("ssm:PutParameter", name, error) from error

    def read_material(self, key_id: str) -> KeyMaterial:
        """Read a key back and validate it fully: the proof that what was stored is usable."""
        private_name = self.layout.private_key(key_id)
        cert_name = self.layout.certificate(key_id)
        values = self._get_many([private_name, cert_name], decrypt=True)
        if private_name not in values:
            raise NotFound(f"no private key stored for key ID {key_id}")
        if cert_name not in values:
            raise NotFound(f"no certificate stored for key ID {key_id}")
        return load_key_material(values[private_name], values[cert_name])

    def read_private_key_pem(self, key_id: str) -> str:
        """The private key PEM alone (keys adopted without a certificate)."""
        name = self.layout.private_key(key_id)
        values = self._get_many([name], decrypt=True)
        if name not in values:
            raise NotFound(f"no private key stored for key ID {key_id}")
        return values[name]

    def private_key_digest(self, key_id: str) -> str | None:
        """SHA-256 of the stored private key PEM, or None: compares without exposing the key."""
        name = self.layout.private_key(key_id)
        value = self._get_many([name], decrypt=True).get(name)
        return None if value is None else _digest(value)

    # -- metadata ----------------------------------------------------------------------------

    def put_record(self, record: KeyRecord) -> None:
        """Write a new metadata version unless nothing changed (history stays meaningful)."""
        name = self.layout.metadata(record.key_id)
        existing = self._get_many([name], decrypt=False).get(name)
        if existing is not None and KeyRecord.from_json(existing) == record:
            return
        self._put(name, record.to_json(), overwrite=True)

    def get_record(self, key_id: str) -> KeyRecord:
        name = self.layout.metadata(key_id)
        raw = self._get_many([name], decrypt=False).get(name)
        if raw is None:
            raise NotFound(f"no key {key_id} in the keyring")
        return KeyRecord.from_json(raw)

    def find_record(self, key_id: str) -> KeyRecord | None:
        try:
            return self.get_record(key_id)
        except NotFound:
            return None

    def records(self) -> list[KeyRecord]:
        """Every key's metadata, read page by page (no decryption needed)."""
        suffix = "/metadata"
        found = [
            KeyRecord.from_json(value)
            for name, value in self._by_path(self.layout.keys_root())
            if name.endswith(suffix)
        ]
        return sorted(found, key=lambda r: (r.instance_id or "", r.created_at, r.key_id))

    def history(self, key_id: str) -> list[KeyRecord]:
        """Every stored version of a key's metadata, oldest first: its audit trail."""
        name = self.layout.metadata(key_id)
        versions: list[KeyRecord] = []
        try:
            paginator = self.ssm.get_paginator("get_parameter_history")
            for page in paginator.paginate(Name=name):
                versions.extend(KeyRecord.from_json(p["Value"]) for p in page["Parameters"])
        except ClientError as error:
            if aws_reason(error) == "ParameterNotFound":
                raise NotFound(f"no key {key_id} in the keyring") from None
            raise _aws_error("ssm:GetParameterHistory", name, error) from error
        except BotoCoreError as error:
            raise _aws_error("ssm:GetParameterHistory", name, error) from error
        return versions

    # -- instances ---------------------------------------------------------------------------

    def set_current(self, instance_id: str, key_id: str) -> None:
        name = self.layout.current(instance_id)
        if self._get_many([name], decrypt=False).get(name) != key_id:
            self._put(name, key_id, overwrite=True)

    def get_current(self, instance_id: str) -> str | None:
        name = self.layout.current(instance_id)
        return self._get_many([name], decrypt=False).get(name)

    def current_pointers(self) -> dict[str, str]:
        """instance ID -> current key ID, for every instance the keyring knows."""
        root = self.layout.instances_root() + "/"
        pointers = {}
        for name, value in self._by_path(self.layout.instances_root()):
            instance_id, _, leaf = name[len(root) :].partition("/")
            if leaf == "current":
                pointers[instance_id] = value
        return pointers

    # -- plumbing ----------------------------------------------------------------------------

    def _put(self, name: str, value: str, *, overwrite: bool) -> None:
        try:
            self.ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=overwrite)
        except AWS_ERRORS as error:
            raise _aws_error("ssm:PutParameter", name, error) from error

    def _get_many(self, names: list[str], *, decrypt: bool) -> dict[str, str]:
        try:
            response = self.ssm.get_parameters(Names=names, WithDecryption=decrypt)
        except AWS_ERRORS as error:
            raise _aws_error("ssm:GetParameters", ", ".join(names), error) from error
        return {p["Name"]: p["Value"] for p in response.get("Parameters", [])}

    def _by_path(self, path: str) -> Iterator[tuple[str, str]]:
        try:
            paginator = self.ssm.get_paginator("get_parameters_by_path")
            for page in paginator.paginate(Path=path, Recursive=True, WithDecryption=False):
                for parameter in page["Parameters"]:
                    if parameter["Type"] != "SecureString":
                        yield parameter["Name"], parameter["Value"]
        except AWS_ERRORS as error:
            raise _aws_error("ssm:GetParametersByPath", path, error) from error


def _digest(pem: str) -> str:
    return hashlib.sha256(pem.encode("ascii")).hexdigest()


def _aws_error(call: str, resource: str, error: Exception) -> AwsCallError:
    return AwsCallError(call, resource, aws_reason(error))
