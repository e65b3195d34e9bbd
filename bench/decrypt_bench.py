"""Decrypt Lambda bench: warm and cold latency against a crypto floor and the AWS blog's Lambda."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aws_encryption_sdk
import boto3
import cryptography
from cold_start import child_env, precompile_both_sides
from crypto_floor import ParsedMessage, decrypt_floor, parse_message
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from local_ssm import SeededKey, SsmCallCounter, seed_keys, start_local_ssm
from result_table import Row, Target, format_table

from lambda_decrypt import handler
from rotator.domain.connect_cipher import encrypt_like_connect

PLAINTEXT = b"4111111111111111"
COLD_START_SCRIPT = Path(__file__).with_name("cold_start.py")
COLD_START_TIMEOUT_SECONDS = 120
COLD_TARGETS = ("ours", "blog")


class BenchError(Exception):
    """A measurement went wrong (a wrong plaintext, a failed child): the figures are void."""


@dataclass(frozen=True)
class Plan:
    """How much to measure: warm work is interleaved in rounds, cold runs alternate."""

    name: str
    rounds: int
    fast_batch: int  # handler and floor calls per round
    blog_batch: int  # the blog's Lambda costs ~100x more per call
    cold_runs: int
    cold_warmup_runs: int  # discarded: they fill the page cache (and write bytecode if allowed)


FULL_PLAN = Plan("full", rounds=25, fast_batch=16, blog_batch=1, cold_runs=11, cold_warmup_runs=1)
QUICK_PLAN = Plan("quick", rounds=2, fast_batch=5, blog_batch=1, cold_runs=1, cold_warmup_runs=0)


@dataclass
class Subject:
    """Something invoked in the warm loop, with its samples and the SSM calls it caused."""

    call: Callable[[], Any]
    check: Callable[[Any], None]
    batch: int
    samples_ms: list[float] = field(default_factory=list)
    ssm_calls: int = 0

    def run_batch(self, counter: SsmCallCounter) -> None:
        calls_before = counter.count
        for _ in range(self.batch):
            started = time.perf_counter_ns()
            result = self.call()
            self.samples_ms.append((time.perf_counter_ns() - started) / 1e6)
            self.check(result)
        self.ssm_calls += counter.count - calls_before

    def invocations(self) -> int:
        return len(self.samples_ms)


def connect_event(parameter: str, ciphertext: str) -> dict[str, Any]:
    """A ContactFlowEvent as Connect sends it to Invoke-Lambda, one encrypted parameter."""
    return {
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {"ContactId": "bench-contact", "Attributes": {}, "Channel": "VOICE"},
            "Parameters": {parameter: ciphertext},
        },
    }


def encrypted_parameter(event: dict[str, Any]) -> str:
    (name,) = event["Details"]["Parameters"]
    return str(name)


def expect_plaintext(plaintext: bytes) -> None:
    if plaintext != PLAINTEXT:
        raise BenchError("the floor decrypted to a wrong plaintext")


def expect_answer(parameter: str, response: dict[str, str]) -> None:
    if response != {"status": "ok", parameter: PLAINTEXT.decode()}:
        status, error = response.get("status"), response.get("error")
        raise BenchError(f"a Lambda answered status={status} error={error}, not the plaintext")


def measure_warm(plan: Plan, subjects: dict[str, Subject], counter: SsmCallCounter) -> None:
    """A new container and one untimed first call each, then rounds of interleaved batches."""
    handler.reset_container()
    for subject in subjects.values():
        subject.check(subject.call())
    names = list(subjects)
    for round_index in range(plan.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            subjects[name].run_batch(counter)


def cold_start_ms(target: str, event: dict[str, Any], env: dict[str, str]) -> float:
    """Run one cold start in a new process and return what it measured from its script's top."""
    completed = subprocess.run(
        [sys.executable, str(COLD_START_SCRIPT), target, json.dumps(event)],
        capture_output=True,
        text=True,
        timeout=COLD_START_TIMEOUT_SECONDS,
        check=False,
        env=env,
    )
    if completed.returncode != 0:
        raise BenchError(f"cold start of {target} failed: {completed.stderr.strip()[-2000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    expect_answer(encrypted_parameter(event), result["response"])
    return float(result["elapsed_ms"])


def measure_cold(plan: Plan, event: dict[str, Any]) -> dict[str, list[float]]:
    """Alternate new processes of ours and the blog's, swapping who goes first each run."""
    precompile_both_sides()
    env = child_env()  # a child imports only what decrypt.zip ships (see cold_start.py)
    samples: dict[str, list[float]] = {target: [] for target in COLD_TARGETS}
    for run in range(plan.cold_warmup_runs + plan.cold_runs):
        order = COLD_TARGETS if run % 2 == 0 else COLD_TARGETS[::-1]
        for target in order:
            elapsed_ms = cold_start_ms(target, event, env)
            if run >= plan.cold_warmup_runs:
                samples[target].append(elapsed_ms)
    return samples


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


def result_rows(warm: dict[str, Subject], cold: dict[str, list[float]]) -> list[Row]:
    ours_ms, floor_ms, blog_ms = (warm[name].samples_ms for name in ("ours", "floor", "blog"))
    ours_median, floor_median, blog_median = map(statistics.median, (ours_ms, floor_ms, blog_ms))
    cold_ours, cold_blog = (statistics.median(cold[target]) for target in COLD_TARGETS)
    ssm_ours, ssm_blog = (
        warm[name].ssm_calls / warm[name].invocations() for name in ("ours", "blog")
    )
    return [
        Row(
            "warm decrypt median ms, handler vs floor",
            ours_median,
            floor_median,
            ours_median / floor_median,
            Target("ratio", "<=", 1.25),
        ),
        Row(
            "warm decrypt p99 ms, handler vs floor",
            p99(ours_ms),
            p99(floor_ms),
            p99(ours_ms) / p99(floor_ms),
            None,
        ),
        Row(
            "cold start median ms, ours vs blog",
            cold_ours,
            cold_blog,
            cold_ours / cold_blog,
            Target("ratio", "<=", 0.6),
        ),
        Row(
            "warm invocation median ms, ours vs blog (speed-up)",
            ours_median,
            blog_median,
            blog_median / ours_median,
            Target("ratio", ">=", 20),
            ratio_suffix="x",
        ),
        Row(
            "SSM calls per warm invocation, ours vs blog",
            ssm_ours,
            ssm_blog,
            None,
            Target("ours", "<=", 0),
        ),
    ]


def print_header(plan: Plan, message: ParsedMessage) -> None:
    print(
        f"decrypt bench ({plan.name}): Python {platform.python_version()}, "
        f"cryptography {cryptography.__version__} ({openssl_backend.openssl_version_text()}), "
        f"aws-encryption-sdk {aws_encryption_sdk.__version__}, boto3 {boto3.__version__}, "
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}"
    )
    print(
        f"message: RSA-4096 key, suite 0x{message.suite_id:04x}, {len(message.frames)} frame(s), "
        f"{len(PLAINTEXT)}-byte plaintext, {message.total_bytes}-byte message"
    )
    print(
        f"SSM: moto server at {os.environ['AWS_ENDPOINT_URL']} (loopback: real SSM adds a network "
        "round trip to every blog call); calls counted at the server"
    )
    print(
        f"warm: {plan.rounds} interleaved rounds of {plan.fast_batch} handler + "
        f"{plan.fast_batch} floor + {plan.blog_batch} blog invocations, after one untimed "
        "first call each; handler logs at INFO to /dev/null"
    )
    print(
        f"cold: {plan.cold_runs} new processes each (after {plan.cold_warmup_runs} discarded), "
        "alternating; timed in the child from its script's top: import + first invocation; "
        f"bytecode writing {'off' if sys.flags.dont_write_bytecode else 'on'}"
    )
    print(flush=True)


