"""The scheduled Lambda and `rotator serve --once` run one job layer: on the same seeded state they
publish the same metrics, notices, report objects and summaries (modulo IDs and actor names).

Each side gets a world of its own, seeded the same way, with the same Connect IDs (the report
orders its rows by them); the Lambda is invoked as its two schedules invoke it (the rotation,
then `{"job": "report"}`), serve runs every job once."""

from __future__ import annotations

import ast
import io
import random
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from rotator.config import Settings
from rotator.entrypoints import scheduled
from rotator.entrypoints.daemon import run_serve
from rotator.sandbox import connect_emulator
from rotator.sandbox.sample_flows import create_payment_instance
from rotator.services.importing import import_from_blog
from tests.conftest import NOW
from tests.fakes import FakePublisher
from tests.world import KeyPool, World, build_world

DAY = timedelta(days=1)
ALERTS = "arn:aws:sns:us-east-1:123456789012:alerts"
REPORTS = "arn:aws:sns:us-east-1:123456789012:reports"
# IDs (Connect's, the rotations') and fingerprints (every run makes new keys and certificates).
IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{64}")
# Who the keyring's history says acted: the one thing the two entrypoints are meant to differ in.
ACTORS = re.compile(
    r"eventbridge-scheduler \(rotator\)( \[simulated clock\])?|rotator serve@[\w.-]+"
)


