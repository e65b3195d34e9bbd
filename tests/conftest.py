"""Shared fixtures: keys made once per session, the real Connect vectors, moto-backed AWS; and
the tiers (`wire`, `slow`) and xdist groups given at collection."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lambda_decrypt import handler, logs
from rotator.domain.keys import KeyMaterial, generate_key_material
from rotator.domain.lifecycle import KeyRecord, KeyState
from rotator.domain.rotation import RotationState, StepDone
from rotator.ports import Keyring
from tests.fakes import HeldKeys

VECTORS = Path(__file__).parent / "vectors"
REGION = "us-east-1"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
TEST_CARD = "4111111111111111"


@dataclass(frozen=True)
class Vector:
    ciphertext: str
    key_id: str
    plaintext: bytes
    private_key_pem: str
    certificate_pem: str


@pytest.fixture(scope="session")
def real_vector() -> Vector:
    """A message Amazon Connect itself encrypted, with its key (certificate expired 2022)."""
    folder = VECTORS / "connect-real"
    return Vector(
        ciphertext=(folder / "ciphertext.b64").read_text().strip(),
        key_id="a5ecd749-4bd8-4a94-bfde-27eefe4f12b1",
        plaintext=b"112344567789",
        private_key_pem=(folder / "private.key.pem").read_text(),
        certificate_pem=(folder / "certificate.pem").read_text(),
    )


@pytest.fixture(scope="session")
def blog_truncated() -> str:
    """The AWS blog's ciphertext: intact header, key d4891de8-..., signature cut short."""
    return (VECTORS / "blog-truncated.b64").read_text().strip()


@pytest.fixture(scope="session")
def material_a() -> KeyMaterial:
    return generate_key_material(now=NOW, subject="CN=test-key-a")


@pytest.fixture(scope="session")
def material_b() -> KeyMaterial:
    return generate_key_material(now=NOW, subject="CN=test-key-b")


@pytest.fixture(scope="session")
def material_2048() -> KeyMaterial:
    return generate_key_material(now=NOW, key_size=2048, subject="CN=test-key-2048")


def make_record(
    key_id: str,
    material: KeyMaterial,
    *,
    state: KeyState = KeyState.ACTIVE,
    instance_id: str | None = "instance-1",
) -> KeyRecord:
    return KeyRecord.for_material(
        key_id,
        material,
        instance_id=instance_id,
        state=state,
        at=NOW,
        actor="test",
        reason="fixture",
        source="test",
        kms_key_id=None,
    )


def keep_rotation(keyring: Keyring, state: RotationState, *, at: datetime) -> None:
    """`state` as the instance's rotation record, with its step's event (a rotation's first
    write is one such)."""
    keyring.put_rotation([StepDone(state)], at=at, checkpoint=state)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """moto for every AWS service, with dummy credentials and no real endpoint reachable."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SSM", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    # moto stands in for the sandbox, where dual control is off (tests/test_dual_control*.py
    # turn it on); _isolated_env has removed every other ROTATOR_ variable.
    monkeypatch.setenv("ROTATOR_DUAL_CONTROL", "false")
    with mock_aws():
        yield


@pytest.fixture
def ssm(aws: None) -> Any:
    return boto3.client("ssm", region_name=REGION)


@pytest.fixture
def connect_holds(monkeypatch: pytest.MonkeyPatch) -> HeldKeys:
    """For CLI tests against plain moto (no Connect emulator): the CLI's Connect port is a fake
    that lists the keys the test says Connect holds (what `import --instance-id` checks)."""
    from rotator.entrypoints import cli

    held = HeldKeys()
    real = cli.build_adapters

    def with_fake_connect(*args: Any, **kwargs: Any) -> Any:
        return replace(real(*args, **kwargs), connect=held)

    monkeypatch.setattr(cli, "build_adapters", with_fake_connect)
    return held


@pytest.fixture
def fresh_container() -> Iterator[None]:
    """Every test that invokes the Lambda handler starts in a new container."""
    handler.reset_container()
    yield
    handler.reset_container()


@pytest.fixture(autouse=True)
def _logging_not_yet_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first `configure_logging` of a test takes effect, as the first of a new process does:
    where the logs go (stdout for the Lambdas, stderr for the CLI) must not depend on which test
    ran before in the same worker."""
    monkeypatch.setattr(logs, "_configured", False)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith(("KEYRING_", "ROTATOR_")) or name in (
            "ENCRYPTED_PARAMETERS",
            "DECRYPT_ATTRIBUTES",
            "RESPONSE_MODE",
        ):
            monkeypatch.delenv(name)


# Fixtures that put a test on the wire: HTTP to the sandbox (moto server + Connect emulator), in
# this process or in a `rotator sandbox` child. A test using one, however indirectly, is `wire`.
WIRE_FIXTURES = frozenset({"sandbox", "sandbox_process", "world"})
# Fixtures that build the Lambda zips (tests/test_packaging.py): a test using one is `slow`.
SLOW_FIXTURES = frozenset({"built"})


# Modules run whole on one xdist worker: their tests share a module-scoped fixture, built once
# per worker that runs any of them, or a directory. Every other test is a unit of its own.
TOGETHER = {
    "tests/test_packaging.py": "`built` (the Lambda zips), and the wheel cache that pip fills",
    "tests/test_cli_e2e.py": "`sandbox_process`: `rotator sandbox` as a child process",
    "tests/test_crash_processes.py": "`sandbox_process`",
    "tests/test_rotation_races.py": "`sandbox_process`",
    "tests/test_operator_walkthrough.py": "`walk`: the documents walked against the sandbox",
    "tests/test_connect_emulator.py": "a sandbox of its own",
    "tests/test_sandbox_server.py": "a sandbox of its own",
    "tests/test_sandbox_accounts.py": "a sandbox of its own",
    "tests/test_decrypt_adversarial.py": "keys loaded and messages encrypted once",
    "tests/test_report_browser.py": "the report seeded and rendered once per module",
    "tests/test_rewrap_crash.py": "`sandbox_process`",
}


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup`, grouped by TOGETHER: xdist_group marks do not group on pytest 9.2
    (pytest-xdist issue 1386), and the controller sees node IDs only, not fixtures."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class ModulesTogether(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in TOGETHER else super()._split_scope(nodeid)

    return ModulesTogether(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `wire` and `slow` tests by their fixtures; then order the modules longest first
    (xdist hands out work in collection order with --no-loadscope-reorder): those with a slow
    test, then those with a wire test, then the many quick ones that fill in last. A module's
    tests stay together and in their order."""
    rank: dict[str, int] = {}
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & WIRE_FIXTURES:
            item.add_marker(pytest.mark.wire)
        if names & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)
        module = item.nodeid.split("::", 1)[0]
        tier = 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("wire") else 2
        rank[module] = min(rank.get(module, 2), tier)
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])


# Sandbox fixtures (moto + the Connect emulator on loopback) for rotation tests; imported last
# because tests/world.py uses the definitions above.
from tests.world import key_pool, sandbox, world  # noqa: E402, F401
