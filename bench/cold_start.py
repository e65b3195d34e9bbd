"""Cold-start child: in a new process, import one decrypt Lambda and invoke it once, timed.

`python bench/cold_start.py` alone compares, against a local SSM with one active key, our
Lambda's plain cold start (import, then the first invocation loads the key) with its SnapStart
path (init and before-snapshot, then after-restore and the first invocation), the SnapStart
hooks run by a stand-in for the runtime's `snapshot_restore_py`.
"""

from __future__ import annotations

import importlib
import json
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
    if target == SNAPSTART:
        print(json.dumps(snapstart_phases(event)))
        return
    started = time.perf_counter()
    module = importlib.import_module(LAMBDA_MODULES[target])
    response = module.lambda_handler(event, None)
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(json.dumps({"elapsed_ms": elapsed_ms, "response": response}))


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


def _child(target: str, event: dict[str, Any]) -> dict[str, Any]:
    """One new process, and what it measured."""
    completed = subprocess.run(
        [sys.executable, __file__, target, json.dumps(event)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"{target} failed: {completed.stderr.strip()[-2000:]}")
    lines = completed.stdout.strip().splitlines()
    first_invoke = [json.loads(x) for x in lines if '"event": "decrypt"' in x]
    result: dict[str, Any] = json.loads(lines[-1])
    if result["response"].get("status") != "ok" or len(first_invoke) != 1:
        raise SystemExit(f"{target} answered {result['response']}")
    return result


def compare() -> None:
    """Both cold paths, RUNS new processes each, against a seeded local SSM."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from local_ssm import seed_keys, start_local_ssm

    from rotator.domain.connect_cipher import encrypt_like_connect

    server, counter = start_local_ssm()
    try:
        key = seed_keys(
            blog_key_parameter="/bench/blog-private-key", blog_key_id_parameter="/bench/blog-id"
        )
        ciphertext = encrypt_like_connect(
            b"4111111111111111", key_id=key.key_id, certificate_pem=key.material.certificate_pem
        )
        event = {
            "Name": "ContactFlowEvent",
            "Details": {"ContactData": {"ContactId": "bench"}, "Parameters": {"Card": ciphertext}},
        }
        samples: dict[str, list[dict[str, Any]]] = {"ours": [], SNAPSTART: []}
        calls: dict[str, list[int]] = {"ours": [], SNAPSTART: []}
        for _ in range(RUNS):
            for target in samples:
                before = counter.count
                samples[target].append(_child(target, event))
                calls[target].append(counter.count - before)
    finally:
        server.stop()

    def median(target: str, field: str) -> float:
        return statistics.median(float(sample[field]) for sample in samples[target])

    rows = [
        ("plain cold start: import + first invocation", "ours", "elapsed_ms"),
        ("SnapStart init + before-snapshot (once a version)", SNAPSTART, "init_ms"),
        ("SnapStart after-restore hook (client, keys)", SNAPSTART, "restore_ms"),
        ("SnapStart first invocation after the restore", SNAPSTART, "first_invoke_ms"),
    ]
    print(f"decrypt Lambda cold paths, median of {RUNS} new processes, local SSM (loopback)")
    for label, target, field in rows:
        print(f"  {label:<52} {median(target, field):8.1f} ms")
    print(f"  SSM calls per process: plain {calls['ours']}, SnapStart {calls[SNAPSTART]}")
    print("  (Lambda's own restore of the snapshot is not simulated: it adds to the restore.)")


if __name__ == "__main__":
    if len(sys.argv) == 1:
        compare()
    else:
        main(*sys.argv[1:])
