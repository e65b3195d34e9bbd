"""Invariant 3 on the fakes: a crash after any port call of a rotation, then a plain re-run,
converges (the fast tier's sweep; tests/test_rotation_faults.py is the one kept on the wire).

The crash is raised right after a call to the keyring, Connect or the lock has taken effect,
and the process is dead from then on: nothing it calls afterwards happens, so it cannot release
its lock. The re-run comes once that lock's lease is over, as FakeLock lets a lock be abandoned.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from lambda_decrypt import Decryptor
from lambda_decrypt.errors import DecryptError, KeyDestroyed
from rotator.config import Settings
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.flows import FlowRef, encrypting_blocks
from rotator.domain.history import EventKind
from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import KeyState
from rotator.domain.rotation import RotationState, RotationStep, StepDone
from rotator.errors import AwsCallError, LockLost
from rotator.services.rotation import InstanceResult, Outcome, RotationService
from rotator.services.verify import InvariantChecker
from tests.conftest import NOW, TEST_CARD
from tests.fakes import (
    FakeClock,
    FakeConnect,
    FakeKeyring,
    FakeKeySource,
    FakeLease,
    FakeLock,
    init_payment_instance,
)
from tests.world import KeyPool

_T = TypeVar("_T")
KeyGenerator = Callable[[datetime], KeyMaterial]

SETTINGS = Settings(keyring_prefix="/fast-sweep", key_size=2048)
ROTATE_AT = NOW + timedelta(days=400)  # the initial key is due by the default policy
RETIRE_AT = ROTATE_AT + SETTINGS.grace + timedelta(days=1)
DESTROY_AT = RETIRE_AT + SETTINGS.retention + timedelta(days=1)
# A FakeLock lease runs out after this; a dead run's lock is then broken by the next run.
ABANDONED = timedelta(minutes=15, seconds=1)
BEFORE, DURING, AFTER = "4000056655665556", "5555555555554444", TEST_CARD


class InjectedCrash(Exception):  # noqa: N818 - it is what happens, not an error class
    """Stands for the process dying right after a port call returned."""


# -- the crash: a proxy on every port that counts calls -----------------------------------------


@dataclass
class Crash:
    """Counts the port calls made through its proxies; after call `after` the process is dead:
    that call has taken effect, it and every later call raise InjectedCrash."""

    after: int | None = None
    calls: list[str] = field(default_factory=list)
    dead: bool = False
    leases: int = 0  # leases taken and not yet released: what a dead run leaves behind

    def port(self, target: _T, port: str) -> _T:
        return cast(_T, _Counted(self, target, port))

    def call(self, name: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.dead:
            raise InjectedCrash(f"the process is dead: {name} never ran")
        error: Exception | None = None
        result: Any = None
        try:
            result = method(*args, **kwargs)
        except Exception as raised:  # a failed call is a moment to die at too
            error = raised
        self.calls.append(name)
        if error is None and name == "lock.acquire":
            self.leases += 1
        if error is None and name == "lease.release":
            self.leases -= 1
        if self.after is not None and len(self.calls) == self.after:
            self.dead = True
            raise InjectedCrash(f"crashed after call {self.after}: {name}") from error
        if error is not None:
            raise error
        if isinstance(result, FakeLease):
            return self.port(result, "lease")
        if isinstance(result, FakeKeySource):
            return self.port(result, "keys")
        return result


class _Counted:
    """A port whose public methods go through `Crash.call`; attributes pass through."""

    def __init__(self, crash: Crash, target: object, port: str) -> None:
        self._crash, self._target, self._port = crash, target, port

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            return self._crash.call(f"{self._port}.{name}", attribute, *args, **kwargs)

        return counted


# -- the world on fakes -------------------------------------------------------------------------


@dataclass
class Fakes:
    keyring: FakeKeyring
    connect: FakeConnect
    clock: FakeClock
    lock: FakeLock
    instance_id: str
    flow: FlowRef
    module: FlowRef
    generate: KeyGenerator

    def service(self, crash: Crash | None = None) -> RotationService:
        """A rotator process: through `crash`'s proxies if given, else on the fakes directly."""
        keyring, connect, lock = self.keyring, self.connect, self.lock
        if crash is not None:
            keyring = crash.port(keyring, "keyring")
            connect = crash.port(connect, "connect")
            lock = crash.port(lock, "lock")
        return RotationService(
            keyring, connect, lock, SETTINGS, actor="sweep", generate=self.generate
        )

    def flow_key(self, ref: FlowRef | None = None) -> tuple[str, str]:
        """The key ID and certificate that the flow's (or module's) card block encrypts with."""
        [block] = encrypting_blocks(self.connect.flow_content(self.instance_id, ref or self.flow))
        assert block.key_id is not None and block.certificate_pem is not None
        return block.key_id, block.certificate_pem

    def caller_types(self, digits: str) -> str:
        """What Connect does when a caller reaches the flow's block now: encrypt with its key."""
        key_id, certificate = self.flow_key()
        return encrypt_like_connect(digits.encode(), key_id=key_id, certificate_pem=certificate)

    def decrypts(self, ciphertext: str) -> bytes | str:
        """What the decrypt Lambda answers, reading the keyring's keys afresh: the plaintext,
        or the error code it would give Connect."""
        try:
            return Decryptor(self.keyring.decrypt_keys()).decrypt(ciphertext).plaintext
        except DecryptError as error:
            return f"refused: {error.code}"

    def associations(self) -> set[str]:
        return {k.key_id for k in self.connect.list_security_keys(self.instance_id)}

    def abandon_dead_runs_lock(self) -> None:
        """Wait out the lease of a lock whose holder died (FakeLock knows no process IDs)."""
        self.clock.advance(ABANDONED)


