"""The keyring's SSM layout (one module for both packages) and the decrypt path's cached reader."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from lambda_decrypt.errors import (
    AwsCallError,
    DecryptError,
    KeyDestroyed,
    KeyringAccessDenied,
    KeyringUnavailable,
    UnknownKey,
    aws_reason,
)
from lambda_decrypt.keys import ConnectKey
from lambda_decrypt.logs import get_logger

if TYPE_CHECKING:
    from botocore.loaders import Loader
    from mypy_boto3_ssm import SSMClient
    from mypy_boto3_ssm.type_defs import GetParametersByPathResultTypeDef

    from lambda_decrypt.config import DecryptConfig
    from lambda_decrypt.decrypt import Decryptor

_T = TypeVar("_T")
DESTROYED = "destroyed"
NEGATIVE_CACHE_CAPACITY = 1024
# Past the lookup budget, the keyring's list of key IDs is read again at most this often: a
# flood of invented key IDs costs one listing per interval, a brand-new key waits at most this.
LISTING_REFRESH_SECONDS = 30.0
LISTING_PAGE_SIZE = 10  # the most GetParametersByPath returns per page
DEFAULT_SSM_TIMEOUT_SECONDS = 1.0
MAX_SSM_ATTEMPTS = 3
RETRY_BACKOFF_SECONDS = 0.05
ACCESS_DENIED = frozenset({"AccessDeniedException", "AccessDenied"})
THROTTLED = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException"})
log = get_logger("lambda_decrypt.keyring")
# The time.monotonic() by which every SSM call of the current invocation must be over.
_deadline: ContextVar[float | None] = ContextVar("lambda_decrypt_ssm_deadline", default=None)
# Keys whose metadata says Connect may be encrypting with them now (the flows' current key, and
# the previous one for contacts still in flight): what `preload` loads before any invocation.
PRELOAD_STATES = frozenset({"active", "previous"})
PRELOAD_LIMIT = 16


@dataclass(frozen=True)
class KeyringLayout:
    """Parameter names under one prefix; the only place that spells them."""

    prefix: str

    def key_root(self, key_id: str) -> str:
        return f"{self.prefix}/keys/{key_id}"

    def keys_root(self) -> str:
        return f"{self.prefix}/keys"

    def private_key(self, key_id: str) -> str:
        return f"{self.key_root(key_id)}/private-key"

    def certificate(self, key_id: str) -> str:
        return f"{self.key_root(key_id)}/certificate"

    def metadata(self, key_id: str) -> str:
        return f"{self.key_root(key_id)}/metadata"

    def current(self, instance_id: str) -> str:
        return f"{self.prefix}/instances/{instance_id}/current"

    def instances_root(self) -> str:
        return f"{self.prefix}/instances"

    def instance_config(self, instance_id: str) -> str:
        """Which flows and modules of the instance are managed (written by `rotator init`)."""
        return f"{self.prefix}/instances/{instance_id}/config"

    def rotation(self, instance_id: str) -> str:
        """The instance's latest rotation and its last completed step (versioned)."""
        return f"{self.prefix}/instances/{instance_id}/rotation"

    def locks_root(self) -> str:
        return f"{self.prefix}/locks"

    def lock(self, instance_id: str) -> str:
        return f"{self.locks_root()}/{instance_id}"

    def runbook_audit(self) -> str:
        """Legacy runbook audit (each run a version; SSM keeps 100): read, no longer written."""
        return f"{self.prefix}/audit/runbook-runs"

    def history_root(self) -> str:
        """Append-only history: one parameter per event, created once, never overwritten."""
        return f"{self.prefix}/history"

    def history_scope(self, scope: str) -> str:
        """One scope's events: an instance ID, `keyring` (keys of no instance) or `runbooks`."""
        return f"{self.history_root()}/{scope}"

    def history_event(self, scope: str, stamp: str, event_id: str) -> str:
        """`stamp` is `YYYYMMDDTHHMMSSffffffZ`, so names sort in time order within a scope."""
        return f"{self.history_scope(scope)}/{stamp}-{event_id}"

    def staged_private_key(self, rotation_id: str) -> str:
        """A new key before Connect has given it a key ID (DESIGN invariant 1: stored first)."""
        return f"{self.prefix}/staging/{rotation_id}/private-key"

    def staged_certificate(self, rotation_id: str) -> str:
        return f"{self.prefix}/staging/{rotation_id}/certificate"

    def staging_root(self) -> str:
        return f"{self.prefix}/staging"

    def key_id_of(self, parameter_name: str) -> str | None:
        """The key ID in a `{prefix}/keys/{key_id}/...` name, or None for any other name."""
        root = self.keys_root() + "/"
        if not parameter_name.startswith(root):
            return None
        key_id, _, _ = parameter_name[len(root) :].partition("/")
        return key_id or None


