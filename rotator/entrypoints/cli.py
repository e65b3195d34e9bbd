"""The `rotator` command: parse arguments, read the clock once, map errors to exit codes.

Time rule (DESIGN invariant 9): every change happens at the clock's time (real time, or the
sandbox's simulated clock). `--now` never changes anything: it makes the command a what-if that
evaluates at that time, prints what would happen and says so."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from rotator.domain.findings import Severity
from rotator.entrypoints import runbook
from rotator.entrypoints.cli_context import Context, Handler, Moment, Session
from rotator.entrypoints.cli_parser import build_parser
from rotator.entrypoints.gates import what_if
from rotator.entrypoints.invocation import actor
from rotator.errors import ConfigError, ConnectKeyRotatorError, DualControlRefused
from rotator.exit_codes import ExitCode

if TYPE_CHECKING:
    from rotator.config import Settings
    from rotator.domain.checks import ReportOptions
    from rotator.domain.fleet import Partition
    from rotator.entrypoints.bootstrap import Adapters
    from rotator.services.dual_control import DualControl
    from rotator.services.importing import ImportResult, KmsProtection
    from rotator.services.rotation import InstanceResult
    from rotator.services.status import KeyStatus, UnmanagedInstance

# Services, adapters, boto3 and the Encryption SDK are imported inside the handlers that use
# them: `--help`, `--version`, `runbook list|show` and `package` never load them.


@dataclass(frozen=True)
class Command:
    """A command's handler, and whether it runs against AWS: such a command first gets the
    settings, the clock's time (or --now) and the adapters, in its context's session."""

    handler: Handler
    uses_aws: bool = True


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """`rotator ARGV`, printing to `out` (default stdout); the exit code back."""
    typed = tuple(sys.argv[1:] if argv is None else argv)
    return _dispatch(typed, out or sys.stdout, approval=None)


def _dispatch(argv: Sequence[str], out: TextIO, *, approval: str | None) -> int:
    """Run `rotator ARGV`; `approval`: the request that `rotator approve` runs (only the
    approve handler passes one: no flag reaches it)."""
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.handler]
    context = Context(out, execute=_execute, argv=tuple(argv), approval=approval)
    try:
        if not command.uses_aws:
            return command.handler(args, context)
        context = _with_session(args, context)
        _dual_control_gate(args, context)
        return command.handler(args, context)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.USAGE
    except DualControlRefused as error:
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.NEEDS_APPROVAL
    except KeyboardInterrupt:
        if not command.uses_aws:
            raise
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as error:  # noqa: BLE001 - a clear line instead of a traceback
        if not command.uses_aws:
            raise
        return _failed(error)


def _execute(argv: Sequence[str], out: TextIO) -> int:
    """A nested `rotator ARGV` (a runbook's step, the demo's commands): through `main` as this
    module holds it when the step runs."""
    return main(argv, out)


def _with_session(args: argparse.Namespace, context: Context) -> Context:
    """Settings, logging, the time the command runs at (its banner, its output marked under the
    simulated clock) and the adapters."""
    from lambda_decrypt.logs import configure_logging
    from rotator.clock import clock_from_environment
    from rotator.config import Settings

    settings = Settings.load(
        keyring_prefix=args.prefix, kms_key_id=args.kms_key_id, log_level=args.log_level
    )
    configure_logging(settings.log_level, stream="stderr")
    moment = Moment.resolve(getattr(args, "now", None), clock_from_environment())
    out = context.out
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
    return Context(out, context.execute, Session(moment, adapters), context.argv, context.approval)


def _dual_control_gate(args: argparse.Namespace, ctx: Context) -> None:
    """While dual control is on, a gated command runs only as an approved request (a what-if
    changes nothing and runs directly)."""
    from rotator.clock import local_sandbox
    from rotator.entrypoints.gates import dual_control_on, gates_for, refusal, strip_options

    gates = gates_for(args)
    if not gates or what_if(args) or ctx.approval is not None:
        return
    if not dual_control_on(ctx.settings.dual_control_on, local_sandbox):
        return
    raise DualControlRefused(refusal(gates, strip_options(ctx.argv, ("--prefix", "--log-level"))))


def build_adapters(settings: Settings, *, simulated_clock: bool = False) -> Adapters:
    """The composition root's adapters (a module attribute: tests replace it)."""
    from rotator.entrypoints.bootstrap import build_adapters as build

    return build(settings, simulated_clock=simulated_clock)


