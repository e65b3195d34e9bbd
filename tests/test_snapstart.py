"""The decrypt Lambda under SnapStart: the runtime's hooks simulated in process, in their order.

A fake `snapshot_restore_py` (the hook library of Lambda's Python runtimes) records what the
handler registers; the tests then run the init phase, the before-snapshot hooks (reverse order
of registration, as Lambda does) and the after-restore hooks (in order), and look at the SSM
calls and at what the module's state holds at each step.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import random
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import lambda_decrypt
from lambda_decrypt import keyring, snapstart
from lambda_decrypt.keys import ConnectKey, _LoadedWrappingKey
from rotator.adapters.ssm_keyring import SsmKeyring
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.keys import KeyMaterial
from rotator.domain.lifecycle import KeyState
from tests.conftest import REGION, TEST_CARD, Vector, make_record
from tests.test_handler import KEY_A, KEY_B, CallCounter, event

KEY_RETIRED = "33333333-3333-4333-8333-333333333333"
ROOT = Path(__file__).resolve().parents[1]
HANDLER = "lambda_decrypt.handler"


class FakeHookLibrary(types.ModuleType):
    """`snapshot_restore_py` as Lambda's runtime provides it, run by hand."""

    def __init__(self) -> None:
        super().__init__(snapstart.HOOK_LIBRARY)
        self.before: list[Callable[[], None]] = []
        self.after: list[Callable[[], None]] = []

    def register_before_snapshot(self, func: Callable[..., None], *args: Any, **kwargs: Any) -> Any:
        self.before.append(lambda: func(*args, **kwargs))
        return func

    def register_after_restore(self, func: Callable[..., None], *args: Any, **kwargs: Any) -> Any:
        self.after.append(lambda: func(*args, **kwargs))
        return func

    def snapshot(self) -> None:
        for hook in reversed(self.before):
            hook()

    def restore(self) -> None:
        for hook in self.after:
            hook()


def import_handler(hooks: types.ModuleType | None) -> types.ModuleType:
    """A new instance of the handler module, imported as Lambda's init phase imports it, with
    `hooks` as the runtime's hook library (None: the library is absent). The process's own
    handler module is put back, so other tests keep theirs."""
    saved = sys.modules.pop(HANDLER)
    had_library = snapstart.HOOK_LIBRARY in sys.modules
    previous_library = sys.modules.get(snapstart.HOOK_LIBRARY)
    sys.modules[snapstart.HOOK_LIBRARY] = hooks  # type: ignore[assignment]
    try:
        return importlib.import_module(HANDLER)
    finally:
        sys.modules[HANDLER] = saved
        lambda_decrypt.handler = saved
        if had_library:
            sys.modules[snapstart.HOOK_LIBRARY] = previous_library  # type: ignore[assignment]
        else:
            del sys.modules[snapstart.HOOK_LIBRARY]


def key_material(roots: Iterable[Any], limit: int = 500_000) -> list[str]:
    """What is reachable from `roots` and is private key material: a loaded key, a private
    key object, or PEM text. Other modules, classes and functions are not walked into."""
    found: list[str] = []
    seen: set[int] = set()
    pending = list(roots)
    while pending and len(seen) < limit:
        item = pending.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(
            item,
            ConnectKey | _LoadedWrappingKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
        ):
            found.append(type(item).__name__)
        elif isinstance(item, str | bytes) and (
            "PRIVATE KEY" in item if isinstance(item, str) else b"PRIVATE KEY" in item
        ):
            found.append("PEM")
        if isinstance(item, types.ModuleType | type | types.FunctionType | str | bytes):
            continue
        pending.extend(gc.get_referents(item))
    return found


def module_state(module: types.ModuleType) -> list[Any]:
    """The handler module's globals and the keyring module's (not walked through otherwise)."""
    return [*vars(module).values(), *vars(keyring).values()]


