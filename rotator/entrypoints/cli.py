"""The `rotator` command: parse arguments, read the clock once, map errors to exit codes.

Time rule (DESIGN invariant 9): every change happens at the clock's time (real time, or the
sandbox's simulated clock). `--now` never changes anything: it makes the command a what-if that
evaluates at that time, prints what would happen and says so."""

from __future__ import annotations

import argparse
import getpass
import json
import shlex
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, cast

from lambda_decrypt.errors import ConfigError, ConnectKeyRotatorError
from lambda_decrypt.logs import configure_logging, get_logger
from rotator.clock import Clock, clock_from_environment
from rotator.clock import describe as describe_clock
from rotator.config import Settings
from rotator.domain.connect_ids import encrypt_block_of, flow_id_of, instance_id_of
from rotator.domain.findings import Severity
from rotator.entrypoints.bootstrap import Adapters, build_adapters, environment_problem
from rotator.entrypoints.runbook import browse_runbooks, configure_runbook_parser
from rotator.services.importing import (
    BLOG_KEY_ID_PARAMETER,
    BLOG_KEY_PARAMETER,
    ImportResult,
    KmsProtection,
    import_from_blog,
    import_key,
    kms_protection,
)
from rotator.services.jobs import run_report
from rotator.services.report import DEFAULT_MIN_KEY_SIZE, ReportOptions
from rotator.services.report_render import ReportFormat
from rotator.services.rotation import InstanceResult, Outcome
from rotator.services.status import (
    KeyStatus,
    UnmanagedInstance,
    keyring_overview,
    unmanaged_instances,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
log = get_logger("rotator.cli")
Command = Callable[[argparse.Namespace, Adapters, "Moment", TextIO], int]
WHAT_IF_HELP = "what-if: evaluate at this time (ISO 8601) and change nothing"


@dataclass(frozen=True)
class Moment:
    """The time a command runs at, and whether it may change anything at that time."""

    now: datetime
    what_if: bool = False  # --now: evaluate only
    simulated: bool = False  # the sandbox's clock, not real time

    @classmethod
    def resolve(cls, requested: datetime | None, clock: Clock) -> Moment:
        if requested is not None:
            return cls(requested, what_if=True, simulated=clock.simulated)
        return cls(clock.now(), simulated=clock.simulated)

    def banner(self) -> str | None:
        """The line printed before a what-if's or a simulated run's output."""
        if self.what_if:
            return (
                f"what-if at {self.now.isoformat(timespec='seconds')}: evaluated only, "
                "nothing was changed"
            )
        if self.simulated:
            return describe_clock(self.now, simulated=True)
        return None


def parse_now(value: str) -> datetime:
    """ISO 8601; a time without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser that raises ConfigError (the message, without the flag)."""

    def convert(value: str) -> Any:
        try:
            return parse(value)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error).split(": ", 2)[-1]) from None

    return convert


