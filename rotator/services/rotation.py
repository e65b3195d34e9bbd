"""Rotation: init, rotate (resumable steps under one rotation ID), retire, destroy, rollback."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial

from lambda_decrypt.decrypt import Decryptor
from lambda_decrypt.keys import ConnectKey, StaticKeys
from lambda_decrypt.logs import get_logger
from rotator.config import Settings
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.connect_ids import SecurityKey
from rotator.domain.flows import (
    ChangeKind,
    EncryptionKind,
    FlowContentError,
    ManagedBlock,
    managed_blocks,
    planned_changes,
    point_blocks_at_key,
    referenced_key_ids,
    storing_blocks,
)
from rotator.domain.keys import KeyMaterial, generate_key_material, public_key_sha256_of_pem
from rotator.domain.lifecycle import KeyRecord, KeyState
from rotator.domain.policy import rotation_due
from rotator.domain.rotation import ManagedInstance, RotationState, RotationStep, StepDone
from rotator.domain.state import InstanceEntry
from rotator.domain.window import WindowAction, window_decision
from rotator.errors import ConnectKeyRotatorError, KeyringError, LockHeld, LockLost, NotFound
from rotator.ports import Connect, Identity, Keyring, Lease, Lock
from rotator.services.canary import VerificationFailed, prove_key_decrypts, prove_stored_key

log = get_logger("rotator.rotation")
# AWS refuses requests signed more than 5 minutes off its clock: a new certificate's NotBefore is
# backdated by that much, so that it is valid now by any clock AWS accepts.
CLOCK_SKEW_ALLOWANCE = timedelta(minutes=5)
# Changes to a block that only naming it with --encrypt-block makes: init's output names them.
NAMED_CHANGES = frozenset({ChangeKind.STARTS_ENCRYPTING, ChangeKind.DYNAMIC_TO_STATIC})
KeyGenerator = Callable[[datetime], KeyMaterial]
# Each step's event is recorded once it is done, but a rotation writes its steps together, after
# the steps named here (True: the rotation record moves there too: the point a redo starts from,
# also written at STARTED, before anything is staged). STORED's write puts the new key's record
# in the keyring before any flow names the key. A redo from STARTED redoes every step, each safe
# to redo; the staged key is kept until DONE is written, for that redo.
WRITTEN_AFTER = {RotationStep.STORED: False, RotationStep.DONE: True}
# The steps that change Connect (association, flows) start from these: each is fenced by a lease
# check, unless it is the run's first step (just after the lock's taking). Every keyring write
# follows one of those checks, or the taking, by the few calls of a step or two.
FENCED_FROM = frozenset({RotationStep.STAGED, RotationStep.STORED})


class RotationRefused(ConnectKeyRotatorError):
    """The rotation (or retire/destroy/rollback) would break a promise; nothing was changed."""


class Outcome(StrEnum):
    ROTATED = "rotated"
    NOT_DUE = "not_due"
    WOULD_ROTATE = "would_rotate"
    FAILED = "failed"
    SKIPPED = "skipped"  # another run holds the instance's lock: not a failure
    # Due, but outside the rotation window or inside a freeze: rotates at the next opening.
    WAITING = "waiting"


@dataclass(frozen=True)
class _Plan:
    """A rotation about to start: why, from which key, and which keys must be retired first."""

    instance_id: str
    current_id: str | None
    reason: str
    blocking: list[str]
    emergency: bool


@dataclass
class _Seen:
    """An instance as one look found it: its keyring entry, Connect's associations and the
    records of those keys and of the current key (None: no record)."""

    entry: InstanceEntry
    associations: list[SecurityKey]
    records: dict[str, KeyRecord | None]

    @property
    def instance_id(self) -> str:
        return self.entry.instance_id

    def record(self, key_id: str | None) -> KeyRecord | None:
        return None if key_id is None else self.records.get(key_id)


@dataclass
class _Run:
    """What a rotation run has read or written under the instance's lock, so that a later step
    does not read it again: while the lock is held only this run writes the instance's entries
    and its keys' records (a run that lost its lock stops at its next lease check). A redone
    step after a crash is another run: it starts from what its locked look read."""

    instance: ManagedInstance | None
    current: str | None
    records: dict[str, KeyRecord | None]
    new_rotation: bool = False  # its rotation ID was made by this run: nothing is staged under it
    # Connect's keys as this run's look under the lock found them, for a rotation it started: its
    # key is new, so Connect cannot hold it yet (None: list them; used once).
    listed: list[SecurityKey] | None = None
    material: KeyMaterial | None = None  # the staged key, read back and validated by this run
    associated: str | None = None  # a key ID Connect gave this run: nothing is stored under it
    changed: list[KeyRecord] = field(default_factory=list)  # by the step being done
    # The steps done since the last write, and the current key they set: the next write's.
    done: list[StepDone] = field(default_factory=list)
    new_current: str | None = None
    kept: RotationState | None = None  # the rotation record as stored: where a redo starts

    def known_records(self, keyring: Keyring, key_ids: list[str]) -> dict[str, KeyRecord | None]:
        unknown = [key_id for key_id in key_ids if key_id not in self.records]
        if unknown:
            self.records.update(keyring.find_records(unknown))
        return {key_id: self.records[key_id] for key_id in key_ids}


@dataclass(frozen=True)
class InstanceResult:
    instance_id: str
    outcome: Outcome
    detail: str
    old_key_id: str | None = None
    new_key_id: str | None = None
    rotation_id: str | None = None


class RotationService:
    """Every state-changing operation on keys, on the ports (rotator.ports) it is given."""

    def __init__(
        self,
        keyring: Keyring,
        connect: Connect,
        lock: Lock,
        settings: Settings,
        *,
        actor: str,
        generate: KeyGenerator | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.keyring = keyring
        self.connect = connect
        self.lock = lock
        self.settings = settings
        self.actor = actor
        self.identity = identity  # the principal of what this service records (None: unknown)
        self.generate = generate or self._generate
        self.schedule = settings.schedule  # the rotation window and freezes; None: no limit

    # -- init and rotate ---------------------------------------------------------------------

    def init(
        self,
        instance_id: str,
        flows: list[str],
        modules: list[str],
        now: datetime,
        *,
        encrypt_blocks: Mapping[str, Collection[str]] | None = None,
        abandon: Mapping[str, str] | None = None,
        dry_run: bool = False,
    ) -> InstanceResult:
        """The instance's first managed key: record the managed blocks, then rotate into them.

        A block is managed when it already encrypts with a static key, or when it is named in
        `encrypt_blocks` (flow or module ID -> block identifiers); nothing else is touched.
        A key that a managed block uses must be in the keyring (its contacts would otherwise
        become undecryptable), unless it is abandoned on purpose: `abandon` maps its key ID to
        the recorded reason."""
        named = {ref_id: set(ids) for ref_id, ids in (encrypt_blocks or {}).items()}
        abandon = dict(abandon or {})
        unknown_refs = sorted(set(named) - set(flows) - set(modules))
        if unknown_refs:
            raise RotationRefused(
                f"--encrypt-block names {', '.join(unknown_refs)}, which is not among the "
                "--flow-id / --flow-module-id given"
            )
        refs = ManagedInstance(instance_id, tuple(flows), tuple(modules)).refs
        entry, _ = self.keyring.instance_snapshot(instance_id)  # config, current, rotation
        existing = entry.config
        if existing is not None and (set(existing.refs) != set(refs)):
            raise RotationRefused(
                f"instance {instance_id} is already managed with {_refs(existing)}; "
                "init does not change the managed flows"
            )
        state = entry.rotation
        if existing is not None and state is not None and state.finished:
            if not dry_run:
                # An init killed after its last step, before releasing its lock, left the lock
                # behind: a re-run clears it, or verify fails on a stale lock.
                self._clear_stale_lock(instance_id)
            current = entry.current_key_id
            return InstanceResult(
                instance_id,
                Outcome.NOT_DUE,
                f"already initialised: current key {current}",
                old_key_id=current,
            )
        contents = {ref: self.connect.flow_content(instance_id, ref) for ref in refs}
        blocks: list[ManagedBlock] = []
        in_use: dict[str, list[str]] = {}  # static key ID -> the blocks that use it
        for ref, content in contents.items():
            try:
                managed = managed_blocks(ref, content, named.get(ref.flow_id, set()))
                encryption = {b.identifier: b.encryption for b in storing_blocks(content)}
            except FlowContentError as error:
                raise RotationRefused(f"{ref} cannot be managed: {error}") from None
            blocks += managed
            for block in managed:
                used = encryption[block.identifier]
                if used.kind is EncryptionKind.STATIC and used.key_id:
                    in_use.setdefault(used.key_id, []).append(str(block))
        reason = "first key"
        for key_id, users in sorted(in_use.items()):
            if self.keyring.find_record(key_id) is not None:
                continue
            if key_id not in abandon:
                raise RotationRefused(
                    f"{', '.join(users)} encrypts with key {key_id}, which is not in the "
                    "keyring: moving the flows off it would leave every contact encrypted with it "
                    "undecryptable. Adopt it first: rotator import --key-id "
                    f"{key_id} --private-key FILE --certificate FILE --instance-id {instance_id} "
                    "(or --from-blog-parameters); or give it up on purpose with "
                    f"--abandon-key {key_id} --reason TEXT. Nothing was changed."
                )
            reason += f"; abandons key {key_id} ({abandon.pop(key_id)})"
        if abandon:
            raise RotationRefused(
                f"--abandon-key {', '.join(sorted(abandon))}: no managed block uses it"
            )
        wanted = ManagedInstance(instance_id, tuple(flows), tuple(modules), tuple(blocks))
        plan = [
            change
            for ref, content in contents.items()
            for change in planned_changes(ref, content, wanted.managed_identifiers(ref, content))
        ]
        if dry_run:
            return InstanceResult(
                instance_id,
                Outcome.WOULD_ROTATE,
                f"would manage {len(blocks)} block(s) and point them at a new key ({reason}): "
                + "; ".join(str(change) for change in plan),
                old_key_id=entry.current_key_id,
            )
        self.keyring.put_instance(wanted)
        if reason != "first key":
            log.warning("key_abandoned", instance_id=instance_id, reason=reason)
        # What the operator's naming changed besides the key: said, not only done.
        changed = [str(c) for c in plan if c.change in NAMED_CHANGES]
        try:
            result = self._rotate_instance(
                instance_id,
                now,
                force=True,
                dry_run=False,
                emergency=False,
                first_reason=reason,
                entry=replace(entry, config=wanted),
            )
        except LockHeld as held:
            return _skipped(instance_id, held)
        return _with_note(result, "; ".join(changed) if changed else None)

    def rotate(
        self,
        instance_id: str | None,
        now: datetime,
        *,
        force: bool = False,
        dry_run: bool = False,
        emergency: bool = False,
        override_reason: str | None = None,
    ) -> list[InstanceResult]:
        """Every managed instance (or one), each on its own: one failure does not stop the rest.

        `emergency` retires keys inside their grace period; its `override_reason` is recorded."""
        if emergency and not override_reason and not dry_run:
            raise RotationRefused("an emergency rotation needs a reason (recorded in the history)")
        if instance_id is not None:
            entry, _ = self.keyring.instance_snapshot(instance_id)
            if entry.config is None:
                raise NotFound(f"instance {instance_id} is not managed (run rotator init first)")
            targets = [entry]
        else:
            # One sweep gives every managed instance's current key and rotation record too.
            targets = [e for e in self.keyring.instance_entries() if e.config is not None]
        results = []
        for target in targets:
            try:
                results.append(
                    self._rotate_instance(
                        target.instance_id,
                        now,
                        force=force,
                        dry_run=dry_run,
                        emergency=emergency,
                        override_reason=override_reason,
                        entry=target,
                    )
                )
            except LockHeld as held:
                results.append(_skipped(target.instance_id, held))
            except ConnectKeyRotatorError as error:
                log.error("rotation_failed", instance_id=target.instance_id, error=str(error))
                results.append(InstanceResult(target.instance_id, Outcome.FAILED, str(error)))
        if not dry_run:
            self.remove_orphaned_staging()
        return results

    def remove_orphaned_staging(self) -> None:
        """Staged keys that no unfinished rotation owns (a rotation cut short before its record
        was kept, or a lock that was broken): never associated, so deleting them loses nothing.

        A rotation records its ID before it stages, so a concurrent rotation's staging is owned.
        Every `rotate` ends with it; fleet mode's aggregation runs it for each partition."""
        try:
            orphans = self.keyring.orphaned_staging()
            for rotation_id in sorted(orphans):
                self.keyring.delete_staging(rotation_id)
                log.warning("orphaned_staging_removed", rotation_id=rotation_id)
        except ConnectKeyRotatorError as error:  # housekeeping: never fails a rotation run
            log.warning("orphaned_staging_not_removed", error=str(error))

    def _rotate_instance(
        self,
        instance_id: str,
        now: datetime,
        *,
        force: bool,
        dry_run: bool,
        emergency: bool,
        override_reason: str | None = None,
        first_reason: str = "first key",
        entry: InstanceEntry | None = None,
    ) -> InstanceResult:
        seen = self._look(instance_id, entry)
        finished, deferred = self._finish_retires(seen, dry_run=dry_run)
        # Decided once outside the lock (the cheap daily "not due"), and again inside it,
        # because another rotator may have finished in between.
        decide = partial(
            self._decide,
            now=now,
            force=force,
            emergency=emergency,
            override_reason=override_reason,
            first_reason=first_reason,
        )
        if dry_run:
            planned = decide(seen)
            if not isinstance(planned, InstanceResult):
                planned = self._dry_run(planned)
            return _with_note(planned, finished)
        decision: InstanceResult | RotationState | _Plan | None
        try:
            decision = decide(seen)
        except RotationRefused:
            # Read outside the lock, what looks wrong may be another rotation at work (its new
            # key associated, not yet in the keyring): only a run that holds the lock refuses.
            decision = None
        if isinstance(decision, InstanceResult):
            # Nothing to do, so no lock is taken: a stale one (an init or retire killed before
            # its release) is cleared here. Taking the lock breaks a stale one by itself.
            self._clear_stale_lock(instance_id)
            return _with_note(decision, finished)
        rotation_id = str(uuid.uuid4())
        with self._locked(instance_id, rotation_id) as lease:
            seen = self._look_again(seen)
            decision = decide(seen)
            if isinstance(decision, InstanceResult):
                return _with_note(decision, finished)
            run = _Run(seen.entry.config, seen.entry.current_key_id, dict(seen.records))
            if isinstance(decision, RotationState):
                return self._run(decision, now, lease, run, resumed=True, deferred=deferred)
            for key_id in decision.blocking:
                lease.check()
                self._retire(
                    instance_id,
                    key_id,
                    now,
                    f"freeing Connect's second key slot ({decision.reason})",
                )
                run.records.pop(key_id, None)  # retired: read again if a step needs it
            state = RotationState(
                rotation_id=rotation_id,
                instance_id=instance_id,
                step=RotationStep.STARTED,
                started_at=now,
                actor=self.actor,
                old_key_id=decision.current_id,
                emergency=emergency,
                reason=decision.reason,
                principal=self.principal,
            )
            if decision.blocking:
                lease.check()  # the retires wrote to Connect since the lock was taken
            # Otherwise taking the lock, moments ago, proved it ours with its whole lease ahead.
            self.keyring.put_rotation([StepDone(state)], at=now, checkpoint=state)
            run.new_rotation = True
            run.listed = [a for a in seen.associations if a.key_id not in decision.blocking]
            return self._run(state, now, lease, run, resumed=False, deferred=deferred)

    def _look(self, instance_id: str, entry: InstanceEntry | None) -> _Seen:
        """The instance's entry (the run's sweep already read it, or one read here), Connect's
        associations (one ListSecurityKeys) and the records of those keys and the current key
        (one read)."""
        associations = self.connect.list_security_keys(instance_id)
        listed = [a.key_id for a in associations]
        if entry is None:
            entry, records = self.keyring.instance_snapshot(instance_id, listed)
            current = entry.current_key_id
            if current is not None and current not in records:
                records.update(self.keyring.find_records([current]))
        else:
            key_ids = [k for k in (entry.current_key_id, *listed) if k is not None]
            records = self.keyring.find_records(key_ids) if key_ids else {}
        return _Seen(entry, associations, records)

    def _look_again(self, seen: _Seen) -> _Seen:
        """Under the lock: the entry and the same records again, in one read. Unchanged, no
        locked run (rotation, retire, rollback, destroy) ran since the first look, so Connect's
        associations are still the ones listed; otherwise they are listed again."""
        entry, records = self.keyring.instance_snapshot(seen.instance_id, list(seen.records))
        current = entry.current_key_id
        if current is not None and current not in records:
            records.update(self.keyring.find_records([current]))
        if (entry.rotation, entry.current_key_id, records) == (
            seen.entry.rotation,
            seen.entry.current_key_id,
            seen.records,
        ):
            return _Seen(entry, seen.associations, records)
        associations = self.connect.list_security_keys(seen.instance_id)
        unread = [a.key_id for a in associations if a.key_id not in records]
        if unread:
            records.update(self.keyring.find_records(unread))
        return _Seen(entry, associations, records)

    def _decide(
        self,
        seen: _Seen,
        *,
        now: datetime,
        force: bool,
        emergency: bool,
        override_reason: str | None = None,
        first_reason: str = "first key",
    ) -> InstanceResult | RotationState | _Plan:
        """Resume an interrupted rotation, report "not due", or plan a new rotation."""
        instance_id = seen.instance_id
        state = seen.entry.rotation
        if state is not None and not state.finished:
            return state
        current_id = seen.entry.current_key_id
        current = seen.record(current_id)
        if current is not None and not force:
            due = rotation_due(current, self.settings.policy, now)
            if not due.due:
                return InstanceResult(instance_id, Outcome.NOT_DUE, due.reason, current_id)
            reason = due.reason
        else:
            reason = "forced" if current is not None else first_reason
        # The rotation window and freezes hold back a key that has one; an emergency (key
        # compromise) and an instance's first key never wait.
        if current is not None and not emergency and self.schedule is not None:
            window = window_decision(self.schedule, current.not_after, now)
            if window.waits and force:
                opens = (
                    ""
                    if window.until is None
                    else f"; it next opens {self.schedule.local(window.until)}"
                )
                raise RotationRefused(
                    f"{instance_id}: {window.reason} ({self.schedule.describe()}){opens}. "
                    "--force does not override the window: rotate then, or use --emergency "
                    "--reason TEXT (ignores windows and freezes). Nothing was changed."
                )
            if window.waits:
                return InstanceResult(
                    instance_id,
                    Outcome.WAITING,
                    f"{reason}; {window.describe(self.schedule)}",
                    current_id,
                )
            if window.action is WindowAction.ROTATE_ANYWAY:
                reason = f"{reason}; {window.reason}"
        if emergency:
            reason = f"emergency ({override_reason or 'no reason given'}): {reason}"
        blocking = self._blocking_associations(seen, current_id, now, emergency)
        return _Plan(instance_id, current_id, reason, blocking, emergency)

    @staticmethod
    def _dry_run(decision: RotationState | _Plan) -> InstanceResult:
        if isinstance(decision, RotationState):
            return InstanceResult(
                decision.instance_id,
                Outcome.WOULD_ROTATE,
                f"would resume rotation {decision.rotation_id} after step {decision.step}",
                decision.old_key_id,
                decision.new_key_id,
                decision.rotation_id,
            )
        detail = f"would rotate ({decision.reason})"
        if decision.blocking:
            detail += f"; would first retire {', '.join(decision.blocking)}"
        if decision.emergency and decision.current_id:
            detail += (
                f"; emergency: would retire {decision.current_id} at once, so contacts still "
                "running a flow version with it could no longer encrypt"
            )
        return InstanceResult(
            decision.instance_id, Outcome.WOULD_ROTATE, detail, decision.current_id
        )

    def _run(
        self,
        state: RotationState,
        now: datetime,
        lease: Lease,
        run: _Run,
        *,
        resumed: bool,
        deferred: bool,
    ) -> InstanceResult:
        steps: dict[RotationStep, Callable[[RotationState, datetime, _Run], RotationState]] = {
            RotationStep.STARTED: self._stage,
            RotationStep.STAGED: self._associate,
            RotationStep.ASSOCIATED: self._store,
            RotationStep.STORED: self._point_flows,
            RotationStep.FLOWS_UPDATED: self._promote,
            RotationStep.PROMOTED: self._finish,
        }
        run.kept = state
        first = True
        while not state.finished:
            if not first and state.step in FENCED_FROM:
                lease.check()  # fenced: a run whose lock was taken over changes nothing more
            first = False
            try:
                state = steps[state.step](state, now, run)
            except LockLost:
                raise  # fenced out: it writes nothing more
            except ConnectKeyRotatorError:
                self._record_done(run, state, now)
                raise
            run.done.append(StepDone(state, tuple(run.changed)))
            run.changed = []
            log.info(
                "rotation_step",
                instance_id=state.instance_id,
                rotation_id=state.rotation_id,
                step=state.step,
            )
            # An emergency's old key is retired next, which reads its record: written first.
            retires_next = state.step is RotationStep.PROMOTED and state.emergency
            if state.step in WRITTEN_AFTER or (retires_next and state.old_key_id is not None):
                kept = state if WRITTEN_AFTER.get(state.step) else None
                self.keyring.put_rotation(
                    run.done, at=now, current=run.new_current, checkpoint=kept
                )
                run.done, run.new_current, run.kept = [], None, kept or run.kept
        # Kept until DONE was written, for a redo from STARTED. The rotation is complete now: a
        # delete that fails (or a crash before it) leaves the staging to an orphaned-staging
        # sweep, this run's or the next.
        try:
            self.keyring.delete_staging(state.rotation_id)
        except ConnectKeyRotatorError as error:
            log.warning("staging_not_deleted", rotation_id=state.rotation_id, error=str(error))
        detail = f"{state.old_key_id or 'no key'} -> {state.new_key_id} ({state.reason})"
        # Keys recorded retired were left associated at the start only when a managed flow still
        # used them; the flows have moved now. Any other key this run retired it disassociated.
        finished = None
        if deferred:
            instance_id = state.instance_id
            finished, _ = self._finish_retires(self._look(instance_id, None), dry_run=False)
        if finished:
            detail += f"; {finished}"
        if resumed:
            detail = f"resumed rotation {state.rotation_id} and completed it: {detail}"
        if state.emergency and state.old_key_id:
            detail += (
                f"; emergency: {state.old_key_id} retired at once, so contacts still running a "
                "flow version with it can no longer encrypt (stored ciphertexts still decrypt)"
            )
        return InstanceResult(
            state.instance_id,
            Outcome.ROTATED,
            detail,
            state.old_key_id,
            state.new_key_id,
            state.rotation_id,
        )

    def _record_done(self, run: _Run, reached: RotationState, now: datetime) -> None:
        """The step after `reached` failed: the steps done before it are written, and the
        rotation record moves to `reached`, so that the history and `status` show where the
        rotation stopped, and a redo starts there."""
        if reached == run.kept:
            return
        try:
            self.keyring.put_rotation(run.done, at=now, current=run.new_current, checkpoint=reached)
        except ConnectKeyRotatorError as error:  # the step's failure is the one to report
            log.warning("rotation_steps_not_recorded", error=str(error))

    # -- the steps; each can be redone after a crash at any point ------------------------------

    def _stage(self, state: RotationState, now: datetime, run: _Run) -> RotationState:
        # A rotation this run started has nothing staged yet; a resumed one may.
        material = None if run.new_rotation else self._staged(state, validated=True)
        if material is None:
            material = self.generate(now)
            material.check_registrable(now)
            self.keyring.stage_key(state.rotation_id, material)
        # Read back on purpose (invariant 1): what was stored is what goes on, validated in full.
        material = self._staged(state)
        if material is None:
            raise KeyringError(f"staged key of rotation {state.rotation_id} did not read back")
        _canary(material, provisional_key_id=state.rotation_id)
        run.material = material
        return state.advance(RotationStep.STAGED, new_public_key_sha256=material.public_key_sha256)

    def _associate(self, state: RotationState, now: datetime, run: _Run) -> RotationState:
        material = self._material(state, run)
        material.check_registrable(now)
        associations = run.listed
        if associations is None:
            associations = self.connect.list_security_keys(state.instance_id)
        run.listed = None
        mine = _find_association(associations, material.public_key_sha256)
        if mine is None:
            if len(associations) >= 2:
                raise RotationRefused(
                    f"instance {state.instance_id} already has two associated keys "
                    f"({', '.join(a.key_id for a in associations)})"
                )
            mine = self.connect.associate_security_key(
                state.instance_id, material.public_key_pem, client_token=state.rotation_id
            )
            # Connect named a key it did not hold a moment ago: only a rotation that recorded it
            # as ASSOCIATED stores anything under its ID, and this one had not.
            run.records[mine], run.associated = None, mine
        return state.advance(RotationStep.ASSOCIATED, new_key_id=mine)

    def _store(self, state: RotationState, now: datetime, run: _Run) -> RotationState:
        key_id = _new_key(state)
        material = self._material(state, run)
        existing = run.known_records(self.keyring, [key_id])[key_id]
        record = existing or KeyRecord.for_material(
            key_id,
            material,
            instance_id=state.instance_id,
            state=KeyState.PENDING,
            at=now,
            actor=self.actor,
            reason=state.reason,
            source=f"rotation {state.rotation_id}",
            kms_key_id=self.keyring.kms_key_id,
            principal=self.principal,
        )
        self.keyring.create_private_key(key_id, material.private_key_pem)
        self.keyring.store_certificate(
            key_id, material.certificate_pem, new=run.associated == key_id
        )
        # Read back on purpose, the way the Lambda reads it: it loads these bytes unchecked, so
        # they must be the ones validated in full at STAGED, and they must decrypt what Connect
        # would make.
        prove_stored_key(self.keyring, key_id, material.private_key_pem, material.certificate_pem)
        if existing is None:  # its record goes with the step's: one history write for both
            run.changed.append(record)
            run.records[key_id] = record
        return state.advance(RotationStep.STORED)

    def _point_flows(self, state: RotationState, now: datetime, run: _Run) -> RotationState:
        key_id = _new_key(state)
        if run.material is not None and run.material.public_key_sha256 == (
            state.new_public_key_sha256
        ):
            certificate = run.material.certificate_pem  # what this run stored under the key ID
        else:
            certificate = self.keyring.read_certificate(key_id)
        self._point_instance_flows(state.instance_id, key_id, certificate, run.instance)
        return state.advance(RotationStep.FLOWS_UPDATED)

    def _promote(self, state: RotationState, now: datetime, run: _Run) -> RotationState:
        key_id = _new_key(state)
        old_id = state.old_key_id
        known = run.known_records(self.keyring, [key_id, *([old_id] if old_id else [])])
        new = known[key_id]
        if new is None:
            raise NotFound(f"no key {key_id} in the keyring")
        if new.state is not KeyState.ACTIVE:
            run.changed.append(
                self._moved(new, KeyState.ACTIVE, now, f"current key ({state.reason})")
            )
        if run.current != key_id:
            run.new_current = run.current = key_id
        old = known.get(old_id) if old_id else None
        # An old key already retired (an emergency retire, or a retire that ran meanwhile)
        # stays retired: the rotation must still finish.
        if old is not None and old.key_id != key_id and old.state is KeyState.ACTIVE:
            run.changed.append(self._moved(old, KeyState.PREVIOUS, now, f"replaced by {key_id}"))
        run.records.update((r.key_id, r) for r in run.changed)
        return state.advance(RotationStep.PROMOTED)

    def _finish(self, state: RotationState, now: datetime, run: _Run) -> RotationState:
        if state.emergency and state.old_key_id:
            self._retire(state.instance_id, state.old_key_id, now, f"{state.reason}")
            run.records.pop(state.old_key_id, None)
        return state.advance(RotationStep.DONE)

    # -- retire, destroy, rollback --------------------------------------------------------------

    def retire(
        self,
        key_id: str,
        now: datetime,
        *,
        emergency: bool = False,
        override_reason: str | None = None,
        dry_run: bool = False,
    ) -> str:
        """Disassociate a previous key after its grace period (at once with `emergency` and a
        recorded reason). A retired key still associated (a retire cut short) is finished."""
        record = self.keyring.get_record(key_id)
        if record.state is KeyState.DESTROYED:
            raise RotationRefused(f"key {key_id} is destroyed")
        self._refuse_if_rotating(record, "retire")
        instance_id = record.instance_id
        if instance_id is None or record.state is KeyState.RETIRED:
            if instance_id is not None and not dry_run:
                # A retire killed after its record leaves its lock behind, and finishing takes
                # no lock (which would break it): clear it, or verify fails on a stale lock.
                self._clear_stale_lock(instance_id)
            return self._finish_retired(record, dry_run=dry_run)
        if record.state is KeyState.ACTIVE:
            raise RotationRefused(
                f"key {key_id} is the current key of {instance_id}; rotate first "
                "(rotator rotate --emergency --reason TEXT after a compromise)"
            )
        reason = "grace period over"
        ends = self._grace_ends(record)
        if ends is not None and now < ends:
            if not emergency:
                raise RotationRefused(
                    f"key {key_id} is in its grace period until {ends:%Y-%m-%d %H:%M} UTC; "
                    "retire after that, or --emergency --reason TEXT"
                )
            if not override_reason:
                raise RotationRefused("retiring inside the grace period needs a reason")
            reason = f"emergency, grace period overridden: {override_reason}"
        if dry_run:
            self._check_unreferenced(instance_id, key_id, "retire")
            return f"would retire key {key_id}: disassociate it from {instance_id} ({reason})"
        with self._locked(instance_id, f"retire-{key_id}") as lease:
            lease.check()
            self._retire(instance_id, key_id, now, reason)
        return f"key {key_id} retired: disassociated from {instance_id}, still decrypts"

    def _finish_retired(self, record: KeyRecord, *, dry_run: bool) -> str:
        """A decrypt-only key: disassociate it wherever Connect still holds it, and say so."""
        key_id = record.key_id
        held_by = [
            instance_id
            for instance_id in self._instances_to_check(record)
            if any(a.key_id == key_id for a in self._associations(instance_id))
        ]
        if not held_by:
            return f"key {key_id} is retired (decrypt-only); nothing to do"
        for instance_id in held_by:
            self._check_unreferenced(instance_id, key_id, "retire")
        where = ", ".join(held_by)
        if dry_run:
            return f"key {key_id} is retired but still associated with {where}: would disassociate"
        for instance_id in held_by:
            self._disassociate(instance_id, key_id)
        return (
            f"key {key_id} is retired (decrypt-only) but was still associated with {where}: "
            "disassociated now, still decrypts"
        )

    def destroy(
        self,
        key_id: str,
        now: datetime,
        *,
        override_reason: str | None = None,
        dry_run: bool = False,
    ) -> str:
        """Delete a retired key's private key after its retention period; metadata stays.

        Refused while Connect holds the key on any instance or any managed flow uses it,
        however the key came into the keyring. Inside the retention period only with an
        override and a recorded reason (or when the private key is already lost)."""
        record = self.keyring.get_record(key_id)
        if record.state is KeyState.DESTROYED:
            if dry_run:
                return f"key {key_id} is destroyed; nothing to do"
            self.keyring.delete_private_key(key_id)
            return f"key {key_id} is destroyed"
        if record.state is not KeyState.RETIRED:
            raise RotationRefused(
                f"key {key_id} is {record.state}; only retired keys are destroyed"
            )
        self._refuse_if_rotating(record, "destroy")
        for instance_id in self._instances_to_check(record):
            self._check_unreferenced(instance_id, key_id, "destroy")
            if any(a.key_id == key_id for a in self._associations(instance_id)):
                raise RotationRefused(
                    f"cannot destroy key {key_id}: it is still associated with {instance_id} "
                    f"(rotator retire {key_id} disassociates it)"
                )
        retired_at = record.entered(KeyState.RETIRED) or record.created_at
        ends = retired_at + self.settings.retention
        reason = "retention period over"
        if now < ends:
            if not self.keyring.stored_private_keys([key_id]):
                # Retention keeps stored ciphertexts decryptable; a lost private key keeps nothing.
                reason = "its private key was lost before the retention period ended"
            elif override_reason:
                reason = f"retention period overridden: {override_reason}"
            else:
                raise RotationRefused(
                    f"key {key_id} is retained until {ends:%Y-%m-%d %H:%M} UTC "
                    "(stored ciphertexts may still need it); --override-retention --reason TEXT "
                    "destroys it earlier"
                )
        if dry_run:
            return f"would destroy key {key_id}: delete its private key, keep its record ({reason})"
        # Metadata first: a crash before the delete already answers key_destroyed.
        self._transition(key_id, KeyState.DESTROYED, now, reason)
        self.keyring.delete_private_key(key_id)
        return f"key {key_id} destroyed: its private key is deleted, its record kept ({reason})"

    def rollback(self, instance_id: str, now: datetime, *, dry_run: bool = False) -> str:
        """Point the flows back to the previous key while it is still associated."""
        state = self.keyring.get_rotation(instance_id)
        if state is not None and not state.finished:
            raise RotationRefused(
                f"rotation {state.rotation_id} of {instance_id} is unfinished; "
                "run rotator rotate to complete it first"
            )
        current_id = self.keyring.get_current(instance_id)
        previous = [
            r
            for r in self.keyring.records()
            if r.instance_id == instance_id and r.state is KeyState.PREVIOUS
        ]
        if current_id is None or not previous:
            raise RotationRefused(f"instance {instance_id} has no previous key to roll back to")
        target = max(previous, key=lambda r: r.entered(KeyState.PREVIOUS) or r.created_at)
        if not any(a.key_id == target.key_id for a in self._associations(instance_id)):
            raise RotationRefused(f"previous key {target.key_id} is no longer associated")
        certificate = self.keyring.read_certificate(target.key_id)
        if dry_run:
            return (
                f"would point the flows of {instance_id} back at {target.key_id}; "
                f"{current_id} would become previous"
            )
        with self._locked(instance_id, f"rollback-{target.key_id}") as lease:
            prove_key_decrypts(self.keyring, target.key_id, certificate)
            lease.check()
            self._point_instance_flows(instance_id, target.key_id, certificate)
            self._transition(target.key_id, KeyState.ACTIVE, now, f"rollback from {current_id}")
            self.keyring.set_current(instance_id, target.key_id)
            self._transition(current_id, KeyState.PREVIOUS, now, "rolled back")
        return f"{instance_id}: flows point at {target.key_id} again; {current_id} is previous"

    # -- helpers --------------------------------------------------------------------------------

    def _generate(self, now: datetime) -> KeyMaterial:
        """A certificate valid from a little before `now` (CLOCK_SKEW_ALLOWANCE): a rotator
        whose clock runs fast by as much as AWS tolerates never makes one that is not valid yet."""
        return generate_key_material(
            now=now - CLOCK_SKEW_ALLOWANCE,
            key_size=self.settings.key_size,
            validity_days=self.settings.validity_days,
            subject=self.settings.subject,
        )

    @contextmanager
    def _locked(self, instance_id: str, purpose: str) -> Iterator[Lease]:
        """Hold the instance's lock; `lease.check()` goes before each write made under it."""
        lease = self.lock.acquire(instance_id, purpose)
        try:
            yield lease
        except BaseException as error:
            try:
                lease.release()
            except ConnectKeyRotatorError as release_error:
                # The first error is the one to act on; a lock left behind expires on its own.
                log.warning(
                    "lock_release_failed",
                    instance_id=instance_id,
                    error=str(release_error),
                    after=type(error).__name__,
                )
            raise
        lease.release()

    def _clear_stale_lock(self, instance_id: str) -> None:
        """Remove the lock of a run that is provably gone or whose lease expired."""
        cleared = self.lock.clear_if_stale(instance_id)
        if cleared:
            log.warning("stale_lock_removed", instance_id=instance_id, detail=cleared)

    def _staged(self, state: RotationState, *, validated: bool = False) -> KeyMaterial | None:
        return self.keyring.read_staged(state.rotation_id, validated=validated)

    def _require_staged(self, state: RotationState) -> KeyMaterial:
        """The staged key, validated in full at STAGED and matched here by its fingerprint."""
        material = self._staged(state, validated=True)
        if material is None and state.new_key_id is not None:
            material = self.keyring.read_material(state.new_key_id, validated=True)
        if material is None or material.public_key_sha256 != state.new_public_key_sha256:
            raise KeyringError(f"the staged key of rotation {state.rotation_id} is missing")
        return material

    def _material(self, state: RotationState, run: _Run) -> KeyMaterial:
        """The staged key as this run read it back at STAGED, or read (and matched) now."""
        if run.material is None or run.material.public_key_sha256 != state.new_public_key_sha256:
            run.material = self._require_staged(state)
        return run.material

    def _point_instance_flows(
        self,
        instance_id: str,
        key_id: str,
        certificate: str,
        instance: ManagedInstance | None = None,
    ) -> None:
        """Exactly the managed blocks of the managed flows; a flow already there is not written.
        `instance`: its config as the caller read it under the lock."""
        if instance is None:
            instance = self.keyring.get_instance(instance_id)
        if instance is None:
            return
        for ref in instance.refs:
            content = self.connect.flow_content(instance_id, ref)
            identifiers = instance.managed_identifiers(ref, content)
            updated = point_blocks_at_key(content, identifiers, key_id, certificate)
            if updated is not None:
                self.connect.update_flow_content(instance_id, ref, updated)
                log.info("flow_updated", instance_id=instance_id, flow=str(ref), key_id=key_id)

    @property
    def principal(self) -> str:
        """The caller's ARN, asked only when a change is recorded: a what-if or a dry run, and
        a job run with nothing due, make no STS call (the identity caches it for the run)."""
        return "" if self.identity is None else self.identity.caller_arn()

    def _moved(self, record: KeyRecord, to: KeyState, now: datetime, reason: str) -> KeyRecord:
        """`record` in state `to`, the transition made by this service's actor and principal."""
        return record.transition(
            to, at=now, actor=self.actor, reason=reason, principal=self.principal
        )

    def _transition(self, key_id: str, to: KeyState, now: datetime, reason: str) -> None:
        record = self.keyring.get_record(key_id)
        if record.state is not to:
            self.keyring.write_record(self._moved(record, to, now, reason))

    def _retire(self, instance_id: str, key_id: str, now: datetime, reason: str) -> None:
        """Metadata first, then Connect: a retired key still associated is a retire to finish."""
        self._check_unreferenced(instance_id, key_id, "retire")
        self._transition(key_id, KeyState.RETIRED, now, reason)
        self._disassociate(instance_id, key_id)

    def _disassociate(
        self, instance_id: str, key_id: str, associations: list[SecurityKey] | None = None
    ) -> None:
        """`associations`: Connect's list as the caller just read it."""
        if associations is None:
            associations = self._associations(instance_id)
        if any(a.key_id == key_id for a in associations):
            try:
                self.connect.disassociate_security_key(instance_id, key_id)
            except NotFound:
                # A retried call whose first attempt took effect: the association is gone.
                if any(a.key_id == key_id for a in self._associations(instance_id)):
                    raise

    def _finish_retires(self, seen: _Seen, *, dry_run: bool) -> tuple[str | None, bool]:
        """Disassociate keys recorded as retired that Connect still holds (a retire cut short
        between its record and Connect's answer): every run converges on the recorded state.
        Also says whether one was left because a managed flow still uses it."""
        instance_id = seen.instance_id
        pending = [
            a.key_id
            for a in seen.associations
            if (record := seen.record(a.key_id)) is not None
            and record.state in (KeyState.RETIRED, KeyState.DESTROYED)
        ]
        deferred = False
        if pending:  # a key a managed flow still uses waits until the flows have moved off it
            in_use = self._referenced_keys(instance_id)
            deferred = any(key_id in in_use for key_id in pending)
            pending = [key_id for key_id in pending if key_id not in in_use]
        if not pending:
            return None, deferred
        if dry_run:
            return f"would finish retiring {', '.join(pending)} (still associated)", deferred
        for key_id in pending:
            self._disassociate(instance_id, key_id, seen.associations)
            seen.associations = [a for a in seen.associations if a.key_id != key_id]
            log.warning("retire_finished", instance_id=instance_id, key_id=key_id)
        return f"finished retiring {', '.join(pending)} (was still associated)", deferred

    def _refuse_if_rotating(self, record: KeyRecord, action: str) -> None:
        """A key that an unfinished rotation is moving is that rotation's to finish."""
        if record.state is KeyState.PENDING:
            raise RotationRefused(
                f"cannot {action} key {record.key_id}: it is pending, part of an unfinished "
                "rotation; run rotator rotate to finish it"
            )
        if record.instance_id is None:
            return
        state = self.keyring.get_rotation(record.instance_id)
        if (
            state is not None
            and not state.finished
            and record.key_id
            in (
                state.old_key_id,
                state.new_key_id,
            )
        ):
            raise RotationRefused(
                f"cannot {action} key {record.key_id}: rotation {state.rotation_id} of "
                f"{record.instance_id} is unfinished; run rotator rotate to finish it first"
            )

    def _instances_to_check(self, record: KeyRecord) -> list[str]:
        """Every instance that could hold or use this key: its own and every managed one."""
        instances = {m.instance_id for m in self.keyring.managed_instances()}
        if record.instance_id is not None:
            instances.add(record.instance_id)
        return sorted(instances)

    def _associations(self, instance_id: str) -> list[SecurityKey]:
        return self.connect.list_security_keys(instance_id)

    def _check_unreferenced(self, instance_id: str, key_id: str, action: str) -> None:
        instance = self.keyring.get_instance(instance_id)
        for ref in instance.refs if instance else []:
            if key_id in referenced_key_ids(self.connect.flow_content(instance_id, ref)):
                raise RotationRefused(f"cannot {action} key {key_id}: {ref} still uses it")

    def _referenced_keys(self, instance_id: str) -> set[str]:
        instance = self.keyring.get_instance(instance_id)
        return {
            key_id
            for ref in (instance.refs if instance else [])
            for key_id in referenced_key_ids(self.connect.flow_content(instance_id, ref))
        }

    def _grace_ends(self, record: KeyRecord) -> datetime | None:
        since = record.entered(KeyState.PREVIOUS)
        return None if since is None else since + self.settings.grace

    def _blocking_associations(
        self, seen: _Seen, current_id: str | None, now: datetime, emergency: bool
    ) -> list[str]:
        """Keys to retire before a new key fits (Connect holds two); refuse if one may not go."""
        instance_id, associations = seen.instance_id, seen.associations
        if len(associations) < 2:
            return []
        blocking = []
        for association in associations:
            if association.key_id == current_id:
                continue
            record = seen.record(association.key_id)
            if record is None:
                raise RotationRefused(
                    f"association {association.key_id} of {instance_id} has no key in "
                    "the keyring (orphaned); see the runbook for decrypt failures"
                )
            ends = self._grace_ends(record) if record.state is KeyState.PREVIOUS else None
            if ends is not None and now < ends and not emergency:
                raise RotationRefused(
                    f"two keys are associated with {instance_id} and {record.key_id} is in its "
                    f"grace period until {ends:%Y-%m-%d %H:%M} UTC; nothing changed. Rotate "
                    "after that, or use --emergency (retires it now)"
                )
            blocking.append(record.key_id)
        return blocking


