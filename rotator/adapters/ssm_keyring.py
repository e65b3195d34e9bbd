"""The keyring in SSM Parameter Store: the rotator's writer and its metadata/history reader."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from lambda_decrypt.keyring import KeyringLayout, KeyringReader
from rotator.adapters.aws import aws_call
from rotator.adapters.history import SsmHistory
from rotator.domain.history import (
    ClockKind,
    HistoryEvent,
    key_transition_events,
    rotation_step_event,
)
from rotator.domain.keys import KeyMaterial, load_key_material
from rotator.domain.lifecycle import KeyRecord, Transition
from rotator.domain.rotation import ManagedInstance, RotationState, StepDone
from rotator.domain.state import InstanceEntry as InstanceEntry
from rotator.errors import AwsCallError, KeyringConflict, NotFound
from rotator.ports import KeyPart, ProtectedKey, ProtectionSweep

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

# DescribeParameters answers at most 50 parameters a page.
DESCRIBE_PAGE_SIZE = 50
# GetParameters takes at most 10 names a call.
GET_BATCH_SIZE = 10


class SsmKeyring:
    """The `Keyring` port in SSM: `{prefix}/keys/...`, `{prefix}/staging/...` and
    `{prefix}/instances/...` (see KeyringLayout; callers never spell parameter names).

    A private key parameter is only ever created, never overwritten: a key ID names one key
    for life. Metadata and the rotation record are overwritten (the latest state, cached);
    each change they record is first appended to `history` (see SsmHistory), the audit trail.
    `clock` says which clock the times passed in come from, for the events.
    """

    def __init__(
        self,
        ssm: SSMClient,
        prefix: str,
        *,
        kms_key_id: str | None = None,
        clock: ClockKind = ClockKind.REAL,
    ) -> None:
        self.ssm = ssm
        self.layout = KeyringLayout(prefix)
        self.kms_key_id = kms_key_id
        self.clock = clock
        self.history = SsmHistory(ssm, prefix)

    # -- keys --------------------------------------------------------------------------------

    def store_key(self, key_id: str, material: KeyMaterial, record: KeyRecord) -> None:
        """Create the key's three parameters; a re-run with the same material is a no-op."""
        self.create_private_key(key_id, material.private_key_pem)
        self.store_certificate(key_id, material.certificate_pem)
        self.put_record(record)

    def create_private_key(self, key_id: str, private_key_pem: str) -> None:
        """Create the SecureString once; the same PEM again is fine, a different one refused."""
        self._create_secret(
            self.layout.private_key(key_id), private_key_pem, f"private key {key_id}"
        )

    def store_certificate(self, key_id: str, certificate_pem: str, *, new: bool = False) -> None:
        """A new version unless it holds this certificate; a `new` key's is put without reading
        first (there is nothing to compare with)."""
        name = self.layout.certificate(key_id)
        if new:
            self._put(name, certificate_pem, overwrite=True)
        else:
            self._put_string(name, certificate_pem)

    def _create_secret(self, name: str, value: str, what: str) -> None:
        """Create a SecureString without Overwrite: an existing different value is a conflict."""
        secure: dict[str, str] = {"KeyId": self.kms_key_id} if self.kms_key_id else {}
        try:
            with aws_call("ssm:PutParameter", name):
                self.ssm.put_parameter(
                    Name=name,
                    Value=value,
                    Type="SecureString",
                    Overwrite=False,
                    Description=f"connect-key-rotator {what}",
                    **secure,  # type: ignore[arg-type]
                )
        except AwsCallError as error:
            if error.reason != "ParameterAlreadyExists":
                raise
            existing = self._get_many([name], decrypt=True).get(name)
            if existing is None or _digest(existing) != _digest(value):
                raise KeyringConflict(
                    f"{name} already holds a different {what}; it is never replaced"
                ) from None

    def read_certificate(self, key_id: str) -> str:
        name = self.layout.certificate(key_id)
        certificate = self._get_string(name)
        if certificate is None:
            raise NotFound(f"no certificate stored for key ID {key_id}")
        return certificate

    def read_material(self, key_id: str, *, validated: bool = False) -> KeyMaterial:
        """Read a key back and validate it fully: the proof that what was stored is usable
        (`validated=True`: this process validated it in full already; see load_key_material)."""
        private_name = self.layout.private_key(key_id)
        cert_name = self.layout.certificate(key_id)
        values = self._get_many([private_name, cert_name], decrypt=True)
        if private_name not in values:
            raise NotFound(f"no private key stored for key ID {key_id}")
        if cert_name not in values:
            raise NotFound(f"no certificate stored for key ID {key_id}")
        return load_key_material(values[private_name], values[cert_name], validated=validated)

    def read_private_key_pem(self, key_id: str) -> str:
        """The private key PEM alone (keys adopted without a certificate)."""
        name = self.layout.private_key(key_id)
        values = self._get_many([name], decrypt=True)
        if name not in values:
            raise NotFound(f"no private key stored for key ID {key_id}")
        return values[name]

    def find_private_key(self, key_id: str) -> str | None:
        name = self.layout.private_key(key_id)
        return self._get_many([name], decrypt=True).get(name)

    def stored_parts(self, key_id: str) -> frozenset[KeyPart]:
        """Which of the key's private key and certificate exist: one read, nothing decrypted."""
        names = {
            self.layout.private_key(key_id): KeyPart.PRIVATE_KEY,
            self.layout.certificate(key_id): KeyPart.CERTIFICATE,
        }
        return frozenset(names[name] for name in self._existing(list(names)))

    def stored_private_keys(self, key_ids: Sequence[str]) -> set[str]:
        """Those of `key_ids` whose private key exists, read 10 at a time, never decrypted."""
        names = {self.layout.private_key(key_id): key_id for key_id in key_ids}
        return {names[name] for name in self._existing(list(names))}

    def delete_private_key(self, key_id: str) -> None:
        """Gone already is fine (a destroy may be redone)."""
        self._delete(self.layout.private_key(key_id))

    def private_key_protection(self) -> dict[str, ProtectedKey]:
        """Key ID -> its private key's parameter and KMS key: one DescribeParameters sweep."""
        return self.protection_sweep().keys

    def protection_sweep(self) -> ProtectionSweep:
        """Stored and staged private keys with their parameter and KMS key: one sweep."""
        keys, staged = {}, {}
        staging = self.layout.staging_root() + "/"
        for name, kms_key_id in self._secure_parameters().items():
            key_id = self.layout.key_id_of(name)
            if key_id is not None and name == self.layout.private_key(key_id):
                keys[key_id] = ProtectedKey(name, kms_key_id)
            elif name.startswith(staging):
                rotation_id = name[len(staging) :].partition("/")[0]
                if name == self.layout.staged_private_key(rotation_id):
                    staged[rotation_id] = ProtectedKey(name, kms_key_id)
        return ProtectionSweep(keys, staged)

    def decrypt_keys(self) -> KeyringReader:
        """A fresh `lambda_decrypt` reader on this client: the Lambda's own code path, no cache."""
        return KeyringReader(self.layout.prefix, ssm_client_factory=lambda: self.ssm)

    @property
    def prefix(self) -> str:
        return self.layout.prefix

    # -- staging -----------------------------------------------------------------------------

    def stage_key(self, rotation_id: str, material: KeyMaterial) -> None:
        """Certificate first: a crash between the two writes leaves no orphaned private key."""
        self._put(
            self.layout.staged_certificate(rotation_id), material.certificate_pem, overwrite=True
        )
        self._create_secret(
            self.layout.staged_private_key(rotation_id),
            material.private_key_pem,
            "staged private key",
        )

    def read_staged(self, rotation_id: str, *, validated: bool = False) -> KeyMaterial | None:
        """The key staged under the rotation ID, loaded (see load_key_material); None unless
        both its private key and certificate are there."""
        key_name = self.layout.staged_private_key(rotation_id)
        cert_name = self.layout.staged_certificate(rotation_id)
        values = self._get_many([key_name, cert_name], decrypt=True)
        pem, certificate = values.get(key_name), values.get(cert_name)
        if pem is None or certificate is None:
            return None
        return load_key_material(pem, certificate, validated=validated)

    def staged_rotation_ids(self) -> set[str]:
        """The rotation IDs that have anything under `{prefix}/staging/` (never decrypted)."""
        root = self.layout.staging_root()
        with aws_call("ssm:GetParametersByPath", root):
            paginator = self.ssm.get_paginator("get_parameters_by_path")
            pages = list(paginator.paginate(Path=root, Recursive=True, WithDecryption=False))
        names = [p["Name"] for page in pages for p in page["Parameters"]]
        return {name[len(root) + 1 :].partition("/")[0] for name in names}

    def orphaned_staging(self) -> set[str]:
        """Staged rotation IDs that no unfinished rotation owns. A rotation records its ID
        before it stages, so a rotation running concurrently owns its staging."""
        staged = self.staged_rotation_ids()
        if not staged:
            return set()
        owned = {
            entry.rotation.rotation_id
            for entry in self.instance_entries()
            if entry.rotation is not None and not entry.rotation.finished
        }
        return staged - owned

    def delete_staging(self, rotation_id: str) -> None:
        self._delete(
            self.layout.staged_private_key(rotation_id), self.layout.staged_certificate(rotation_id)
        )

    # -- metadata ----------------------------------------------------------------------------

    def put_record(self, record: KeyRecord) -> None:
        """Write a new metadata version unless nothing changed (versions stay meaningful)."""
        existing = self.find_record(record.key_id)
        if existing != record:
            self._write_record(() if existing is None else existing.history, record)

    def write_record(self, record: KeyRecord) -> None:
        """Write a metadata version the caller knows to be one transition (its last), without
        reading the stored record first; put_record finds any number of new transitions."""
        self._write_record(record.history[:-1], record)

    def _write_record(self, recorded: Sequence[Transition], record: KeyRecord) -> None:
        """History first: a crash in between leaves an event the metadata does not show yet
        (the redo records the transition again), never a transition without its event."""
        for event in key_transition_events(recorded, record, self.clock):
            self.history.append(event)
        self._put(self.layout.metadata(record.key_id), record.to_json(), overwrite=True)

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

    def find_records(self, key_ids: Iterable[str]) -> dict[str, KeyRecord | None]:
        """Key ID -> its metadata (None: no such key), 10 keys a GetParameters call."""
        names = {self.layout.metadata(key_id): key_id for key_id in dict.fromkeys(key_ids)}
        values = self._get_batched(list(names), decrypt=False)
        return {
            key_id: None if name not in values else KeyRecord.from_json(values[name])
            for name, key_id in names.items()
        }

    def records(self) -> list[KeyRecord]:
        """Every key's metadata, read page by page (no decryption needed)."""
        suffix = "/metadata"
        found = [
            KeyRecord.from_json(value)
            for name, value in self._by_path(self.layout.keys_root())
            if name.endswith(suffix)
        ]
        return sorted(found, key=lambda r: (r.instance_id or "", r.created_at, r.key_id))

    def metadata_versions(self, key_id: str) -> list[KeyRecord]:
        """The stored versions of a key's metadata, oldest first (SSM keeps the last 100; the
        audit trail is `history`)."""
        name = self.layout.metadata(key_id)
        versions: list[KeyRecord] = []
        try:
            with aws_call("ssm:GetParameterHistory", name):
                paginator = self.ssm.get_paginator("get_parameter_history")
                for page in paginator.paginate(Name=name):
                    versions.extend(KeyRecord.from_json(p["Value"]) for p in page["Parameters"])
        except AwsCallError as error:
            if error.reason == "ParameterNotFound":
                raise NotFound(f"no key {key_id} in the keyring") from None
            raise
        return versions

    # -- instances ---------------------------------------------------------------------------

    def set_current(self, instance_id: str, key_id: str) -> None:
        self._put_string(self.layout.current(instance_id), key_id)

    def get_current(self, instance_id: str) -> str | None:
        return self._get_string(self.layout.current(instance_id))

    def current_pointers(self) -> dict[str, str]:
        """instance ID -> current key ID, for every instance the keyring knows."""
        return {
            instance_id: leaves["current"]
            for instance_id, leaves in self._instance_parameters().items()
            if "current" in leaves
        }

    def managed_instances(self) -> list[ManagedInstance]:
        """Every instance `rotator init` put under management, sorted by ID."""
        found = [
            ManagedInstance.from_json(leaves["config"])
            for leaves in self._instance_parameters().values()
            if "config" in leaves
        ]
        return sorted(found, key=lambda m: m.instance_id)

    def history_events(self) -> list[HistoryEvent]:
        """The whole history, oldest first."""
        return self.history.events()

    def append_event(self, event: HistoryEvent) -> None:
        self.history.append(replace(event, clock=self.clock))

    def instance_entries(self) -> list[InstanceEntry]:
        """Every instance's config, current key and rotation in one paginated sweep, by ID."""
        entries = []
        for instance_id, leaves in sorted(self._instance_parameters().items()):
            config, rotation = leaves.get("config"), leaves.get("rotation")
            entries.append(
                InstanceEntry(
                    instance_id=instance_id,
                    config=None if config is None else ManagedInstance.from_json(config),
                    current_key_id=leaves.get("current"),
                    rotation=None if rotation is None else RotationState.from_json(rotation),
                )
            )
        return entries

    def instance_snapshot(
        self, instance_id: str, key_ids: Iterable[str] = ()
    ) -> tuple[InstanceEntry, dict[str, KeyRecord | None]]:
        """The instance's config, current key and rotation, and the metadata of `key_ids` (None:
        no such key), read together: 10 parameters a GetParameters call."""
        leaves = {
            self.layout.instance_config(instance_id): "config",
            self.layout.current(instance_id): "current",
            self.layout.rotation(instance_id): "rotation",
        }
        keys = {self.layout.metadata(key_id): key_id for key_id in dict.fromkeys(key_ids)}
        values = self._get_batched([*leaves, *keys], decrypt=False)
        found = {leaf: values[name] for name, leaf in leaves.items() if name in values}
        config, rotation = found.get("config"), found.get("rotation")
        entry = InstanceEntry(
            instance_id=instance_id,
            config=None if config is None else ManagedInstance.from_json(config),
            current_key_id=found.get("current"),
            rotation=None if rotation is None else RotationState.from_json(rotation),
        )
        records = {
            key_id: None if name not in values else KeyRecord.from_json(values[name])
            for name, key_id in keys.items()
        }
        return entry, records

    def get_instance(self, instance_id: str) -> ManagedInstance | None:
        raw = self._get_string(self.layout.instance_config(instance_id))
        return None if raw is None else ManagedInstance.from_json(raw)

    def put_instance(self, instance: ManagedInstance) -> None:
        self._put_string(self.layout.instance_config(instance.instance_id), instance.to_json())

    def get_rotation(self, instance_id: str) -> RotationState | None:
        raw = self._get_string(self.layout.rotation(instance_id))
        return None if raw is None else RotationState.from_json(raw)

    def put_rotation(
        self,
        steps: Sequence[StepDone],
        *,
        at: datetime,
        current: str | None = None,
        checkpoint: RotationState | None = None,
    ) -> None:
        """Record the rotation steps done at `at`, in order, with what they changed (see the
        port). History first, in one write while the events fit a parameter (each step's key
        transitions, then the step); then each changed key's latest record, the `current`
        pointer, and last the `checkpoint` rotation record. None of them is read first: the
        steps know they change. A crash in between leaves events that the state does
        not show yet (the redo records them again), never a change without its event."""
        events: list[HistoryEvent] = []
        latest: dict[str, KeyRecord] = {}
        for step in steps:
            for record in step.records:
                events += key_transition_events(record.history[:-1], record, self.clock)
                latest[record.key_id] = record
            events.append(rotation_step_event(step.state, at, self.clock))
        self.history.append_all(events)
        for record in latest.values():
            self._put(self.layout.metadata(record.key_id), record.to_json(), overwrite=True)
        if current is not None:
            self._put(self.layout.current(steps[-1].state.instance_id), current, overwrite=True)
        if checkpoint is not None:
            self._put(
                self.layout.rotation(checkpoint.instance_id), checkpoint.to_json(), overwrite=True
            )

    # -- outside the keyring -----------------------------------------------------------------

    def read_blog_key(self, key_parameter: str, key_id_parameter: str) -> tuple[str, str]:
        """(key ID, private key PEM) from the blog deployment's two parameters: one read."""
        names = [key_parameter, key_id_parameter]
        values = self._get_many(names, decrypt=True)
        missing = [name for name in names if name not in values]
        if missing:
            raise NotFound(f"blog parameter(s) not found: {', '.join(missing)}")
        return values[key_id_parameter].strip(), values[key_parameter]

    def existing_outside(self, names: Sequence[str]) -> set[str]:
        """Which of these parameters exist: DescribeParameters by name, 50 names a call, so
        that nothing is decrypted (and no GetParameters grant on them is needed: the rotator's
        role may describe every parameter but read none outside the keyring)."""
        found: set[str] = set()
        for start in range(0, len(names), DESCRIBE_PAGE_SIZE):
            batch = list(names[start : start + DESCRIBE_PAGE_SIZE])
            with aws_call("ssm:DescribeParameters", ", ".join(batch)):
                paginator = self.ssm.get_paginator("describe_parameters")
                pages = paginator.paginate(
                    ParameterFilters=[{"Key": "Name", "Option": "Equals", "Values": batch}],
                    PaginationConfig={"PageSize": DESCRIBE_PAGE_SIZE},
                )
                for page in pages:
                    found.update(p["Name"] for p in page["Parameters"] if p["Name"] in batch)
        return found

    # -- by parameter name: private to this adapter ------------------------------------------

    def _secure_parameters(self) -> dict[str, str]:
        """Every SecureString under the prefix -> the KMS key protecting it (as SSM reports it):
        one paginated DescribeParameters sweep, 50 a page, nothing decrypted."""
        prefix = self.layout.prefix
        found: dict[str, str] = {}
        with aws_call("ssm:DescribeParameters", prefix):
            paginator = self.ssm.get_paginator("describe_parameters")
            pages = paginator.paginate(
                ParameterFilters=[
                    {"Key": "Path", "Option": "Recursive", "Values": [prefix]},
                    {"Key": "Type", "Values": ["SecureString"]},
                ],
                PaginationConfig={"PageSize": DESCRIBE_PAGE_SIZE},
            )
            for page in pages:
                for parameter in page["Parameters"]:
                    found[parameter["Name"]] = parameter.get("KeyId", "")
        return found

    def _existing(self, names: list[str]) -> set[str]:
        """Which of these parameters exist, read 10 at a time and never decrypted."""
        return set(self._get_batched(names, decrypt=False))

    # -- plumbing ----------------------------------------------------------------------------

    def _put_string(self, name: str, value: str) -> None:
        """Write a String parameter (a new version), unless it already holds this value."""
        if self._get_many([name], decrypt=False).get(name) != value:
            self._put(name, value, overwrite=True)

    def _get_string(self, name: str) -> str | None:
        return self._get_many([name], decrypt=False).get(name)

    def _delete(self, *names: str) -> None:
        """Delete parameters; ones already gone are fine (deletion is a step that may be redone)."""
        for start in range(0, len(names), 10):
            batch = list(names[start : start + 10])
            with aws_call("ssm:DeleteParameters", ", ".join(batch)):
                self.ssm.delete_parameters(Names=batch)

    def _put(self, name: str, value: str, *, overwrite: bool) -> None:
        with aws_call("ssm:PutParameter", name):
            self.ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=overwrite)

    def _get_batched(self, names: list[str], *, decrypt: bool) -> dict[str, str]:
        """Any number of names, GET_BATCH_SIZE a call."""
        found: dict[str, str] = {}
        for start in range(0, len(names), GET_BATCH_SIZE):
            found.update(self._get_many(names[start : start + GET_BATCH_SIZE], decrypt=decrypt))
        return found

    def _get_many(self, names: list[str], *, decrypt: bool) -> dict[str, str]:
        with aws_call("ssm:GetParameters", ", ".join(names)):
            response = self.ssm.get_parameters(Names=names, WithDecryption=decrypt)
        return {p["Name"]: p["Value"] for p in response.get("Parameters", [])}

    def _instance_parameters(self) -> dict[str, dict[str, str]]:
        """instance ID -> {leaf name ("config", "current", "rotation"): value}."""
        root = self.layout.instances_root() + "/"
        found: defaultdict[str, dict[str, str]] = defaultdict(dict)
        for name, value in self._by_path(self.layout.instances_root()):
            instance_id, _, leaf = name[len(root) :].partition("/")
            found[instance_id][leaf] = value
        return dict(found)

    def _by_path(self, path: str) -> Iterator[tuple[str, str]]:
        with aws_call("ssm:GetParametersByPath", path):
            paginator = self.ssm.get_paginator("get_parameters_by_path")
            pages = list(paginator.paginate(Path=path, Recursive=True, WithDecryption=False))
        for page in pages:
            for parameter in page["Parameters"]:
                if parameter["Type"] != "SecureString":
                    yield parameter["Name"], parameter["Value"]


def _digest(pem: str) -> str:
    return hashlib.sha256(pem.encode("ascii")).hexdigest()