@contextmanager
def ssm_time_limit(seconds: float | None) -> Iterator[None]:
    """Every SSM call made inside the block is over within `seconds` (None: the attempt cap).

    An attempt starts only if its worst case (connect timeout + read timeout) fits in the time
    left, so a silent SSM endpoint costs an `internal` answer in time, never a Lambda timeout.
    """
    token = _deadline.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def default_ssm_client(timeout_seconds: float = DEFAULT_SSM_TIMEOUT_SECONDS) -> SSMClient:
    """An SSM client making one attempt per call: the reader retries within its deadline."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=timeout_seconds,
        read_timeout=timeout_seconds,
    )
    if boto3.DEFAULT_SESSION is None:
        # What boto3.client would create, with a model loader that skips a directory scan.
        _setup_default_session(loader=None)
    return boto3.client("ssm", config=config)


def renew_default_session() -> None:
    """Replace boto3's default session by a new one, which resolves credentials again when its
    first client is built: a session caches the credentials it resolved, and after a SnapStart
    restore the snapshot's are stale. The new session keeps botocore's data loader (service
    models and endpoints, no credentials), so the next client skips parsing them (~80 ms)."""
    import boto3

    loader = None
    if boto3.DEFAULT_SESSION is not None:
        loader = boto3.DEFAULT_SESSION._session.get_component("data_loader")
    _setup_default_session(loader)


def _setup_default_session(loader: Loader | None) -> None:
    """A new boto3 default session over `loader`, or over a new ServiceModelLoader (botocore's
    loader, minus a scan of every service it ships: ~20 ms of a cold start)."""
    import boto3
    import botocore.session

    from lambda_decrypt.model_loader import service_model_loader

    core = botocore.session.get_session()
    if loader is not None:
        core.register_component("data_loader", loader)
    else:
        core.lazy_register_component(
            "data_loader", lambda: service_model_loader(core.get_config_variable("data_path"))
        )
    boto3.setup_default_session(botocore_session=core)


@dataclass(frozen=True)
class _Cached:
    key: ConnectKey
    check_at: float  # next re-read of the key's state; never later than expires_at
    expires_at: float  # full reload


class KeyringReader:
    """Private keys by key ID from SSM: loaded once, re-checked, kept for a TTL, misses remembered.

    A warm invocation for a cached key makes no AWS call. Every `check_seconds` a cached key's
    state is re-read on its next use, without decryption (no KMS call), so a destroyed key
    stops decrypting within that time. Unknown key IDs are cached for a shorter time, and
    lookups of key IDs the keyring is not known to hold are capped per minute, so a flood of
    bad messages cannot turn into a flood of SSM calls; past the cap, one listing of the
    keyring tells genuine key IDs apart, so a container that meets many keys refuses none.
    """

    def __init__(
        self,
        prefix: str,
        *,
        ssm_client_factory: Callable[[], SSMClient] | None = None,
        ttl_seconds: float = 900.0,
        check_seconds: float = 60.0,
        negative_ttl_seconds: float = 60.0,
        max_lookups_per_minute: int = 30,
        ssm_timeout_seconds: float = DEFAULT_SSM_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.layout = KeyringLayout(prefix)
        # default_ssm_client is looked up when the client is built (tests replace it).
        self._client_factory = ssm_client_factory or (
            lambda: default_ssm_client(ssm_timeout_seconds)
        )
        self._client: SSMClient | None = None
        self._ttl = ttl_seconds
        self._check_interval = check_seconds
        self._negative_ttl = negative_ttl_seconds
        self._max_lookups = max_lookups_per_minute
        # One attempt's worst case on a silent endpoint: the connect, then the read timeout.
        self._attempt_seconds = 2 * ssm_timeout_seconds
        self._clock = clock
        self._keys: dict[str, _Cached] = {}
        self._misses: OrderedDict[str, tuple[DecryptError, float]] = OrderedDict()
        self._lookups: deque[float] = deque()
        self._held: set[str] = set()  # key IDs with a private key: listed, or loaded
        self._listed_at: float | None = None
        self._lock = threading.Lock()

    def get(self, key_id: str) -> ConnectKey:
        """The key for `key_id`; raises UnknownKey, KeyDestroyed or KeyringUnavailable."""
        now = self._clock()
        cached = self._keys.get(key_id)
        if cached is not None and cached.check_at > now:
            return cached.key
        with self._lock:
            return self._refresh(key_id, now)

    def forget(self, key_id: str | None = None) -> None:
        """Drop one cached key, or everything the reader knows (as in a new container)."""
        with self._lock:
            if key_id is None:
                self._keys.clear()
                self._misses.clear()
                self._held.clear()
                self._listed_at = None
            else:
                self._keys.pop(key_id, None)
                self._misses.pop(key_id, None)

    def connect(self) -> None:
        """Build the SSM client now (its cost moves to the init phase); no AWS call."""
        self._ssm()

    def disconnect(self) -> None:
        """Drop the SSM client, and the credentials it resolved; the next call builds another."""
        with self._lock:
            self._client = None

    def loaded_key_ids(self) -> list[str]:
        """The key IDs whose private keys are in memory now."""
        return sorted(self._keys)

    def preload(self, limit: int = PRELOAD_LIMIT) -> list[str]:
        """Load the keys Connect may be encrypting with now (metadata state active or
        previous, at most `limit`), so that their first contacts wait for no SSM call.

        One listing of the keyring's String parameters (metadata and certificates, no private
        key, no KMS call), then one GetParameters per key. Never raises: a key it could not
        load loads on its first use, as without a preload. Returns the key IDs loaded.
        """
        try:
            wanted = self._keys_in_use()
        except KeyringUnavailable as error:
            log.warning("keyring_preload_failed", reason=str(error))
            return []
        loaded = []
        for key_id in wanted[:limit]:
            try:
                self.get(key_id)
            except DecryptError as error:
                log.warning("key_preload_failed", key_id=key_id, outcome=error.code)
                continue
            loaded.append(key_id)
        if len(wanted) > limit:
            log.warning("keyring_preload_capped", keys=len(wanted), limit=limit)
        return loaded

    def _keys_in_use(self) -> list[str]:
        """Key IDs whose metadata state is in PRELOAD_STATES, listed without decryption."""
        root = self.layout.keys_root()
        found: list[str] = []
        token: str | None = None
        while True:
            response = self._call(
                "ssm:GetParametersByPath", root, partial(_list_page, root, token, "String")
            )
            for parameter in response.get("Parameters", []):
                key_id = self.layout.key_id_of(parameter["Name"])
                if key_id is None or parameter["Name"] != self.layout.metadata(key_id):
                    continue
                if _state_from_metadata(parameter.get("Value")) in PRELOAD_STATES:
                    found.append(key_id)
            token = response.get("NextToken")
            if not token:
                return sorted(found)

    def _refresh(self, key_id: str, now: float) -> ConnectKey:
        cached = self._keys.get(key_id)
        if cached is not None and cached.check_at > now:
            return cached.key  # another thread got here first
        if cached is not None and cached.expires_at > now:
            return self._check(key_id, cached, now)
        miss = self._misses.get(key_id)
        if miss is not None and miss[1] > now:
            raise miss[0]
        if key_id not in self._held:
            self._spend_lookup(now, key_id)
        try:
            key = self._load(key_id)
        except (UnknownKey, KeyDestroyed) as error:
            self._withdraw(key_id, error, now)
            raise
        check_at = min(now + self._check_interval, now + self._ttl)
        self._keys[key_id] = _Cached(key, check_at=check_at, expires_at=now + self._ttl)
        self._held.add(key_id)
        self._misses.pop(key_id, None)
        return key

    def _check(self, key_id: str, cached: _Cached, now: float) -> ConnectKey:
        """Re-read a cached key's state: its metadata and whether its private key still exists."""
        next_check = replace(cached, check_at=min(now + self._check_interval, cached.expires_at))
        try:
            found = self._get_parameters(key_id, with_decryption=False)
        except KeyringUnavailable as error:
            # Served on until its TTL: an SSM outage must not stop warm containers at once.
            log.warning("key_check_failed", key_id=key_id, reason=str(error))
            self._keys[key_id] = next_check
            return cached.key
        try:
            self._state(key_id, found)
        except (UnknownKey, KeyDestroyed) as error:
            log.info("key_withdrawn", key_id=key_id, outcome=error.code)
            self._withdraw(key_id, error, now)
            raise
        self._keys[key_id] = next_check
        return cached.key

    def _withdraw(self, key_id: str, error: DecryptError, now: float) -> None:
        self._keys.pop(key_id, None)
        self._held.discard(key_id)
        self._misses[key_id] = (error, now + self._negative_ttl)
        self._misses.move_to_end(key_id)
        while len(self._misses) > NEGATIVE_CACHE_CAPACITY:
            self._misses.popitem(last=False)

    def _spend_lookup(self, now: float, key_id: str) -> None:
        while self._lookups and self._lookups[0] <= now - 60.0:
            self._lookups.popleft()
        if len(self._lookups) < self._max_lookups:
            self._lookups.append(now)
            return
        # Past the budget only key IDs the keyring holds are looked up; which those are, one
        # listing says (read again at most every LISTING_REFRESH_SECONDS).
        if self._listed_at is None or now - self._listed_at >= LISTING_REFRESH_SECONDS:
            self._list_key_ids(now)
            if key_id in self._held:
                return
        log.warning("key_lookup_budget_exhausted", key_id=key_id, budget=self._max_lookups)
        raise UnknownKey(f"no private key for key ID {key_id} (lookup budget exhausted)")

    def _list_key_ids(self, now: float) -> None:
        """Every key ID with a private key: `{prefix}/keys` recursively, SecureStrings only,
        without decryption (no KMS call), ten keys a page."""
        self._listed_at = now  # a failed listing is not retried before the interval either
        root = self.layout.keys_root()
        held: set[str] = set()
        token: str | None = None
        pages = 0
        while True:
            response = self._call(
                "ssm:GetParametersByPath", root, partial(_list_page, root, token, "SecureString")
            )
            pages += 1
            for parameter in response.get("Parameters", []):
                key_id = self.layout.key_id_of(parameter["Name"])
                if key_id is not None and parameter["Name"] == self.layout.private_key(key_id):
                    held.add(key_id)
            token = response.get("NextToken")
            if not token:
                break
        self._held = held
        log.info("keyring_listed", keys=len(held), pages=pages)

    def _ssm(self) -> SSMClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _call(self, call: str, resource: str, send: Callable[[SSMClient], _T]) -> _T:
        """One SSM request; retried (throttling, 5xx, network) while an attempt still fits
        before the invocation's deadline, at most MAX_SSM_ATTEMPTS times."""
        client = self._ssm()
        deadline = _deadline.get()
        failure: Exception | None = None
        attempts = 0
        while attempts < MAX_SSM_ATTEMPTS:
            pause = 0.0
            if attempts:
                # Full jitter: containers throttled together do not retry together.
                pause = random.uniform(0, RETRY_BACKOFF_SECONDS * 2**attempts)  # noqa: S311
            if deadline is not None and time.monotonic() + pause + self._attempt_seconds > deadline:
                break
            time.sleep(pause)
            attempts += 1
            try:
                return send(client)
            except Exception as error:  # noqa: BLE001 - translated below, with the call and resource
                failure = error
                if not _retryable(error):
                    break
        if failure is None:
            reason = (
                f"not attempted: less than {self._attempt_seconds:g} s left before the deadline"
            )
        else:
            reason = f"{aws_reason(failure)} after {attempts} attempt(s)"
        denied = failure is not None and aws_reason(failure) in ACCESS_DENIED
        kind = KeyringAccessDenied if denied else KeyringUnavailable
        raise kind(str(AwsCallError(call, resource, reason))) from failure

    def _get_parameters(self, key_id: str, *, with_decryption: bool) -> dict[str, str]:
        names = [self.layout.private_key(key_id), self.layout.metadata(key_id)]
        response = self._call(
            "ssm:GetParameters",
            names[0],
            lambda client: client.get_parameters(Names=names, WithDecryption=with_decryption),
        )
        return {p["Name"]: p["Value"] for p in response.get("Parameters", [])}

    def _state(self, key_id: str, found: dict[str, str]) -> str | None:
        """The key's recorded state; raises KeyDestroyed or UnknownKey if it cannot decrypt."""
        state = _state_from_metadata(found.get(self.layout.metadata(key_id)))
        if state == DESTROYED:
            raise KeyDestroyed(f"key ID {key_id} was destroyed")
        if self.layout.private_key(key_id) not in found:
            if state is not None:
                log.error("keyring_inconsistent", key_id=key_id, state=state, missing="private-key")
            raise UnknownKey(f"no private key for key ID {key_id}")
        return state

    def _load(self, key_id: str) -> ConnectKey:
        found = self._get_parameters(key_id, with_decryption=True)
        state = self._state(key_id, found)
        pem = found[self.layout.private_key(key_id)]
        key = ConnectKey.from_pem(key_id, pem, trusted=True)
        log.info("key_loaded", key_id=key_id, state=state, key_size=key.key_size)
        return key