def _failed(error: Exception) -> int:
    """A missing region or credentials is a configuration error (exit 2) that names what to
    set; the project's errors say what failed (exit 1); anything else is named by type."""
    from lambda_decrypt.logs import get_logger
    from rotator.entrypoints.bootstrap import environment_problem

    problem = environment_problem(error)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return ExitCode.USAGE
    if isinstance(error, ConnectKeyRotatorError):
        print(f"error: {error}", file=sys.stderr)
        return ExitCode.FAILURE
    get_logger("rotator.cli").debug("unexpected_error", exc_info=True)
    print(
        f"error: unexpected {type(error).__name__} (LOG_LEVEL=DEBUG logs details)",
        file=sys.stderr,
    )
    return ExitCode.FAILURE


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


# -- commands that need no AWS ---------------------------------------------------------------


def run_package(args: argparse.Namespace, ctx: Context) -> int:
    from rotator_build.lambda_zips import run_package as package

    return package(args.output, template=args.template, interpreter=args.python, out=ctx.out)


def run_serve(args: argparse.Namespace, ctx: Context) -> int:
    """`rotator serve`: the daemon loads its own settings (flags, TOML file, environment)."""
    from rotator.entrypoints.daemon import run_serve as serve

    flags = {
        "keyring_prefix": args.prefix,
        "kms_key_id": args.kms_key_id,
        "log_level": args.log_level,
    }
    return serve(
        args.config,
        once=args.once,
        out=ctx.out,
        flags=flags,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
    )


def run_sandbox(args: argparse.Namespace, ctx: Context) -> int:
    from rotator.sandbox.server import run_sandbox as sandbox

    return sandbox(args.port, ctx.out)


def run_demo(args: argparse.Namespace, ctx: Context) -> int:
    """`rotator demo`: its `rotator` commands run through this CLI's command runner."""
    from rotator.sandbox.demo import run_demo as demo

    return demo(ctx.out, ctx.execute)


# -- commands against AWS --------------------------------------------------------------------


def run_import(args: argparse.Namespace, ctx: Context) -> int:
    from rotator.services.importing import import_from_blog, import_key

    adapters, moment, now = ctx.adapters, ctx.moment, ctx.moment.now
    # Who imports, for the audit trail; a what-if records nothing, so it asks STS nothing.
    principal = "" if moment.what_if else adapters.identity.caller_arn()
    if args.from_blog_parameters:
        if args.key_id or args.private_key:
            raise ConfigError("import", "--from-blog-parameters reads the key and its ID from SSM")
        result = import_from_blog(
            adapters.keyring,
            key_parameter=blog_parameters(args)[0],
            key_id_parameter=blog_parameters(args)[1],
            certificate_pem=_read_file(args.certificate, "--certificate")
            if args.certificate
            else None,
            instance_id=args.instance_id,
            now=now,
            actor=actor("cli", simulated=moment.simulated),
            connect=adapters.connect,
            dry_run=moment.what_if,
            principal=principal,
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
            actor=actor("cli", simulated=moment.simulated),
            connect=adapters.connect,
            dry_run=moment.what_if,
            principal=principal,
        )
    kms = _kms_check(adapters, result, args)
    _print_import(result, kms, args.json, ctx.out)
    return ExitCode.OK


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
    from rotator.services.importing import kms_protection

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


def blog_parameters(args: argparse.Namespace) -> tuple[str, str]:
    """The names of the blog's key and key-ID parameters: the flags, or the blog's own names."""
    from rotator.services.importing import BLOG_KEY_ID_PARAMETER, BLOG_KEY_PARAMETER

    return (
        args.key_parameter or BLOG_KEY_PARAMETER,
        args.key_id_parameter or BLOG_KEY_ID_PARAMETER,
    )


def reprotect_commands(
    protection: KmsProtection, args: argparse.Namespace, prefix: str
) -> list[str]:
    """The restore path (runbooks/restore-key-parameter.md): delete the private key parameter;
    the same import again, under the expected KMS key, restores it, reads it back and
    test-decrypts it."""
    again = ["rotator", "import"]
    if args.from_blog_parameters:
        key_parameter, key_id_parameter = blog_parameters(args)
        again += ["--from-blog-parameters", "--key-parameter", key_parameter]
        again += ["--key-id-parameter", key_id_parameter]
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


