"""Cold-start child: in a new process, import one decrypt Lambda and invoke it once, timed."""

from __future__ import annotations

import importlib
import json
import sys
import time

LAMBDA_MODULES = {"ours": "lambda_decrypt.handler", "blog": "blog_baseline"}


def main(target: str, event_json: str) -> None:
    """Print, as the last stdout line, the import + first invocation time and the response."""
    event = json.loads(event_json)
    started = time.perf_counter()
    module = importlib.import_module(LAMBDA_MODULES[target])
    response = module.lambda_handler(event, None)
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(json.dumps({"elapsed_ms": elapsed_ms, "response": response}))


if __name__ == "__main__":
    main(*sys.argv[1:])
