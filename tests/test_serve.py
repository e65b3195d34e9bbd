"""`rotator serve`: the TOML config file, `--once` against the sandbox, the scheduler's promises
(a job never twice at once, a crash survived, a clean stop), SIGTERM/SIGINT in a child process."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import structlog
from apscheduler.triggers.cron import CronTrigger
from botocore.exceptions import NoCredentialsError, NoRegionError
from structlog.testing import capture_logs

from lambda_decrypt.logs import configure_logging
from rotator.config_file import (
    DEFAULT_SCHEDULES,
    OPTIONAL_SCHEDULES,
    ReportTable,
    RotatorConfig,
    cron_trigger,
    load_config,
)
from rotator.domain.flows import FlowKind, FlowRef, ManagedBlock
from rotator.domain.rotation import ManagedInstance
from rotator.entrypoints.daemon import JOBS, Daemon, DaemonLog, JobResult, ScheduledJob, run_serve
from rotator.errors import AwsCallError, ConfigError, KeyringError
from rotator.sandbox.sample_flows import CARD_INPUT_ACTION
from tests.conftest import NOW
from tests.world import World

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "rotator.example.toml"
MEMBER_ROLE = "connect-key-rotator-member-{region}"
DAY = timedelta(days=1)
PLAIN_FLOW = (
    '{"Version": "2019-10-30", "StartAction": "bye", "Actions": [{"Identifier": "bye",'
    ' "Type": "DisconnectParticipant", "Parameters": {}, "Transitions": {}}]}'
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rotator.toml"
    path.write_text(text)
    return path


def instance_toml(
    instance_id: str, flows: list[str], modules: tuple[str, ...] = (), *, card: bool = False
) -> str:
    """An [[instances]] entry; `card` names the sample flows' card-number blocks to encrypt."""
    named = [f"{i}:{CARD_INPUT_ACTION}" for i in (*flows, *modules)] if card else []
    return (
        f"[[instances]]\nid = {instance_id!r}\nflows = {flows!r}\nmodules = {list(modules)!r}\n"
        f"encrypt_blocks = {named!r}\n"
    )


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event at any level, from any thread, while the test runs."""
    configure_logging("WARNING", stream="stderr")  # no-op if configured: run_serve's is too
    wrapper = structlog.get_config()["wrapper_class"]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as entries:
            yield entries
    finally:
        structlog.configure(wrapper_class=wrapper)


# -- the config file ---------------------------------------------------------------------------


def test_the_documented_example_parses_into_every_setting() -> None:
    config = load_config(EXAMPLE)
    assert dict(config.settings) == {
        "keyring_prefix": "/connect-keys",
        "kms_key_id": "alias/connect-keys",
        "key_size": 4096,
        "validity_days": 730,
        "subject": "CN=connect-key-rotator",
        "renew_before_days": 30,
        "cryptoperiod_days": 365,
        "grace_days": 7,
        "retention_days": 90,
        "sns_topic_arn": "arn:aws:sns:us-east-1:123456789012:connect-key-rotator-alerts",
        "metrics_namespace": "ConnectKeyRotator",
        "expiry_event_days": "45,30,14,7,3,1",
        "event_bus": "default",
        "rotation_window": "0 2 * * TUE 4h Europe/London",
        "freeze": "2026-12-01..2026-12-31,2027-03-28",
        "renew_before_minimum_days": 7,
        "log_level": "INFO",
        "ciphertext_stores": "s3://example-contact-records/connect/ dynamodb://payments",
        "dual_control": "true",
        "request_expiry_hours": 24,
        "decrypt_function": "connect-key-rotator-DecryptFunction-AB12CD34",
        # The [report] table's S3 location and topic are the report settings.
        "report_s3_uri": "s3://example-compliance-evidence/connect-key-rotator/",
        "report_sns_topic_arn": "arn:aws:sns:us-east-1:123456789012:connect-key-rotator-reports",
        # [[accounts]] (fleet mode) is the ROTATOR_ACCOUNTS JSON.
        "accounts": json.dumps(
            [
                {
                    "name": "payments-prod",
                    "role_arn": f"arn:aws:iam::111111111111:role/{MEMBER_ROLE}",
                    "external_id": "connect-key-rotator-example-external-id",
                    "regions": ["eu-west-2", "eu-central-1"],
                },
                {
                    "name": "payments-test",
                    "role_arn": f"arn:aws:iam::222222222222:role/{MEMBER_ROLE}",
                    "external_id": "connect-key-rotator-example-external-id",
                    "regions": ["eu-west-2"],
                    "decrypt_function": "payments-test-decrypt",
                },
            ],
            separators=(",", ":"),
        ),
    }
    assert config.instances == (
        ManagedInstance(  # the example gives the instance as its ARN
            "12345678-90ab-4cde-8f01-234567890abc",
            ("aaaaaaaa-1111-4222-8333-444444444444",),
            ("bbbbbbbb-5555-4666-8777-888888888888",),
            (
                ManagedBlock(
                    FlowRef(FlowKind.MODULE, "bbbbbbbb-5555-4666-8777-888888888888"), "card-number"
                ),
            ),
        ),
        ManagedInstance(
            "fedcba09-8765-4321-8fed-cba987654321",
            ("cccccccc-9999-4aaa-8bbb-cccccccccccc", "dddddddd-eeee-4fff-8000-111111111111"),
        ),
    )
    assert dict(config.schedules) == {"rotation": "0 3 * * *", "report": "0 6 * * 1"}
    assert config.report == ReportTable(
        Path("/var/lib/connect-key-rotator/reports"),
        "s3://example-compliance-evidence/connect-key-rotator/",
        "arn:aws:sns:us-east-1:123456789012:connect-key-rotator-reports",
    )
    settings = config.settings_for({})
    assert (settings.kms_key_id, settings.key_size, settings.log_level) == (
        "alias/connect-keys",
        4096,
        "INFO",
    )


def test_an_empty_file_means_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "# nothing\n"))
    assert config == RotatorConfig(path=config.path)
    assert dict(config.schedules) == dict(DEFAULT_SCHEDULES)
    assert config.settings_for({}).grace_days == 7


def test_precedence_flags_then_environment_then_file_then_defaults(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            '[settings]\nkeyring_prefix = "/from-file"\nkey_size = 3072\ngrace_days = 5\n'
            'kms_key_id = "alias/from-file"\nlog_level = "info"\n',
        )
    )
    environ = {"KEYRING_PREFIX": "/from-env", "ROTATOR_KEY_SIZE": "2048", "ROTATOR_KMS_KEY_ID": ""}
    settings = config.settings_for(environ, keyring_prefix="/from-flag", kms_key_id=None)
    assert settings.keyring_prefix == "/from-flag"  # flag > environment > file
    assert settings.key_size == 2048  # environment > file
    assert settings.grace_days == 5  # file > default
    assert settings.kms_key_id == "alias/from-file"  # an empty variable is unset, as in Settings
    assert settings.log_level == "INFO"
    assert settings.retention_days == 90  # default
    assert config.settings_for({"KEYRING_PREFIX": "/from-env"}).keyring_prefix == "/from-env"


def test_a_bad_file_value_names_the_file_unless_the_environment_overrides_it(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "[settings]\nkey_size = 1000\n")
    config = load_config(path)
    with pytest.raises(ConfigError) as caught:
        config.settings_for({})
    assert str(caught.value).startswith(f"configuration: {path} [settings] key_size: ")
    assert config.settings_for({"ROTATOR_KEY_SIZE": "2048"}).key_size == 2048
    with pytest.raises(ConfigError, match="ROTATOR_GRACE_DAYS"):
        config.settings_for({"ROTATOR_KEY_SIZE": "2048", "ROTATOR_GRACE_DAYS": "0"})


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("key_size = ", "", "not valid TOML"),
        ("nonsense = 1\n", "", "unknown key 'nonsense'"),
        ("settings = 5\n", "settings", "must be a table"),
        ("[settings]\nkey_sise = 2048\n", "[settings]", "unknown key 'key_sise'"),
        (
            '[settings]\nkey_size = "big"\n',
            "[settings] key_size",
            "must be an integer, got a string ('big')",
        ),
        ("[settings]\ngrace_days = true\n", "[settings] grace_days", "got a boolean (True)"),
        ("[settings]\nsubject = 5\n", "[settings] subject", "must be a string"),
        ("[schedules]\ncleanup = '0 3 * * *'\n", "[schedules]", "unknown key 'cleanup'"),
        ("[schedules]\nrotation = 3\n", "[schedules] rotation", "must be a cron expression"),
        ("[schedules]\nrotation = '0 3 * *'\n", "[schedules] rotation", "needs 5 fields"),
        ("[schedules]\nreport = '61 3 * * *'\n", "[schedules] report", "'61 3 * * *' is not a"),
        ("[schedules]\nrotation = '0 3 1 * 1'\n", "[schedules] rotation", "not both"),
        ("[schedules]\nrotation = '0 3 * * 8'\n", "[schedules] rotation", "'8' is not a weekday"),
        ("[schedules]\nrotation = '0 3 * * 5-1'\n", "[schedules] rotation", "'5-1' is not"),
        ("instances = 5\n", "instances", "must be an array of tables"),
        ("[[instances]]\nflows = ['f']\n", "[[instances]] #1", "missing key 'id'"),
        ("[[instances]]\nid = 'i'\n", "[[instances]] #1", "at least one flow or module"),
        ("[[instances]]\nid = 'i'\nflows = 'f'\n", "[[instances]] #1 flows", "must be an array"),
        ("[[instances]]\nid = 'i'\nflows = [1]\n", "[[instances]] #1 flows", "1 is not an ID"),
        (
            "[[instances]]\nid = 'arn:aws:connect:us-east-1:1:instance/i'\nflows = ['f']\n",
            "[[instances]] #1 id",
            "is not an instance ID or instance ARN",
        ),
        (
            "[[instances]]\nid = 'i'\nflows = ['f']\nencrypt_blocks = ['g:card']\n",
            "[[instances]] #1 encrypt_blocks",
            "'g' is not in flows or modules",
        ),
        (
            "[[instances]]\nid = 'i'\nflows = ['f']\nencrypt_blocks = ['f']\n",
            "[[instances]] #1 encrypt_blocks",
            "'f' is not FLOW_ID:BLOCK_IDENTIFIER",
        ),
        ("[[instances]]\nid = 'i'\nflows = ['f']\nq = 1\n", "[[instances]] #1", "unknown key 'q'"),
        (
            instance_toml("i", ["f"]) + instance_toml("i", ["g"]),
            "[[instances]] #2",
            "id 'i' appears twice",
        ),
        ("[report]\nemail = 'x'\n", "[report]", "unknown key 'email'"),
        ("[report]\ndirectory = ''\n", "[report] directory", "must be a non-empty string"),
        ("[report]\ns3_uri = 'https://b/x'\n", "[report] s3_uri", "s3://bucket/prefix/"),
        (
            "[report]\nsns_topic_arn = 'arn:aws:sqs:us-east-1:123456789012:q'\n",
            "[report] sns_topic_arn",
            "is not an SNS topic ARN",
        ),
    ],
)
def test_every_mistake_names_the_file_the_key_and_the_problem(
    tmp_path: Path, text: str, where: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"configuration: {path} {where}".rstrip() + ": "), message
    assert problem in message


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file: No such file"):
        load_config(tmp_path / "absent.toml")


def test_a_relative_report_directory_is_relative_to_the_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[report]\ndirectory = 'reports'\n"))
    assert config.report.directory == tmp_path / "reports"


@pytest.mark.parametrize(
    ("weekday_field", "days"),
    [
        ("1", {"Monday"}),  # APScheduler 3 alone would read 1 as Tuesday
        ("0", {"Sunday"}),
        ("7", {"Sunday"}),
        ("1-5", {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday"}),
        ("*/2", {"Sunday", "Tuesday", "Thursday", "Saturday"}),
        ("5-7", {"Friday", "Saturday", "Sunday"}),
        ("sat,SUN", {"Saturday", "Sunday"}),
        ("*", {"Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"}),
    ],
)
def test_cron_weekdays_mean_what_cron_means(weekday_field: str, days: set[str]) -> None:
    trigger = cron_trigger(f"0 6 * * {weekday_field}")
    fired: set[str] = set()
    moment = trigger.get_next_fire_time(None, NOW)
    while moment < NOW + 7 * DAY:
        assert (moment.hour, moment.minute, moment.utcoffset()) == (6, 0, timedelta(0))
        fired.add(moment.strftime("%A"))
        moment = trigger.get_next_fire_time(moment, moment + timedelta(seconds=1))
    assert fired == days


def test_the_default_report_schedule_is_monday_06_00_utc() -> None:
    first = cron_trigger(DEFAULT_SCHEDULES["report"]).get_next_fire_time(None, NOW)
    assert first == datetime(2026, 11, 30, 6, 0, tzinfo=UTC)  # NOW is Monday 2026-11-23 12:00


def test_every_job_has_a_schedule_key() -> None:
    # A default schedule, or one the file may give (the verify job: unscheduled without it).
    assert set(JOBS) == set(DEFAULT_SCHEDULES) | set(OPTIONAL_SCHEDULES)
    assert not set(DEFAULT_SCHEDULES) & set(OPTIONAL_SCHEDULES)
    assert "rotation" in JOBS


# -- serve --once against the sandbox --------------------------------------------------------


@pytest.fixture
def quick_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROTATOR_KEY_SIZE", "2048")  # real generation, kept quick


def serve_once(config: Path | None, at: datetime) -> tuple[int, str]:
    out = io.StringIO()
    return run_serve(config, once=True, out=out, now=lambda: at), out.getvalue()


@pytest.mark.usefixtures("quick_keys")
def test_once_initialises_a_configured_instance_then_finds_it_not_due(
    world: World, tmp_path: Path, logs: list[MutableMapping[str, Any]]
) -> None:
    config = write(
        tmp_path, instance_toml(world.instance_id, [world.flow_id], (world.module_id,), card=True)
    )
    code, out = serve_once(config, NOW)
    assert code == 0, out
    initialised, summary, report = out.splitlines()
    key_id = world.adapters.keyring.get_current(world.instance_id)
    assert initialised.startswith(f"rotation: instance {world.instance_id} initialised: ")
    assert key_id is not None and key_id in initialised
    assert summary.startswith(f"rotation at {NOW.isoformat()}: ok in ") and "(1 rotated)" in out
    assert report.startswith(f"report at {NOW.isoformat()}: ok in ")
    assert report.endswith(
        "0 delivered); warning: the report was delivered nowhere: no destination is configured "
        "(set directory, s3_uri or sns_topic_arn in the config's [report] table)"
    )
    (report_run,) = [e for e in logs if e["event"] == "job_run" and e["job"] == "report"]
    assert report_run["log_level"] == "warning" and report_run["ok"] is True
    assert report_run["warnings"] == [report.split("; warning: ")[1]]
    assert key_id is not None and world.flow_key_id() == key_id and key_id in world.module_content()
    actor = world.adapters.keyring.get_record(key_id).history[0].actor
    assert actor == f"rotator serve@{socket.gethostname()}"
    (run,) = [e for e in logs if e["event"] == "job_run" and e["job"] == "rotation"]
    assert (run["job"], run["ok"], run["outcomes"], run["failures"]) == (
        "rotation",
        True,
        {"rotated": 1},
        [],
    )
    assert run["started"] == NOW.isoformat() and run["duration_s"] >= 0

    names = world.parameter_names()
    code, out = serve_once(config, NOW + 30 * DAY)
    assert (code, "(1 not due)" in out) == (0, True), out
    assert world.parameter_names() == names
    assert world.sandbox.emulator.state.update_count(world.instance_id, world.flow_id) == 1

    drifted = write(tmp_path, instance_toml(world.instance_id, [world.flow_id]))
    code, out = serve_once(drifted, NOW + 31 * DAY)
    assert (code, "(1 not due)" in out) == (0, True), out
    (warning,) = [e for e in logs if e["event"] == "instance_config_differs"]
    assert warning["configured"] == [str(FlowRef(FlowKind.FLOW, world.flow_id))]
    assert str(FlowRef(FlowKind.MODULE, world.module_id)) in warning["managed"]
    assert world.parameter_names() == names


@pytest.mark.usefixtures("quick_keys")
def test_once_without_a_config_rotates_what_init_put_under_management(world: World) -> None:
    world.init(NOW)
    old_key = world.flow_key_id()
    code, out = serve_once(None, NOW + 366 * DAY)  # past the cryptoperiod
    assert code == 0 and "(1 rotated)" in out, out
    assert world.flow_key_id() not in (None, old_key)


@pytest.mark.usefixtures("quick_keys")
def test_once_reports_failing_instances_and_still_handles_the_others(
    world: World, tmp_path: Path
) -> None:
    other = world.connect.create_instance(
        IdentityManagementType="CONNECT_MANAGED",
        InstanceAlias="plain",
        InboundCallsEnabled=True,
        OutboundCallsEnabled=False,
    )["Id"]
    plain = world.connect.create_contact_flow(
        InstanceId=other, Name="plain", Type="CONTACT_FLOW", Content=PLAIN_FLOW
    )["ContactFlowId"]
    absent = "00000000-0000-4000-8000-000000000000"
    config = write(
        tmp_path,
        instance_toml(other, [plain])
        + instance_toml(absent, [world.flow_id])
        + instance_toml(world.instance_id, [world.flow_id], (world.module_id,), card=True),
    )
    code, out = serve_once(config, NOW)
    assert code == 1
    assert ": FAILED in " in out and "(2 failed, 1 rotated)" in out, out
    lines = out.splitlines()
    assert lines[0].startswith(f"rotation: instance {other} could not be initialised: ")
    assert lines[1].startswith(f"rotation: instance {absent} could not be initialised: ")
    assert lines[2].startswith(f"rotation: instance {world.instance_id} initialised: ")
    assert f"; {other}: {FlowKind.FLOW} {plain} cannot be managed" in out
    assert f"; {absent}: " in out and "not found" in out
    assert world.flow_key_id() == world.adapters.keyring.get_current(world.instance_id)
    assert world.flow_key_id() is not None


def test_a_config_error_exits_2_before_anything_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_adapters(settings: object) -> Any:
        raise AssertionError("adapters built despite a config error")

    path = write(tmp_path, "[schedules]\nrotation = 'daily'\n")
    code = run_serve(path, once=True, out=io.StringIO(), adapters_factory=no_adapters)
    assert code == 2
    assert f"error: configuration: {path} [schedules] rotation: " in capsys.readouterr().err


def test_serve_without_a_region_exits_2_and_names_aws_region(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_region(settings: object) -> Any:
        raise NoRegionError()

    assert run_serve(None, once=True, out=io.StringIO(), adapters_factory=no_region) == 2
    assert capsys.readouterr().err.startswith(
        "error: configuration: AWS_REGION: no AWS region is configured: set AWS_REGION"
    )


def test_a_job_without_credentials_says_what_to_set() -> None:
    def unsigned(now: datetime) -> JobResult:
        raise AwsCallError("ssm:GetParametersByPath", "/k", "NoCredentialsError") from (
            NoCredentialsError()
        )

    out = io.StringIO()
    assert Daemon([job("rotation", unsigned)], DaemonLog(out), _now).run_once() is False
    assert "FAILED" in out.getvalue()
    assert "; configuration: AWS credentials: no AWS credentials found: set AWS_PROFILE" in (
        out.getvalue()
    )


def job(name: str, run: Any) -> ScheduledJob:
    return ScheduledJob(name, CronTrigger(second="*", timezone=UTC), run)


def test_once_runs_every_job_after_one_fails_and_reports_each() -> None:
    ran: list[str] = []

    def crash(now: datetime) -> JobResult:
        ran.append("crash")
        raise RuntimeError("a secret-looking message that must not be printed")

    def refused(now: datetime) -> JobResult:
        ran.append("refused")
        raise KeyringError("the keyring is unreadable")

    def fine(now: datetime) -> JobResult:
        ran.append("fine")
        return JobResult({"not_due": 2})

    out = io.StringIO()
    jobs = [job("crash", crash), job("refused", refused), job("fine", fine)]
    daemon = Daemon(jobs, DaemonLog(out), _now)
    assert daemon.run_once() is False
    assert ran == ["crash", "refused", "fine"]
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("crash at ") and "FAILED" in lines[0]
    assert "unexpected RuntimeError" in lines[0] and "secret" not in out.getvalue()
    assert lines[1].endswith("(nothing to do); the keyring is unreadable")
    assert ": ok in " in lines[2] and lines[2].endswith("(2 not due)")
    assert Daemon([job("fine", fine)], DaemonLog(io.StringIO()), _now).run_once() is True


def _now() -> datetime:
    return NOW


# -- the scheduler -------------------------------------------------------------------------------


def test_serve_never_runs_a_job_twice_at_once_survives_crashes_and_waits_on_stop(
    logs: list[MutableMapping[str, Any]],
) -> None:
    lock = threading.Lock()
    count = {"running": 0, "peak": 0, "started": 0, "finished": 0, "crashes": 0}
    daemon: Daemon

    def slow(now: datetime) -> JobResult:
        with lock:
            count["running"] += 1
            count["started"] += 1
            count["peak"] = max(count["peak"], count["running"])
            second_run = count["started"] == 2
        if second_run:
            daemon.stop()  # stop while this run is going: serve must wait for it
        time.sleep(1.5)  # longer than the one-second schedule
        with lock:
            count["running"] -= 1
            count["finished"] += 1
        return JobResult({"rotated": 1})

    def crash(now: datetime) -> JobResult:
        count["crashes"] += 1
        raise RuntimeError("boom")

    out = io.StringIO()
    daemon = Daemon([job("slow", slow), job("crash", crash)], DaemonLog(out), _now)
    before = signal.getsignal(signal.SIGTERM)
    safety = threading.Timer(20, daemon.stop)
    safety.start()
    try:
        daemon.serve()
    finally:
        safety.cancel()
    assert count["peak"] == 1
    assert count["started"] == count["finished"] == 2  # the run in progress at stop finished
    assert count["crashes"] >= 2  # still scheduled after raising
    assert any(e["event"] == "job_skipped" and e["job"] == "slow" for e in logs)
    crashes = [e for e in logs if e["event"] == "job_run" and e["job"] == "crash"]
    assert crashes and all(
        e["failures"] == ["unexpected RuntimeError (LOG_LEVEL=DEBUG logs details)"] for e in crashes
    )
    assert out.getvalue().rstrip().endswith("rotator serve: stopped")
    assert "rotator serve: job slow: next run " in out.getvalue()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.wire
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_serve_cleanly_in_a_child_process(tmp_path: Path, sig: int) -> None:
    config = write(tmp_path, "[schedules]\nrotation = '0 0 1 1 *'\n")
    env = {
        **os.environ,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "unused",
        "AWS_SECRET_ACCESS_KEY": "unused",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing real is ever reachable
    }
    code = (
        "import sys; from pathlib import Path; from rotator.entrypoints.daemon import run_serve; "
        "sys.exit(run_serve(Path(sys.argv[1]), once=False, out=sys.stdout))"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(config)],
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
        announced = sorted(child.stdout.readline() for _ in DEFAULT_SCHEDULES)
        assert [line.split(": next run ")[0] for line in announced] == [
            "rotator serve: job report",
            "rotator serve: job rotation",
        ], announced
        started = time.monotonic()
        child.send_signal(sig)
        out, err = child.communicate(timeout=10)
    finally:
        safety.cancel()
    assert child.returncode == 0, err
    assert time.monotonic() - started < 5
    assert out.rstrip().endswith("rotator serve: stopped"), out


@pytest.mark.usefixtures("quick_keys")
def test_the_report_job_delivers_to_a_directory_s3_and_sns(world: World, tmp_path: Path) -> None:
    world.init(NOW)
    s3, sns, sqs = boto3.client("s3"), boto3.client("sns"), boto3.client("sqs")
    bucket = f"evidence{world.prefix.replace('/', '').replace('-', '')}"
    s3.create_bucket(Bucket=bucket)
    topic = sns.create_topic(Name=f"reports{bucket}")["TopicArn"]
    queue = sqs.create_queue(QueueName=f"q{bucket}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    folder = tmp_path / "reports"
    config = write(
        tmp_path,
        f'[report]\ndirectory = "{folder}"\ns3_uri = "s3://{bucket}/connect/"\n'
        f'sns_topic_arn = "{topic}"\n',
    )
    at = NOW + 710 * DAY  # inside the renew window: the rotation job rotates, then the report
    code, out = serve_once(config, at)
    assert code == 0, out
    html = (folder / f"report-{at:%Y-%m-%d}.html").read_text()
    assert "<svg" in html and world.flow_key_id() in html
    report = json.loads((folder / f"report-{at:%Y-%m-%d}.json").read_text())
    assert report["keys"]
    stored = s3.get_object(Bucket=bucket, Key=f"connect/report-{at:%Y-%m-%d}.html")
    assert b"<svg" in stored["Body"].read()
    (message,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert "connect-key-rotator" in json.loads(message["Body"])["Subject"]
    assert "report at " in out and "(0 findings critical" in out and "4 delivered)" in out
    assert "delivered nowhere" not in out