instance_id_arg = _argument(instance_id_of)
flow_id_arg = _argument(flow_id_of)
encrypt_block_arg = _argument(encrypt_block_of)


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rotator",
        description="Key rotation and multi-key decryption for Amazon Connect encrypted input.",
    )
    add_global_options(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    imp = commands.add_parser("import", help="adopt an existing key pair into the keyring")
    imp.add_argument("--key-id", help="the key ID Connect writes into message headers")
    imp.add_argument("--private-key", type=Path, metavar="FILE", help="PEM private key file")
    imp.add_argument("--certificate", type=Path, metavar="FILE", help="PEM certificate file")
    imp.add_argument(
        "--instance-id", type=instance_id_arg, help="make it the current key of this instance"
    )
    imp.add_argument(
        "--from-blog-parameters",
        action="store_true",
        help="adopt the AWS blog's SSM parameters (read only, never changed)",
    )
    imp.add_argument("--key-parameter", default=BLOG_KEY_PARAMETER, metavar="NAME")
    imp.add_argument("--key-id-parameter", default=BLOG_KEY_ID_PARAMETER, metavar="NAME")
    imp.add_argument("--now", type=parse_now, help=WHAT_IF_HELP)
    imp.add_argument("--json", action="store_true", help="machine-readable output")
    imp.set_defaults(run=run_import)

    status = commands.add_parser("status", help="keys, their state, dates, days to expiry")
    status.add_argument(
        "--instance-id", type=instance_id_arg, help="only this instance: its keys and its state"
    )
    status.add_argument("--now", type=parse_now, help=WHAT_IF_HELP)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=run_status)

    init = commands.add_parser("init", help="first key for an instance, into its managed flows")
    init.add_argument("--instance-id", required=True, type=instance_id_arg, help="ID or ARN")
    init.add_argument(
        "--flow-id", action="append", default=[], type=flow_id_arg, metavar="FLOW",
        help="repeatable; ID or ARN",
    )  # fmt: skip
    init.add_argument(
        "--flow-module-id", action="append", default=[], type=flow_id_arg, metavar="MODULE",
        help="repeatable; ID or ARN",
    )  # fmt: skip
    init.add_argument(
        "--encrypt-block", action="append", default=[], type=encrypt_block_arg,
        metavar="ID:BLOCK",
        help="also manage this block (flow or module ID, the action's Identifier); repeatable. "
        "Blocks that already encrypt with a static key are managed anyway; nothing else is touched",
    )  # fmt: skip
    init.add_argument(
        "--abandon-key", action="append", default=[], metavar="KEY_ID",
        help="let the flows move off a key that is not in the keyring (its contacts become "
        "undecryptable); needs --reason",
    )  # fmt: skip
    _reason(init)
    init.add_argument(
        "--dry-run", action="store_true", help="say what would happen, change nothing"
    )
    _timed_json(init)
    init.set_defaults(run=run_init)

    rotate = commands.add_parser("rotate", help="rotate every managed instance whose key is due")
    rotate.add_argument("--instance-id", type=instance_id_arg, help="only this instance")
    rotate.add_argument("--force", action="store_true", help="rotate even if not due")
    rotate.add_argument(
        "--dry-run", action="store_true", help="say what would happen, change nothing"
    )
    rotate.add_argument(
        "--emergency",
        action="store_true",
        help="key compromise: retire the previous key at once (contacts on it stop encrypting); "
        "needs --reason",
    )
    _reason(rotate)
    _timed_json(rotate)
    rotate.set_defaults(run=run_rotate)

    retire = commands.add_parser(
        "retire", help="disassociate a previous key after its grace period"
    )
    retire.add_argument("key_id", metavar="KEY_ID")
    retire.add_argument(
        "--emergency",
        action="store_true",
        help="do not wait for the grace period; needs --reason",
    )
    retire.add_argument(
        "--dry-run", action="store_true", help="check and say what would happen, change nothing"
    )
    _reason(retire)
    _timed_json(retire)
    retire.set_defaults(run=run_retire)

    destroy = commands.add_parser("destroy", help="delete a retired key after its retention period")
    destroy.add_argument("key_id", metavar="KEY_ID")
    destroy.add_argument(
        "--yes", action="store_true", help="confirm: the key can never decrypt again"
    )
    destroy.add_argument(
        "--override-retention",
        action="store_true",
        help="destroy inside the retention period; needs --reason",
    )
    destroy.add_argument(
        "--dry-run", action="store_true", help="check and say what would happen, change nothing"
    )
    _reason(destroy)
    _timed_json(destroy)
    destroy.set_defaults(run=run_destroy)

    rollback = commands.add_parser("rollback", help="point the flows back to the previous key")
    rollback.add_argument("--instance-id", required=True, type=instance_id_arg)
    rollback.add_argument(
        "--dry-run", action="store_true", help="check and say what would happen, change nothing"
    )
    _timed_json(rollback)
    rollback.set_defaults(run=run_rollback)

    verify = commands.add_parser("verify", help="check every invariant against the live state")
    verify.add_argument("--instance-id", type=instance_id_arg, help="only this instance")
    _timed_json(verify)
    verify.set_defaults(run=run_verify)

    package = commands.add_parser("package", help="build the two Lambda deployment zips")
    package.add_argument("--output", type=Path, default=Path("build"), metavar="DIR")
    package.add_argument(
        "--template", type=Path, metavar="FILE", help="default deploy/template.yaml"
    )
    package.add_argument("--python", type=Path, metavar="PATH", help="the runtime's Python")
    package.set_defaults(run=None)

    report = commands.add_parser(
        "report", help="compliance expiry report: every key, its findings and their runbooks"
    )
    report.add_argument("--format", choices=[f.value for f in ReportFormat], default="md")
    report.add_argument("--output", type=Path, metavar="FILE", help="write here (default stdout)")
    report.add_argument("--fail-on", choices=[Severity.WARNING.value, Severity.CRITICAL.value])
    report.add_argument(
        "--min-key-size", type=positive_int, default=DEFAULT_MIN_KEY_SIZE, metavar="BITS"
    )
    report.add_argument("--now", type=parse_now, help=WHAT_IF_HELP)
    report.set_defaults(run=run_report_command)

    configure_runbook_parser(
        commands.add_parser("runbook", help="list, show, run and audit the on-call runbooks")
    )

    serve = commands.add_parser("serve", help="run the scheduled jobs on a host (APScheduler)")
    serve.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    serve.add_argument("--once", action="store_true", help="run every job once and exit")
    serve.set_defaults(run=None)

    sandbox = commands.add_parser("sandbox", help="serve moto + the Connect emulator on loopback")
    sandbox.add_argument("--port", type=int, default=4566)
    sandbox.set_defaults(run=None)

    demo = commands.add_parser("demo", help="run the main job on an embedded local sandbox")
    demo.set_defaults(run=None)
    _add_to_subcommands(parser)
    return parser