def initialised(generate: KeyGenerator) -> Fakes:
    """A managed instance after `rotator init` at NOW, with its payment flow and module; its key
    is due at ROTATE_AT."""
    keyring, connect, clock = FakeKeyring(), FakeConnect(), FakeClock(NOW)
    lock = FakeLock(clock.now)
    service = RotationService(keyring, connect, lock, SETTINGS, actor="sweep", generate=generate)
    made = init_payment_instance(service, connect, NOW)
    clock.advance(ROTATE_AT - NOW)
    return Fakes(keyring, connect, clock, lock, made.instance_id, made.flow, made.module, generate)


def rotated(generate: KeyGenerator) -> tuple[Fakes, str, str]:
    """After one completed rotation at ROTATE_AT: (fakes, the previous key, the current key)."""
    fakes = initialised(generate)
    [result] = fakes.service().rotate(None, ROTATE_AT)
    assert result.outcome is Outcome.ROTATED, result.detail
    assert result.old_key_id is not None and result.new_key_id is not None
    return fakes, result.old_key_id, result.new_key_id


def fresh(template: Fakes, pool: KeyPool) -> Fakes:
    """A copy of a state built once (its own fakes, lock free), generating keys it does not
    hold: the template used the pool's first keys, one per rotation."""
    rotations = len(template.keyring.records())
    assert template.lock.held == {} and len(pool.private_keys) >= rotations + 2
    # RSA public numbers are immutable and cannot be copied: the copies share them.
    shared: dict[int, Any] = {}
    for instance in template.connect.instances.values():
        numbers = [k.numbers for k in instance.keys.values()]
        numbers += [n for n, _ in instance.tokens.values()]
        shared.update((id(n), n) for n in numbers)
    copy = deepcopy(template, shared)
    copy.lock = FakeLock(copy.clock.now)
    copy.generate = KeyPool(pool.private_keys[rotations:]).generator()
    return copy


@pytest.fixture(scope="module")
def due(key_pool: KeyPool) -> Fakes:
    """Initialised, its key due (copy it with `fresh`)."""
    return initialised(key_pool.generator())


