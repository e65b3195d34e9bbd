"""The `rotator` command: parse arguments, read the clock once, map errors to exit codes."""

from __future__ import annotations

import argparse
import getpass
import json
import shlex
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from lambda_decrypt.errors import ConfigError, ConnectKeyRotatorError
from lambda_decrypt.logs import configure_logging, get_logger
from rotator.config import Settings
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
from rotator.services.report import DEFAULT_MIN_KEY_SIZE, ReportOptions
from rotator.services.report_render import ReportFormat
from rotator.services.report_rules import Severity
from rotator.services.reporting import run_report
from rotator.services.rotation import InstanceResult, Outcome
from rotator.services.status import (
    KeyStatus,
    UnmanagedInstance,
    keyring_overview,
    unmanaged_instances,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
log = get_logger("rotator.cli")
Command = Callable[[argparse.Namespace, Adapters, datetime, TextIO], int]


def parse_now(value: str) -> datetime:
    """ISO 8601; a time without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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
    imp.add_argument("--instance-id", help="make it the current key of this Connect instance")
    imp.add_argument(
        "--from-blog-parameters",
        action="store_true",
        help="adopt the AWS blog's SSM parameters (read only, never changed)",
    )
    imp.add_argument("--key-parameter", default=BLOG_KEY_PARAMETER, metavar="NAME")
    imp.add_argument("--key-id-parameter", default=BLOG_KEY_ID_PARAMETER, metavar="NAME")
    imp.add_argument("--now", type=parse_now, help="evaluate certificate validity at this time")
    imp.add_argument("--json", action="store_true", help="machine-readable output")
    imp.set_defaults(run=run_import)

    status = commands.add_parser("status", help="keys, their state, dates, days to expiry")
    status.add_argument("--instance-id", help="only this instance: its keys and its state")
    status.add_argument("--now", type=parse_now, help="evaluate at this time (ISO 8601)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=run_status)

    init = commands.add_parser("init", help="first key for an instance, into its managed flows")
    init.add_argument("--instance-id", required=True)
    init.add_argument("--flow-id", action="append", default=[], metavar="FLOW", help="repeatable")
    init.add_argument(
        "--flow-module-id", action="append", default=[], metavar="MODULE", help="repeatable"
    )
    _timed_json(init)
    init.set_defaults(run=run_init)

    rotate = commands.add_parser("rotate", help="rotate every managed instance whose key is due")
    rotate.add_argument("--instance-id", help="only this instance")
    rotate.add_argument("--force", action="store_true", help="rotate even if not due")
    rotate.add_argument(
        "--dry-run", action="store_true", help="say what would happen, change nothing"
    )
    rotate.add_argument(
        "--emergency",
        action="store_true",
        help="key compromise: retire the previous key at once (contacts on it stop encrypting)",
    )
    _timed_json(rotate)
    rotate.set_defaults(run=run_rotate)

    retire = commands.add_parser(
        "retire", help="disassociate a previous key after its grace period"
    )
    retire.add_argument("key_id", metavar="KEY_ID")
    retire.add_argument("--emergency", action="store_true", help="do not wait for the grace period")
    _timed_json(retire)
    retire.set_defaults(run=run_retire)

    destroy = commands.add_parser("destroy", help="delete a retired key after its retention period")
    destroy.add_argument("key_id", metavar="KEY_ID")
    destroy.add_argument(
        "--yes", action="store_true", help="confirm: the key can never decrypt again"
    )
    _timed_json(destroy)
    destroy.set_defaults(run=run_destroy)

    rollback = commands.add_parser("rollback", help="point the flows back to the previous key")
    rollback.add_argument("--instance-id", required=True)
    _timed_json(rollback)
    rollback.set_defaults(run=run_rollback)

    verify = commands.add_parser("verify", help="check every invariant against the live state")
    verify.add_argument("--instance-id", help="only this instance")
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
    report.add_argument("--now", type=parse_now, help="evaluate at this time (ISO 8601)")
    report.set_defaults(run=run_report_command)

    configure_runbook_parser(
        commands.add_parser("runbook", help="list, show and run the on-call runbooks")
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
    parser.add_argument("--now", type=parse_now, help="evaluate at this time (ISO 8601)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


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
        from rotator.packaging import run_package

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
        now = getattr(args, "now", None) or datetime.now(UTC)
        command: Command = args.run
        return command(args, build_adapters(settings), now, out)
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


def actor() -> str:
    """Who made a change, for the audit trail."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} (cli)"


def run_import(args: argparse.Namespace, adapters: Adapters, now: datetime, out: TextIO) -> int:
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
            actor=actor(),
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
            actor=actor(),
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


def run_status(args: argparse.Namespace, adapters: Adapters, now: datetime, out: TextIO) -> int:
    status = keyring_overview(
        adapters.keyring,
        adapters.lock,
        adapters.settings.policy,
        now,
        instance_id=args.instance_id,
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
    for unmanaged in status.unmanaged:
        out.write(unmanaged.describe())
    if args.instance_id is not None and not status.keys:
        out.write(f"Instance {args.instance_id} holds no keys in the keyring at {status.prefix}.\n")
    else:
        out.write(format_status_table(list(status.keys), status.prefix))
    return EXIT_OK


def run_init(args: argparse.Namespace, adapters: Adapters, now: datetime, out: TextIO) -> int:
    if not args.flow_id and not args.flow_module_id:
        raise ConfigError("init", "name at least one --flow-id or --flow-module-id")
    result = adapters.rotation(actor()).init(
        args.instance_id, args.flow_id, args.flow_module_id, now
    )
    return _print_results([result], args.json, out)


def run_rotate(args: argparse.Namespace, adapters: Adapters, now: datetime, out: TextIO) -> int:
    results = adapters.rotation(actor()).rotate(
        args.instance_id, now, force=args.force, dry_run=args.dry_run, emergency=args.emergency
    )
    unmanaged: list[UnmanagedInstance] = []
    if args.dry_run:  # what a rotation would never touch, however overdue
        unmanaged = unmanaged_instances(adapters.keyring, adapters.settings.policy, now)
        unmanaged = [u for u in unmanaged if args.instance_id in (None, u.instance_id)]
    return _print_results(results, args.json, out, unmanaged)


def run_retire(args: argparse.Namespace, adapters: Adapters, now: datetime, out: TextIO) -> int:
    message = adapters.rotation(actor()).retire(args.key_id, now, emergency=args.emergency)
    return _print_message(message, args.json, out)


def run_destroy(args: argparse.Namespace, adapters: Adapters, now: datetime, out: TextIO) -> int:
    if not args.yes:
        raise ConfigError("destroy", "--yes is required: a destroyed key never decrypts again")
    return _print_message(adapters.rotation(actor()).destroy(args.key_id, now), args.json, out)


def run_rollback(args: argparse.Namespace, adapters: Adapters, now: datetime, out: TextIO) -> int:
    message = adapters.rotation(actor()).rollback(args.instance_id, now)
    return _print_message(message, args.json, out)


def run_report_command(
    args: argparse.Namespace, adapters: Adapters, now: datetime, out: TextIO
) -> int:
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


def run_verify(args: argparse.Namespace, adapters: Adapters, now: datetime, out: TextIO) -> int:
    findings = adapters.invariants().check(args.instance_id, now)
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