def add_global_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    """--prefix, --kms-key-id, --log-level. On the subcommands their default is SUPPRESS, so a
    value given before the command is kept and one given after it (`status --log-level DEBUG`)
    wins."""
    parser.add_argument(
        "--prefix",
        default=default,
        help="keyring prefix in SSM (env KEYRING_PREFIX, default /connect-keys)",
    )
    parser.add_argument(
        "--kms-key-id", default=default, help="KMS key for private keys (env ROTATOR_KMS_KEY_ID)"
    )
    parser.add_argument(
        "--log-level",
        default=default,
        help="log level for the JSON log on stderr (default WARNING)",
    )


def _add_to_subcommands(parser: argparse.ArgumentParser) -> None:
    """The global options on every subcommand, at every depth (`runbook run` too)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_global_options(sub, default=argparse.SUPPRESS)
                _add_to_subcommands(sub)


def _timed_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--now", type=parse_now, help=WHAT_IF_HELP)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _reason(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason", metavar="TEXT", help="why an override is used (recorded in the history)"
    )


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from rotator.sandbox.demo import run_demo

        return run_demo(out)
    if args.command == "runbook" and args.runbook_action in ("list", "show"):
        try:
            return browse_runbooks(args, out)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "package":
        from rotator_build.lambda_zips import run_package

        return run_package(args.output, template=args.template, interpreter=args.python, out=out)
    if args.command == "serve":
        from rotator.entrypoints.daemon import run_serve

        flags = {
            "keyring_prefix": args.prefix,
            "kms_key_id": args.kms_key_id,
            "log_level": args.log_level,
        }
        return run_serve(args.config, once=args.once, out=out, flags=flags)
    if args.command == "sandbox":
        from rotator.sandbox.server import run_sandbox

        return run_sandbox(args.port, out)
    try:
        settings = Settings.load(
            keyring_prefix=args.prefix, kms_key_id=args.kms_key_id, log_level=args.log_level
        )
        configure_logging(settings.log_level, stream="stderr")
        moment = Moment.resolve(getattr(args, "now", None), clock_from_environment())
        command: Command = args.run
        machine = getattr(args, "json", False) or getattr(args, "format", None) in ("json", "csv")
        # A runbook step runs inside the runbook's own command: its output is marked already.
        marked = isinstance(out, SimulatedOutput)
        banner = moment.banner()
        if banner is not None and not (marked and not moment.what_if):
            # Machine output stays parseable; the banner then goes to stderr.
            print(banner, file=sys.stderr if machine else out)
        if moment.simulated and not machine and not marked:
            out = cast(TextIO, SimulatedOutput(out, moment.now))
        adapters = build_adapters(settings, simulated_clock=moment.simulated)
        return command(args, adapters, moment, out)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - a clear line instead of a traceback
        return _failed(error)


def _failed(error: Exception) -> int:
    """A missing region or credentials is a configuration error (exit 2) that names what to
    set; the project's errors say what failed (exit 1); anything else is named by type."""
    problem = environment_problem(error)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(error, ConnectKeyRotatorError):
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    log.debug("unexpected_error", exc_info=True)
    print(
        f"error: unexpected {type(error).__name__} (LOG_LEVEL=DEBUG logs details)",
        file=sys.stderr,
    )
    return EXIT_FAILURE


class SimulatedOutput:
    """Every line printed under the sandbox's simulated clock says so."""

    def __init__(self, out: TextIO, now: datetime) -> None:
        self._out = out
        self._prefix = f"[simulated {now:%Y-%m-%d}] "
        self._line_start = True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self._line_start:
                self._out.write(self._prefix)
            self._out.write(piece)
            self._line_start = piece.endswith("\n")
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._out.flush()


