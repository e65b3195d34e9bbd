"""Cold-start child: in a new process, import one decrypt Lambda and invoke it once, timed.

`python bench/cold_start.py` alone compares, against a local SSM with one active key, our
Lambda's plain cold start (import, then the first invocation loads the key) with the AWS blog's
Lambda (bench/blog_baseline.py), alternating in one run, and with its SnapStart path (init and
before-snapshot, then after-restore and the first invocation), the SnapStart hooks run by a
stand-in for the runtime's `snapshot_restore_py`.

A child imports only what decrypt.zip ships: a module of a distribution outside the zip's
dependency closure (`rich` and `pygments`, which structlog imports when it finds them, come
with the dev tools) cannot be imported there, as on Lambda. The parent names them
(`not_shipped_modules`), in NOT_SHIPPED_ENV.
"""

from __future__ import annotations

import compileall
import importlib
import importlib.metadata
import json
import os
import re
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

LAMBDA_MODULES = {"ours": "lambda_decrypt.handler", "blog": "blog_baseline"}
SNAPSTART = "ours-snapstart"
RUNS = 5
# Top-level modules a child must not import (comma-separated): not in decrypt.zip.
NOT_SHIPPED_ENV = "COLD_START_NOT_SHIPPED"


class _Hooks(types.ModuleType):
    """Records the hooks the handler registers; Lambda's order: before-snapshot reversed."""

    def __init__(self) -> None:
        super().__init__("snapshot_restore_py")
        self.before: list[Callable[[], None]] = []
        self.after: list[Callable[[], None]] = []

    def register_before_snapshot(self, func: Callable[[], None]) -> None:
        self.before.append(func)

    def register_after_restore(self, func: Callable[[], None]) -> None:
        self.after.append(func)


def main(target: str, event_json: str) -> None:
    """Print, as the last stdout line, the import + first invocation time and the response
    (for the SnapStart target: the init, restore and first-invocation times apart)."""
    event = json.loads(event_json)
    hide_not_shipped(os.environ.get(NOT_SHIPPED_ENV, ""))
    if target == SNAPSTART:
        print(json.dumps(snapstart_phases(event)))
        return
    started = time.perf_counter()
    module = importlib.import_module(LAMBDA_MODULES[target])
    response = module.lambda_handler(event, None)
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(json.dumps({"elapsed_ms": elapsed_ms, "response": response}))


def hide_not_shipped(names: str) -> None:
    """Make each named top-level module unimportable (ModuleNotFoundError), as it is on Lambda
    where decrypt.zip does not hold it; `try: import x` falls back as it would there."""
    for name in filter(None, names.split(",")):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def not_shipped_modules() -> str:
    """The top-level modules installed here whose distributions decrypt.zip does not ship (its
    pinned closure, as `rotator package` computes it), for NOT_SHIPPED_ENV."""
    from rotator_build.lambda_zips import (
        DECRYPT_DISTRIBUTIONS,
        DEFAULT_TEMPLATE,
        pinned_closure,
        read_target,
    )

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pins = pinned_closure(DECRYPT_DISTRIBUTIONS, read_target(DEFAULT_TEMPLATE))
    shipped = {canonical(pin.partition("==")[0]) for pin in pins}
    installed = importlib.metadata.packages_distributions()
    hidden = {
        module
        for module, distributions in installed.items()
        if module.isidentifier() and not {canonical(d) for d in distributions} & shipped
    }
    # decrypt.zip's own code, and the blog's stand-in next to this script.
    hidden -= {"lambda_decrypt", *LAMBDA_MODULES.values()}
    return ",".join(sorted(hidden))


def child_env() -> dict[str, str]:
    """This process's environment plus the modules a cold-start child must not import."""
    return {**os.environ, NOT_SHIPPED_ENV: not_shipped_modules()}


def snapstart_phases(event: dict[str, Any]) -> dict[str, Any]:
    """Init (in the snapshot, paid once per version), then what a restored environment pays."""
    hooks = _Hooks()
    sys.modules[hooks.__name__] = hooks
    started = time.perf_counter()
    module = importlib.import_module(LAMBDA_MODULES["ours"])
    for hook in reversed(hooks.before):
        hook()
    snapshot = time.perf_counter()
    for hook in hooks.after:
        hook()
    restored = time.perf_counter()
    response = module.lambda_handler(event, None)
    invoked = time.perf_counter()
    return {
        "init_ms": (snapshot - started) * 1000,
        "restore_ms": (restored - snapshot) * 1000,
        "first_invoke_ms": (invoked - restored) * 1000,
        "elapsed_ms": (invoked - snapshot) * 1000,
        "response": response,
    }