@pytest.fixture(scope="module")
def after_rotation(key_pool: KeyPool) -> tuple[Fakes, str, str]:
    """Rotated once: (fakes, previous key, current key) (copy the fakes with `fresh`)."""
    return rotated(key_pool.generator())


# -- the calls of a clean run, counted once at collection ---------------------------------------


def rotate(fakes: Fakes, crash: Crash | None = None) -> list[InstanceResult]:
    return fakes.service(crash).rotate(None, ROTATE_AT)


def retire_previous(fakes: Fakes, crash: Crash | None = None) -> str:
    [previous] = [r.key_id for r in fakes.keyring.records() if r.state is KeyState.PREVIOUS]
    return fakes.service(crash).retire(previous, RETIRE_AT)


def destroy_retired(fakes: Fakes, crash: Crash | None = None) -> str:
    [retired] = [r.key_id for r in fakes.keyring.records() if r.state is KeyState.RETIRED]
    return fakes.service(crash).destroy(retired, DESTROY_AT)


def clean_calls(pool: KeyPool) -> dict[str, list[str]]:
    """Every port call of a clean rotation, then of the retire and destroy of its old key."""
    fakes = initialised(pool.generator())
    found = {}
    for operation, run in (
        ("rotate", rotate),
        ("retire", retire_previous),
        ("destroy", destroy_retired),
    ):
        crash = Crash()
        result = run(fakes, crash)
        assert not isinstance(result, list) or result[0].outcome is Outcome.ROTATED, result
        found[operation] = crash.calls
    return found


def _collection_pool() -> KeyPool:
    # Two keys (init's and the rotation's) for counting; the tests use the session's key_pool.
    return KeyPool([rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in "ab"])


CLEAN = clean_calls(_collection_pool())


def crash_points(operation: str) -> list[Any]:
    calls = CLEAN[operation]
    width = len(str(len(calls)))
    return [
        pytest.param(n, id=f"crash-after-call-{n:0{width}d}-{name.partition('.')[2]}")
        for n, name in enumerate(calls, start=1)
    ]


def test_the_sweep_covers_every_call_of_a_clean_run(key_pool: KeyPool) -> None:
    """The crash points collected are the calls the rotator makes with the session's keys."""
    assert clean_calls(key_pool) == CLEAN
    rotation = CLEAN["rotate"]
    assert len(rotation) > 20  # a real rotation: lock, records, staging, Connect, flows
    for needed in (
        "lock.acquire",
        "keyring.stage_key",
        "connect.associate_security_key",
        # The key is stored in two calls (private key, certificate) and read back once, by the
        # decrypt Lambda's reader; its record, and later the current pointer, are written with
        # the steps' write (put_rotation), whose own writes the wire sweep
        # (tests/test_rotation_faults.py) crashes between.
        "keyring.create_private_key",
        "keyring.store_certificate",
        "keys.get",
        "connect.update_flow_content",
        "keyring.put_rotation",
        "keyring.delete_staging",
        "lease.release",
    ):
        assert needed in rotation
    assert "connect.disassociate_security_key" in CLEAN["retire"]
    assert "keyring.delete_private_key" in CLEAN["destroy"]


# -- what a converged rotation looks like -------------------------------------------------------


@dataclass(frozen=True)
class Ciphertexts:
    """Cards typed by callers: before the crash, right after it, and after the re-run."""

    before: str
    during: str
    after: str