def actor() -> str:
    """Who made a change, for the audit trail."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} (cli)"


def run_import(args: argparse.Namespace, adapters: Adapters, moment: Moment, out: TextIO) -> int:
    now = moment.now
    if args.from_blog_parameters:
        if args.key_id or args.private_key:
            raise ConfigError("import", "--from-blog-parameters reads the key and its ID from SSM")
        result = import_from_blog(
            adapters.keyring,
            adapters.ssm,
            key_parameter=args.key_parameter,
            key_id_parameter=args.key_id_parameter,
            certificate_pem=_read_file(args.certificate, "--certificate")
            if args.certificate
            else None,
            instance_id=args.instance_id,
            now=now,
            actor=_actor(moment),
            connect=adapters.connect,
            dry_run=moment.what_if,
        )
    else:
        missing = [
            flag
            for flag, value in (
                ("--key-id", args.key_id),
                ("--private-key", args.private_key),
                ("--certificate", args.certificate),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                "import", f"missing {', '.join(missing)} (or use --from-blog-parameters)"
            )
        result = import_key(
            adapters.keyring,
            key_id=args.key_id,
            private_key_pem=_read_file(args.private_key, "--private-key"),
            certificate_pem=_read_file(args.certificate, "--certificate"),
            instance_id=args.instance_id,
            now=now,
            actor=_actor(moment),
            connect=adapters.connect,
            dry_run=moment.what_if,
        )
    kms = _kms_check(adapters, result, args)
    _print_import(result, kms, args.json, out)
    return EXIT_OK


@dataclass(frozen=True)
class KmsCheck:
    """The import's KMS protection as printed: the KMS key, warnings, and the commands that
    re-protect the private key."""

    kms_key_id: str | None
    warnings: list[str]
    commands: list[str]


def _kms_check(adapters: Adapters, result: ImportResult, args: argparse.Namespace) -> KmsCheck:
    """After the import: is its private key under the keyring's KMS key? If not: a warning, and
    the restore path's commands that store it again under that key. A check that cannot be
    made is a warning too: the import itself is done."""
    try:
        protection = kms_protection(adapters.keyring, result.record.key_id)
    except ConnectKeyRotatorError as error:
        problem = f"could not check which KMS key protects the private key: {error}"
        return KmsCheck(None, [problem], [])
    if protection is None:
        return KmsCheck(None, [], [])
    if not protection.mismatch:
        return KmsCheck(protection.protected_by, [], [])
    warning = (
        f"{protection.warning()}. To re-protect it (the restore path, "
        "runbooks/restore-key-parameter.md), delete its private key parameter and import the "
        f"key again from its source under {protection.expected} (restored, read back and "
        "test-decrypted):"
    )
    commands = reprotect_commands(protection, args, adapters.settings.keyring_prefix)
    return KmsCheck(protection.protected_by, [warning], commands)


def reprotect_commands(
    protection: KmsProtection, args: argparse.Namespace, prefix: str
) -> list[str]:
    """The restore path (runbooks/restore-key-parameter.md): delete the private key parameter;
    the same import again, under the expected KMS key, restores it, reads it back and
    test-decrypts it."""
    again = ["rotator", "import"]
    if args.from_blog_parameters:
        again += ["--from-blog-parameters", "--key-parameter", args.key_parameter]
        again += ["--key-id-parameter", args.key_id_parameter]
        if args.certificate:
            again += ["--certificate", str(args.certificate)]
    else:
        again += ["--key-id", protection.key_id, "--private-key", str(args.private_key)]
        again += ["--certificate", str(args.certificate)]
    again += ["--prefix", prefix, "--kms-key-id", str(protection.expected)]
    return [
        shlex.join(["aws", "ssm", "delete-parameter", "--name", protection.parameter]),
        shlex.join(again),
    ]


def run_status(args: argparse.Namespace, adapters: Adapters, moment: Moment, out: TextIO) -> int:
    now = moment.now
    status = keyring_overview(
        adapters.keyring,
        adapters.lock,
        adapters.settings.policy,
        now,
        instance_id=args.instance_id,
        flows=adapters.connect,
    )
    if args.json:
        json.dump({"now": now.isoformat(), **status.to_dict()}, out, indent=2)
        out.write("\n")
        return EXIT_OK
    for instance in status.instances:
        out.write(
            f"instance {instance.instance_id}: current key {instance.current_key_id}; "
            f"manages {instance.managed}\n  {instance.rotation}; lock: {instance.lock}\n"
        )
        out.writelines(f"  DRIFT: {drift}\n" for drift in instance.drift)
    for unmanaged in status.unmanaged:
        out.write(unmanaged.describe())
    if args.instance_id is not None and not status.keys:
        out.write(f"Instance {args.instance_id} holds no keys in the keyring at {status.prefix}.\n")
    else:
        out.write(format_status_table(list(status.keys), status.prefix))
    return EXIT_OK


def run_init(args: argparse.Namespace, adapters: Adapters, moment: Moment, out: TextIO) -> int:
    if not args.flow_id and not args.flow_module_id:
        raise ConfigError("init", "name at least one --flow-id or --flow-module-id")
    reason = _override_reason(args, "--abandon-key", bool(args.abandon_key))
    named: dict[str, set[str]] = {}
    for flow_id, block in args.encrypt_block:
        named.setdefault(flow_id, set()).add(block)
    result = adapters.rotation(_actor(moment)).init(
        args.instance_id,
        args.flow_id,
        args.flow_module_id,
        moment.now,
        encrypt_blocks=named,
        abandon=dict.fromkeys(args.abandon_key, reason or ""),
        dry_run=args.dry_run or moment.what_if,
    )
    return _print_results([result], args.json, out)


def run_rotate(args: argparse.Namespace, adapters: Adapters, moment: Moment, out: TextIO) -> int:
    reason = _override_reason(args, "--emergency", args.emergency)
    results = adapters.rotation(_actor(moment)).rotate(
        args.instance_id,
        moment.now,
        force=args.force,
        dry_run=args.dry_run or moment.what_if,
        emergency=args.emergency,
        override_reason=reason,
    )
    unmanaged: list[UnmanagedInstance] = []
    if args.dry_run or moment.what_if:  # what a rotation would never touch, however overdue
        unmanaged = unmanaged_instances(adapters.keyring, adapters.settings.policy, moment.now)
        unmanaged = [u for u in unmanaged if args.instance_id in (None, u.instance_id)]
    return _print_results(results, args.json, out, unmanaged)


def run_retire(args: argparse.Namespace, adapters: Adapters, moment: Moment, out: TextIO) -> int:
    reason = _override_reason(args, "--emergency", args.emergency)
    message = adapters.rotation(_actor(moment)).retire(
        args.key_id,
        moment.now,
        emergency=args.emergency,
        override_reason=reason,
        dry_run=args.dry_run or moment.what_if,
    )
    return _print_message(message, args.json, out)


def run_destroy(args: argparse.Namespace, adapters: Adapters, moment: Moment, out: TextIO) -> int:
    dry_run = args.dry_run or moment.what_if
    if not args.yes and not dry_run:
        raise ConfigError("destroy", "--yes is required: a destroyed key never decrypts again")
    reason = _override_reason(args, "--override-retention", args.override_retention)
    message = adapters.rotation(_actor(moment)).destroy(
        args.key_id,
        moment.now,
        override_reason=reason,
        dry_run=dry_run,
    )
    return _print_message(message, args.json, out)


def run_rollback(args: argparse.Namespace, adapters: Adapters, moment: Moment, out: TextIO) -> int:
    message = adapters.rotation(_actor(moment)).rollback(
        args.instance_id, moment.now, dry_run=args.dry_run or moment.what_if
    )
    return _print_message(message, args.json, out)


def _override_reason(args: argparse.Namespace, flag: str, used: bool) -> str | None:
    """An override of a grace or retention period is recorded with a reason, never silent."""
    reason = (args.reason or "").strip()
    if used and not reason:
        raise ConfigError(flag, f"{flag} needs --reason TEXT (recorded in the history)")
    if reason and not used:
        raise ConfigError("--reason", f"--reason goes with {flag}")
    return reason or None


def _actor(moment: Moment) -> str:
    """Who made a change; a change made under the sandbox's simulated clock says so."""
    return f"{actor()} [simulated clock]" if moment.simulated else actor()


