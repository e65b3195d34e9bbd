"""`rotator serve --metrics-port`: /metrics over HTTP holds what the job runs computed, parsed by
prometheus_client's own parsers; without the flag no port is opened and nothing is imported."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from rotator.adapters.prometheus_metrics import JobMetrics, Snapshot
from rotator.domain.expiry import KeyExpiry
from rotator.domain.lifecycle import KeyState
from rotator.entrypoints.daemon import run_serve
from rotator.services.rotation import Outcome
from tests.conftest import NOW
from tests.fakes import FakePublisher
from tests.world import World

ROOT = Path(__file__).resolve().parent.parent
DAY = timedelta(days=1)
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@pytest.fixture
def quick_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROTATOR_KEY_SIZE", "2048")  # real generation, kept quick


def scrape(url: str, accept: str | None = None) -> tuple[str, str]:
    """The body and content type of GET `url`."""
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode("utf-8"), response.headers["Content-Type"]


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the Prometheus text `text`, by sample name then sorted labels."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


class ScrapeAfterReport(io.StringIO):
    """serve's output; when the report job's summary line is written (both jobs have run and
    updated the metrics), /metrics is scraped, as Prometheus would, while serve still runs."""

    def __init__(self) -> None:
        super().__init__()
        self.url: str | None = None
        self.scraped: list[tuple[str, str]] = []

    def write(self, text: str) -> int:
        if text.startswith("rotator serve: metrics at "):
            self.url = text.removeprefix("rotator serve: metrics at ").strip()
        if text.startswith("report at ") and self.url is not None:
            self.scraped = [scrape(self.url), scrape(self.url, OPENMETRICS)]
        return super().write(text)


@pytest.mark.usefixtures("quick_keys")
def test_metrics_hold_what_the_rotation_and_report_jobs_computed(world: World) -> None:
    world.init(NOW)
    old_key = world.flow_key_id()
    at = NOW + 710 * DAY  # inside the renew window: the rotation job rotates
    publisher = FakePublisher()
    out = ScrapeAfterReport()
    code = run_serve(
        None,
        once=True,
        out=out,
        now=lambda: at,
        publisher_factory=lambda settings: publisher,
        metrics_port=0,
    )
    assert code == 0, out.getvalue()
    assert out.url is not None and out.url.startswith("http://127.0.0.1:"), out.getvalue()
    assert out.scraped, out.getvalue()
    (text, content_type), (om_text, om_type) = out.scraped
    assert content_type.startswith("text/plain; version=0.0.4")
    assert om_type.startswith("application/openmetrics-text")
    found = samples(text)
    new_key = world.flow_key_id()
    assert new_key not in (None, old_key)

    # Days to expiry: the values the job published (CloudWatch's per-key series), per key,
    # labelled with each key's state; and they are the keys' own days to expiry at `at`.
    published = {
        dict(m.dimensions)["KeyId"]: m.value
        for m, _ in publisher.metrics
        if m.name == "DaysToExpiry" and m.dimensions
    }
    days = found["connect_key_rotator_days_to_expiry"]
    assert {dict(labels)["key_id"]: value for labels, value in days.items()} == published
    keyring = world.adapters.keyring
    expected = {}
    for key_id in (old_key, new_key):
        assert key_id is not None
        record = keyring.get_record(key_id)
        expiry = record.days_to_expiry(at)
        assert expiry is not None
        labels = (("instance_id", world.instance_id), ("key_id", key_id), ("state", record.state))
        expected[labels] = pytest.approx(expiry)
    assert days == expected
    states = {dict(labels)["key_id"]: dict(labels)["state"] for labels in days}
    assert states == {new_key: KeyState.ACTIVE.value, old_key: KeyState.PREVIOUS.value}

    # Rotations by outcome: a counter from zero for every outcome; this run rotated one.
    assert found["connect_key_rotator_rotations_total"] == {
        (("outcome", o.value),): (1.0 if o is Outcome.ROTATED else 0.0) for o in Outcome
    }
    assert found["connect_key_rotator_last_rotation_timestamp_seconds"] == {
        (("instance_id", world.instance_id),): at.timestamp()
    }
    # Findings by severity: the report job's counts, as it published them.
    report_counts = {
        dict(m.dimensions)["Severity"]: m.value
        for m, _ in publisher.metrics
        if m.name == "ReportFindings"
    }
    assert set(report_counts) == {"critical", "warning", "info"}
    assert found["connect_key_rotator_findings"] == {
        (("severity", s),): n for s, n in report_counts.items()
    }
    assert found["connect_key_rotator_report_timestamp_seconds"] == {(): at.timestamp()}
    assert found["connect_key_rotator_job_last_success_timestamp_seconds"] == {
        (("job", "report"),): at.timestamp(),
        (("job", "rotation"),): at.timestamp(),
    }
    # The same metrics in OpenMetrics, for a scraper that asks for it.
    parsed: list[Family] = list(openmetrics_parser.text_string_to_metric_families(om_text))  # type: ignore[no-untyped-call]
    families = {f.name: f for f in parsed}
    assert families["connect_key_rotator_rotations"].type == "counter"
    assert families["connect_key_rotator_days_to_expiry"].type == "gauge"
    assert len(families["connect_key_rotator_days_to_expiry"].samples) == 2
    # Only ours: a registry of its own, without the process and platform collectors.
    assert all(name.startswith("connect_key_rotator_") for name in found), sorted(found)
    assert not listening(int(out.url.rsplit(":", 1)[1].split("/")[0]))  # closed on return


def test_the_metrics_of_a_run_replace_the_last_runs_gauges_and_add_to_the_counters() -> None:
    metrics = JobMetrics(o.value for o in Outcome)
    assert metrics.snapshot().rotations == dict.fromkeys((o.value for o in Outcome), 0)
    key = KeyExpiry("i-1", "k-1", "active", 29.5)
    metrics.rotation_run(NOW, {"rotated": 1, "not_due": 0}, ["i-1"], [key])
    later = NOW + DAY
    metrics.rotation_run(later, {"failed": 1, "not_due": 1}, [], None)  # keyring unreadable
    snapshot = metrics.snapshot()
    assert snapshot.keys == (key,)  # kept: the run read no keys
    assert snapshot.last_rotation == {"i-1": NOW.timestamp()}
    assert (snapshot.rotations["rotated"], snapshot.rotations["failed"]) == (1, 1)
    assert snapshot.rotations["not_due"] == 1
    metrics.rotation_run(later, {"not_due": 1}, [], [])  # every key gone: the gauge empties
    assert metrics.snapshot().keys == ()

    metrics.report_run(NOW, {"critical": 2, "warning": 0, "info": 1})
    metrics.report_run(later, None)  # the report could not be built: the counts stay
    snapshot = metrics.snapshot()
    assert snapshot.findings == {"critical": 2, "warning": 0, "info": 1}
    assert snapshot.report_at == NOW.timestamp()
    metrics.job_ran("report", later, ok=False)
    metrics.job_ran("rotation", later, ok=True)
    assert metrics.snapshot().job_success == {"rotation": later.timestamp()}


def test_families_render_every_metric_the_readme_documents() -> None:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.registry import Collector, CollectorRegistry

    snapshot = Snapshot(
        keys=(KeyExpiry("i-1", "k-1", "active", 12.25),),
        last_rotation={"i-1": 1.0e9},
        rotations={"rotated": 3},
        findings={"critical": 1},
        report_at=2.0e9,
        job_success={"rotation": 3.0e9},
    )

    class Fixed(Collector):
        def collect(self) -> list[Family]:
            from rotator.adapters.prometheus_metrics import families

            return list(families(snapshot))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    found = samples(generate_latest(registry).decode())
    readme = (ROOT / "README.md").read_text()
    for name in found:
        assert f"`{name}`" in readme, name
    assert found["connect_key_rotator_days_to_expiry"] == {
        (("instance_id", "i-1"), ("key_id", "k-1"), ("state", "active")): 12.25
    }


def serve_on(port: int) -> tuple[int, str]:
    """`serve --once --metrics-port PORT` with adapters that no job may touch."""
    out = io.StringIO()
    untouchable: Any = object()  # a job run would fail on it: none may start
    code = run_serve(
        None,
        once=True,
        out=out,
        adapters_factory=lambda settings: untouchable,
        publisher_factory=lambda settings: FakePublisher(),
        metrics_port=port,
    )
    return code, out.getvalue()


def test_a_port_it_cannot_listen_on_is_a_usage_error_before_any_job_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_on(port) == (2, "")
    assert capsys.readouterr().err.startswith(
        f"error: --metrics-port: cannot listen on 127.0.0.1:{port}: "
    )
    assert serve_on(70000) == (2, "")
    assert "70000 is not a port number (0 to 65535)" in capsys.readouterr().err


# Runs `rotator serve ARGV` in a child process, recording every socket that listens; prints
# whether prometheus_client was imported and the ports listened on, as JSON.
MAIN = "import sys; from rotator.entrypoints.cli import main; sys.exit(main(sys.argv[1:]))"
LISTEN_PROBE = """
import contextlib, io, json, socket, sys
listened = []
listen = socket.socket.listen
def recording(self, *args):
    listened.append(self.getsockname()[1])
    return listen(self, *args)