def run_status(args: argparse.Namespace, ctx: Context) -> int:
    from rotator.services.status import keyring_overview

    if (code := _per_partition(args, ctx, run_status)) is not None:
        return code
    adapters, now, out = ctx.adapters, ctx.moment.now, ctx.out
    status = keyring_overview(
        adapters.keyring,
        adapters.lock,
        adapters.settings.policy,
        now,
        instance_id=args.instance_id,
        flows=adapters.connect,
        schedule=adapters.settings.schedule,
    )
    if args.json:
        json.dump({"now": now.isoformat(), **status.to_dict()}, out, indent=2)
        out.write("\n")
        return ExitCode.OK
    if status.window is not None:
        out.write(f"{status.window.describe()}\n")
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
    return ExitCode.OK


def run_init(args: argparse.Namespace, ctx: Context) -> int:
    if (code := _per_partition(args, ctx, run_init, one_only="init")) is not None:
        return code
    if not args.flow_id and not args.flow_module_id:
        raise ConfigError("init", "name at least one --flow-id or --flow-module-id")
    reason = _override_reason(args, "--abandon-key", bool(args.abandon_key))
    named: dict[str, set[str]] = {}
    for flow_id, block in args.encrypt_block:
        named.setdefault(flow_id, set()).add(block)
    adapters, moment = ctx.adapters, ctx.moment
    result = adapters.rotation(actor("cli", simulated=moment.simulated)).init(
        args.instance_id,
        args.flow_id,
        args.flow_module_id,
        moment.now,
        encrypt_blocks=named,
        abandon=dict.fromkeys(args.abandon_key, reason or ""),
        dry_run=args.dry_run or moment.what_if,
    )
    return _print_results([result], args.json, ctx.out)


