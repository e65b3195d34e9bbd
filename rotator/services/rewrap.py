"""Rewrap: re-encrypt each stored ciphertext of an old key for its instance's current key.

Per value: decrypt in memory with the keyring's private key (the decrypt Lambda's code path),
encrypt for the current certificate and key ID exactly as Connect does, check the new value
decrypts to the same bytes, and write the record back only if it is unchanged since it was read.
Plaintext exists only in local variables: every failure is re-raised as a RewrapFailed that
names the record and the error's type, never its message (which could quote what it handled).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from threading import Lock
from typing import Any, TextIO
from urllib.parse import quote

from lambda_decrypt.decrypt import Decryptor, KeySource
from lambda_decrypt.errors import DecryptError
from lambda_decrypt.keys import ConnectKey
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.history import ClockKind
from rotator.domain.stored_ciphertext import (
    SAMPLE_SIZE,
    ConcurrentChange,
    Inventory,
    KeyCount,
    StoredRecord,
    parse_store_uri,
)
from rotator.errors import ConnectKeyRotatorError
from rotator.ports import Checkpoint, CiphertextStore, Keyring
from rotator.services.inventory import inventory_event


class RewrapRefused(ConnectKeyRotatorError):
    """The rewrap cannot start (no current key to rewrap to, a checkpoint without --resume)."""


class RewrapFailed(ConnectKeyRotatorError):
    """One value could not be rewrapped; the message never holds a value or plaintext."""


@dataclass
class RewrapProgress:
    """Where a rewrap is: records read and written, values rewrapped, problems so far."""

    records_read: int = 0
    records_written: int = 0
    values_rewrapped: int = 0
    skipped_done: int = 0
    conflicts: int = 0
    failures: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class RewrapResult:
    """What a rewrap did (or, dry, would do); `conflicts` and `failures` are left for --resume."""

    from_key: str
    to_key: str
    stores: list[str]
    dry_run: bool
    progress: RewrapProgress
    values_found: int = 0
    records_found: int = 0
    values_left: int = 0  # values of records left for --resume (conflicts, failures)
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # (store, ref)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (store, ref, why)

    @property
    def ok(self) -> bool:
        return not self.conflicts and not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "from_key": self.from_key,
            "to_key": self.to_key,
            "stores": self.stores,
            "dry_run": self.dry_run,
            "records_found": self.records_found,
            "values_found": self.values_found,
            "values_left": self.values_left,
            **self.progress.to_dict(),
            "conflicts": [{"store": s, "ref": r} for s, r in self.conflicts],
            "failures": [{"store": s, "ref": r, "error": e} for s, r, e in self.failures],
        }


class _KeysOnce:
    """The keyring's decrypt keys, each loaded once for the whole run (a PEM load is costly)."""

    def __init__(self, keys: KeySource) -> None:
        self._keys = keys
        self._loaded: dict[str, ConnectKey] = {}
        self._lock = Lock()

    def get(self, key_id: str) -> ConnectKey:
        with self._lock:
            if key_id not in self._loaded:
                self._loaded[key_id] = self._keys.get(key_id)
            return self._loaded[key_id]


