"""One rotation at a time per instance: a lease lock held in SSM (atomic create, no new service)."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from lambda_decrypt.keyring import KeyringLayout
from rotator.adapters.aws import aws_call
from rotator.errors import AwsCallError, ConnectKeyRotatorError

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

DEFAULT_LEASE = timedelta(minutes=15)


class LockHeld(ConnectKeyRotatorError):
    """Another rotation holds the instance's lock and its lease has not expired."""


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    started_at: str
    expires_at: str
    rotation_id: str

    def expired(self, now: datetime) -> bool:
        return now >= datetime.fromisoformat(self.expires_at)

    def provably_gone(self) -> bool:
        """Same host, and no process with that ID runs any more."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def describe(self) -> str:
        return (
            f"held by {self.host} pid {self.pid} since {self.started_at} "
            f"(rotation {self.rotation_id}, lease until {self.expires_at})"
        )


def stale_reason(holder: LockHolder, now: datetime) -> str | None:
    if holder.provably_gone():
        return "its process is no longer running"
    if holder.expired(now):
        return "its lease has expired"
    return None


class SsmLock:
    """`{prefix}/locks/{instance_id}`: created without Overwrite, so exactly one taker wins."""

    def __init__(self, ssm: SSMClient, prefix: str, lease: timedelta = DEFAULT_LEASE) -> None:
        self.ssm = ssm
        self.layout = KeyringLayout(prefix)
        self.lease = lease

    def acquire(self, instance_id: str, rotation_id: str, now: datetime) -> LockHolder:
        holder = LockHolder(
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=now.isoformat(),
            expires_at=(now + self.lease).isoformat(),
            rotation_id=rotation_id,
        )
        if self._create(instance_id, holder):
            return holder
        current = self.holder(instance_id)
        if current is None:  # released between our create and our read: try once more
            if self._create(instance_id, holder):
                return holder
            current = self.holder(instance_id)
        reason = stale_reason(current, now) if current else None
        if current is None or reason is None:
            detail = current.describe() if current else "held by another process"
            raise LockHeld(f"instance {instance_id} is being rotated: lock {detail}")
        self.break_lock(instance_id, current)
        if not self._create(instance_id, holder):
            raise LockHeld(
                f"instance {instance_id}: another process took over the stale lock first"
            )
        return holder

    def clear_if_stale(self, instance_id: str, now: datetime) -> str | None:
        """Remove a lock whose holder is provably gone or whose lease expired; say why."""
        holder = self.holder(instance_id)
        reason = stale_reason(holder, now) if holder else None
        if holder is None or reason is None or not self.break_lock(instance_id, holder):
            return None
        return f"removed the stale lock {holder.describe()}: {reason}"

    def release(self, instance_id: str, holder: LockHolder) -> None:
        """Delete the lock if it is still ours (a lock taken over by someone else is left)."""
        if self.holder(instance_id) == holder:
            self._delete(instance_id)

    def holder(self, instance_id: str) -> LockHolder | None:
        name = self.layout.lock(instance_id)
        try:
            with aws_call("ssm:GetParameter", name):
                raw = self.ssm.get_parameter(Name=name)["Parameter"]["Value"]
        except AwsCallError as error:
            if error.reason == "ParameterNotFound":
                return None
            raise
        return _parse_holder(raw)

    def holders(self) -> dict[str, LockHolder]:
        """instance ID -> its lock's holder, for every lock held: one paginated sweep."""
        root = self.layout.locks_root()
        found = {}
        with aws_call("ssm:GetParametersByPath", root):
            paginator = self.ssm.get_paginator("get_parameters_by_path")
            for page in paginator.paginate(Path=root, Recursive=True):
                for parameter in page["Parameters"]:
                    instance_id = parameter["Name"][len(root) + 1 :]
                    found[instance_id] = _parse_holder(parameter["Value"])
        return found

    def break_lock(self, instance_id: str, expected: LockHolder) -> bool:
        """Remove a lock only if it is still held by `expected` (the runbook's way out)."""
        if self.holder(instance_id) != expected:
            return False
        self._delete(instance_id)
        return True

    def _create(self, instance_id: str, holder: LockHolder) -> bool:
        name = self.layout.lock(instance_id)
        try:
            with aws_call("ssm:PutParameter", name):
                self.ssm.put_parameter(
                    Name=name, Value=json.dumps(asdict(holder)), Type="String", Overwrite=False
                )
        except AwsCallError as error:
            if error.reason == "ParameterAlreadyExists":
                return False
            raise
        return True

    def _delete(self, instance_id: str) -> None:
        name = self.layout.lock(instance_id)
        try:
            with aws_call("ssm:DeleteParameter", name):
                self.ssm.delete_parameter(Name=name)
        except AwsCallError as error:
            if error.reason != "ParameterNotFound":
                raise


def _parse_holder(raw: str) -> LockHolder:
    """An unreadable lock is still a lock: its holder is unknown and its lease long over."""
    try:
        return LockHolder(**json.loads(raw))
    except (ValueError, TypeError):
        return LockHolder("unknown", 0, "unknown", "1970-01-01T00:00:00+00:00", "unknown")