def assert_converged(
    fakes: Fakes, old_key: str, rerun: InstanceResult, expected: Outcome, typed: Ciphertexts
) -> None:
    """Everything the wire sweep asserts that the fakes can show, and more."""
    keyring, instance_id = fakes.keyring, fakes.instance_id
    assert rerun.outcome is expected, rerun.detail
    records = {r.key_id: r for r in keyring.records()}
    assert len(records) == 2, f"exactly one new key, not {len(records) - 1}"
    new_key = keyring.get_current(instance_id)
    assert new_key is not None and new_key != old_key, f"the current key is still {new_key}"
    assert [k for k, r in records.items() if r.state is KeyState.ACTIVE] == [new_key]
    assert records[old_key].state is KeyState.PREVIOUS
    assert fakes.associations() == {old_key, new_key}  # the previous key is in its grace
    certificate = keyring.read_certificate(new_key)
    for ref in (fakes.flow, fakes.module):
        assert fakes.flow_key(ref) == (new_key, certificate), f"{ref} is not on the new key"
    rotation = keyring.get_rotation(instance_id)
    assert rotation is not None and rotation.step is RotationStep.DONE
    assert (rotation.old_key_id, rotation.new_key_id) == (old_key, new_key)
    assert keyring.staged == {} and keyring.orphaned_staging() == set()
    assert fakes.lock.held == {}, "the lock is left behind"
    assert_verify_holds(fakes)
    for ciphertext, digits in (
        (typed.before, BEFORE),
        (typed.during, DURING),
        (typed.after, AFTER),
    ):
        assert fakes.decrypts(ciphertext) == digits.encode()


def assert_verify_holds(fakes: Fakes) -> None:
    """`rotator verify` itself over the fakes: every invariant of the one read model, and the
    live canaries (encrypt like Connect, decrypt with the keys the fake keyring holds)."""
    assert fakes.lock.held == {}, "the lock is left behind"
    checker = InvariantChecker(fakes.keyring, fakes.connect, fakes.lock)
    broken = [c.message for c in checker.check(None, fakes.clock.now()) if not c.ok]
    assert broken == []


# -- the sweeps ---------------------------------------------------------------------------------


def crash_run(fakes: Fakes, after: int, run: Callable[[Fakes, Crash], object]) -> Crash:
    """Run with a crash after call `after`; the run must die there (or fail, if something turns
    the crash into an error), leaving its lock behind if it held one."""
    crash = Crash(after=after)
    try:
        result = run(fakes, crash)
    except InjectedCrash:
        pass
    else:
        # Nothing in the service may swallow a dead process's calls and report success.
        assert isinstance(result, list) and all(r.outcome is Outcome.FAILED for r in result)
    assert crash.dead, f"the crash was not reached: {len(crash.calls)} calls"
    assert (fakes.instance_id in fakes.lock.held) == (crash.leases > 0)
    return crash


def crash_then_rerun(
    fakes: Fakes, after: int
) -> tuple[InstanceResult, Outcome, Ciphertexts, RotationState | None]:
    """Crash the rotation after call `after`, let its lock go stale, re-run it plainly."""
    before = fakes.caller_types(BEFORE)
    initial = fakes.keyring.get_rotation(fakes.instance_id)  # init's, finished
    crash_run(fakes, after, rotate)
    crashed = fakes.keyring.get_rotation(fakes.instance_id)
    during = fakes.caller_types(DURING)  # a caller right after the crash
    # The Lambda answers at once: whatever key a flow names is stored (invariant 1).
    assert fakes.decrypts(during) == DURING.encode()
    assert fakes.decrypts(before) == BEFORE.encode()
    fakes.abandon_dead_runs_lock()
    [rerun] = rotate(fakes)  # plain re-run: resumes first
    # Not due only if the crashed run had completed the rotation before it died.
    finished = crashed != initial and crashed is not None and crashed.step is RotationStep.DONE
    expected = Outcome.NOT_DUE if finished else Outcome.ROTATED
    return rerun, expected, Ciphertexts(before, during, fakes.caller_types(AFTER)), crashed


@pytest.mark.parametrize("after", crash_points("rotate"))
def test_a_crash_after_any_call_of_a_rotation_converges_on_rerun(
    key_pool: KeyPool, due: Fakes, after: int
) -> None:
    fakes = fresh(due, key_pool)
    old_key = fakes.keyring.get_current(fakes.instance_id)
    assert old_key is not None
    rerun, expected, typed, _ = crash_then_rerun(fakes, after)
    assert_converged(fakes, old_key, rerun, expected, typed)