socket.socket.listen = recording
from rotator.entrypoints.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "out": out.getvalue(), "listened": listened,
                  "prometheus": "prometheus_client" in sys.modules}))
"""


def probe(argv: list[str]) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", LISTEN_PROBE, *argv],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.splitlines()[-1])
    return answer


@pytest.mark.usefixtures("quick_keys")
def test_serve_without_metrics_port_opens_no_port_and_imports_no_prometheus_client(
    world: World,
) -> None:
    world.init(NOW)
    without = probe(["serve", "--once"])
    assert without["code"] == 0, without
    assert (without["listened"], without["prometheus"]) == ([], False)
    assert "metrics at" not in str(without["out"])
    with_port = probe(["serve", "--once", "--metrics-port", "0"])
    assert with_port["code"] == 0 and with_port["prometheus"] is True, with_port
    listened = with_port["listened"]
    assert isinstance(listened, list) and len(listened) == 1, with_port
    port = listened[0]
    assert f"rotator serve: metrics at http://127.0.0.1:{port}/metrics" in str(with_port["out"])


@pytest.mark.wire
def test_sigterm_stops_serve_and_its_metrics_endpoint(tmp_path: Path) -> None:
    config = tmp_path / "rotator.toml"
    config.write_text("[schedules]\nrotation = '0 0 1 1 *'\nreport = '0 0 1 1 *'\n")
    env = {
        **os.environ,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "unused",
        "AWS_SECRET_ACCESS_KEY": "unused",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # no job runs; nothing real is reachable
    }
    child = subprocess.Popen(
        [sys.executable, "-c", MAIN, "serve", "--config", str(config), "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    safety = threading.Timer(30, child.kill)
    safety.start()
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first.startswith("rotator serve: metrics at http://127.0.0.1:"), first
        url = first.removeprefix("rotator serve: metrics at ").strip()
        found = samples(scrape(url)[0])
        # Before any run: every outcome at zero, no key and no finding yet.
        assert set(found["connect_key_rotator_rotations_total"].values()) == {0.0}
        assert "connect_key_rotator_days_to_expiry" not in found
        child.terminate()
        out, err = child.communicate(timeout=10)
    finally:
        safety.cancel()
    assert child.returncode == 0, err
    assert out.rstrip().endswith("rotator serve: stopped"), out
    assert not listening(int(url.rsplit(":", 1)[1].split("/")[0]))
