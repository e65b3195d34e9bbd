"""One declaration of every setting (`rotator.config.SETTINGS`), checked against everything that
names a setting: the variables the code reads, the TOML keys `rotator serve` accepts and its
documented example, the template's parameters and the rotator Lambda's environment, and the
README's settings table. Each check is a function returning its problems; each is run on the
real files (no problem) and on a broken copy (the problem is found), so none can pass vacuously.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from lambda_decrypt.config import Env
from rotator import config_file
from rotator.config import SETTINGS, RotatorEnv, Setting, Settings
from rotator.config_file import load_config
from rotator.errors import ConfigError
from tests.cfn_policy import load_template, resources

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE = ROOT / "deploy" / "rotator.example.toml"
# The line above the README's settings table; the table is every line starting with "|" after it.
README_MARKER = "<!-- settings table: one row per rotator.config.SETTINGS entry, in its order -->"
README_HEADER = (
    "| environment | config file (`rotator serve`) | default | template parameter | meaning |",
    "| --- | --- | --- | --- | --- |",
)
# A full name (ROTATOR_REPORT_S3_URI), not the family (`ROTATOR_*`).
ROTATOR_NAME = re.compile(r"\bROTATOR_[A-Z0-9_]*[A-Z0-9]\b")

Declaration = Sequence[Setting[Any]]


# --------------------------------------------------------------------------- the checks


def readme_rows(declared: Declaration) -> list[str]:
    """The README's settings table as the declaration generates it."""

    def row(setting: Setting[Any]) -> str:
        default = "*(none)*" if setting.default is None else f"`{setting.default}`"
        parameter = f"`{setting.parameter}`" if setting.parameter else "-"
        return f"| `{setting.env}` | `{setting.where}` | {default} | {parameter} | {setting.doc} |"

    return [*README_HEADER, *(row(setting) for setting in declared)]


