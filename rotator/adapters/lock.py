"""One rotation at a time per instance: a fenced, renewed lease lock held in SSM."""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lambda_decrypt.keyring import KeyringLayout
from lambda_decrypt.logs import get_logger
from rotator.adapters.aws import aws_call
from rotator.domain.state import LockState
from rotator.errors import AwsCallError

# Raised here, defined with the other errors so that services need no adapter to catch them.
from rotator.errors import LockHeld as LockHeld
from rotator.errors import LockLost as LockLost

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

DEFAULT_LEASE = timedelta(minutes=15)
# SSM's Date header is cut to the second, and clocks drift: what is taken off the half lease that
# a check proves left, before a release trusts it without a read.
TRUST_MARGIN = timedelta(seconds=5)
PROC = Path("/proc")
log = get_logger("rotator.lock")


@dataclass(frozen=True)
class LockHolder:
    """What a taker writes into the lock: who it is, its lease, and what proves it gone.

    Fields missing from a lock written by an older release take their defaults: no token (never
    ours), the default lease, and no process identity (so never provably gone)."""

    host: str
    pid: int
    rotation_id: str
    token: str = ""  # random per acquire: the fence that tells this run's lock from any other
    lease_seconds: float = DEFAULT_LEASE.total_seconds()
    boot_id: str | None = None
    pid_namespace: str | None = None  # e.g. "pid:[4026531836]"
    process_start: str | None = None  # starttime of /proc/<pid>/stat: a reused PID differs
    renewals: int = 0  # changes the value on every renewal, so each one is a new version

    def __post_init__(self) -> None:
        texts = (self.host, self.rotation_id, self.token)
        optional = (self.boot_id, self.pid_namespace, self.process_start)
        if not (
            isinstance(self.pid, int)
            and isinstance(self.lease_seconds, int | float)
            and isinstance(self.renewals, int)
            and all(isinstance(value, str) for value in texts)
            and all(value is None or isinstance(value, str) for value in optional)
        ):
            raise TypeError("malformed lock holder")

    @classmethod
    def this_process(cls, rotation_id: str, lease: timedelta) -> LockHolder:
        """This process, with everything a later run on this machine needs to prove it gone."""
        stat = _process_stat("self")
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            rotation_id=rotation_id,
            token=secrets.token_hex(16),
            lease_seconds=lease.total_seconds(),
            boot_id=_boot_id(),
            pid_namespace=_pid_namespace("self"),
            process_start=None if stat is None else stat[1],
        )

    def provably_gone(self) -> bool:
        """True only when this machine can see for certain that the holder's process ended.

        That needs the same kernel boot and the same PID namespace (a host name alone is shared
        by containers that cannot see each other's processes; namespace inode numbers repeat
        across boots), and then either no process with the PID, or one that is a zombie or that
        started at another time (the PID was reused). Anything unreadable proves nothing."""
        here = (socket.gethostname(), _boot_id(), _pid_namespace("self"))
        if None in here or self.pid <= 0 or (self.host, self.boot_id, self.pid_namespace) != here:
            return False
        try:
            os.kill(self.pid, 0)  # signal 0: only asks whether the PID exists here
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # it exists, run by another user
        return self._pid_now_names_another_or_a_dead_process()

    def _pid_now_names_another_or_a_dead_process(self) -> bool:
        pid = str(self.pid)
        # /proc may be mounted from another PID namespace; only an entry that is in ours and
        # has our PID there is the process that os.kill just found.
        if _pid_namespace(pid) != self.pid_namespace or _innermost_pid(pid) != pid:
            return False
        stat = _process_stat(pid)
        if stat is None:
            return False
        state, started = stat
        if state in ("Z", "X"):  # exited; only its parent has not collected it yet
            return True
        return self.process_start is not None and started != self.process_start

    def to_json(self) -> str:
        return json.dumps(asdict(self))


UNREADABLE = LockHolder("unknown", 0, "unknown", lease_seconds=0)


@dataclass(frozen=True)
class HeldLock:
    """A lock as SSM answered a read of it. Both times are SSM's clock, never the caller's."""

    holder: LockHolder
    version: int
    written_at: datetime  # LastModifiedDate: the lease's start or its last renewal
    seen_at: datetime | None  # the answer's Date header, whole seconds; None if SSM sent none

    @property
    def expires_at(self) -> datetime:
        return self.written_at + timedelta(seconds=self.holder.lease_seconds)

    def expired(self) -> bool:
        """SSM's "now" is at least `seen_at` (Date is cut to the second), so this never ends a
        lease early; without a Date header no lease is judged over."""
        return self.seen_at is not None and self.seen_at >= self.expires_at

    def describe(self) -> str:
        holder = self.holder
        return (
            f"held by {holder.host} pid {holder.pid}, rotation {holder.rotation_id}, "
            f"lease until {self.expires_at:%Y-%m-%d %H:%M:%S} UTC"
        )