def run_report_command(
    args: argparse.Namespace, adapters: Adapters, moment: Moment, out: TextIO
) -> int:
    now = moment.now
    options = ReportOptions.from_settings(adapters.settings, min_key_size=args.min_key_size)
    return run_report(
        adapters.keyring,
        adapters.connect,
        adapters.lock,
        options,
        now,
        fmt=ReportFormat(args.format),
        output=args.output,
        fail_on=Severity(args.fail_on) if args.fail_on else None,
        out=out,
    )


def run_verify(args: argparse.Namespace, adapters: Adapters, moment: Moment, out: TextIO) -> int:
    findings = adapters.invariants().check(args.instance_id, moment.now)
    failed = [f for f in findings if not f.ok]
    if args.json:
        payload = {"ok": not failed, "findings": [vars(f) for f in findings]}
        json.dump(payload, out, indent=2)
        out.write("\n")
    else:
        for finding in findings:
            mark = "ok  " if finding.ok else "FAIL"
            out.write(f"{mark}  {finding.instance_id or '-'}  {finding.check}: {finding.message}\n")
        verdict = "all invariants hold" if not failed else f"{len(failed)} invariant(s) broken"
        out.write(f"{verdict} ({len(findings)} checks)\n")
    return EXIT_FAILURE if failed else EXIT_OK