@pytest.fixture
def keyring_in_ssm(
    ssm: Any,
    material_a: KeyMaterial,
    material_b: KeyMaterial,
    material_2048: KeyMaterial,
    real_vector: Vector,
    monkeypatch: pytest.MonkeyPatch,
) -> SsmKeyring:
    """Key A previous, key B active, a retired key, and a key with no metadata (the real
    Connect vector's, imported without a record)."""
    store = SsmKeyring(ssm, "/connect-keys")
    store.store_key(KEY_A, material_a, make_record(KEY_A, material_a, state=KeyState.PREVIOUS))
    store.store_key(KEY_B, material_b, make_record(KEY_B, material_b))
    store.store_key(
        KEY_RETIRED,
        material_2048,
        make_record(KEY_RETIRED, material_2048, state=KeyState.RETIRED),
    )
    store.create_private_key(real_vector.key_id, real_vector.private_key_pem)
    monkeypatch.setenv("KEYRING_PREFIX", "/connect-keys")
    return store


@pytest.fixture
def ssm_calls(monkeypatch: pytest.MonkeyPatch) -> CallCounter:
    counter = CallCounter()
    monkeypatch.setattr(keyring, "default_ssm_client", counter.factory)
    return counter


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> FakeHookLibrary:
    # The before-snapshot hook replaces boto3's default session: this process gets its own back.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", boto3.DEFAULT_SESSION)
    return FakeHookLibrary()


@pytest.fixture
def lambda_init(keyring_in_ssm: SsmKeyring, ssm_calls: CallCounter, hooks: FakeHookLibrary) -> Any:
    """The init phase of a SnapStart version: the handler imported with the hook library."""
    return import_handler(hooks)


def encrypt(material: KeyMaterial, key_id: str) -> str:
    return encrypt_like_connect(
        TEST_CARD.encode(), key_id=key_id, certificate_pem=material.certificate_pem
    )


def test_init_registers_both_hooks_and_builds_the_client_without_any_key(
    lambda_init: Any, hooks: FakeHookLibrary, ssm_calls: CallCounter
) -> None:
    assert (len(hooks.before), len(hooks.after)) == (1, 1)
    container = lambda_init._container
    assert container is not None  # settings read and the decryptor built in the init phase
    assert container.reader._client is not None  # the SSM client too
    assert ssm_calls.calls == []  # but no SSM call: no key, no listing
    assert container.reader.loaded_key_ids() == []
    assert key_material(module_state(lambda_init)) == []


def test_the_snapshot_holds_no_key_and_no_client_and_the_restore_loads_the_keys_in_use(
    lambda_init: Any,
    hooks: FakeHookLibrary,
    ssm_calls: CallCounter,
    material_a: KeyMaterial,
    material_b: KeyMaterial,
) -> None:
    in_init = boto3.DEFAULT_SESSION
    hooks.snapshot()
    reader = lambda_init._container.reader
    assert reader._client is None  # its credentials would be stale after a restore
    # ... and so would those its session cached: a new session, which has resolved none yet.
    assert boto3.DEFAULT_SESSION is not in_init
    assert boto3.DEFAULT_SESSION._session._credentials is None
    assert ssm_calls.calls == []
    assert key_material(module_state(lambda_init)) == []

    hooks.restore()
    # One listing without decryption, then the active and the previous key; not the retired
    # key, nor the key without metadata (those load on first use).
    assert ssm_calls.calls == ["GetParametersByPath", "GetParameters", "GetParameters"]
    assert reader.loaded_key_ids() == sorted([KEY_A, KEY_B])
    assert reader._client is not None

    del ssm_calls.calls[:]
    for material, key_id in ((material_b, KEY_B), (material_a, KEY_A)):
        answer = lambda_init.lambda_handler(event({"Card": encrypt(material, key_id)}), None)
        assert answer == {"status": "ok", "Card": TEST_CARD}
    assert ssm_calls.calls == []  # the first contacts after the restore wait for no SSM call


def test_a_key_loaded_before_the_snapshot_is_not_in_it(
    lambda_init: Any, hooks: FakeHookLibrary, ssm_calls: CallCounter, material_b: KeyMaterial
) -> None:
    """Lambda never invokes before the snapshot; if anything did load a key, it is dropped."""
    message = event({"Card": encrypt(material_b, KEY_B)})
    assert lambda_init.lambda_handler(message, None) == {"status": "ok", "Card": TEST_CARD}
    assert "ConnectKey" in key_material(module_state(lambda_init))  # the walk does see keys

    hooks.snapshot()
    assert key_material(module_state(lambda_init)) == []
    assert lambda_init._container.reader.loaded_key_ids() == []

    hooks.restore()
    del ssm_calls.calls[:]
    assert lambda_init.lambda_handler(message, None) == {"status": "ok", "Card": TEST_CARD}
    assert ssm_calls.calls == []


