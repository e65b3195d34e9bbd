"""Fleet configuration: `[[accounts]]` in the TOML file and ROTATOR_ACCOUNTS in the environment
give the same accounts; every mistake is a ConfigError naming where and what; none is today's
single-account mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rotator.config import Settings
from rotator.config_file import RotatorConfig, load_config
from rotator.domain.fleet import (
    MEMBER_DECRYPT_FUNCTION,
    Account,
    Partition,
    Target,
    accounts_json,
    interleave,
    parse_accounts,
    parse_accounts_json,
    select_partitions,
)
from rotator.errors import ConfigError

PROD: dict[str, object] = {
    "name": "prod",
    "role_arn": "arn:aws:iam::111111111111:role/connect-key-rotator-member",
    "external_id": "ext-id-1",
    "regions": ["eu-west-2", "eu-central-1"],
}
TEST: dict[str, object] = {
    "name": "test",
    "role_arn": "arn:aws:iam::222222222222:role/path/member",
    "external_id": "ext-id-2",
    "regions": ["us-east-1"],
}
EXPECTED = (
    Account(
        "prod",
        "arn:aws:iam::111111111111:role/connect-key-rotator-member",
        "ext-id-1",
        ("eu-west-2", "eu-central-1"),
    ),
    Account("test", "arn:aws:iam::222222222222:role/path/member", "ext-id-2", ("us-east-1",)),
)


def _toml(entries: list[dict[str, object]]) -> str:
    return "".join(
        "[[accounts]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items())
        for entry in entries
    )


def test_no_accounts_is_single_account_mode(tmp_path: Path) -> None:
    assert Settings.load({}).fleet == ()
    assert Settings.load({"ROTATOR_ACCOUNTS": ""}).fleet == ()
    path = tmp_path / "c.toml"
    path.write_text("[settings]\nkey_size = 2048\n")
    assert load_config(path).settings_for({}).fleet == ()
    assert RotatorConfig().settings_for({}).fleet == ()


def test_the_toml_table_and_the_environment_give_the_same_accounts(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(_toml([PROD, TEST]))
    from_file = load_config(path).settings_for({})
    from_env = Settings.load({"ROTATOR_ACCOUNTS": json.dumps([PROD, TEST])})
    assert from_file.fleet == from_env.fleet == EXPECTED
    assert EXPECTED[0].account_id == "111111111111"
    assert EXPECTED[0].partitions() == (
        Partition("prod", "eu-west-2"),
        Partition("prod", "eu-central-1"),
    )


def test_the_environment_replaces_the_files_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(_toml([PROD]))
    settings = load_config(path).settings_for({"ROTATOR_ACCOUNTS": json.dumps([TEST])})
    assert [a.name for a in settings.fleet] == ["test"]


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        (
            [PROD, {**TEST, "name": "prod"}],
            "account #2: name 'prod' appears twice (also account #1)",
        ),
        (
            [{**PROD, "role_arn": "arn:aws:iam::1111:role/x"}],
            "role_arn 'arn:aws:iam::1111:role/x' is not an IAM role ARN",
        ),
        ([{**PROD, "role_arn": "arn:aws:iam::111111111111:user/x"}], "is not an IAM role ARN"),
        ([{**PROD, "regions": []}], "account 'prod': regions must be a non-empty array"),
        ([{**PROD, "regions": ["Europe"]}], "'Europe' is not a region name"),
        ([{**PROD, "regions": ["eu-west-2", "eu-west-2"]}], "a region appears twice"),
        (
            [{k: v for k, v in PROD.items() if k != "external_id"}],
            "account #1: missing key 'external_id'",
        ),
        ([{**PROD, "external_id": "x"}], "external_id must be 2-1224 characters"),
        ([{**PROD, "colour": "red"}], "account #1: unknown key 'colour'"),
        ([{**PROD, "name": "has space"}], "name 'has space' must be 1-64 letters"),
        (
            [{**PROD, "decrypt_function": "arn:aws:lambda:eu-west-2:111111111111:function:d"}],
            "account 'prod': decrypt_function 'arn:aws:lambda:eu-west-2:111111111111:function:d' "
            "is not a Lambda function name (1-64 letters, digits, '-' or '_'; a name, not an ARN",
        ),
        (
            [{**PROD, "decrypt_function": "decrypt:live"}],
            "decrypt_function 'decrypt:live' is not a Lambda function name",
        ),
        ([{**PROD, "decrypt_function": ""}], "decrypt_function '' is not a Lambda function name"),
        ([{**PROD, "decrypt_function": 7}], "decrypt_function 7 is not a Lambda function name"),
        ([{**PROD, "decrypt_function": "d" * 65}], "is not a Lambda function name"),
        ([{**PROD, "colour": "red"}], "(known: name, role_arn, external_id, regions, decrypt_"),
    ],
)
def test_a_bad_account_is_a_clear_error_in_both_sources(
    tmp_path: Path, entries: list[dict[str, object]], problem: str
) -> None:
    with pytest.raises(ConfigError) as from_env:
        Settings.load({"ROTATOR_ACCOUNTS": json.dumps(entries)})
    assert "ROTATOR_ACCOUNTS" in str(from_env.value) and problem in str(from_env.value)
    path = tmp_path / "c.toml"
    path.write_text(_toml(entries))
    with pytest.raises(ConfigError) as from_file:
        load_config(path)
    assert f"{path} [[accounts]]" in str(from_file.value) and problem in str(from_file.value)


def test_an_external_id_never_appears_in_an_error() -> None:
    with pytest.raises(ValueError) as error:
        parse_accounts([{**PROD, "external_id": "secret!value"}])
    assert "secret" not in str(error.value)


def test_not_json_and_not_an_array_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ROTATOR_ACCOUNTS: not JSON"):
        Settings.load({"ROTATOR_ACCOUNTS": "[{"})
    with pytest.raises(ConfigError, match="must be an array of accounts"):
        Settings.load({"ROTATOR_ACCOUNTS": json.dumps(PROD)})
    path = tmp_path / "c.toml"
    path.write_text('[accounts]\nname = "prod"\n')
    with pytest.raises(ConfigError, match=r"\[\[accounts\]\]: must be an array of accounts"):
        load_config(path)


def test_filters_select_partitions_and_need_a_fleet() -> None:
    assert select_partitions(EXPECTED) == (
        Partition("prod", "eu-west-2"),
        Partition("prod", "eu-central-1"),
        Partition("test", "us-east-1"),
    )
    assert select_partitions(EXPECTED, account="prod", region="eu-central-1") == (
        Partition("prod", "eu-central-1"),
    )
    assert select_partitions(EXPECTED, region="us-east-1") == (Partition("test", "us-east-1"),)
    with pytest.raises(ValueError, match="no account named 'dev'"):
        select_partitions(EXPECTED, account="dev")
    with pytest.raises(ValueError, match="no configured account has region 'us-east-1'"):
        select_partitions(EXPECTED, account="prod", region="us-east-1")
    with pytest.raises(ValueError, match="no accounts are configured"):
        select_partitions((), account="prod")
    with pytest.raises(ValueError, match="no accounts are configured"):
        select_partitions((), region="eu-west-2")
    assert select_partitions(()) == ()


def test_targets_round_trip_and_interleave_by_partition() -> None:
    target = Target("prod", "eu-west-2", "i-1")
    assert Target.from_dict(target.to_dict()) == target
    with pytest.raises(ValueError, match="needs instance_id"):
        Target.from_dict({"account": "prod", "region": "eu-west-2"})
    a = [Target("a", "r-1", f"i{n}") for n in range(3)]
    b = [Target("b", "r-1", f"i{n}") for n in range(1)]
    assert interleave([*a, *b]) == [a[0], b[0], a[1], a[2]]


def test_a_role_arn_may_name_each_regions_role() -> None:
    (account,) = parse_accounts(
        [{**PROD, "role_arn": "arn:aws:iam::111111111111:role/connect-key-rotator-member-{region}"}]
    )
    assert account.role_arn_in("eu-west-2") == (
        "arn:aws:iam::111111111111:role/connect-key-rotator-member-eu-west-2"
    )
    assert EXPECTED[0].role_arn_in("eu-west-2") == EXPECTED[0].role_arn
    with pytest.raises(ValueError, match="is not an IAM role ARN"):
        parse_accounts([{**PROD, "role_arn": "arn:aws:iam::111111111111:role/x-{account}"}])


def test_an_account_names_its_decrypt_function_or_has_the_member_templates(
    tmp_path: Path,
) -> None:
    """`decrypt_function`: the member's decrypt Lambda the fleet report scans in each of the
    account's regions; left out, deploy/member.yaml's default name. Both sources agree, and an
    entry that leaves it out gives the same JSON as before (ROTATOR_ACCOUNTS round-trips)."""
    named = {**TEST, "decrypt_function": "payments-test-decrypt"}
    path = tmp_path / "c.toml"
    path.write_text(_toml([PROD, named]))
    from_file = load_config(path).settings_for({})
    from_env = Settings.load({"ROTATOR_ACCOUNTS": json.dumps([PROD, named])})
    assert from_file.fleet == from_env.fleet
    prod, test = from_env.fleet
    assert (prod.decrypt_function, test.decrypt_function) == (
        MEMBER_DECRYPT_FUNCTION,
        "payments-test-decrypt",
    )
    assert MEMBER_DECRYPT_FUNCTION == "connect-key-rotator-decrypt"
    assert prod == EXPECTED[0]  # the default is the dataclass's too
    assert [a.to_dict() for a in from_env.fleet] == [PROD, named]
    assert json.loads(from_file.accounts) == [PROD, named]
    assert parse_accounts_json(accounts_json(from_env.fleet)) == from_env.fleet