class SeededIds:
    """The Connect emulator's `uuid` module, answering the same IDs after each `reset`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._random = random.Random(10)

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self._random.getrandbits(128), version=4)


@pytest.fixture
def fresh_world(
    world: World, key_pool: KeyPool, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], World]:
    """A new Connect and keyring (the `world` fixture's environment), with the same IDs each."""
    ids = SeededIds()
    monkeypatch.setattr(connect_emulator, "uuid", ids)

    def build() -> World:
        ids.reset()
        return build_world(world.sandbox, key_pool, monkeypatch)

    return build


def seed_healthy(world: World) -> None:
    world.init(NOW)


def seed_failing(world: World) -> None:
    """The old key in its grace period; with a one-day cryptoperiod the new key is due, and its
    rotation fails (the grace period is not over)."""
    world.init(NOW)
    world.service.rotate(None, NOW + DAY, force=True)


def seed_left_due(world: World) -> None:
    """A managed instance that is not due, and the blog's key adopted without its certificate
    on a second instance: an active key whose expiry is unknown, due and never rotated."""
    world.init(NOW)
    blog = create_payment_instance(world.connect, "blog")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_id = world.connect.associate_security_key(
        InstanceId=blog.instance_id, Key=public.decode("ascii")
    )["AssociationId"]
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode("ascii")
    world.ssm.put_parameter(Name=f"{world.prefix}-blog/key", Value=pem, Type="SecureString")
    world.ssm.put_parameter(Name=f"{world.prefix}-blog/key-id", Value=key_id, Type="String")
    result = import_from_blog(
        world.adapters.keyring,
        key_parameter=f"{world.prefix}-blog/key",
        key_id_parameter=f"{world.prefix}-blog/key-id",
        certificate_pem=None,
        instance_id=blog.instance_id,
        now=NOW,
        actor="test",
        connect=world.adapters.connect,
    )
    assert result.record.state.value == "active", result


Seed = Callable[[World], None]


def run_lambda(world: World, at: datetime, monkeypatch: pytest.MonkeyPatch) -> FakePublisher:
    """The two schedules' invocations at the sandbox's simulated time `at`."""
    published = FakePublisher(alert_topic_arn=None)

    def publisher(settings: Settings) -> FakePublisher:
        published.alert_topic_arn = settings.sns_topic_arn
        return published

    monkeypatch.setattr(scheduled, "build_publisher", publisher)
    world.sandbox.clock.stand_at(at)
    rotation = scheduled.handler({}, None)
    report = scheduled.handler({"job": "report"}, None)
    world.sandbox.clock.reset()
    assert "error" not in report, report
    assert rotation["now"] == report["now"] == at.isoformat()
    return published


def run_serve_once(at: datetime) -> tuple[int, FakePublisher, str]:
    published = FakePublisher(alert_topic_arn=None)

    def publisher(settings: Settings) -> FakePublisher:
        published.alert_topic_arn = settings.sns_topic_arn
        return published

    out = io.StringIO()
    code = run_serve(None, once=True, out=out, now=lambda: at, publisher_factory=publisher)
    return code, published, out.getvalue()


def normalised(published: FakePublisher, world: World) -> list[Any]:
    """Everything published, in order, with IDs numbered by first appearance, the keyring prefix
    and the actors replaced: two worlds seeded alike then compare equal."""
    text = repr(
        [
            [
                (m.name, m.value, m.unit, m.dimensions, at.isoformat())
                for m, at in published.metrics
            ],
            [(n.subject, n.message) for n in published.notices],
            [(r.location, r.content_type, r.body.decode("utf-8")) for r in published.reports],
            [(s.topic_arn, s.subject, s.message) for s in published.summaries],
        ]
    )
    text = text.replace(world.prefix, "<prefix>")
    text = ACTORS.sub("<actor>", text)
    ids: dict[str, str] = {}
    text = IDS.sub(lambda m: ids.setdefault(m.group(), f"<id{len(ids)}>"), text)
    result: list[Any] = ast.literal_eval(text)
    return result


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROTATOR_KEY_SIZE", "2048")  # real generation, kept quick
    monkeypatch.setenv("ROTATOR_SNS_TOPIC_ARN", ALERTS)
    monkeypatch.setenv("ROTATOR_REPORT_S3_URI", "s3://evidence/reports/")
    monkeypatch.setenv("ROTATOR_REPORT_SNS_TOPIC_ARN", REPORTS)


@pytest.mark.usefixtures("environment")
@pytest.mark.parametrize(
    ("seed", "at", "cryptoperiod_days", "notice"),
    [
        (seed_healthy, NOW + 366 * DAY, 365, None),  # past the cryptoperiod: rotated
        (seed_failing, NOW + 3 * DAY, 1, "connect-key-rotator: 1 rotation(s) failed"),
        (seed_left_due, NOW + 10 * DAY, 365, "connect-key-rotator: 1 key(s) due and not rotated"),
    ],
    ids=["rotated", "failed", "left-due"],
)
def test_the_lambda_and_serve_publish_the_same(
    fresh_world: Callable[[], World],
    monkeypatch: pytest.MonkeyPatch,
    seed: Seed,
    at: datetime,
    cryptoperiod_days: int,
    notice: str | None,
) -> None:
    monkeypatch.setenv("ROTATOR_CRYPTOPERIOD_DAYS", str(cryptoperiod_days))
    first = fresh_world()
    seed(first)
    by_lambda = run_lambda(first, at, monkeypatch)
    lambda_side = normalised(by_lambda, first)

    other = fresh_world()
    seed(other)
    code, by_serve, out = run_serve_once(at)
    assert code == (0 if notice is None else 1), out
    assert normalised(by_serve, other) == lambda_side

    # What both published, read on one side: the rotation's metrics, its notice, the report.
    metrics = {m.name for m, _ in by_serve.metrics}
    assert {"RotationSuccess", "RotationFailure", "KeysDueNotRotated", "DaysToExpiry"} <= metrics
    assert "ReportFindings" in metrics
    assert {at for _, at in by_serve.metrics} == {at}
    assert [n.subject for n in by_serve.notices] == ([] if notice is None else [notice])
    ((location, content_type),) = [(r.location, r.content_type) for r in by_serve.reports]
    assert location == f"s3://evidence/reports/report-{at:%Y-%m-%d}.html"
    assert content_type.startswith("text/html")
    (summary,) = by_serve.summaries
    assert summary.topic_arn == REPORTS and f"Full report: {location}" in summary.message
    rotated = by_serve.value("RotationSuccess")
    assert rotated == (1 if notice is None else 0)
    for published in (by_lambda, by_serve):
        messages = [n.message for n in published.notices]
        messages += [s.message for s in published.summaries]
        assert all("PRIVATE KEY" not in message for message in messages)


@pytest.mark.usefixtures("environment")
def test_a_failed_report_delivery_is_the_same_notice_from_both(
    fresh_world: Callable[[], World], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report job alone, failing to deliver: both answer with the same alert notice."""

    class Refusing(FakePublisher):
        def store_report(self, location: str, body: bytes, content_type: str) -> None:
            from rotator.errors import AwsCallError

            raise AwsCallError("s3:PutObject", location, "NoSuchBucket")

    by_lambda, by_serve = Refusing(alert_topic_arn=ALERTS), Refusing(alert_topic_arn=ALERTS)
    world = fresh_world()
    seed_healthy(world)
    monkeypatch.setattr(scheduled, "build_publisher", lambda settings: by_lambda)
    world.sandbox.clock.stand_at(NOW + DAY)
    summary = scheduled.handler({"job": "report"}, None)
    world.sandbox.clock.reset()
    assert summary["ok"] is False and summary["error"].startswith("delivery: ")

    seed_healthy(fresh_world())
    out = io.StringIO()
    code = run_serve(
        None, once=True, out=out, now=lambda: NOW + DAY, publisher_factory=lambda s: by_serve
    )
    assert code == 1 and "s3:PutObject" in out.getvalue()
    # serve ran the rotation job too (nothing due: metrics, no notice): compare the report's.
    findings = [(m.name, m.dimensions, m.value) for m, _ in by_serve.metrics]
    assert [f for f in findings if f[0] == "ReportFindings"] == [
        (m.name, m.dimensions, m.value) for m, _ in by_lambda.metrics
    ]
    assert by_serve.notices == by_lambda.notices
    (notice,) = by_lambda.notices
    assert notice.subject == "connect-key-rotator: compliance report failed"
    assert "s3:PutObject" in notice.message
    assert by_lambda.summaries == by_serve.summaries == []


# -- the verify job ----------------------------------------------------------------------------

STRAY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def seed_drifted(world: World) -> None:
    """A managed instance, then a key associated by hand (the same key on each side)."""
    world.init(NOW)
    public = STRAY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    world.connect.associate_security_key(InstanceId=world.instance_id, Key=public.decode("ascii"))


@pytest.mark.usefixtures("environment")
def test_the_verify_job_is_the_same_from_the_lambda_and_serve(
    fresh_world: Callable[[], World], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The CloudTrail rule's `{"job": "verify"}` and serve's `[schedules] verify`: the same
    VerifyFailures metric and the same notice naming the hand-made association; the rotation
    job's drift check names it too, on both sides."""
    at = NOW + DAY
    first = fresh_world()
    seed_drifted(first)
    by_lambda = run_lambda(first, at, monkeypatch)
    by_lambda_verify = FakePublisher(alert_topic_arn=ALERTS)
    monkeypatch.setattr(scheduled, "build_publisher", lambda settings: by_lambda_verify)
    first.sandbox.clock.stand_at(at)
    summary = scheduled.handler({"job": "verify"}, None)
    first.sandbox.clock.reset()
    assert summary["ok"] is False and summary["job"] == "verify", summary
    assert any("association-added" in line for line in summary["failures"]), summary
    by_lambda.metrics += by_lambda_verify.metrics
    by_lambda.notices += by_lambda_verify.notices
    lambda_side = normalised(by_lambda, first)

    other = fresh_world()
    seed_drifted(other)
    config = tmp_path / "rotator.toml"
    config.write_text('[schedules]\nverify = "30 * * * *"\n', encoding="utf-8")
    published = FakePublisher(alert_topic_arn=ALERTS)
    out = io.StringIO()
    code = run_serve(
        config, once=True, out=out, now=lambda: at, publisher_factory=lambda s: published
    )
    assert code == 1, out.getvalue()
    assert normalised(published, other) == lambda_side

    assert published.value("VerifyFailures") >= 1
    critical = [
        m.value
        for m, _ in published.metrics
        if m.name == "DriftFindings" and ("Severity", "critical") in m.dimensions
    ]
    assert critical == [1]
    subjects = [n.subject for n in published.notices]
    assert subjects[0].startswith("connect-key-rotator: 1 critical drift finding(s)")
    assert subjects[-1].startswith("connect-key-rotator: verify failed")
    assert all("association-added" in n.message for n in published.notices)