def stale_reason(lock: HeldLock) -> str | None:
    """Why the lock may be broken, or None while its holder may still be running."""
    if lock.holder.provably_gone():
        return "its process is no longer running"
    if lock.expired():
        return "its lease has expired"
    return None


def _elapsed_clock() -> float:
    """Seconds on a clock that keeps counting while the machine sleeps (CLOCK_BOOTTIME), as
    SSM's does; the monotonic clock where there is none."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.monotonic() if boottime is None else time.clock_gettime(boottime)


class SsmLease:
    """A lock as its taker holds it: `check()` before every write fences and renews it."""

    def __init__(self, lock: SsmLock, instance_id: str, holder: LockHolder, taken: float) -> None:
        self.lock = lock
        self.instance_id = instance_id
        self.holder = holder
        # Until this moment (on _elapsed_clock) the lock is ours by the lease's own rules: at
        # least half of it was ahead when it was taken or last checked (None: not known).
        self._ours_until: float | None = taken + self._trusted_seconds()

    def check(self) -> None:
        """Raise LockLost unless the lock is still ours and live; past half its lease, renew.

        Exclusive as long as no step runs longer than half the lease between two checks: after
        a check at least half the lease is left, so no other run can judge it over (by SSM's
        clock) while the step writes. A run whose lease ran out stops instead of renewing,
        because another run may already be taking the lock over."""
        asked = _elapsed_clock()
        self._ours_until = None
        current = self.lock.holder(self.instance_id)
        if current is None or current.holder.token != self.holder.token:
            found = "it was removed" if current is None else f"it is now {current.describe()}"
            raise LockLost(self._lost(found))
        if current.expired():
            raise LockLost(self._lost(f"its lease ran out at {current.expires_at:%H:%M:%S} UTC"))
        half = timedelta(seconds=self.holder.lease_seconds / 2)
        if current.seen_at is None or current.seen_at - current.written_at >= half:
            self._renew(current)
        self._ours_until = asked + self._trusted_seconds()

    def release(self) -> None:
        """Delete the lock if it is still ours; a lock another run took over is left alone.

        Within the half lease that its taking or its last check proved ahead, no other run may
        break it (it is neither expired by SSM's clock nor held by a process gone), so it is
        deleted as any write under it is made: fenced by that check, without another read.
        Past that, or once a check failed, it is read first. SSM has no conditional delete: a
        lock taken over between that read and the delete would be removed, which needs our
        lease to have run out first (see `check`)."""
        ours_until, self._ours_until = self._ours_until, None
        if ours_until is None or _elapsed_clock() >= ours_until:
            current = self.lock.holder(self.instance_id)
            if current is None or current.holder.token != self.holder.token:
                return
        self.lock.delete(self.instance_id)

    def _trusted_seconds(self) -> float:
        return self.holder.lease_seconds / 2 - TRUST_MARGIN.total_seconds()

    def _renew(self, current: HeldLock) -> None:
        # SSM has no conditional overwrite, so re-read-and-compare (just done) is the best it
        # offers. A run that broke our lock and created its own between that read and this
        # overwrite is caught by the version the overwrite returns (not the next of ours).
        renewed = replace(self.holder, renewals=current.holder.renewals + 1)
        version = self.lock.write(self.instance_id, renewed, overwrite=True)
        self.holder = renewed
        if version != current.version + 1:
            raise LockLost(self._lost("another run wrote it while it was being renewed"))
        log.info("lock_renewed", instance_id=self.instance_id, rotation_id=renewed.rotation_id)

    def _lost(self, why: str) -> str:
        return (
            f"instance {self.instance_id}: rotation {self.holder.rotation_id} lost its lock "
            f"({why}); it stopped before its next write"
        )


class SsmLock:
    """`{prefix}/locks/{instance_id}`: created without Overwrite, so exactly one taker wins."""

    def __init__(self, ssm: SSMClient, prefix: str, lease: timedelta = DEFAULT_LEASE) -> None:
        self.ssm = ssm
        self.layout = KeyringLayout(prefix)
        self.lease = lease

    def acquire(self, instance_id: str, rotation_id: str) -> SsmLease:
        """Take the lock (a stale one is broken first), or raise LockHeld."""
        mine = LockHolder.this_process(rotation_id, self.lease)
        asked = _elapsed_clock()
        current = self._take(instance_id, mine)
        if current is not None:
            reason = stale_reason(current)
            if reason is None:
                raise LockHeld(instance_id, current.describe())
            if self.break_lock(instance_id, current):
                log.warning(
                    "stale_lock_removed", instance_id=instance_id, detail=current.describe()
                )
            asked = _elapsed_clock()
            current = self._take(instance_id, mine)
            if current is not None:
                raise LockHeld(instance_id, current.describe())
        return SsmLease(self, instance_id, mine, asked)

    def clear_if_stale(self, instance_id: str) -> str | None:
        """Remove a lock whose holder is provably gone or whose lease expired; say why."""
        current = self.holder(instance_id)
        reason = stale_reason(current) if current else None
        if current is None or reason is None or not self.break_lock(instance_id, current):
            return None
        return f"removed the stale lock {current.describe()}: {reason}"

    def holder(self, instance_id: str) -> HeldLock | None:
        name = self.layout.lock(instance_id)
        try:
            with aws_call("ssm:GetParameter", name):
                answer = self.ssm.get_parameter(Name=name)
        except AwsCallError as error:
            if error.reason == "ParameterNotFound":
                return None
            raise
        return _held(answer["Parameter"], _server_time(answer))

    def holders(self) -> dict[str, HeldLock]:
        """instance ID -> its lock, for every lock held: one paginated sweep."""
        root = self.layout.locks_root()
        found = {}
        with aws_call("ssm:GetParametersByPath", root):
            paginator = self.ssm.get_paginator("get_parameters_by_path")
            for page in paginator.paginate(Path=root, Recursive=True):
                seen_at = _server_time(page)
                for parameter in page["Parameters"]:
                    found[parameter["Name"][len(root) + 1 :]] = _held(parameter, seen_at)
        return found

    def states(self) -> dict[str, LockState]:
        """Every lock held, described for the read model, from the one sweep of `holders`."""
        return {
            instance_id: LockState(held.describe(), stale_reason(held))
            for instance_id, held in self.holders().items()
        }

    def break_lock(self, instance_id: str, expected: HeldLock) -> bool:
        """Remove a lock only if it is still the one judged stale (same holder, same version)."""
        current = self.holder(instance_id)
        if current is None or (current.holder, current.version) != (
            expected.holder,
            expected.version,
        ):
            return False
        self.delete(instance_id)
        return True

    def write(self, instance_id: str, holder: LockHolder, *, overwrite: bool) -> int:
        """Put the lock's value; the parameter version SSM gave it."""
        name = self.layout.lock(instance_id)
        with aws_call("ssm:PutParameter", name):
            answer = self.ssm.put_parameter(
                Name=name, Value=holder.to_json(), Type="String", Overwrite=overwrite
            )
        return answer["Version"]

    def delete(self, instance_id: str) -> None:
        name = self.layout.lock(instance_id)
        try:
            with aws_call("ssm:DeleteParameter", name):
                self.ssm.delete_parameter(Name=name)
        except AwsCallError as error:
            if error.reason != "ParameterNotFound":
                raise

    def _take(self, instance_id: str, mine: LockHolder) -> HeldLock | None:
        """Create the lock for `mine`: None once it is ours, else the lock in the way."""
        for _ in range(2):
            try:
                self.write(instance_id, mine, overwrite=False)
                return None
            except AwsCallError as error:
                if error.reason != "ParameterAlreadyExists":
                    raise
            current = self.holder(instance_id)
            if current is None:
                continue  # released between our create and our read: try once more
            if current.holder.token == mine.token:
                return None  # our create landed, its answer was lost, botocore's retry met it
            return current
        raise LockHeld(instance_id, "held by another process (it was taken and released twice)")


def _held(parameter: Any, seen_at: datetime | None) -> HeldLock:
    return HeldLock(
        holder=_parse_holder(parameter["Value"]),
        version=parameter["Version"],
        written_at=parameter["LastModifiedDate"].astimezone(UTC),
        seen_at=seen_at,
    )


def _server_time(answer: Any) -> datetime | None:
    """SSM's clock: the Date header of its answer (RFC 7231, whole seconds, UTC)."""
    date = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date).astimezone(UTC) if date else None
    except (TypeError, ValueError):
        return None


def _parse_holder(raw: str) -> LockHolder:
    """An unreadable lock is still a lock: its holder is unknown and its lease over at once."""
    try:
        data = json.loads(raw)
        return LockHolder(**{f.name: data[f.name] for f in fields(LockHolder) if f.name in data})
    except (ValueError, TypeError):
        return UNREADABLE


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _boot_id() -> str | None:
    return _read(PROC / "sys/kernel/random/boot_id")


def _pid_namespace(pid: str) -> str | None:
    try:
        return str((PROC / pid / "ns/pid").readlink())
    except OSError:
        return None


def _innermost_pid(pid: str) -> str | None:
    """The process's PID in its own namespace (the last NSpid entry, Linux 4.1+)."""
    for line in (_read(PROC / pid / "status") or "").splitlines():
        if line.startswith("NSpid:"):
            return line.split()[-1]
    return None


def _process_stat(pid: str) -> tuple[str, str] | None:
    """(state, starttime) from /proc/<pid>/stat; the name before them may hold anything."""
    stat = _read(PROC / pid / "stat")
    if stat is None or ")" not in stat:
        return None
    rest = stat.rsplit(")", 1)[1].split()
    return (rest[0], rest[19]) if len(rest) > 19 else None