def test_an_invocation_between_snapshot_and_restore_loads_its_key_on_first_use(
    lambda_init: Any,
    hooks: FakeHookLibrary,
    ssm_calls: CallCounter,
    material_a: KeyMaterial,
    material_b: KeyMaterial,
) -> None:
    hooks.snapshot()
    message = event({"Card": encrypt(material_b, KEY_B)})
    assert lambda_init.lambda_handler(message, None) == {"status": "ok", "Card": TEST_CARD}
    assert ssm_calls.calls == ["GetParameters"]  # a new client, the key loaded lazily

    hooks.restore()  # late: it loads what is missing, and key B only once
    assert ssm_calls.calls == ["GetParameters", "GetParametersByPath", "GetParameters"]
    del ssm_calls.calls[:]
    for material, key_id in ((material_b, KEY_B), (material_a, KEY_A)):
        answer = lambda_init.lambda_handler(event({"Card": encrypt(material, key_id)}), None)
        assert answer == {"status": "ok", "Card": TEST_CARD}
    assert ssm_calls.calls == []


def test_a_key_not_preloaded_still_decrypts_after_one_read(
    lambda_init: Any, hooks: FakeHookLibrary, ssm_calls: CallCounter, real_vector: Vector
) -> None:
    hooks.snapshot()
    hooks.restore()
    del ssm_calls.calls[:]
    answer = lambda_init.lambda_handler(event({"Card": real_vector.ciphertext}), None)
    assert answer == {"status": "ok", "Card": real_vector.plaintext.decode()}
    assert ssm_calls.calls == ["GetParameters"]


def test_each_restore_gets_its_own_randomness(lambda_init: Any, hooks: FakeHookLibrary) -> None:
    """Environments restored from one snapshot must not share the retry jitter's PRNG state."""
    hooks.snapshot()
    in_snapshot = random.getstate()
    draws = []
    for _ in range(2):
        random.setstate(in_snapshot)
        hooks.restore()
        draws.append(random.random())
    random.setstate(in_snapshot)
    assert random.random() not in draws
    assert draws[0] != draws[1]