def _child(target: str, event: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """One new process, and what it measured."""
    completed = subprocess.run(
        [sys.executable, __file__, target, json.dumps(event)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    if completed.returncode != 0:
        raise SystemExit(f"{target} failed: {completed.stderr.strip()[-2000:]}")
    lines = completed.stdout.strip().splitlines()
    first_invoke = [json.loads(x) for x in lines if '"event": "decrypt"' in x]
    result: dict[str, Any] = json.loads(lines[-1])
    logged = len(first_invoke) == (0 if target == "blog" else 1)  # the blog logs nothing
    if result["response"].get("status") != "ok" or not logged:
        raise SystemExit(f"{target} answered {result['response']}")
    return result


def precompile_both_sides() -> None:
    """A Lambda package ships bytecode (its code directory is read-only, so nothing is cached
    at run time); compile ours and the baseline once, as a deployment would."""
    root = Path(__file__).resolve().parents[1]
    compileall.compile_dir(root / "lambda_decrypt", quiet=1)
    compileall.compile_dir(root / "bench", quiet=1)


def compare() -> None:
    """The three cold paths, RUNS new processes each, alternating, against a seeded local SSM."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from local_ssm import seed_keys, start_local_ssm

    from rotator.domain.connect_cipher import encrypt_like_connect

    precompile_both_sides()
    server, counter = start_local_ssm()
    env = child_env()  # after the start: the local SSM's endpoint is in the environment
    try:
        # Imported only now: its module-level SSM client must see the local endpoint.
        import blog_baseline

        key = seed_keys(
            blog_key_parameter=blog_baseline.PARAM_PRIVATE_KEY,
            blog_key_id_parameter=blog_baseline.PARAM_KEY_ID,
        )
        ciphertext = encrypt_like_connect(
            b"4111111111111111", key_id=key.key_id, certificate_pem=key.material.certificate_pem
        )
        event = {
            "Name": "ContactFlowEvent",
            "Details": {
                "ContactData": {"ContactId": "bench"},
                "Parameters": {blog_baseline.ENCRYPTED_PARAMETER: ciphertext},
            },
        }
        targets = ["ours", "blog", SNAPSTART]
        samples: dict[str, list[dict[str, Any]]] = {target: [] for target in targets}
        calls: dict[str, list[int]] = {target: [] for target in targets}
        for run in range(RUNS):
            # Each target goes first in turn: none always gets the page cache another warmed.
            for target in targets[run % 3 :] + targets[: run % 3]:
                before = counter.count
                samples[target].append(_child(target, event, env))
                calls[target].append(counter.count - before)
    finally:
        server.stop()

    def median(target: str, field: str) -> float:
        return statistics.median(float(sample[field]) for sample in samples[target])

    rows = [
        ("plain cold start: import + first invocation", "ours", "elapsed_ms"),
        ("the blog's Lambda: import + first invocation", "blog", "elapsed_ms"),
        ("SnapStart init + before-snapshot (once a version)", SNAPSTART, "init_ms"),
        ("SnapStart after-restore hook (client, keys)", SNAPSTART, "restore_ms"),
        ("SnapStart first invocation after the restore", SNAPSTART, "first_invoke_ms"),
    ]
    print(f"decrypt Lambda cold paths, median of {RUNS} new processes, local SSM (loopback)")
    hidden = env[NOT_SHIPPED_ENV].split(",") if env[NOT_SHIPPED_ENV] else []
    print(f"  {len(hidden)} installed top-level modules outside decrypt.zip: not importable")
    for label, target, field in rows:
        print(f"  {label:<52} {median(target, field):8.1f} ms")
    ratio = median("ours", "elapsed_ms") / median("blog", "elapsed_ms")
    print(f"  {'plain cold start, ours vs blog (target <= 0.6)':<52} {ratio:8.3f}")
    print(
        f"  SSM calls per process: plain {calls['ours']}, blog {calls['blog']}, "
        f"SnapStart {calls[SNAPSTART]}"
    )
    print("  (Lambda's own restore of the snapshot is not simulated: it adds to the restore.)")


if __name__ == "__main__":
    if len(sys.argv) == 1:
        compare()
    else:
        main(*sys.argv[1:])