def _skipped(instance_id: str, held: LockHeld) -> InstanceResult:
    """Another run holds the lock: not a failure (no alarm, no notice, exit 0)."""
    detail = f"skipped: another rotation is running (lock {held.holder})"
    log.info("rotation_skipped", instance_id=instance_id, detail=detail)
    return InstanceResult(instance_id, Outcome.SKIPPED, detail)


def _new_key(state: RotationState) -> str:
    if state.new_key_id is None:
        raise KeyringError(f"rotation {state.rotation_id} has no key ID at step {state.step}")
    return state.new_key_id


def _find_association(associations: list[SecurityKey], fingerprint: str | None) -> str | None:
    for association in associations:
        if public_key_sha256_of_pem(association.public_key_pem) == fingerprint:
            return association.key_id
    return None


def _canary(material: KeyMaterial, *, provisional_key_id: str) -> None:
    """Read-back proof before the key goes anywhere: it decrypts what Connect would make."""
    ciphertext = encrypt_like_connect(
        b"canary", key_id=provisional_key_id, certificate_pem=material.certificate_pem
    )
    # `material` was just read back and validated in full by load_key_material.
    key = ConnectKey.from_pem(provisional_key_id, material.private_key_pem, trusted=True)
    if Decryptor(StaticKeys({provisional_key_id: key})).decrypt(ciphertext).plaintext != b"canary":
        raise VerificationFailed("the staged key did not decrypt its canary")


def _with_note(result: InstanceResult, note: str | None) -> InstanceResult:
    return result if note is None else replace(result, detail=f"{result.detail}; {note}")


def _refs(instance: ManagedInstance) -> str:
    return ", ".join(str(ref) for ref in instance.refs) or "no flows"