def readme_table(text: str) -> list[str]:
    lines = text.splitlines()
    if README_MARKER not in lines:
        return []
    rest = lines[lines.index(README_MARKER) + 1 :]
    table = []
    for line in rest if not rest or rest[0] else rest[1:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


def readme_problems(text: str, declared: Declaration) -> list[str]:
    expected, found = readme_rows(declared), readme_table(text)
    if expected == found:
        return []
    missing = [row for row in expected if row not in found]
    extra = [row for row in found if row not in expected]
    return [
        "the README's settings table differs from rotator.config.SETTINGS; it should read:\n"
        + "\n".join([README_MARKER, *expected])
        + "\nmissing or different rows:\n"
        + "\n".join(missing)
        + "\nrows not declared:\n"
        + "\n".join(extra)
        + ("\nsame rows, another order" if not missing and not extra else "")
    ]


class _Recording(Mapping[str, str]):
    """An empty environment that remembers every variable asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def environment_problems(declared: Declaration) -> list[str]:
    """The variables `Settings.load` reads, the names the code spells and the enums' names are
    exactly the declared ones; each declared variable sets its field."""
    names = {setting.env for setting in declared}
    problems = []
    environ = _Recording()
    Settings.load(environ)
    if environ.asked != names:
        problems.append(f"Settings.load reads {sorted(environ.asked ^ names)} (un)declared")
    enums = {e.value for e in RotatorEnv} | {Env.KEYRING_PREFIX.value, Env.LOG_LEVEL.value}
    if enums != names:
        problems.append(f"RotatorEnv + KEYRING_PREFIX + LOG_LEVEL differ by {enums ^ names}")
    spelled = {
        name
        for package in ("rotator", "rotator_build")
        for source in (ROOT / package).rglob("*.py")
        for name in ROTATOR_NAME.findall(source.read_text())
    }
    if not_declared := spelled - names:
        problems.append(f"the code names {sorted(not_declared)}, which are not declared")
    for setting, value in example_values(declared).items():
        raw = str(value).lower() if setting.upper else str(value)
        loaded = getattr(Settings.load({setting.env: raw}), setting.name)
        if loaded != value:
            problems.append(f"{setting.env}={raw!r} gives {setting.name}={loaded!r}")
    return problems


def example_values(declared: Declaration) -> dict[Setting[Any], Any]:
    """Each declared setting's value in deploy/rotator.example.toml (absent: left out)."""
    document = tomllib.loads(EXAMPLE.read_text())
    values = {
        setting: document[setting.toml[0]][setting.toml[1]]
        for setting in declared
        if not setting.array_of_tables and setting.toml[1] in document.get(setting.toml[0], {})
    }
    # An array of tables ([[accounts]]) is the setting's JSON text (as the environment has it).
    values |= {
        setting: json.dumps(document[setting.toml[0]], separators=(",", ":"))
        for setting in declared
        if setting.array_of_tables and setting.toml[0] in document
    }
    return values


def toml_text(setting: Setting[Any], value: Any) -> str:
    """A config file that sets `setting` to `value` (JSON's strings and arrays are TOML's too)."""
    table, key = setting.toml
    if not setting.array_of_tables:
        return f"[{table}]\n{key} = {json.dumps(value)}\n"
    return "".join(
        f"[[{table}]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items())
        for entry in json.loads(value)
    )


def toml_problems(declared: Declaration, tmp_path: Path) -> list[str]:
    """The keys the config file accepts for settings are the declared ones, the example sets
    each, and each one sets its own field."""
    problems = []
    accepted = (
        {("settings", key) for key in config_file.SETTINGS_KEYS}
        | {("report", key) for key in config_file.REPORT_KEYS if key != "directory"}
        | {(table, "") for table in config_file.ARRAY_TABLES}
    )
    declared_keys = {setting.toml for setting in declared}
    if accepted != declared_keys:
        problems.append(f"config_file accepts {sorted(accepted ^ declared_keys)} (un)declared")
    values = example_values(declared)
    if missing := [setting.where for setting in declared if setting not in values]:
        problems.append(f"{EXAMPLE.name} does not document {missing}")
    for setting, value in values.items():
        path = tmp_path / f"{setting.name}.toml"
        path.write_text(toml_text(setting, value))
        try:
            loaded = getattr(load_config(path).settings_for({}), setting.name)
        except ConfigError as error:
            problems.append(f"{setting.where} = {value!r}: {error}")
            continue
        if loaded != value:
            problems.append(f"{setting.where} = {value!r} gives {setting.name}={loaded!r}")
    return problems


def template_problems(template: dict[str, Any], declared: Declaration) -> list[str]:
    """Each declared template parameter exists, defaults to the declared default, names its
    variable and is what the rotator Lambda's variable is set from; the Lambda sets no
    undeclared variable; no parameter names a variable it is not declared for."""
    problems = []
    parameters = template["Parameters"]
    environment = resources(template)["RotatorFunction"]["Properties"]["Environment"]["Variables"]
    names = {setting.env for setting in declared}
    if undeclared := sorted(set(environment) - names):
        problems.append(f"the rotator Lambda sets undeclared variables {undeclared}")
    for setting in declared:
        naming = [
            name
            for name, parameter in parameters.items()
            if re.search(rf"\b{setting.env}\b", parameter.get("Description", ""))
        ]
        expected = [setting.parameter] if setting.parameter else []
        if naming != expected:
            problems.append(f"{setting.env}: parameters naming it {naming}, declared {expected}")
        if setting.parameter is None:
            continue
        parameter = parameters.get(setting.parameter)
        if parameter is None:
            problems.append(f"{setting.env}: no template parameter {setting.parameter}")
            continue
        if str(parameter.get("Default")) != template_default(setting):
            problems.append(
                f"{setting.parameter} defaults to {parameter.get('Default')!r}, "
                f"{setting.name} to {setting.default!r}"
            )
        if environment.get(setting.env) != {"Ref": setting.parameter}:
            problems.append(f"the rotator Lambda's {setting.env} is not !Ref {setting.parameter}")
    return problems


def template_default(setting: Setting[Any]) -> str:
    """The template parameter's default a setting's default reads as: CloudFormation has no
    null, so an unset setting (None) is the empty string, which only a setting that takes an
    empty variable as unset reads as unset."""
    if setting.default is None and setting.empty_is_unset:
        return ""
    return str(setting.default)


# --------------------------------------------------------------------------- the declaration


def test_the_settings_fields_are_the_declaration() -> None:
    fields = dataclasses.fields(Settings)
    assert [field.name for field in fields] == [setting.name for setting in SETTINGS]
    assert {field.name: field.default for field in fields} == {s.name: s.default for s in SETTINGS}
    assert len({s.env for s in SETTINGS}) == len({s.toml for s in SETTINGS}) == len(SETTINGS)
    for setting in SETTINGS:
        assert setting.doc and "|" not in setting.doc and "\n" not in setting.doc
        assert setting.kind in (int, str)
        assert setting.default is None or isinstance(setting.default, setting.kind)


# --------------------------------------------------------------------------- the environment


def test_the_environment_is_the_declaration() -> None:
    assert environment_problems(SETTINGS) == []


def test_an_undeclared_or_unread_variable_is_found() -> None:
    fewer = [s for s in SETTINGS if s.name != "grace_days"]
    problems = " ".join(environment_problems(fewer))
    assert "ROTATOR_GRACE_DAYS" in problems
    renamed = [
        dataclasses.replace(s, env=s.env + "_X") if s.name == "subject" else s for s in SETTINGS
    ]
    problems = " ".join(environment_problems(renamed))
    assert "ROTATOR_SUBJECT_X" in problems and "ROTATOR_SUBJECT" in problems


# --------------------------------------------------------------------------- the config file


def test_the_config_file_and_its_example_are_the_declaration(tmp_path: Path) -> None:
    assert toml_problems(SETTINGS, tmp_path) == []


def test_a_key_the_file_does_not_accept_or_the_example_lacks_is_found(tmp_path: Path) -> None:
    renamed = [
        dataclasses.replace(s, toml=("settings", "key_bits")) if s.name == "key_size" else s
        for s in SETTINGS
    ]
    problems = " ".join(toml_problems(renamed, tmp_path))
    assert "key_bits" in problems and "key_size" in problems
    assert "does not document ['[settings] key_bits']" in problems
    extra = [*SETTINGS, dataclasses.replace(SETTINGS[0], name="x", toml=("settings", "x"))]
    assert "does not document ['[settings] x']" in " ".join(toml_problems(extra, tmp_path))


def test_every_setting_has_a_key_in_the_file() -> None:
    assert {setting.name for setting in SETTINGS} == {
        field.name for field in dataclasses.fields(Settings)
    }
    config = load_config(EXAMPLE)
    assert set(config.settings) == {setting.name for setting in SETTINGS}


# --------------------------------------------------------------------------- the template


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


def test_the_template_is_the_declaration(template: dict[str, Any]) -> None:
    assert template_problems(template, SETTINGS) == []


def test_a_template_that_drifts_from_the_declaration_is_found(template: dict[str, Any]) -> None:
    drifted = copy.deepcopy(template)
    drifted["Parameters"]["GraceDays"]["Default"] = 14
    del drifted["Parameters"]["KeySize"]
    function = resources(drifted)["RotatorFunction"]["Properties"]
    function["Environment"]["Variables"]["ROTATOR_SOMETHING"] = "x"
    function["Environment"]["Variables"]["ROTATOR_RETENTION_DAYS"] = 30
    drifted["Parameters"]["ReportRetentionDays"]["Description"] += " Unlike ROTATOR_SUBJECT."
    drifted["Parameters"]["RotationWindow"]["Default"] = "None"  # an unset setting is ""
    problems = " ".join(template_problems(drifted, SETTINGS))
    assert "GraceDays defaults to 14" in problems
    assert "no template parameter KeySize" in problems
    assert "undeclared variables ['ROTATOR_SOMETHING']" in problems
    assert "ROTATOR_RETENTION_DAYS is not !Ref RetentionDays" in problems
    assert "ROTATOR_SUBJECT: parameters naming it ['ReportRetentionDays']" in problems
    assert "RotationWindow defaults to 'None', rotation_window to None" in problems
    # "" is unset only for a setting that reads an empty variable as unset.
    strict = [
        dataclasses.replace(s, empty_is_unset=False) if s.name == "freeze" else s for s in SETTINGS
    ]
    assert "Freeze defaults to '', freeze to None" in " ".join(template_problems(template, strict))


# --------------------------------------------------------------------------- the README


def test_the_readme_settings_table_is_the_declaration() -> None:
    problems = readme_problems(README.read_text(), SETTINGS)
    assert problems == [], problems[0] if problems else ""


def test_a_readme_row_missing_or_stale_is_found() -> None:
    text = README.read_text()
    grace = next(row for row in readme_rows(SETTINGS) if "ROTATOR_GRACE_DAYS" in row)
    assert readme_problems(text.replace(grace + "\n", ""), SETTINGS)
    assert readme_problems(text.replace(grace, grace.replace("`7`", "`8`")), SETTINGS)
    assert readme_problems(text.replace(README_MARKER, ""), SETTINGS)
    extra = [*SETTINGS, dataclasses.replace(SETTINGS[1], env="ROTATOR_NEW", toml=("settings", "n"))]
    (problem,) = readme_problems(text, extra)
    assert "ROTATOR_NEW" in problem
