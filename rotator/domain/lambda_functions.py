"""Lambda function references as flows and settings write them: a name, a partial or a full ARN."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The decrypt function's published alias (deploy/template.yaml `AutoPublishAlias`): the one
# qualifier that runs the SnapStart version with the provisioned concurrency, and the one
# Connect's association and the `DecryptFunctionArn` output name.
DECRYPT_ALIAS = "live"
LATEST = "$LATEST"

# Lambda's own patterns (FunctionName, Qualifier; its ARN pattern allows a dot in the name):
# names of 1-64 characters; a qualifier is $LATEST, a version number or an alias name.
_NAME = r"(?P<name>[A-Za-z0-9_.-]{1,64})"
_QUALIFIER = r"(?::(?P<qualifier>\$LATEST|[A-Za-z0-9_-]{1,128}))?"
_FULL = re.compile(
    r"(?P<base>arn:aws[a-z-]*:lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):function:"
    + _NAME
    + r")"
    + _QUALIFIER
)
_PARTIAL = re.compile(r"(?P<base>(?P<account>\d{12}):function:" + _NAME + r")" + _QUALIFIER)
_BARE = re.compile(r"(?P<base>" + _NAME + r")" + _QUALIFIER)


@dataclass(frozen=True)
class FunctionReference:
    """A Lambda function as written: its name, the account and region if the text gives them,
    and its qualifier (None: unqualified). `base` is the text without the qualifier."""

    base: str
    name: str
    account: str | None = None
    region: str | None = None
    qualifier: str | None = None

    def qualified(self, qualifier: str) -> str:
        """The same reference with this qualifier (an alias ARN from a function ARN)."""
        return f"{self.base}:{qualifier}"

    def describe_qualifier(self) -> str:
        """How the reference is qualified, in words."""
        if self.qualifier is None:
            return "unqualified"
        if self.qualifier == LATEST:
            return LATEST
        if self.qualifier.isdigit():
            return f"version {self.qualifier}"
        return f"alias {self.qualifier}"


def parse_function(text: str) -> FunctionReference | None:
    """A function name, a partial ARN (`ACCOUNT:function:NAME`) or a full ARN, each with an
    optional qualifier; None for anything else (a JSONPath, another service's ARN)."""
    for pattern in (_FULL, _PARTIAL, _BARE):
        match = pattern.fullmatch(text.strip())
        if match is not None:
            found = match.groupdict()
            return FunctionReference(
                base=found["base"],
                name=found["name"],
                account=found.get("account"),
                region=found.get("region"),
                qualifier=found["qualifier"],
            )
    return None


def same_function(a: FunctionReference, b: FunctionReference) -> bool:
    """The same function by name, and by account and region where both references give them
    (a bare name matches that name in any account and region; qualifiers are not compared)."""
    return a.name == b.name and _agree(a.account, b.account) and _agree(a.region, b.region)


def _agree(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b