def test_a_configuration_error_fails_no_hook_and_is_answered_by_the_invocation(
    keyring_in_ssm: SsmKeyring,
    ssm_calls: CallCounter,
    hooks: FakeHookLibrary,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RESPONSE_MODE", "shout")
    module = import_handler(hooks)
    assert module._container is None
    hooks.snapshot()
    hooks.restore()  # no exception: a failing restore hook would fail the restore itself
    assert module._container is None
    assert ssm_calls.calls == []
    assert module.lambda_handler(event({"Card": "x"}), None) == {
        "status": "error",
        "error": "internal",
    }
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"decrypt"' in x]
    assert (line["error"], line["setting"]) == ("config", "RESPONSE_MODE")


def test_without_the_hook_library_nothing_is_built_before_the_first_invocation(
    keyring_in_ssm: SsmKeyring, ssm_calls: CallCounter, material_b: KeyMaterial
) -> None:
    module = import_handler(None)  # importing snapshot_restore_py raises ImportError
    assert snapstart.register(lambda: None, lambda: None) is False
    assert module._container is None
    assert module.lambda_handler(event({"Card": encrypt(material_b, KEY_B)}), None) == {
        "status": "ok",
        "Card": TEST_CARD,
    }
    assert ssm_calls.calls == ["GetParameters"]  # no preload: loaded lazily, once
    module.lambda_handler(event({"Card": encrypt(material_b, KEY_B)}), None)
    assert ssm_calls.calls == ["GetParameters"]


def test_a_configured_ssm_timeout_is_checked_against_the_first_invocations_time(
    keyring_in_ssm: SsmKeyring,
    ssm_calls: CallCounter,
    hooks: FakeHookLibrary,
    monkeypatch: pytest.MonkeyPatch,
    material_b: KeyMaterial,
) -> None:
    """Built at init, the container has no invocation time to check SSM_TIMEOUT_SECONDS
    against; the first invocation does it."""
    monkeypatch.setenv("SSM_TIMEOUT_SECONDS", "2")
    module = import_handler(hooks)
    hooks.snapshot()
    hooks.restore()

    class Context:
        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return 3000

    message = event({"Card": encrypt(material_b, KEY_B)})
    assert module.lambda_handler(message, Context()) == {"status": "error", "error": "internal"}
    monkeypatch.setattr(Context, "get_remaining_time_in_millis", staticmethod(lambda: 8000))
    assert module.lambda_handler(message, Context()) == {"status": "ok", "Card": TEST_CARD}


# --------------------------------------------------------------------------- a new process

CHILD = """
import json, sys, types

class Hooks(types.ModuleType):
    def __init__(self):
        super().__init__("snapshot_restore_py")
        self.before, self.after = [], []
    def register_before_snapshot(self, func, *args, **kwargs):
        self.before.append(func)
    def register_after_restore(self, func, *args, **kwargs):
        self.after.append(func)

hooks = Hooks()
sys.modules["snapshot_restore_py"] = hooks
import lambda_decrypt.handler as handler
for hook in reversed(hooks.before):
    hook()
print(json.dumps({"step": "snapshot"}), flush=True)
sys.stdin.readline()  # the parent counts the SSM calls made so far
for hook in hooks.after:
    hook()
print(json.dumps({"step": "restored"}), flush=True)
sys.stdin.readline()
modules = set(sys.modules)
answer = handler.lambda_handler(json.loads(sys.argv[1]), None)
print(json.dumps({"step": "invoked", "answer": answer,
                  "imported": sorted(set(sys.modules) - modules)}), flush=True)
"""


class CountingApp:
    """WSGI middleware in front of the moto server: the SSM actions it serves, in order."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith("AmazonSSM."):
            with self.lock:
                self.calls.append(target.removeprefix("AmazonSSM."))
        return self.app(environ, start_response)


@pytest.fixture
def ssm_server(
    material_a: KeyMaterial, material_b: KeyMaterial, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, CountingApp]]:
    from moto.server import ThreadedMotoServer

    for name in ("AWS_ENDPOINT_URL_SSM", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        wsgi = server._server
        assert wsgi is not None
        counter = CountingApp(wsgi.app)
        wsgi.app = counter
        client = boto3.client("ssm", region_name=REGION, endpoint_url=endpoint)
        store = SsmKeyring(client, "/connect-keys")
        store.store_key(KEY_A, material_a, make_record(KEY_A, material_a, state=KeyState.PREVIOUS))
        store.store_key(KEY_B, material_b, make_record(KEY_B, material_b))
        del counter.calls[:]
        yield endpoint, counter
    finally:
        server.stop()


@pytest.mark.wire  # a child Python: what the first invocation imports is seen only in a new one
def test_in_a_new_process_the_invocation_after_restore_imports_nothing_and_calls_no_ssm(
    ssm_server: tuple[str, CountingApp], material_b: KeyMaterial
) -> None:
    endpoint, counter = ssm_server
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "KEYRING_", "ROTATOR_")) and k != "PYTHONPATH"
    }
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_EC2_METADATA_DISABLED="true",
        KEYRING_PREFIX="/connect-keys",
    )
    message = event({"Card": encrypt(material_b, KEY_B)})
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(message)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert child.stdin is not None and child.stdout is not None
    steps: dict[str, dict[str, Any]] = {}
    calls: dict[str, list[str]] = {}
    try:
        for step in ("snapshot", "restored", "invoked"):
            while True:
                line = child.stdout.readline()
                assert line, child.stderr.read() if child.stderr else "child ended"
                if line.startswith('{"step"'):
                    break
            steps[step] = json.loads(line)
            calls[step] = list(counter.calls)
            if step != "invoked":
                child.stdin.write("\n")
                child.stdin.flush()
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
    assert calls["snapshot"] == []  # init and snapshot: no SSM call at all
    assert calls["restored"] == ["GetParametersByPath", "GetParameters", "GetParameters"]
    assert calls["invoked"] == calls["restored"]  # the first invocation: none
    assert steps["invoked"]["answer"] == {"status": "ok", "Card": TEST_CARD}
    assert steps["invoked"]["imported"] == []  # every import was done in the init phase