@pytest.mark.parametrize("after", crash_points("retire"))
def test_a_crash_after_any_call_of_a_retire_converges_on_rerun(
    key_pool: KeyPool, after_rotation: tuple[Fakes, str, str], after: int
) -> None:
    template, old_key, new_key = after_rotation
    fakes = fresh(template, key_pool)
    before = fakes.caller_types(BEFORE)  # encrypted with the current key
    old_certificate = fakes.keyring.read_certificate(old_key)
    stored = encrypt_like_connect(
        BEFORE.encode(), key_id=old_key, certificate_pem=old_certificate
    )  # a contact of the previous key's time
    crash_run(fakes, after, retire_previous)
    fakes.abandon_dead_runs_lock()
    assert "retired" in fakes.service().retire(old_key, RETIRE_AT)  # plain re-run

    assert fakes.keyring.get_record(old_key).state is KeyState.RETIRED
    assert fakes.keyring.get_record(new_key).state is KeyState.ACTIVE
    assert fakes.keyring.get_current(fakes.instance_id) == new_key
    assert fakes.associations() == {new_key}
    for ref in (fakes.flow, fakes.module):
        assert fakes.flow_key(ref)[0] == new_key
    assert fakes.lock.held == {}, "the lock is left behind"
    assert_verify_holds(fakes)
    # Retired is decrypt-only: its contacts still decrypt, as do the current key's.
    assert fakes.decrypts(stored) == BEFORE.encode()
    assert fakes.decrypts(before) == BEFORE.encode()
    assert fakes.decrypts(fakes.caller_types(AFTER)) == AFTER.encode()


@pytest.mark.parametrize("after", crash_points("destroy"))
def test_a_crash_after_any_call_of_a_destroy_converges_on_rerun(
    key_pool: KeyPool, after_rotation: tuple[Fakes, str, str], after: int
) -> None:
    template, old_key, new_key = after_rotation
    fakes = fresh(template, key_pool)
    retire_previous(fakes)
    old_certificate = fakes.keyring.read_certificate(old_key)
    stored = encrypt_like_connect(BEFORE.encode(), key_id=old_key, certificate_pem=old_certificate)
    crash_run(fakes, after, destroy_retired)
    assert "destroyed" in fakes.service().destroy(old_key, DESTROY_AT)  # plain re-run

    record = fakes.keyring.get_record(old_key)
    assert record.state is KeyState.DESTROYED
    assert fakes.keyring.find_private_key(old_key) is None
    assert fakes.keyring.read_certificate(old_key) == old_certificate  # its record is kept
    assert fakes.keyring.get_record(new_key).state is KeyState.ACTIVE
    assert fakes.associations() == {new_key}
    assert_verify_holds(fakes)
    # Answered as destroyed, not as an unknown key.
    assert fakes.decrypts(stored) == f"refused: {KeyDestroyed.code}"
    assert fakes.decrypts(fakes.caller_types(AFTER)) == AFTER.encode()


# -- the sweep can fail -------------------------------------------------------------------------


def _skipping(step: RotationStep) -> Callable[..., Any]:
    """A step that records itself done and does nothing (whatever else a step is given: the
    time, and what the run knows)."""

    def nothing(_: RotationService, state: RotationState, *__: Any) -> RotationState:
        return state.advance(step)

    return nothing


@pytest.mark.parametrize(
    ("method", "skipped_to", "crash_after", "caught"),
    [
        ("_point_flows", RotationStep.FLOWS_UPDATED, "connect.associate_security_key", "flow"),
        ("_promote", RotationStep.PROMOTED, "connect.update_flow_content", "current key"),
    ],
)
def test_a_resume_that_skips_a_step_fails_the_convergence_check(
    key_pool: KeyPool,
    due: Fakes,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    skipped_to: RotationStep,
    crash_after: str,
    caught: str,
) -> None:
    after = CLEAN["rotate"].index(crash_after) + 1  # the first such call
    fakes = fresh(due, key_pool)
    old_key = fakes.keyring.get_current(fakes.instance_id)
    assert old_key is not None
    before = fakes.caller_types(BEFORE)
    crash_run(fakes, after, rotate)
    during = fakes.caller_types(DURING)
    fakes.abandon_dead_runs_lock()
    monkeypatch.setattr(RotationService, method, _skipping(skipped_to))
    [rerun] = rotate(fakes)  # the broken resume still says it rotated
    assert rerun.outcome is Outcome.ROTATED, rerun.detail
    typed = Ciphertexts(before, during, fakes.caller_types(AFTER))
    with pytest.raises(AssertionError, match=caught):
        assert_converged(fakes, old_key, rerun, Outcome.ROTATED, typed)
    with pytest.raises(AssertionError):  # `verify`'s invariants see it too
        assert_verify_holds(fakes)