class Rewrapper:
    """Rewraps every stored ciphertext of `from_key` for its instance's current key."""

    def __init__(self, keyring: Keyring, from_key: str) -> None:
        self.keyring = keyring
        self.from_key = from_key
        record = keyring.get_record(from_key)
        if record.instance_id is None:
            raise RewrapRefused(f"key {from_key} belongs to no instance: no current key to use")
        current = keyring.get_current(record.instance_id)
        if current is None:
            raise RewrapRefused(f"instance {record.instance_id} has no current key")
        if current == from_key:
            raise RewrapRefused(
                f"key {from_key} is the current key of {record.instance_id}: rotate first "
                "(rotator rotate), then rewrap its stored ciphertexts"
            )
        self.to_key = current
        self.instance_id = record.instance_id
        self._certificate = keyring.read_certificate(current)
        self._decryptor = Decryptor(_KeysOnce(keyring.decrypt_keys()))

    def rewrap_value(self, text: str) -> str:
        """The same plaintext under the current key, proven to decrypt back to it."""
        try:
            old = self._decryptor.decrypt(text)
            if old.key_id != self.from_key:
                raise RewrapFailed(f"the value is under key {old.key_id}, not {self.from_key}")
            new = encrypt_like_connect(
                old.plaintext, key_id=self.to_key, certificate_pem=self._certificate
            )
            check = self._decryptor.decrypt(new)
            if check.key_id != self.to_key or not hmac.compare_digest(
                check.plaintext, old.plaintext
            ):
                raise RewrapFailed("the new value does not decrypt to the same bytes")
            return new
        except RewrapFailed:
            raise
        except DecryptError as error:
            raise RewrapFailed(f"decrypt failed: {error.code}") from None
        except Exception as error:  # noqa: BLE001 - the type only: a message could quote data
            raise RewrapFailed(f"rewrap failed: {type(error).__name__}") from None

    def run(
        self,
        stores: Sequence[CiphertextStore],
        checkpoint: Checkpoint,
        *,
        dry_run: bool = False,
        resume: bool = False,
        concurrency: int = 1,
        progress: Callable[[RewrapProgress], None] | None = None,
    ) -> RewrapResult:
        """Rewrap every value of `from_key` in `stores`, each record written once, recorded in
        the checkpoint after its write. `resume` skips the records the checkpoint holds (a
        record written before a crash and not yet recorded is read again: its values are under
        the current key now, so nothing is done twice)."""
        if not dry_run and checkpoint.exists() and not resume:
            raise RewrapRefused("a checkpoint of an earlier rewrap exists: --resume continues it")
        done = checkpoint.done() if resume else set()
        state = RewrapProgress()
        result = RewrapResult(self.from_key, self.to_key, [s.uri for s in stores], dry_run, state)
        lock = Lock()

        def report() -> None:
            if progress is not None:
                progress(state)

        def work(store: CiphertextStore, record: StoredRecord, texts: list[str]) -> None:
            try:
                changes = {text: self.rewrap_value(text) for text in set(texts)}
                store.replace(record, changes)
            except ConcurrentChange:
                with lock:
                    state.conflicts += 1
                    result.values_left += len(texts)
                    result.conflicts.append((store.uri, record.ref))
                    report()
                return
            except ConnectKeyRotatorError as error:
                with lock:
                    state.failures += 1
                    result.values_left += len(texts)
                    result.failures.append((store.uri, record.ref, str(error)))
                    report()
                return
            checkpoint.record(store.uri, record.ref)
            with lock:
                state.records_written += 1
                state.values_rewrapped += len(texts)
                report()

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            pending: set[Future[None]] = set()
            try:
                for store, record in self._records(stores):
                    with lock:
                        state.records_read += 1
                    if (store.uri, record.ref) in done:
                        with lock:
                            state.skipped_done += 1
                        continue
                    texts = [value.text for value, _ in record.ciphertexts(self.from_key)]
                    if not texts:
                        continue
                    result.records_found += 1
                    result.values_found += len(texts)
                    if dry_run:
                        continue
                    pending.add(pool.submit(work, store, record, texts))
                    if len(pending) >= 2 * max(1, concurrency):  # bounded: reads wait for writes
                        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in finished:
                            future.result()
                for future in pending:
                    future.result()
            except BaseException:
                # Interrupted (Ctrl-C, a crash): queued records are left for --resume.
                for future in pending:
                    future.cancel()
                raise
        report()
        return result

    def _records(
        self, stores: Sequence[CiphertextStore]
    ) -> Iterator[tuple[CiphertextStore, StoredRecord]]:
        for store in stores:
            for record in store.records():
                yield store, record

    def record_result(
        self, result: RewrapResult, at: datetime, actor: str, clock: ClockKind
    ) -> None:
        """The history's record of a finished rewrap: the values of `from_key` known to remain
        in the stores (those of records left for --resume), at the rewrap's time."""
        remaining = Inventory(list(result.stores))
        left = [(s, r) for s, r in result.conflicts] + [(s, r) for s, r, _ in result.failures]
        if result.values_left:
            remaining.keys[self.from_key] = KeyCount(result.values_left, left[:SAMPLE_SIZE])
        self.keyring.append_event(
            inventory_event(
                remaining,
                at,
                actor,
                key_id=self.from_key,
                extra={
                    "rewrap": {
                        "to_key": self.to_key,
                        "values_rewrapped": result.progress.values_rewrapped,
                        "records_written": result.progress.records_written,
                        "records_left": len(left),
                    }
                },
                clock=clock,
            )
        )


