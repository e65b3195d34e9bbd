"""The `rotator` command line: every command, its options and the global ones; nothing runs here.

Each leaf command sets `handler` to its name ("status", "runbook run"): the CLI's table maps the
name to the function that runs it. This module imports no service or adapter, so that `--help`,
`--version` and a runbook's step check stay cheap."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rotator.domain.connect_ids import encrypt_block_of, flow_id_of, instance_id_of
from rotator.domain.findings import Severity
from rotator.domain.runbook import MAIN, PLACEHOLDER
from rotator.entrypoints.invocation import requested_time
from rotator.errors import ConfigError

DISTRIBUTION = "connect-key-rotator"
WHAT_IF_HELP = "what-if: evaluate at this time (ISO 8601) and change nothing"
# The values of services.report_render.ReportFormat (a test holds them equal); named here so
# that building the parser never imports the report's services.
REPORT_FORMATS = ("json", "csv", "md", "html")
# Accepted before the command and after it, at every depth (`runbook run ... --prefix P`).
GLOBAL_OPTIONS = ("--prefix", "--kms-key-id", "--log-level", "--version")


def parse_now(value: str) -> datetime:
    """ISO 8601; a time without an offset is taken as UTC."""
    try:
        return requested_time(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


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


def parse_param(value: str) -> tuple[str, str]:
    name, equals, text = value.partition("=")
    if not equals or not PLACEHOLDER.fullmatch(f"<{name}>"):
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=VALUE with NAME like INSTANCE_ID")
    return name, text


def version_text() -> str:
    """`rotator <version>` of the installed distribution."""
    from importlib import metadata  # only when asked: it costs start-up time

    try:
        return f"rotator {metadata.version(DISTRIBUTION)}"
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "rotator (version unknown: not installed)"


class VersionAction(argparse.Action):
    """--version: prints `rotator <version>` and exits 0 (the version is looked up only then)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the rotator's version and exit")
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        sys.stdout.write(version_text() + "\n")  # stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rotator",
        description="Key rotation and multi-key decryption for Amazon Connect encrypted input.",
    )
    add_global_options(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, **kwargs)
        sub.set_defaults(handler=name)
        return sub

    imp = command("import", help="adopt an existing key pair into the keyring")
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
    # Default (None): the blog's parameter names, which the import service declares.
    imp.add_argument("--key-parameter", metavar="NAME")
    imp.add_argument("--key-id-parameter", metavar="NAME")
    imp.add_argument("--now", type=parse_now, help=WHAT_IF_HELP)
    imp.add_argument("--json", action="store_true", help="machine-readable output")

    status = command("status", help="keys, their state, dates, days to expiry")
    status.add_argument(
        "--instance-id", type=instance_id_arg, help="only this instance: its keys and its state"
    )
    status.add_argument("--now", type=parse_now, help=WHAT_IF_HELP)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _fleet_filters(status)

    init = command("init", help="first key for an instance, into its managed flows")
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
    _dry_run(init, checked=False)
    _timed_json(init)
    _fleet_filters(init)

    rotate = command("rotate", help="rotate every managed instance whose key is due")
    rotate.add_argument("--instance-id", type=instance_id_arg, help="only this instance")
    rotate.add_argument("--force", action="store_true", help="rotate even if not due")
    _dry_run(rotate, checked=False)
    rotate.add_argument(
        "--emergency",
        action="store_true",
        help="key compromise: retire the previous key at once (contacts on it stop encrypting); "
        "needs --reason",
    )
    _reason(rotate)
    _timed_json(rotate)
    _fleet_filters(rotate)
    rotate.add_argument(
        "--concurrency",
        type=positive_int,
        metavar="N",
        help="fleet mode: rotate up to N instances at once (default 1)",
    )
    rotate.add_argument(
        "--partition-concurrency",
        type=positive_int,
        metavar="N",
        help="fleet mode: at most N at once in one account and region (default 2: Connect's "
        "API quota is per account and region)",
    )

    retire = command("retire", help="disassociate a previous key after its grace period")
    retire.add_argument("key_id", metavar="KEY_ID")
    retire.add_argument(
        "--emergency",
        action="store_true",
        help="do not wait for the grace period; needs --reason",
    )
    _dry_run(retire, checked=True)
    _reason(retire)
    _timed_json(retire)

    destroy = command("destroy", help="delete a retired key after its retention period")
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
        "--ignore-stored-ciphertexts",
        action="store_true",
        help="destroy although the registered stores still hold its ciphertexts (their values "
        "are lost); needs --reason; a dual-control override",
    )
    _dry_run(destroy, checked=True)
    _reason(destroy)
    _timed_json(destroy)

    rollback = command("rollback", help="point the flows back to the previous key")
    rollback.add_argument("--instance-id", required=True, type=instance_id_arg)
    _dry_run(rollback, checked=True)
    _timed_json(rollback)

    inventory = command(
        "inventory", help="count stored Connect ciphertexts per key ID (headers only)"
    )
    _stores(inventory, required=False)
    inventory.add_argument("--key", metavar="KEY_ID", help="count only this key's ciphertexts")
    _json(inventory)

    rewrap = command(
        "rewrap", help="re-encrypt stored ciphertexts of an old key for the current key"
    )
    rewrap.add_argument("--from", dest="from_key", metavar="KEY_ID", help="the old key")
    _stores(rewrap, required=False)
    rewrap.add_argument(
        "--resume", action="store_true", help="continue after the records the checkpoint holds"
    )
    rewrap.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="progress file (default rewrap-KEY_ID.checkpoint in the current directory)",
    )
    rewrap.add_argument(
        "--concurrency", type=positive_int, default=4, metavar="N", help="values at once"
    )
    rewrap.add_argument(
        "--plan",
        metavar="S3_URI",
        help="write an S3 Batch Operations CSV manifest of the objects to rewrap, change nothing",
    )
    _dry_run(rewrap, checked=False)
    _json(rewrap)

    verify = command("verify", help="check every invariant against the live state")
    verify.add_argument("--instance-id", type=instance_id_arg, help="only this instance")
    _timed_json(verify)
    _fleet_filters(verify)

    package = command("package", help="build the two Lambda deployment zips")
    package.add_argument("--output", type=Path, default=Path("build"), metavar="DIR")
    package.add_argument(
        "--template", type=Path, metavar="FILE", help="default deploy/template.yaml"
    )
    package.add_argument("--python", type=Path, metavar="PATH", help="the runtime's Python")

    report = command(
        "report", help="compliance expiry report: every key, its findings and their runbooks"
    )
    report.add_argument("--format", choices=REPORT_FORMATS, default="md")
    report.add_argument("--output", type=Path, metavar="FILE", help="write here (default stdout)")
    report.add_argument("--fail-on", choices=[Severity.WARNING.value, Severity.CRITICAL.value])
    # Default (None): the report service's minimum, the smallest key size the rotator makes.
    report.add_argument("--min-key-size", type=positive_int, metavar="BITS")
    report.add_argument("--now", type=parse_now, help=WHAT_IF_HELP)
    _fleet_filters(report)

    _runbook_parser(
        commands.add_parser("runbook", help="list, show, run and audit the on-call runbooks")
    )

    _custodian_parser(
        commands.add_parser(
            "custodian",
            help="key custodians (PCI DSS 3.7.8): accept the responsibilities, list who did",
        )
    )

    serve = command("serve", help="run the scheduled jobs on a host (APScheduler)")
    serve.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
    serve.add_argument("--once", action="store_true", help="run every job once and exit")
    serve.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus/OpenMetrics metrics at http://ADDRESS:N/metrics (0: any free "
        "port; default: no metrics, no port opened)",
    )
    serve.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="the address --metrics-port listens on (default 127.0.0.1: this host only; "
        "0.0.0.0 for a scraper on another host)",
    )

    sandbox = command("sandbox", help="serve moto + the Connect emulator on loopback")
    sandbox.add_argument("--port", type=int, default=4566)

    command("demo", help="run the main job on an embedded local sandbox")
    _request_parser(
        commands.add_parser("request", help="dual control: ask a second person to approve"),
        leaf_commands(parser),
    )
    approve = command("approve", help="dual control: run another principal's request")
    approve.add_argument("request_id", metavar="REQUEST_ID")
    _add_to_subcommands(parser)
    return parser