def load_rsa_key(private_key_pem: str) -> rsa.RSAPrivateKey:
    private_key = load_pem_private_key(private_key_pem.encode("ascii"), password=None)
    assert isinstance(private_key, rsa.RSAPrivateKey)
    return private_key


def warm_subjects(
    plan: Plan,
    event: dict[str, Any],
    message: ParsedMessage,
    key: SeededKey,
    blog_handler: Callable[[dict[str, Any], Any], dict[str, str]],
) -> dict[str, Subject]:
    """Our handler, the floor and the blog's handler, each checked after every call."""
    check_answer = partial(expect_answer, encrypted_parameter(event))
    private_key = load_rsa_key(key.material.private_key_pem)
    return {
        "ours": Subject(
            partial(handler.lambda_handler, event, None), check_answer, plan.fast_batch
        ),
        "floor": Subject(
            partial(decrypt_floor, message, private_key), expect_plaintext, plan.fast_batch
        ),
        "blog": Subject(partial(blog_handler, event, None), check_answer, plan.blog_batch),
    }


@contextlib.contextmanager
def stdout_to_devnull() -> Iterator[None]:
    """The handler logs one JSON line per call to stdout: keep the write, lose the noise."""
    with Path(os.devnull).open("w") as devnull, contextlib.redirect_stdout(devnull):
        yield


def run(plan: Plan) -> list[Row]:
    server, counter = start_local_ssm()
    try:
        # Imported only now: its module-level SSM client must see the local endpoint.
        import blog_baseline

        key = seed_keys(
            blog_key_parameter=blog_baseline.PARAM_PRIVATE_KEY,
            blog_key_id_parameter=blog_baseline.PARAM_KEY_ID,
        )
        ciphertext = encrypt_like_connect(
            PLAINTEXT, key_id=key.key_id, certificate_pem=key.material.certificate_pem
        )
        message = parse_message(base64.b64decode(ciphertext))
        print_header(plan, message)
        event = connect_event(blog_baseline.ENCRYPTED_PARAMETER, ciphertext)
        subjects = warm_subjects(plan, event, message, key, blog_baseline.lambda_handler)
        with stdout_to_devnull():
            measure_warm(plan, subjects, counter)
        cold = measure_cold(plan, event)
    finally:
        server.stop()
    return result_rows(subjects, cold)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few iterations, one cold run each")
    args = parser.parse_args(argv)
    try:
        rows = run(QUICK_PLAN if args.quick else FULL_PLAN)
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 1
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
