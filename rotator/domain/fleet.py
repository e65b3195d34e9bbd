"""The fleet: member accounts (a role to assume, an external ID, regions) and their targets.

Pure: parsing and validating the `[[accounts]]` table (or `ROTATOR_ACCOUNTS`' JSON) into
`Account`s, and the (account, region) partitions and (account, region, instance) targets that
fleet mode works on. Errors are `ValueError`s whose text is stable: the config layer prefixes
where the value came from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# An IAM role ARN in any partition: arn:aws[-cn|-us-gov]:iam::123456789012:role[/path]/name.
# `{region}` in it stands for each region's role (deploy/member.yaml makes one per region).
ROLE_ARN = re.compile(
    r"arn:aws(-[a-z]+)*:iam::(\d{12}):role/([\w+=,.@-]+/)*([\w+=,.@-]|\{region\}){1,64}"
)
REGION_PLACEHOLDER = "{region}"
# An AWS region name (eu-west-1, us-gov-west-1, ap-southeast-3).
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
# Short, stable, readable in CLI flags, logs, metrics dimensions and the state machine's input.
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# STS: 2-1224 characters of [\w+=,.@:/-].
EXTERNAL_ID = re.compile(r"[\w+=,.@:/-]{2,1224}")
ACCOUNT_KEYS = ("name", "role_arn", "external_id", "regions")
# The decrypt Lambda deploy/member.yaml makes in each member account region (its
# DecryptFunctionName's default): the fleet report scans its environment through the member role.
MEMBER_DECRYPT_FUNCTION = "connect-key-rotator-decrypt"
# An entry may name it when the member stack set overrides DecryptFunctionName.
OPTIONAL_ACCOUNT_KEYS = ("decrypt_function",)
# A Lambda function name, unqualified: a name (not an ARN) is looked up in each of the account's
# regions, and the member role may read the unqualified function only (no alias, no version).
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class Account:
    """A member account: the role the central rotator assumes there, and where its keyrings are
    (one keyring and one KMS key per region, in the account)."""

    name: str
    role_arn: str
    external_id: str
    regions: tuple[str, ...]
    # The member's decrypt Lambda, in each of its regions (the fleet report scans its environment).
    decrypt_function: str = MEMBER_DECRYPT_FUNCTION

    @property
    def account_id(self) -> str:
        match = ROLE_ARN.fullmatch(self.role_arn)
        assert match is not None  # checked by parse_account
        return match.group(2)

    def role_arn_in(self, region: str) -> str:
        """The role to assume for `region` (role_arn, its `{region}` replaced)."""
        return self.role_arn.replace(REGION_PLACEHOLDER, region)

    def partitions(self) -> tuple[Partition, ...]:
        return tuple(Partition(self.name, region) for region in self.regions)

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "role_arn": self.role_arn,
            "external_id": self.external_id,
            "regions": list(self.regions),
        }
        # Only when set: an entry that leaves it out round-trips to the same JSON as before.
        if self.decrypt_function != MEMBER_DECRYPT_FUNCTION:
            entry["decrypt_function"] = self.decrypt_function
        return entry


@dataclass(frozen=True, order=True)
class Partition:
    """One (account, region): one keyring, one KMS key, and Connect's own API rate limits."""

    account: str
    region: str

    def __str__(self) -> str:
        return f"{self.account}/{self.region}"


@dataclass(frozen=True, order=True)
class Target:
    """One unit of work: an instance of an account's region."""

    account: str
    region: str
    instance_id: str

    @property
    def partition(self) -> Partition:
        return Partition(self.account, self.region)

    def __str__(self) -> str:
        return f"{self.account}/{self.region}/{self.instance_id}"

    def to_dict(self) -> dict[str, str]:
        return {"account": self.account, "region": self.region, "instance_id": self.instance_id}

    @classmethod
    def from_dict(cls, value: Any) -> Target:
        """The state machine's item; ValueError saying what is wrong."""
        if not isinstance(value, dict):
            raise ValueError(f"a target must be an object, got {type(value).__name__}")
        missing = [key for key in ("account", "region", "instance_id") if key not in value]
        if missing:
            raise ValueError(f"a target needs {', '.join(missing)}")
        fields = [value["account"], value["region"], value["instance_id"]]
        if not all(isinstance(field, str) and field for field in fields):
            raise ValueError("a target's account, region and instance_id are non-empty strings")
        return cls(*fields)