def _request_parser(
    parser: argparse.ArgumentParser, leaves: dict[str, argparse.ArgumentParser]
) -> None:
    """`request COMMAND ARGS --reason TEXT` for each gated command, with that command's own
    arguments (its parser is the parent); `request list`, `request cancel REQUEST_ID`."""
    from rotator.entrypoints.gates import GATED_COMMANDS

    actions = parser.add_subparsers(dest="request_action", required=True, metavar="COMMAND")
    for name in GATED_COMMANDS:
        gated = actions.add_parser(
            name, parents=[leaves[name]], add_help=False, help=f"request `rotator {name} ...`"
        )
        if not any("--reason" in a.option_strings for a in gated._actions):
            _reason(gated)
        gated.set_defaults(handler="request")
    listed = actions.add_parser("list", help="the open requests")
    listed.add_argument("--json", action="store_true", help="machine-readable output")
    listed.set_defaults(handler="request list")
    cancel = actions.add_parser("cancel", help="withdraw your own open request")
    cancel.add_argument("request_id", metavar="REQUEST_ID")
    cancel.set_defaults(handler="request cancel")


def _runbook_parser(parser: argparse.ArgumentParser) -> None:
    """list/show/run/audit under the `runbook` command."""
    actions = parser.add_subparsers(dest="runbook_action", required=True, metavar="ACTION")

    def action(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, **kwargs)
        sub.set_defaults(handler=f"runbook {name}")
        return sub

    action("list", help="every runbook: name, title, purpose, procedures")
    show = action("show", help="print a runbook's Markdown")
    show.add_argument("name", metavar="NAME")
    run = action("run", help="run a runbook's steps; each step that changes state asks first")
    run.add_argument("name", metavar="NAME")
    run.add_argument(
        "--procedure", default=MAIN, help="a named procedure of the runbook (default: main)"
    )
    run.add_argument(
        "--param",
        action="append",
        default=[],
        type=parse_param,
        metavar="NAME=VALUE",
        help="fills <NAME> in the steps; repeat it for an option that takes several values",
    )
    run.add_argument("--yes", action="store_true", help="do not ask before steps that change state")
    run.add_argument(
        "--dry-run", action="store_true", help="print the checked steps; run nothing, audit nothing"
    )
    audit = action("audit", help="every recorded run: when, by whom, how it ended")
    audit.add_argument("--json", action="store_true", help="every audit record, as JSON")


