"""A local SSM (moto server) that counts the calls it serves, seeded with one Connect key."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.keys import KeyMaterial, generate_key_material
from rotator.domain.lifecycle import KeyRecord, KeyState

REGION = "us-east-1"
KEYRING_PREFIX = "/connect-keys"
SSM_TARGET_PREFIX = "AmazonSSM."
# Settings that would send SSM calls anywhere but the local server, or sign them differently.
FOREIGN_AWS_SETTINGS = ("AWS_ENDPOINT_URL_SSM", "AWS_PROFILE", "AWS_SESSION_TOKEN")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class SsmCallCounter:
    """WSGI middleware: counts every SSM API request that reaches the server, from any client."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._count = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith(SSM_TARGET_PREFIX):
            with self._lock:
                self._count += 1
        return self._app(environ, start_response)

    @property
    def count(self) -> int:
        with self._lock:
            return self._count


@dataclass(frozen=True)
class SeededKey:
    """The key the bench decrypts with, and where it lives."""

    key_id: str
    material: KeyMaterial


def start_local_ssm() -> tuple[ThreadedMotoServer, SsmCallCounter]:
    """Start moto on a free port of 127.0.0.1 and point this process (and its children) at it."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request on stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name in FOREIGN_AWS_SETTINGS:
        os.environ.pop(name, None)
    # moto's server object answers through `.app`; wrapping it sees every request it serves.
    counter = SsmCallCounter(server._server.app)
    server._server.app = counter
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "KEYRING_PREFIX": KEYRING_PREFIX,
        }
    )
    return server, counter


def seed_keys(*, blog_key_parameter: str, blog_key_id_parameter: str) -> SeededKey:
    """One RSA-4096 key in the project's keyring layout and in the blog's two parameters."""
    now = datetime.now(UTC)
    material = generate_key_material(now=now, subject="CN=decrypt-bench")
    key_id = str(uuid.uuid4())
    ssm = boto3.client("ssm")
    SsmKeyring(ssm, KEYRING_PREFIX).store_key(key_id, material, _active_record(key_id, material))
    for name, value in (
        (blog_key_parameter, material.private_key_pem),
        (blog_key_id_parameter, key_id),
    ):
        ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
    return SeededKey(key_id=key_id, material=material)


def _active_record(key_id: str, material: KeyMaterial) -> KeyRecord:
    now = datetime.now(UTC)
    return KeyRecord.for_material(
        key_id,
        material,
        instance_id="bench-instance",
        state=KeyState.ACTIVE,
        at=now,
        actor="bench",
        reason="seeded for the decrypt bench",
        source="bench",
        kms_key_id=None,
    )