def test_a_decrypt_failure_fails_the_convergence_check(key_pool: KeyPool, due: Fakes) -> None:
    """The ciphertexts are checked: one that no key decrypts fails the check."""
    fakes = fresh(due, key_pool)
    old_key = fakes.keyring.get_current(fakes.instance_id)
    assert old_key is not None
    [result] = rotate(fakes)
    _, certificate = fakes.flow_key()
    unknown = encrypt_like_connect(
        BEFORE.encode(), key_id="no-such-key", certificate_pem=certificate
    )
    typed = Ciphertexts(unknown, fakes.caller_types(DURING), fakes.caller_types(AFTER))
    with pytest.raises(AssertionError, match="unknown_key"):
        assert_converged(fakes, old_key, result, Outcome.ROTATED, typed)


# -- steps written together ---------------------------------------------------------------------


def step_events(fakes: Fakes, rotation_id: str) -> list[str]:
    return [
        str(e.details["step"])
        for e in fakes.keyring.history_events()
        if e.kind == EventKind.ROTATION_STEP and e.rotation_id == rotation_id
    ]


def test_a_rotation_records_each_step_once_in_order_in_three_writes(
    key_pool: KeyPool, due: Fakes
) -> None:
    fakes = fresh(due, key_pool)
    crash = Crash()
    [result] = rotate(fakes, crash)
    assert result.outcome is Outcome.ROTATED and result.rotation_id is not None
    assert step_events(fakes, result.rotation_id) == [str(step) for step in RotationStep]
    assert crash.calls.count("keyring.put_rotation") == 3  # started, stored, done
    events = fakes.keyring.history_events()
    # The new key's first record is in the keyring, with its event, before a flow names it.
    order = [
        (e.kind, e.details.get("step") or e.details.get("state"))
        for e in events
        if e.rotation_id == result.rotation_id or e.key_id == result.new_key_id
    ]
    assert order.index((EventKind.KEY_TRANSITION, "pending")) < order.index(
        (EventKind.ROTATION_STEP, "stored")
    )
    assert crash.calls.index("keyring.put_rotation", crash.calls.index("keys.get")) < (
        crash.calls.index("connect.update_flow_content")
    )


@pytest.mark.parametrize(
    ("failing", "recorded"),
    [
        ("associate_security_key", RotationStep.STAGED),
        ("update_flow_content", RotationStep.STORED),
    ],
)
def test_a_step_that_fails_records_the_steps_before_it_and_a_rerun_converges(
    key_pool: KeyPool,
    due: Fakes,
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
    recorded: RotationStep,
) -> None:
    fakes = fresh(due, key_pool)
    old_key = fakes.keyring.get_current(fakes.instance_id)
    assert old_key is not None
    before = fakes.caller_types(BEFORE)

    def refused(*_: object, **__: object) -> None:
        raise AwsCallError(f"connect:{failing}", fakes.instance_id, "InternalServiceException")

    with monkeypatch.context() as patched:
        patched.setattr(fakes.connect, failing, refused)
        [failed] = rotate(fakes)
    assert failed.outcome is Outcome.FAILED and "InternalServiceException" in failed.detail
    state = fakes.keyring.get_rotation(fakes.instance_id)
    assert state is not None and state.step is recorded, state
    steps = [str(step) for step in RotationStep]
    assert step_events(fakes, state.rotation_id) == steps[: steps.index(recorded) + 1]
    assert fakes.lock.held == {}  # released: the re-run needs no wait
    during = fakes.caller_types(DURING)
    [rerun] = rotate(fakes)
    assert rerun.rotation_id == state.rotation_id and "resumed" in rerun.detail
    assert_converged(
        fakes,
        old_key,
        rerun,
        Outcome.ROTATED,
        Ciphertexts(before, during, fakes.caller_types(AFTER)),
    )