def parse_accounts_json(text: str) -> tuple[Account, ...]:
    """`ROTATOR_ACCOUNTS`: a JSON array of {name, role_arn, external_id, regions} (and, optional,
    decrypt_function)."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error.msg} (line {error.lineno})") from None
    return parse_accounts(entries)


def parse_accounts(entries: Any) -> tuple[Account, ...]:
    """The accounts, validated: each entry complete and well-formed, names unique."""
    if not isinstance(entries, list):
        raise ValueError("must be an array of accounts ({name, role_arn, external_id, regions})")
    accounts = tuple(parse_account(entry, number) for number, entry in enumerate(entries, 1))
    seen: dict[str, int] = {}
    for number, account in enumerate(accounts, 1):
        if account.name in seen:
            raise ValueError(
                f"account #{number}: name {account.name!r} appears twice "
                f"(also account #{seen[account.name]})"
            )
        seen[account.name] = number
    return accounts


def parse_account(entry: Any, number: int) -> Account:
    where = f"account #{number}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a table, got {type(entry).__name__}")
    known = ACCOUNT_KEYS + OPTIONAL_ACCOUNT_KEYS
    unknown = sorted(set(entry) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    missing = [key for key in ACCOUNT_KEYS if key not in entry]
    if missing:
        raise ValueError(f"{where}: missing key {missing[0]!r}")
    name, role_arn, external_id, regions = (entry[key] for key in ACCOUNT_KEYS)
    if not isinstance(name, str) or not ACCOUNT_NAME.fullmatch(name):
        raise ValueError(
            f"{where}: name {name!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    where = f"account {name!r}"
    if not isinstance(role_arn, str) or not ROLE_ARN.fullmatch(role_arn):
        raise ValueError(
            f"{where}: role_arn {role_arn!r} is not an IAM role ARN "
            "(arn:aws:iam::123456789012:role/NAME)"
        )
    if not isinstance(external_id, str) or not EXTERNAL_ID.fullmatch(external_id):
        # Never echo it: an external ID is not a secret, but it is not for logs either.
        raise ValueError(
            f"{where}: external_id must be 2-1224 characters of letters, digits and +=,.@:/-_"
        )
    if not isinstance(regions, list) or not regions:
        raise ValueError(f"{where}: regions must be a non-empty array of region names")
    for region in regions:
        if not isinstance(region, str) or not REGION.fullmatch(region):
            raise ValueError(f"{where}: {region!r} is not a region name (like eu-west-1)")
    if len(set(regions)) != len(regions):
        raise ValueError(f"{where}: a region appears twice in regions")
    function = entry.get("decrypt_function", MEMBER_DECRYPT_FUNCTION)
    if not isinstance(function, str) or not FUNCTION_NAME.fullmatch(function):
        raise ValueError(
            f"{where}: decrypt_function {function!r} is not a Lambda function name "
            "(1-64 letters, digits, '-' or '_'; a name, not an ARN nor a qualifier: it is looked "
            "up in each of the account's regions)"
        )
    return Account(name, role_arn, external_id, tuple(regions), function)


def accounts_json(accounts: Iterable[Account]) -> str:
    """The accounts as `ROTATOR_ACCOUNTS` takes them (what the TOML table becomes)."""
    return json.dumps([account.to_dict() for account in accounts], separators=(",", ":"))


def select_partitions(
    accounts: Sequence[Account], *, account: str | None = None, region: str | None = None
) -> tuple[Partition, ...]:
    """The (account, region) pairs the filters keep, in configuration order. ValueError when no
    account is configured but a filter is given, or a filter names nothing configured."""
    if not accounts:
        if account is not None or region is not None:
            raise ValueError(
                "--account and --region select within a fleet, and no accounts are configured "
                "(set ROTATOR_ACCOUNTS, or [[accounts]] in the config file)"
            )
        return ()
    names = [a.name for a in accounts]
    if account is not None and account not in names:
        raise ValueError(f"no account named {account!r} (configured: {', '.join(names)})")
    chosen = [p for a in accounts if account in (None, a.name) for p in a.partitions()]
    kept = tuple(p for p in chosen if region in (None, p.region))
    if not kept:
        regions = sorted({p.region for p in chosen})
        raise ValueError(f"no configured account has region {region!r} (configured: {regions})")
    return kept


def by_name(accounts: Sequence[Account]) -> Mapping[str, Account]:
    return {account.name: account for account in accounts}


def interleave(targets: Sequence[Target]) -> list[Target]:
    """Round robin over the partitions (each in its own order): a bounded pool then starts work
    in as many partitions as it can before a second unit in any one of them."""
    queues: dict[Partition, list[Target]] = {}
    for target in targets:
        queues.setdefault(target.partition, []).append(target)
    ordered: list[Target] = []
    depth = 0
    while len(ordered) < len(targets):
        ordered += [queue[depth] for queue in queues.values() if depth < len(queue)]
        depth += 1
    return ordered