def run_rotate(args: argparse.Namespace, ctx: Context) -> int:
    from rotator.services.status import unmanaged_instances

    reason = _override_reason(args, "--emergency", args.emergency)
    fleet = _fleet(args, ctx)
    if fleet is not None:
        return _rotate_fleet(args, ctx, fleet, reason)
    if args.concurrency is not None or args.partition_concurrency is not None:
        raise ConfigError(
            "--concurrency",
            "runs a fleet's rotations side by side, and no accounts are configured "
            "(ROTATOR_ACCOUNTS): one account's instances rotate one by one",
        )
    adapters, moment = ctx.adapters, ctx.moment
    results = adapters.rotation(actor("cli", simulated=moment.simulated)).rotate(
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
    return _print_results(results, args.json, ctx.out, unmanaged)


def run_retire(args: argparse.Namespace, ctx: Context) -> int:
    reason = _override_reason(args, "--emergency", args.emergency)
    moment = ctx.moment
    message = ctx.adapters.rotation(actor("cli", simulated=moment.simulated)).retire(
        args.key_id,
        moment.now,
        emergency=args.emergency,
        override_reason=reason,
        dry_run=args.dry_run or moment.what_if,
    )
    return _print_message(message, args.json, ctx.out)


def run_destroy(args: argparse.Namespace, ctx: Context) -> int:
    moment = ctx.moment
    dry_run = args.dry_run or moment.what_if
    if not args.yes and not dry_run:
        raise ConfigError("destroy", "--yes is required: a destroyed key never decrypts again")
    reason = _override_reason(args, "--override-retention", args.override_retention)
    ignore_reason = (  # --reason may serve both overrides
        _override_reason(args, "--ignore-stored-ciphertexts", True)
        if args.ignore_stored_ciphertexts
        else None
    )
    _check_stored_ciphertexts(args.key_id, ctx, ignore_reason, record=not dry_run)
    message = ctx.adapters.rotation(actor("cli", simulated=moment.simulated)).destroy(
        args.key_id,
        moment.now,
        override_reason=reason,
        dry_run=dry_run,
    )
    return _print_message(message, args.json, ctx.out)


def _check_stored_ciphertexts(
    key_id: str, ctx: Context, ignore_reason: str | None, *, record: bool
) -> None:
    """`destroy` consults the registered stores (ROTATOR_CIPHERTEXT_STORES) first."""
    from rotator.domain.history import ClockKind
    from rotator.services.inventory import check_destroy

    adapters, moment = ctx.adapters, ctx.moment
    if not adapters.settings.stores:
        return
    check_destroy(
        adapters.ciphertext_stores(adapters.settings.stores),
        adapters.keyring,
        key_id,
        moment.now,
        actor("cli", simulated=moment.simulated),
        ignore_reason=ignore_reason,
        record=record,
        clock=ClockKind.SIMULATED if moment.simulated else ClockKind.REAL,
    )


def _store_uris(args: argparse.Namespace, ctx: Context) -> list[str]:
    uris = list(args.stores or ctx.adapters.settings.stores)
    if not uris:
        raise ConfigError("--store", "name a store (s3://bucket/prefix or dynamodb://table)")
    return uris


def run_inventory(args: argparse.Namespace, ctx: Context) -> int:
    """Count stored ciphertexts per key ID; recorded in the history (unless a what-if)."""
    from rotator.domain.history import ClockKind
    from rotator.services.inventory import inventory_event, take_inventory

    adapters, moment = ctx.adapters, ctx.moment
    inventory = take_inventory(adapters.ciphertext_stores(_store_uris(args, ctx)), key_id=args.key)
    if not moment.what_if:
        adapters.keyring.append_event(
            inventory_event(
                inventory,
                moment.now,
                actor("cli", simulated=moment.simulated),
                key_id=args.key,
                clock=ClockKind.SIMULATED if moment.simulated else ClockKind.REAL,
            )
        )
    if args.json:
        json.dump(inventory.to_dict(), ctx.out, indent=2)
        ctx.out.write("\n")
        return ExitCode.OK
    out = ctx.out
    out.write(
        f"{inventory.records_read} records read in {len(inventory.stores)} store(s), "
        "headers only (nothing decrypted)\n"
    )
    if not inventory.keys:
        out.write("no stored Connect ciphertexts found\n")
    for key_id, entry in sorted(inventory.keys.items()):
        sample = ", ".join(f"{store} {ref}" for store, ref in entry.samples[:2])
        out.write(f"  {key_id}  {entry.count} ciphertexts  (e.g. {sample})\n")
    for store, ref, problem in inventory.unreadable:
        out.write(f"  unreadable: {store} {ref}: {problem}\n")
    return ExitCode.OK


def run_rewrap(args: argparse.Namespace, ctx: Context) -> int:
    """Re-encrypt the stored ciphertexts of --from for its instance's current key."""
    from rotator.adapters.stores import FileCheckpoint
    from rotator.domain.history import ClockKind
    from rotator.services.rewrap import Rewrapper, progress_printer

    adapters, moment = ctx.adapters, ctx.moment
    uris = _store_uris(args, ctx)
    if args.plan:
        return _write_plan(args, ctx, uris)
    if not args.from_key:
        raise ConfigError("--from", "name the old key whose stored ciphertexts to rewrap")
    dry_run = args.dry_run or moment.what_if
    rewrapper = Rewrapper(adapters.keyring, args.from_key)
    checkpoint = FileCheckpoint(args.checkpoint or Path(f"rewrap-{args.from_key}.checkpoint"))
    result = rewrapper.run(
        adapters.ciphertext_stores(uris),
        checkpoint,
        dry_run=dry_run,
        resume=args.resume,
        concurrency=args.concurrency,
        progress=progress_printer(sys.stderr),
    )
    if not dry_run:
        rewrapper.record_result(
            result,
            moment.now,
            actor("cli", simulated=moment.simulated),
            ClockKind.SIMULATED if moment.simulated else ClockKind.REAL,
        )
    if args.json:
        json.dump(result.to_dict(), ctx.out, indent=2)
        ctx.out.write("\n")
    else:
        _print_rewrap(result, ctx.out, checkpoint.path)
    return ExitCode.OK if result.ok else ExitCode.FAILURE


def _print_rewrap(result: Any, out: TextIO, checkpoint: Path) -> None:
    state = result.progress
    if result.dry_run:
        out.write(
            f"would rewrap {result.values_found} values in {result.records_found} records "
            f"from key {result.from_key} to key {result.to_key} (nothing changed)\n"
        )
        return
    out.write(
        f"rewrapped {state.values_rewrapped} values in {state.records_written} records from "
        f"key {result.from_key} to key {result.to_key}"
        f" ({state.skipped_done} records done before, skipped)\n"
    )
    for store, ref in result.conflicts:
        out.write(f"  changed while rewrapping, left for --resume: {store} {ref}\n")
    for store, ref, why in result.failures:
        out.write(f"  failed, left for --resume: {store} {ref}: {why}\n")
    if not result.ok:
        out.write(f"rerun with --resume (checkpoint {checkpoint}) to retry the records left\n")


def _write_plan(args: argparse.Namespace, ctx: Context, uris: list[str]) -> int:
    from rotator.entrypoints.bootstrap import build_publisher
    from rotator.services.rewrap import batch_manifest

    manifest = batch_manifest(ctx.adapters.ciphertext_stores(uris), args.from_key)
    build_publisher(ctx.adapters.settings).store_report(
        args.plan, manifest.encode("utf-8"), "text/csv"
    )
    ctx.out.write(f"S3 Batch Operations manifest written to {args.plan}\n")
    return ExitCode.OK


def run_rollback(args: argparse.Namespace, ctx: Context) -> int:
    moment = ctx.moment
    message = ctx.adapters.rotation(actor("cli", simulated=moment.simulated)).rollback(
        args.instance_id, moment.now, dry_run=args.dry_run or moment.what_if
    )
    return _print_message(message, args.json, ctx.out)


def run_custodian_acknowledge(args: argparse.Namespace, ctx: Context) -> int:
    """Print the responsibilities (path, SHA-256, text), ask, then record the caller's
    acceptance in the history at the clock's time."""
    from rotator.services.custodians import acknowledge, responsibilities

    text, out, moment = responsibilities(), ctx.out, ctx.moment
    out.write(f"{text.name} (SHA-256 {text.sha256}):\n\n{text.text.rstrip()}\n\n")
    principal = ctx.adapters.identity.caller_arn()
    if not args.yes and not runbook.stdin_confirm(out)(
        f"Do you, {principal}, accept these key-custodian responsibilities? [y/N] "
    ):
        out.write("not acknowledged: nothing was recorded\n")
        return ExitCode.FAILURE
    event = acknowledge(
        ctx.adapters.keyring,
        ctx.adapters.identity,
        text,
        moment.now,
        actor("cli", simulated=moment.simulated),
    )
    out.write(
        f"acknowledged: {event.principal} accepts the key-custodian responsibilities "
        f"(SHA-256 {text.sha256}) at {event.at.isoformat(timespec='seconds')}\n"
    )
    return ExitCode.OK


def run_custodian_list(args: argparse.Namespace, ctx: Context) -> int:
    from rotator.services.custodians import current_text_sha256, custodian_list

    now, out = ctx.moment.now, ctx.out
    current = current_text_sha256()
    found = custodian_list(ctx.adapters.keyring, now, current)
    if args.json:
        payload = {
            "now": now.isoformat(),
            "responsibilities_sha256": current,
            "custodians": [c.to_dict() for c in found],
        }
        json.dump(payload, out, indent=2)
        out.write("\n")
        return ExitCode.OK
    for custodian in found:
        operations = f"{custodian.operations} key operation(s) in the 12 months"
        if custodian.last_operation is not None:
            operations += f", last {custodian.last_operation:%Y-%m-%d}"
        text = f"; text SHA-256 {custodian.text_sha256}" if custodian.text_sha256 else ""
        flag = "  UNACKNOWLEDGED" if custodian.unacknowledged else ""
        out.write(f"{custodian.principal}{flag}\n  {operations}; {custodian.describe()}{text}\n")
    shipped = current or "not found"
    out.write(f"{len(found)} principal(s); the shipped responsibilities: SHA-256 {shipped}\n")
    return ExitCode.OK


def _override_reason(args: argparse.Namespace, flag: str, used: bool) -> str | None:
    """An override of a grace or retention period is recorded with a reason, never silent."""
    reason = (args.reason or "").strip()
    if used and not reason:
        raise ConfigError(flag, f"{flag} needs --reason TEXT (recorded in the history)")
    if reason and not used:
        raise ConfigError("--reason", f"--reason goes with {flag}")
    return reason or None


def run_report_command(args: argparse.Namespace, ctx: Context) -> int:
    from rotator.services.jobs import run_report
    from rotator.services.report import DEFAULT_MIN_KEY_SIZE
    from rotator.services.report_render import ReportFormat

    min_key_size = args.min_key_size or DEFAULT_MIN_KEY_SIZE
    fleet = _fleet(args, ctx)
    if fleet is not None:  # one report for the selected account regions, a section each
        return _report_fleet(
            args, ctx, fleet, ctx.settings.report_options(min_key_size=min_key_size)
        )
    adapters, now = ctx.adapters, ctx.moment.now
    options = adapters.settings.report_options(min_key_size=min_key_size)
    return run_report(
        adapters.keyring,
        adapters.connect,
        adapters.lock,
        options,
        now,
        fmt=ReportFormat(args.format),
        output=args.output,
        fail_on=Severity(args.fail_on) if args.fail_on else None,
        out=ctx.out,
        evidence=adapters.evidence(),
    )


def _report_fleet(
    args: argparse.Namespace,
    ctx: Context,
    fleet: dict[Partition, Adapters],
    options: ReportOptions,
) -> int:
    """Each account region read through its member role's adapters, one report; each
    section's evidence (its keyring key, through KMS) is read with the member's role too."""
    from rotator.services.fleet_report import PartitionSources, make_fleet_report
    from rotator.services.fleet_report_render import render_fleet, render_fleet_summary
    from rotator.services.report_render import ReportFormat

    sources = {
        partition: PartitionSources(
            adapters.keyring, adapters.connect, adapters.lock, adapters.evidence()
        )
        for partition, adapters in fleet.items()
    }
    report = make_fleet_report(sources, options, ctx.moment.now)
    rendered = render_fleet(report, ReportFormat(args.format))
    if args.output is None:
        ctx.out.write(rendered)
    else:
        try:
            args.output.write_text(rendered, encoding="utf-8")
        except OSError as error:
            raise ConfigError("--output", f"cannot write {args.output}: {error.strerror}") from None
        ctx.out.write(f"{render_fleet_summary(report, limit=5)}\nreport written to {args.output}\n")
    fail_on = Severity(args.fail_on) if args.fail_on else None
    return ExitCode.FAILURE if report.fails(fail_on) else ExitCode.OK


def run_verify(args: argparse.Namespace, ctx: Context) -> int:
    if (code := _per_partition(args, ctx, run_verify)) is not None:
        return code
    findings = ctx.adapters.invariants().check(args.instance_id, ctx.moment.now)
    out = ctx.out
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
    return ExitCode.FAILURE if failed else ExitCode.OK


# -- fleet mode (ROTATOR_ACCOUNTS): a command over each selected (account, region) ---------------


def build_fleet_adapters(
    settings: Settings, partitions: Sequence[Partition], *, simulated_clock: bool = False
) -> dict[Partition, Adapters]:
    """Each partition's adapters on its member role (a module attribute: tests replace it)."""
    from rotator.entrypoints.bootstrap import build_fleet_adapters as build

    return build(settings, partitions, simulated_clock=simulated_clock)


def _fleet(args: argparse.Namespace, ctx: Context) -> dict[Partition, Adapters] | None:
    """The selected partitions' adapters; None in single-account mode (no accounts), where
    --account and --region are refused."""
    from rotator.domain.fleet import select_partitions

    try:
        partitions = select_partitions(
            ctx.settings.fleet,
            account=getattr(args, "account", None),
            region=getattr(args, "region", None),
        )
    except ValueError as error:
        raise ConfigError("--account/--region", str(error)) from None
    if not partitions:
        return None
    return build_fleet_adapters(ctx.settings, partitions, simulated_clock=ctx.moment.simulated)


def _per_partition(
    args: argparse.Namespace, ctx: Context, run: Handler, *, one_only: str | None = None
) -> int | None:
    """In fleet mode, `run` once per selected partition on its adapters (None: not fleet mode,
    or already one partition's run). Text: a heading per partition; JSON: one document with a
    result per partition. `one_only`: the command works on one keyring, chosen by the filters."""
    if getattr(args, "fleet_partition", None) is not None:
        return None
    fleet = _fleet(args, ctx)
    if fleet is None:
        return None
    if one_only is not None and len(fleet) != 1:
        names = ", ".join(str(p) for p in fleet)
        raise ConfigError(
            one_only,
            f"works on one account's region: choose one of {names} with --account and --region",
        )
    from io import StringIO

    from rotator.entrypoints.cli_context import Session

    if one_only is not None:  # one keyring: the command's own output, as without a fleet
        ((partition, adapters),) = fleet.items()
        sub = Context(ctx.out, ctx.execute, Session(ctx.moment, adapters))
        return run(argparse.Namespace(**vars(args), fleet_partition=partition), sub)
    as_json = getattr(args, "json", False)
    codes: list[int] = []
    documents: list[dict[str, Any]] = []
    for partition, adapters in fleet.items():
        buffer = StringIO()
        sub = Context(buffer if as_json else ctx.out, ctx.execute, Session(ctx.moment, adapters))
        if not as_json:
            ctx.out.write(f"== account {partition.account}, region {partition.region} ==\n")
        codes.append(run(argparse.Namespace(**vars(args), fleet_partition=partition), sub))
        if as_json:
            document = json.loads(buffer.getvalue())
            documents.append({"account": partition.account, "region": partition.region, **document})
    if as_json:
        json.dump({"partitions": documents}, ctx.out, indent=2)
        ctx.out.write("\n")
    return max(codes)


def _rotate_fleet(
    args: argparse.Namespace,
    ctx: Context,
    fleet: dict[Partition, Adapters],
    reason: str | None,
) -> int:
    """The evaluation (or, forced, every managed instance), then one unit per target on a
    bounded pool, bounded again per account and region."""
    from rotator.domain.fleet import Target
    from rotator.services.fleet import (
        DEFAULT_PARTITION_CONCURRENCY,
        evaluate,
        rotate_target,
        run_units,
    )

    moment, settings, out = ctx.moment, ctx.settings, ctx.out
    dry_run = args.dry_run or moment.what_if
    evaluation = None
    if args.force or args.emergency:  # not due does not matter: every managed instance
        targets = [
            Target(partition.account, partition.region, instance.instance_id)
            for partition, adapters in fleet.items()
            for instance in adapters.keyring.managed_instances()
            if args.instance_id in (None, instance.instance_id)
        ]
    else:
        keyrings = {partition: adapters.keyring for partition, adapters in fleet.items()}
        evaluation = evaluate(
            keyrings,
            settings.policy,
            moment.now,
            schedule=settings.schedule,
            instance_id=args.instance_id,
        )
        targets = list(evaluation.targets)
    who = actor("cli", simulated=moment.simulated)

    def rotate_one(target: Target) -> InstanceResult:
        rotation = fleet[target.partition].rotation(who)
        return rotate_target(
            rotation.rotate,
            target,
            moment.now,
            force=args.force,
            dry_run=dry_run,
            emergency=args.emergency,
            override_reason=reason,
        )

    results = run_units(
        targets,
        rotate_one,
        concurrency=args.concurrency or 1,
        per_partition=args.partition_concurrency or DEFAULT_PARTITION_CONCURRENCY,
    )
    errors = evaluation.errors if evaluation is not None else []
    ok = not errors and not any(result.failed for result in results)
    if args.json:
        payload: dict[str, Any] = {"ok": ok, "results": [r.to_dict() for r in results]}
        if evaluation is not None:
            payload["evaluation"] = evaluation.to_dict()
        json.dump(payload, out, indent=2)
        out.write("\n")
        return ExitCode.OK if ok else ExitCode.FAILURE
    for result in results:
        out.write(f"{result.target}: {result.result.outcome}: {result.result.detail}\n")
    out.writelines(f"not evaluated: {error}\n" for error in errors)
    if evaluation is not None:
        counts = evaluation.to_dict()["counts"]
        out.write(
            f"evaluated {counts['managed']} managed instance(s) in {counts['partitions']} "
            f"account region(s): {counts['due']} due, {counts['waiting']} waiting for the window\n"
        )
    failed = sum(1 for r in results if r.failed)
    out.write(f"summary: {len(results) - failed} of {len(results)} unit(s) done, {failed} failed\n")
    return ExitCode.OK if ok else ExitCode.FAILURE


def _print_results(
    results: list[InstanceResult],
    as_json: bool,
    out: TextIO,
    unmanaged: Sequence[UnmanagedInstance] = (),
) -> int:
    from rotator.services.rotation import Outcome

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
    return ExitCode.FAILURE if failed else ExitCode.OK


def _print_message(message: str, as_json: bool, out: TextIO) -> int:
    if as_json:
        json.dump({"ok": True, "message": message}, out)
    else:
        out.write(message)
    out.write("\n")
    return ExitCode.OK


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


# -- dual control (PCI DSS 3.7.6) ------------------------------------------------------------


def _dual_control(ctx: Context) -> DualControl:
    from rotator.adapters.approvals import SsmApprovals
    from rotator.domain.history import ClockKind
    from rotator.services.dual_control import DualControl

    adapters, moment = ctx.adapters, ctx.moment
    return DualControl(
        SsmApprovals(adapters.ssm, adapters.settings.keyring_prefix),
        adapters.identity,
        adapters.settings.request_expiry,
        actor("cli", simulated=moment.simulated),
        ClockKind.SIMULATED if moment.simulated else ClockKind.REAL,
    )


def run_request(args: argparse.Namespace, ctx: Context) -> int:
    """`rotator request COMMAND ARGS --reason TEXT`: check the command line as running it
    would, record the request, print its ID and the command the approval will run."""
    from rotator.entrypoints.gates import gates_for, requested_argv

    reason = (args.reason or "").strip()
    if not reason:
        raise ConfigError("--reason", "a request needs --reason TEXT (recorded in the history)")
    argv = requested_argv(ctx.argv)
    requested = build_parser().parse_args(argv)  # the command's own parser, its own errors
    gates = gates_for(requested)
    if what_if(requested):
        raise ConfigError(
            "request", "a what-if (--dry-run, --now) changes nothing: run it directly"
        )
    if not gates:
        raise ConfigError("request", f"`rotator {shlex.join(argv)}` needs no approval: run it")
    if any(gate.passes_reason for gate in gates):
        argv = [*argv, "--reason", reason]
        build_parser().parse_args(argv)
    request = _dual_control(ctx).request(argv, reason, ctx.moment.now)
    prefix = ["--prefix", args.prefix] if getattr(args, "prefix", None) else []
    approve = shlex.join(["rotator", *prefix, "approve", request.request_id])
    out = ctx.out
    out.write(f"request {request.request_id}: {request.command}\n")
    out.write(f"  requested by {request.requester}, reason: {reason}\n")
    out.write(f"  expires at {request.expires_at.isoformat(timespec='seconds')}\n")
    out.write(f"  another AWS principal approves it with: {approve}\n")
    return ExitCode.OK


def run_request_list(args: argparse.Namespace, ctx: Context) -> int:
    now = ctx.moment.now
    found = _dual_control(ctx).open_requests(now)
    if args.json:
        json.dump({"open": [r.to_dict(now) for r in found]}, ctx.out, indent=2)
        ctx.out.write("\n")
        return ExitCode.OK
    if not found:
        ctx.out.write("no open request\n")
    for request in found:
        ctx.out.write(
            f"{request.request_id}  {request.requester}  {request.command}\n"
            f"  reason: {request.reason}; expires at "
            f"{request.expires_at.isoformat(timespec='seconds')}\n"
        )
    return ExitCode.OK


def run_request_cancel(args: argparse.Namespace, ctx: Context) -> int:
    if ctx.moment.what_if:
        raise ConfigError("request cancel", "--now is a what-if: withdraw at the real time")
    request = _dual_control(ctx).cancel(args.request_id, ctx.moment.now)
    ctx.out.write(f"request {request.request_id} withdrawn: {request.command}\n")
    return ExitCode.OK


def run_approve(args: argparse.Namespace, ctx: Context) -> int:
    """`rotator approve REQUEST_ID`: claim the request once, as this (second) principal, run
    its command here with this principal's credentials, and record the exit code."""
    from rotator.clock import clock_from_environment

    service = _dual_control(ctx)
    request = service.approve(args.request_id, ctx.moment.now)
    local = [
        token
        for flag, value in (("--prefix", args.prefix), ("--log-level", args.log_level))
        if value
        for token in (flag, value)
    ]
    argv = [*local, *request.argv]
    out = ctx.out
    out.write(
        f"approved request {request.request_id} of {request.requester} "
        f"(reason: {request.reason}) as {request.approver}\n"
        f"running: {shlex.join(['rotator', *argv])}\n"
    )
    code = _dispatch(argv, out, approval=request.request_id)
    service.finish(request, code, clock_from_environment().now())
    out.write(f"request {request.request_id}: exit code {code} recorded\n")
    return code


def _read_file(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(flag, f"cannot read {path}: {type(error).__name__}") from None


COMMANDS: dict[str, Command] = {
    "import": Command(run_import),
    "status": Command(run_status),
    "init": Command(run_init),
    "rotate": Command(run_rotate),
    "retire": Command(run_retire),
    "destroy": Command(run_destroy),
    "rollback": Command(run_rollback),
    "inventory": Command(run_inventory),
    "rewrap": Command(run_rewrap),
    "verify": Command(run_verify),
    "report": Command(run_report_command),
    "custodian acknowledge": Command(run_custodian_acknowledge),
    "custodian list": Command(run_custodian_list),
    "runbook run": Command(runbook.run_runbook),
    "runbook audit": Command(runbook.show_audit),
    "runbook list": Command(runbook.list_runbooks_command, uses_aws=False),
    "runbook show": Command(runbook.show_runbook, uses_aws=False),
    "package": Command(run_package, uses_aws=False),
    "serve": Command(run_serve, uses_aws=False),
    "sandbox": Command(run_sandbox, uses_aws=False),
    "demo": Command(run_demo, uses_aws=False),
    "request": Command(run_request),
    "request list": Command(run_request_list),
    "request cancel": Command(run_request_cancel),
    "approve": Command(run_approve),
}