def test_a_run_that_lost_its_lock_records_nothing_more(
    key_pool: KeyPool, due: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure write is fenced too: the lease check that fails stops every write."""
    fakes = fresh(due, key_pool)
    writes: list[RotationStep] = []
    put_rotation = fakes.keyring.put_rotation

    def counted(steps: list[StepDone], **kwargs: Any) -> None:
        writes.append(steps[-1].state.step)
        put_rotation(steps, **kwargs)

    def stolen(self: FakeLease) -> None:
        raise LockLost(f"instance {self.instance_id}: the lock is no longer this run's")

    monkeypatch.setattr(fakes.keyring, "put_rotation", counted)
    monkeypatch.setattr(FakeLease, "check", stolen)
    [result] = rotate(fakes)
    assert result.outcome is Outcome.FAILED and "no longer this run's" in result.detail
    assert writes == [RotationStep.STARTED]  # the check before the association stopped it
    assert fakes.connect.list_security_keys(fakes.instance_id)[0].key_id == (
        fakes.keyring.get_current(fakes.instance_id)
    )
    assert len(fakes.associations()) == 1


def test_an_emergency_writes_the_promotion_before_it_retires_the_old_key(
    key_pool: KeyPool, due: Fakes
) -> None:
    """Metadata first, then Connect: the old key is recorded previous, then retired, and only
    then disassociated."""
    fakes = fresh(due, key_pool)
    old_key = fakes.keyring.get_current(fakes.instance_id)
    crash = Crash()
    [result] = fakes.service(crash).rotate(
        None, ROTATE_AT, force=True, emergency=True, override_reason="key exposed"
    )
    assert result.outcome is Outcome.ROTATED, result.detail
    assert fakes.keyring.get_record(str(old_key)).state is KeyState.RETIRED
    assert [
        e.details["state"]
        for e in fakes.keyring.history_events()
        if e.kind == EventKind.KEY_TRANSITION and e.key_id == old_key
    ][-2:] == ["previous", "retired"]
    promoted = crash.calls.index("keyring.put_rotation", crash.calls.index("keys.get") + 1)
    assert promoted < crash.calls.index("connect.disassociate_security_key")
    assert crash.calls.count("keyring.put_rotation") == 4  # started, stored, promoted, done


def test_a_staging_delete_that_fails_after_done_leaves_it_to_the_sweep(
    key_pool: KeyPool, due: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rotation is complete once DONE is written: it is not reported failed for its
    housekeeping, and the run's orphaned-staging sweep removes what the delete left."""
    fakes = fresh(due, key_pool)
    delete_staging = fakes.keyring.delete_staging
    attempts: list[str] = []

    def fails_once(rotation_id: str) -> None:
        attempts.append(rotation_id)
        if len(attempts) == 1:
            assert fakes.keyring.staged  # still there when DONE was written
            raise AwsCallError("ssm:DeleteParameters", rotation_id, "ThrottlingException")
        delete_staging(rotation_id)

    monkeypatch.setattr(fakes.keyring, "delete_staging", fails_once)
    [result] = rotate(fakes)
    assert result.outcome is Outcome.ROTATED, result.detail
    rotation = fakes.keyring.get_rotation(fakes.instance_id)
    assert rotation is not None and rotation.step is RotationStep.DONE
    assert attempts == [result.rotation_id] * 2  # its own delete, then the sweep's
    assert fakes.keyring.staged == {}