class RecordOutcome(StrEnum):
    """What became of one record rewrapped on its own (an S3 Batch Operations task)."""

    REWRAPPED = "rewrapped"
    NOTHING_TO_DO = "nothing to do"  # no value of the key (already rewrapped: a retried task)
    CHANGED = "changed"  # changed since it was read: worth retrying
    MISSING = "missing"
    FAILED = "failed"  # a value that does not decrypt, or does not come back the same


def rewrap_one(rewrapper: Rewrapper, store: CiphertextStore, ref: str) -> tuple[RecordOutcome, str]:
    """Rewrap one record by its ref: read it, rewrap its values of `from_key`, write it back if
    unchanged. The text names counts, key IDs and error types only, never a value."""
    record = store.read(ref)
    if record is None:
        return RecordOutcome.MISSING, f"{ref} no longer exists"
    if record.problem:
        return RecordOutcome.FAILED, record.problem
    texts = sorted({value.text for value, _ in record.ciphertexts(rewrapper.from_key)})
    if not texts:
        return RecordOutcome.NOTHING_TO_DO, f"no value under key {rewrapper.from_key}"
    try:
        changes = {text: rewrapper.rewrap_value(text) for text in texts}
        store.replace(record, changes)
    except ConcurrentChange:
        return RecordOutcome.CHANGED, "changed since it was read; retry"
    except RewrapFailed as error:
        return RecordOutcome.FAILED, str(error)
    return (
        RecordOutcome.REWRAPPED,
        f"rewrapped {len(texts)} values from key {rewrapper.from_key} to key {rewrapper.to_key}",
    )


def progress_printer(stream: TextIO, *, every: float = 1.0) -> Callable[[RewrapProgress], None]:
    """A progress bar on a terminal, JSON lines otherwise; at most one update per `every`
    seconds, and the last one always (counts and refs only: nothing a value holds)."""
    tty = stream.isatty()
    last = [0.0]
    seen: list[dict[str, int]] = []

    def show(state: RewrapProgress) -> None:
        now = time.monotonic()
        snapshot = state.to_dict()
        if seen and seen[-1] == snapshot:
            return
        if now - last[0] < every and snapshot["records_read"] and seen:
            seen.append(snapshot)
            return
        last[0] = now
        seen[:] = [snapshot]
        if tty:
            done = state.records_written + state.conflicts + state.failures
            bar = "#" * min(30, done * 30 // max(1, state.records_read))
            stream.write(
                f"\r[{bar:<30}] {state.records_written} records written, "
                f"{state.values_rewrapped} values, {state.conflicts} changed, "
                f"{state.failures} failed, {state.records_read} read"
            )
        else:
            stream.write(json.dumps({"progress": snapshot}, sort_keys=True) + "\n")
        stream.flush()

    return show


def batch_manifest(stores: Sequence[CiphertextStore], from_key: str | None) -> str:
    """An S3 Batch Operations CSV manifest (`bucket,key`, the key URL-encoded) of the objects
    that hold ciphertexts of `from_key` (of any key when None): the job's Lambda (the template's
    rewrap function) rewraps each one with this same code."""
    lines = []
    for store in stores:
        scheme, bucket, _ = parse_store_uri(store.uri)
        if scheme != "s3":
            raise RewrapRefused(f"{store.uri}: a Batch Operations manifest lists S3 objects only")
        for record in store.records():
            if record.ciphertexts(from_key):
                lines.append(f"{bucket},{quote(record.ref, safe='')}\n")
    return "".join(lines)