def _custodian_parser(parser: argparse.ArgumentParser) -> None:
    """acknowledge/list under the `custodian` command."""
    actions = parser.add_subparsers(dest="custodian_action", required=True, metavar="ACTION")

    def action(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, **kwargs)
        sub.set_defaults(handler=f"custodian {name}")
        return sub

    # No what-if time: an acknowledgement is recorded at the clock's time, or not at all.
    acknowledge = action(
        "acknowledge",
        help="record that your AWS principal accepts the key-custodian responsibilities",
    )
    acknowledge.add_argument(
        "--yes", action="store_true", help="accept without asking (the text is still printed)"
    )
    listing = action(
        "list", help="principals: key operations, last acknowledgement, which text, in time"
    )
    _timed_json(listing)


def add_global_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    """--prefix, --kms-key-id, --log-level, --version. On the subcommands their default is
    SUPPRESS, so a value given before the command is kept and one given after it
    (`status --log-level DEBUG`) wins."""
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
    parser.add_argument("--version", action=VersionAction, default=argparse.SUPPRESS)


def _add_to_subcommands(parser: argparse.ArgumentParser) -> None:
    """The global options on every subcommand, at every depth (`runbook run` too)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_global_options(sub, default=argparse.SUPPRESS)
                _add_to_subcommands(sub)


def leaf_commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command that runs something, by its handler name ("status", "runbook run")."""
    leaves: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                handler = sub.get_default("handler")
                if handler is not None:
                    leaves[handler] = sub
                leaves.update(leaf_commands(sub))
    return leaves


def _fleet_filters(parser: argparse.ArgumentParser) -> None:
    """Fleet mode (ROTATOR_ACCOUNTS): which member accounts and regions the command covers."""
    parser.add_argument("--account", metavar="NAME", help="fleet mode: only this member account")
    parser.add_argument("--region", metavar="REGION", help="fleet mode: only this region")


def _timed_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--now", type=parse_now, help=WHAT_IF_HELP)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _dry_run(parser: argparse.ArgumentParser, *, checked: bool) -> None:
    """`checked`: its help says the command's own checks run before it says what it would do."""
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help=("check and " if checked else "") + "say what would happen, change nothing",
    )


def _json(parser: argparse.ArgumentParser) -> None:
    """--json without --now: what is stored is read as it is now, not at another time."""
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _stores(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--store",
        dest="stores",
        action="append",
        required=required,
        metavar="URI",
        help="s3://bucket/prefix or dynamodb://table (repeat; default ROTATOR_CIPHERTEXT_STORES)",
    )


def _reason(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reason", metavar="TEXT", help="why an override is used (recorded in the history)"
    )
