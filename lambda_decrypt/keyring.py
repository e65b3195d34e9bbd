"""The keyring's SSM layout (one module for both packages) and the decrypt path's cached reader."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lambda_decrypt.errors import (
    AwsCallError,
    DecryptError,
    KeyDestroyed,
    KeyringUnavailable,
    UnknownKey,
    aws_reason,
)
from lambda_decrypt.keys import ConnectKey
from lambda_decrypt.logs import get_logger

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

DESTROYED = "destroyed"
NEGATIVE_CACHE_CAPACITY = 1024
log = get_logger("lambda_decrypt.keyring")


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

    def key_id_of(self, parameter_name: str) -> str | None:
        """The key ID in a `{prefix}/keys/{key_id}/...` name, or None for any other name."""
        root = self.keys_root() + "/"
        if not parameter_name.startswith(root):
            return None
        key_id, _, _ = parameter_name[len(root) :].partition("/")
        return key_id or None


def default_ssm_client() -> SSMClient:
    """An SSM client with short timeouts: the decrypt path runs inside Connect's 8 s budget."""
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "max_attempts": 3}, connect_timeout=1, read_timeout=2
    )
    return boto3.client("ssm", config=config)


class KeyringReader:
    """Private keys by key ID from SSM: loaded once, kept for a TTL, unknown IDs remembered.

    A warm invocation for a cached key makes no AWS call. Unknown key IDs are cached for a
    shorter time, and lookups of uncached IDs are capped per minute, so a flood of bad
    messages cannot turn into a flood of SSM calls.
    """

    def __init__(
        self,
        prefix: str,
        *,
        ssm_client_factory: Callable[[], SSMClient] | None = None,
        ttl_seconds: float = 900.0,
        negative_ttl_seconds: float = 60.0,
        max_lookups_per_minute: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.layout = KeyringLayout(prefix)
        self._client_factory = ssm_client_factory or default_ssm_client
        self._client: SSMClient | None = None
        self._ttl = ttl_seconds
        self._negative_ttl = negative_ttl_seconds
        self._max_lookups = max_lookups_per_minute
        self._clock = clock
        self._keys: dict[str, tuple[ConnectKey, float]] = {}
        self._misses: OrderedDict[str, tuple[DecryptError, float]] = OrderedDict()
        self._lookups: deque[float] = deque()
        self._lock = threading.Lock()

    def get(self, key_id: str) -> ConnectKey:
        """The key for `key_id`; raises UnknownKey, KeyDestroyed or KeyringUnavailable."""
        now = self._clock()
        cached = self._keys.get(key_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        with self._lock:
            miss = self._misses.get(key_id)
            if miss is not None and miss[1] > now:
                raise miss[0]
            self._spend_lookup(now, key_id)
            try:
                key = self._load(key_id)
            except (UnknownKey, KeyDestroyed) as error:
                self._remember_miss(key_id, error, now)
                raise
            self._keys[key_id] = (key, now + self._ttl)
            self._misses.pop(key_id, None)
            return key

    def forget(self, key_id: str | None = None) -> None:
        """Drop one cached key, or all of them (positive and negative)."""
        with self._lock:
            if key_id is None:
                self._keys.clear()
                self._misses.clear()
            else:
                self._keys.pop(key_id, None)
                self._misses.pop(key_id, None)

    def _spend_lookup(self, now: float, key_id: str) -> None:
        while self._lookups and self._lookups[0] <= now - 60.0:
            self._lookups.popleft()
        if len(self._lookups) >= self._max_lookups:
            log.warning("key_lookup_budget_exhausted", key_id=key_id, budget=self._max_lookups)
            raise UnknownKey(f"no private key for key ID {key_id} (lookup budget exhausted)")
        self._lookups.append(now)

    def _remember_miss(self, key_id: str, error: DecryptError, now: float) -> None:
        self._misses[key_id] = (error, now + self._negative_ttl)
        self._misses.move_to_end(key_id)
        while len(self._misses) > NEGATIVE_CACHE_CAPACITY:
            self._misses.popitem(last=False)

    def _ssm(self) -> SSMClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _load(self, key_id: str) -> ConnectKey:
        private_name = self.layout.private_key(key_id)
        metadata_name = self.layout.metadata(key_id)
        try:
            response = self._ssm().get_parameters(
                Names=[private_name, metadata_name], WithDecryption=True
            )
        except Exception as error:  # noqa: BLE001 - any SDK failure is "keyring unavailable"
            raise KeyringUnavailable(
                str(AwsCallError("ssm:GetParameters", private_name, aws_reason(error)))
            ) from error
        found = {p["Name"]: p["Value"] for p in response.get("Parameters", [])}
        state = _state_from_metadata(found.get(metadata_name))
        if state == DESTROYED:
            raise KeyDestroyed(f"key ID {key_id} was destroyed")
        pem = found.get(private_name)
        if pem is None:
            if state is not None:
                log.error("keyring_inconsistent", key_id=key_id, state=state, missing="private-key")
            raise UnknownKey(f"no private key for key ID {key_id}")
        key = ConnectKey.from_pem(key_id, pem, trusted=True)
        log.info("key_loaded", key_id=key_id, state=state, key_size=key.key_size)
        return key


def _state_from_metadata(raw: str | None) -> str | None:
    if raw is None:
        return None
    try:
        metadata: Any = json.loads(raw)
    except ValueError:
        return None
    state = metadata.get("state") if isinstance(metadata, dict) else None
    return state if isinstance(state, str) else None