def _print_results(
    results: list[InstanceResult],
    as_json: bool,
    out: TextIO,
    unmanaged: Sequence[UnmanagedInstance] = (),
) -> int:
    failed = [r for r in results if r.outcome is Outcome.FAILED]
    if as_json:
        payload: dict[str, Any] = {"ok": not failed, "results": [vars(r) for r in results]}
        if unmanaged:
            payload["unmanaged_instances"] = [u.to_dict() for u in unmanaged]
        json.dump(payload, out, indent=2)
        out.write("\n")
    else:
        if not results:
            out.write("no managed instances (run rotator init first)\n")
        for result in results:
            out.write(f"{result.instance_id}: {result.outcome}: {result.detail}\n")
        for instance in unmanaged:
            out.write(instance.describe())
        counts = {o: sum(r.outcome is o for r in results) for o in Outcome}
        summary = ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in counts.items() if n)
        out.write(f"summary: {summary or 'nothing to do'}\n")
    return EXIT_FAILURE if failed else EXIT_OK


def _print_message(message: str, as_json: bool, out: TextIO) -> int:
    if as_json:
        json.dump({"ok": True, "message": message}, out)
    else:
        out.write(message)
    out.write("\n")
    return EXIT_OK


def format_status_table(rows: list[KeyStatus], prefix: str) -> str:
    if not rows:
        return (
            f"The keyring at {prefix} holds no keys. Start with `rotator import` (or "
            "`rotator init`); if it should hold some, check --prefix / KEYRING_PREFIX.\n"
        )
    header = (
        "KEY ID",
        "INSTANCE",
        "STATE",
        "CURRENT",
        "BITS",
        "NOT AFTER",
        "DAYS LEFT",
        "ROTATION",
    )
    table = [header] + [
        (
            r.key_id,
            r.instance_id or "-",
            r.state,
            "yes" if r.current else "",
            str(r.key_size),
            f"{r.not_after:%Y-%m-%d}" if r.not_after else "unknown",
            f"{r.days_to_expiry:.0f}" if r.days_to_expiry is not None else "?",
            r.rotation,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    return "\n".join(lines) + "\n"


def _print_import(result: ImportResult, kms: KmsCheck, as_json: bool, out: TextIO) -> None:
    record = result.record
    warnings = [*result.warnings, *kms.warnings]
    if as_json:
        payload: dict[str, Any] = {
            "key_id": record.key_id,
            "state": record.state,
            "instance_id": record.instance_id,
            "created": result.created,
            "what_if": result.what_if,
            "public_key_sha256": record.public_key_sha256,
            "not_after": record.not_after.isoformat() if record.not_after else None,
            "kms_key_id": kms.kms_key_id,
            "warnings": warnings,
            "reprotect_commands": kms.commands,
        }
        json.dump(payload, out, indent=2)
        out.write("\n")
        return
    for warning in warnings:
        out.write(f"warning: {warning}\n")
    for command in kms.commands:
        out.write(f"    {command}\n")
    verb = "imported" if result.created else "already in the keyring"
    if result.what_if:
        verb = "would import"
    expiry = f", certificate valid until {record.not_after:%Y-%m-%d}" if record.not_after else ""
    out.write(
        f"{verb}: key {record.key_id} ({record.key_size} bits) state {record.state}{expiry}\n"
    )
    out.write(f"  public key SHA-256 {record.public_key_sha256}\n")
    if kms.kms_key_id is not None:
        out.write(f"  private key encrypted with KMS key {kms.kms_key_id}\n")


def _read_file(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(flag, f"cannot read {path}: {type(error).__name__}") from None