def _list_page(
    root: str, token: str | None, kind: str, client: SSMClient
) -> GetParametersByPathResultTypeDef:
    """One page of the parameters of type `kind` under `root`, never decrypted."""
    paging = {"NextToken": token} if token else {}
    return client.get_parameters_by_path(
        Path=root,
        Recursive=True,
        WithDecryption=False,
        MaxResults=LISTING_PAGE_SIZE,
        ParameterFilters=[{"Key": "Type", "Option": "Equals", "Values": [kind]}],
        **paging,
    )


def _retryable(error: Exception) -> bool:
    """Worth another attempt: the connection failed or timed out, or SSM throttled or failed."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(error, BotoConnectionError | HTTPClientError):
        return True
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code in THROTTLED or status >= 500
    return False


def _state_from_metadata(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        metadata: Any = json.loads(raw)
    except ValueError:
        return None
    state = metadata.get("state") if isinstance(metadata, dict) else None
    return state if isinstance(state, str) else None


def keyring_decryptor(config: DecryptConfig) -> Decryptor:
    """A decryptor over the SSM keyring, as the Lambda and `lambda_decrypt.decrypt` use it.
    Here, not in `decrypt`: the decryption itself never needs SSM (the rotator's canary
    decrypts with keys it passes in)."""
    from lambda_decrypt.decrypt import Decryptor

    return Decryptor(keyring_reader(config), max_message_bytes=config.max_message_bytes)


def keyring_reader(config: DecryptConfig) -> KeyringReader:
    """The SSM keyring reader the settings describe (no AWS call, no client yet)."""
    return KeyringReader(
        config.keyring_prefix,
        ttl_seconds=config.key_cache_ttl_seconds,
        check_seconds=config.key_check_seconds,
        negative_ttl_seconds=config.negative_cache_ttl_seconds,
        max_lookups_per_minute=config.max_key_lookups_per_minute,
        ssm_timeout_seconds=config.ssm_timeout_seconds or DEFAULT_SSM_TIMEOUT_SECONDS,
    )
