"""The rotator's TOML config file: settings, managed instances, schedules, report destinations.

A setting's value comes from, in this order: an explicit CLI flag, the environment variable
(`KEYRING_PREFIX`, `ROTATOR_*`, `LOG_LEVEL`), the file, the default. Which key of the file
holds which setting, its type and its check come from `rotator.config.SETTINGS` (every setting
has a key: most in `[settings]`, the report's S3 location and topic in `[report]`).
`RotatorConfig.settings_for` applies that order: a file value is passed to `Settings.load`
only when its environment variable is not set, flags on top.

Every mistake (unreadable file, TOML syntax, unknown table or key, wrong type, bad cron
expression, bad instance entry or destination) raises `ConfigError` naming the file, the
table/key and the problem. `deploy/rotator.example.toml` documents every key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from apscheduler.triggers.cron import CronTrigger

from rotator.config import SETTINGS, Setting, Settings
from rotator.domain.connect_ids import encrypt_block_of, flow_id_of, instance_id_of
from rotator.domain.fleet import accounts_json, parse_accounts
from rotator.domain.flows import FlowKind, FlowRef, ManagedBlock
from rotator.domain.rotation import ManagedInstance
from rotator.domain.window import cron_trigger as window_cron_trigger
from rotator.errors import ConfigError

# (table, key) in the file -> the setting it holds.
FILE_SETTINGS: Mapping[tuple[str, str], Setting[Any]] = MappingProxyType(
    {setting.toml: setting for setting in SETTINGS}
)
# [schedules] key (a job's name) -> cron expression, UTC.
DEFAULT_SCHEDULES: Mapping[str, str] = MappingProxyType(
    {"rotation": "0 3 * * *", "report": "0 6 * * 1"}
)
# Jobs that run only when the file gives them a schedule (the verify job: in the cloud it runs
# on a CloudTrail alert; a daemon may check on a schedule of its own).
OPTIONAL_SCHEDULES = ("verify",)
# Settings held as an array of tables (`[[accounts]]`: fleet mode's member accounts).
ARRAY_TABLES = ("accounts",)
TABLES = ("settings", "instances", "schedules", "report", *ARRAY_TABLES)
INSTANCE_KEYS = ("id", "flows", "modules", "encrypt_blocks")
SETTINGS_KEYS = tuple(key for table, key in FILE_SETTINGS if table == "settings")
# `directory` is the daemon's own destination (no environment variable, not a setting).
REPORT_KEYS = ("directory", *(key for table, key in FILE_SETTINGS if table == "report"))

T = TypeVar("T")


@dataclass(frozen=True)
class ReportTable:
    """Where the compliance report job delivers; any combination (none: it is only logged)."""

    directory: Path | None = None
    s3_uri: str | None = None
    sns_topic_arn: str | None = None


@dataclass(frozen=True)
class RotatorConfig:
    """A parsed config file; `RotatorConfig()` is what running without one means."""

    path: Path | None = None
    # Setting name (a `Settings` field) -> the file's value, for every setting the file sets.
    settings: Mapping[str, int | str] = field(default_factory=lambda: MappingProxyType({}))
    instances: tuple[ManagedInstance, ...] = ()
    schedules: Mapping[str, str] = field(default_factory=lambda: DEFAULT_SCHEDULES)
    report: ReportTable = ReportTable()

    def settings_for(self, environ: Mapping[str, str], **flags: object) -> Settings:
        """Flags (None = not given) > environment > this file > defaults."""
        by_name = {setting.name: setting for setting in SETTINGS}
        from_file = {
            name: value
            for name, value in self.settings.items()
            if not by_name[name].is_set_in(environ)
        }
        given = {name: value for name, value in flags.items() if value is not None}
        try:
            return Settings.load(environ, **{**from_file, **given})
        except ConfigError as error:
            culprit = next((s for s in SETTINGS if s.env == error.setting), None)
            if culprit is None or culprit.name not in from_file or culprit.name in given:
                raise
            problem = str(error).removeprefix(f"configuration: {error.setting}: ")
            raise _error(self.path, culprit.where, problem) from None


def load_config(path: Path) -> RotatorConfig:
    """Read and validate the whole file; nothing is contacted."""
    document = _read(path)
    _only_known(document, TABLES, path, "")
    return RotatorConfig(
        path=path,
        settings=MappingProxyType(
            {
                **_settings(_table(document, "settings", path), path),
                **_report_settings(_table(document, "report", path)),
                **_accounts(document, path),
            }
        ),
        instances=_instances(document.get("instances", []), path),
        schedules=MappingProxyType(_schedules(_table(document, "schedules", path), path)),
        report=_report(_table(document, "report", path), path),
    )


def cron_trigger(expression: str) -> CronTrigger:
    """A standard five-field crontab line, in UTC, as an APScheduler trigger (weekdays as cron
    counts them; see rotator.domain.window.cron_trigger). Raises ValueError saying what is wrong.
    """
    return window_cron_trigger(expression, UTC)


def _error(path: Path | None, where: str, problem: str) -> ConfigError:
    return ConfigError(f"{path} {where}".strip(), problem)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise _error(path, "", f"cannot read the config file: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise _error(path, "", f"not valid TOML: {error}") from None


def _only_known(table: Mapping[str, Any], known: tuple[str, ...], path: Path, where: str) -> None:
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise _error(path, where, f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")


def _table(document: Mapping[str, Any], name: str, path: Path) -> Mapping[str, Any]:
    table = document.get(name, {})
    if not isinstance(table, dict):
        raise _error(path, name, f"must be a table ([{name}]), got {_kind(table)}")
    return table


def _settings(table: Mapping[str, Any], path: Path) -> dict[str, int | str]:
    """The [settings] table's values by setting name, type-checked. Values are checked when
    they are used (`settings_for`): a bad one that the environment overrides does no harm."""
    _only_known(table, SETTINGS_KEYS, path, "[settings]")
    values: dict[str, int | str] = {}
    for key, value in table.items():
        setting = FILE_SETTINGS["settings", key]
        # bool is an int in Python, never in a config file.
        if not isinstance(value, setting.kind) or isinstance(value, bool):
            raise _error(
                path, setting.where, f"must be {_article(setting.kind)}, got {_kind(value)}"
            )
        values[setting.name] = value.upper() if isinstance(value, str) and setting.upper else value
    return values


def _instances(entries: Any, path: Path) -> tuple[ManagedInstance, ...]:
    if not isinstance(entries, list):
        raise _error(
            path, "instances", f"must be an array of tables ([[instances]]), got {_kind(entries)}"
        )
    instances = tuple(_instance(entry, number, path) for number, entry in enumerate(entries, 1))
    ids = [instance.instance_id for instance in instances]
    for number, instance_id in enumerate(ids, 1):
        if instance_id in ids[: number - 1]:
            raise _error(path, f"[[instances]] #{number}", f"id {instance_id!r} appears twice")
    return instances


def _instance(entry: Any, number: int, path: Path) -> ManagedInstance:
    where = f"[[instances]] #{number}"
    if not isinstance(entry, dict):
        raise _error(path, where, f"must be a table, got {_kind(entry)}")
    _only_known(entry, INSTANCE_KEYS, path, where)
    if "id" not in entry:
        raise _error(path, where, "missing key 'id' (the Connect instance ID)")
    instance_id = _parsed(entry["id"], path, f"{where} id", instance_id_of)
    flows = _identifiers(entry.get("flows", []), path, f"{where} flows")
    modules = _identifiers(entry.get("modules", []), path, f"{where} modules")
    if not flows and not modules:
        raise _error(path, where, "name at least one flow or module (flows = [...])")
    named = _strings(entry.get("encrypt_blocks", []), path, f"{where} encrypt_blocks")
    blocks = []
    for value in named:
        flow_id, identifier = _parsed(value, path, f"{where} encrypt_blocks", encrypt_block_of)
        kind = FlowKind.FLOW if flow_id in flows else FlowKind.MODULE
        if flow_id not in flows and flow_id not in modules:
            raise _error(path, f"{where} encrypt_blocks", f"{flow_id!r} is not in flows or modules")
        blocks.append(ManagedBlock(FlowRef(kind, flow_id), identifier))
    # The blocks recorded here are the ones the operator named; init adds those that already
    # encrypt with a static key.
    return ManagedInstance(instance_id, flows, modules, tuple(blocks) if blocks else None)


def _identifiers(values: Any, path: Path, where: str) -> tuple[str, ...]:
    return tuple(_parsed(value, path, where, flow_id_of) for value in _strings(values, path, where))


def _strings(values: Any, path: Path, where: str) -> list[Any]:
    if not isinstance(values, list):
        raise _error(path, where, f"must be an array of IDs, got {_kind(values)}")
    return values


def _parsed(value: Any, path: Path, where: str, parse: Callable[[str, str], T]) -> T:
    """A Connect ID (or the console's ARN of it), or an `ID:BLOCK` pair."""
    if not isinstance(value, str):
        raise _error(path, where, f"{value!r} is not an ID (letters, digits, '-', '_', '.')")
    try:
        return parse(value, where)
    except ConfigError as error:
        raise _error(path, where, str(error).split(": ", 2)[-1]) from None


def _schedules(table: Mapping[str, Any], path: Path) -> dict[str, str]:
    _only_known(table, (*DEFAULT_SCHEDULES, *OPTIONAL_SCHEDULES), path, "[schedules]")
    schedules = dict(DEFAULT_SCHEDULES)
    for job, expression in table.items():
        where = f"[schedules] {job}"
        if not isinstance(expression, str):
            raise _error(path, where, f"must be a cron expression string, got {_kind(expression)}")
        try:
            cron_trigger(expression)
        except ValueError as error:
            raise _error(path, where, f"{expression!r} is not a cron expression: {error}") from None
        schedules[job] = expression
    return schedules


def _report(table: Mapping[str, Any], path: Path) -> ReportTable:
    """The [report] table, checked now: its settings' checks and non-empty strings."""
    _only_known(table, REPORT_KEYS, path, "[report]")
    for key, value in table.items():
        if not isinstance(value, str) or not value:
            raise _error(path, f"[report] {key}", f"must be a non-empty string, got {_kind(value)}")
        setting = FILE_SETTINGS.get(("report", key))
        if setting is not None:
            try:
                setting.validate(value)
            except ConfigError as error:
                problem = str(error).removeprefix(f"configuration: {error.setting}: ")
                raise _error(path, setting.where, problem) from None
    directory = table.get("directory")
    return ReportTable(
        # A relative directory is relative to the config file, not to the daemon's cwd.
        directory=None if directory is None else path.parent / directory,
        s3_uri=table.get("s3_uri"),
        sns_topic_arn=table.get("sns_topic_arn"),
    )


def _report_settings(table: Mapping[str, Any]) -> dict[str, int | str]:
    """The settings the [report] table holds (checked by `_report`), by setting name."""
    return {
        FILE_SETTINGS["report", key].name: value
        for key, value in table.items()
        if ("report", key) in FILE_SETTINGS
    }


def _accounts(document: Mapping[str, Any], path: Path) -> dict[str, int | str]:
    """`[[accounts]]` (fleet mode), checked now, as the setting's JSON text: the environment's
    ROTATOR_ACCOUNTS, when set, replaces the whole table."""
    if "accounts" not in document:
        return {}
    setting = FILE_SETTINGS["accounts", ""]
    try:
        accounts = parse_accounts(document["accounts"])
    except ValueError as error:
        raise _error(path, setting.where, str(error)) from None
    return {setting.name: accounts_json(accounts)} if accounts else {}


def _kind(value: Any) -> str:
    """How a TOML value is described in an error: its type, and the value if it is short."""
    kinds: dict[type, str] = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    kind = kinds.get(type(value), type(value).__name__)
    if isinstance(value, list | dict) or len(repr(value)) > 60:
        return kind
    return f"{kind} ({value!r})"


def _article(kind: type[int] | type[str]) -> str:
    return "an integer" if kind is int else "a string"
