"""The deploy template resolved for one set of parameters, and a small IAM policy evaluator."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "template.yaml"

PARTITION, REGION, ACCOUNT = "aws", "eu-west-2", "111122223333"
STACK = "connect-key-rotator"
INSTANCE_ID = "0b2c3d4e-0000-4000-8000-000000000001"
INSTANCE_ARN = f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/{INSTANCE_ID}"
FLOW_ARN = f"{INSTANCE_ARN}/contact-flow/0f000000-0000-4000-8000-00000000f10a"
MODULE_ARN = f"{INSTANCE_ARN}/flow-module/0f000000-0000-4000-8000-00000000d01e"
OPERATOR_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/connect-key-operators"
ADMIN_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/account-admin"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
KEY_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{KEY_ID}"
DECRYPT_FUNCTION = f"{STACK}-DecryptFunction-EF56"
DECRYPT_FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{DECRYPT_FUNCTION}"


def physical_ids(region: str, account: str, key_id: str) -> dict[str, tuple[str, str | None]]:
    """What CloudFormation would return for this stack's resources (Ref and GetAtt ... .Arn)."""
    return {
        "KeyringKey": (key_id, f"arn:aws:kms:{region}:{account}:key/{key_id}"),
        "AlertTopic": (f"arn:aws:sns:{region}:{account}:alerts", None),
        "RotatorRole": ("rotator-role", f"arn:aws:iam::{account}:role/{STACK}-RotatorRole-AB12"),
        "DecryptRole": ("decrypt-role", f"arn:aws:iam::{account}:role/{STACK}-DecryptRole-CD34"),
        "RotatorLogGroup": (f"/aws/lambda/{STACK}-rotator", f"arn:aws:logs:{region}:{account}:rot"),
        "DecryptLogGroup": (f"/aws/lambda/{STACK}-decrypt", f"arn:aws:logs:{region}:{account}:dec"),
        "ReportBucket": ("report-bucket", "arn:aws:s3:::report-bucket"),
        "KeyringKeyLossRule": ("loss", f"arn:aws:events:{region}:{account}:rule/loss"),
        "KeyringKeyPolicyRule": ("policy", f"arn:aws:events:{region}:{account}:rule/policy"),
        "ExpiryEventsRule": ("expiry", f"arn:aws:events:{region}:{account}:rule/expiry"),
        "DecryptFunction": (
            DECRYPT_FUNCTION,
            f"arn:aws:lambda:{region}:{account}:function:{DECRYPT_FUNCTION}",
        ),
        "RotatorFunction": (f"{STACK}-rotator", f"arn:aws:lambda:{region}:{account}:function:rot"),
        "FleetStateMachine": (f"arn:aws:states:{region}:{account}:stateMachine:fleet", None),
        "FleetStateMachineRole": ("fleet-sm", f"arn:aws:iam::{account}:role/{STACK}-FleetSm-EF56"),
        "FleetSchedulerRole": ("fleet-sch", f"arn:aws:iam::{account}:role/{STACK}-FleetSch-GH78"),
        "SchedulerRole": ("scheduler", f"arn:aws:iam::{account}:role/{STACK}-Scheduler-IJ90"),
        # deploy/member.yaml
        "MemberRole": (
            f"connect-key-rotator-member-{region}",
            f"arn:aws:iam::{account}:role/connect-key-rotator-member-{region}",
        ),
    }


PHYSICAL_IDS = physical_ids(REGION, ACCOUNT, KEY_ID)
DEFAULT_PARAMETERS: dict[str, Any] = {
    "ConnectInstanceArns": [INSTANCE_ARN],
    "OperatorRoleArns": [OPERATOR_ROLE_ARN],
}


class CfnLoader(yaml.SafeLoader):
    """PyYAML with CloudFormation's short tags (!Ref, !Sub, !GetAtt, ...) as plain mappings."""


def _intrinsic(loader: CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(path.read_text(), Loader=CfnLoader)  # noqa: S506
    return loaded


def resources(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every resource, the ones inside Fn::ForEach loops under their logical ID templates."""
    found: dict[str, dict[str, Any]] = {}
    for name, body in template["Resources"].items():
        if name.startswith("Fn::ForEach::"):
            found.update(body[2])
        else:
            found[name] = body
    return found


_NO_VALUE = object()


@dataclass
class Stack:
    """The template with every intrinsic function resolved for one set of parameters."""

    template: dict[str, Any]
    parameters: dict[str, Any] = field(default_factory=dict)
    # Where the stack is deployed, and the ID its keyring key got (a sandbox's, for example).
    region: str = REGION
    account: str = ACCOUNT
    key_id: str = KEY_ID

    def __post_init__(self) -> None:
        self.pseudo = {
            "AWS::Partition": PARTITION,
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::StackName": STACK,
        }
        self.physical_ids = physical_ids(self.region, self.account, self.key_id)
        values: dict[str, Any] = {}
        for name, spec in self.template["Parameters"].items():
            value = self.parameters.get(name, DEFAULT_PARAMETERS.get(name, spec.get("Default")))
            if value is None:
                raise KeyError(f"parameter {name} has no value")
            if spec["Type"] == "CommaDelimitedList" and isinstance(value, str):
                value = value.split(",")
            values[name] = value
        self.values = values

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template["Conditions"][name]))

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            items = [self.resolve(v) for v in value]
            return [v for v in items if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((function, argument),) = value.items()
            if function == "Ref" or function.startswith("Fn::"):
                return self._function(function, argument)
        resolved = {k: self.resolve(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not _NO_VALUE}

    def _function(self, function: str, argument: Any) -> Any:
        if function == "Ref":
            return self._ref(argument)
        if function == "Fn::GetAtt":
            resource, attribute = argument
            if attribute != "Arn" or self.physical_ids[resource][1] is None:
                raise KeyError(f"no fake value for {resource}.{attribute}")
            return self.physical_ids[resource][1]
        if function == "Fn::Sub":
            text, variables = (argument, {}) if isinstance(argument, str) else argument
            return self._sub(text, {k: self.resolve(v) for k, v in variables.items()})
        if function == "Fn::Join":
            separator, items = argument
            return separator.join(_flatten(self.resolve(items)))
        if function == "Fn::Split":
            separator, text = argument
            return str(self.resolve(text)).split(separator)
        if function == "Fn::If":
            name, when_true, when_false = argument
            return self.resolve(when_true if self.condition(name) else when_false)
        if function == "Fn::Equals":
            left, right = (self.resolve(a) for a in argument)
            return left == right
        if function == "Fn::Not":
            (inner,) = argument
            return not self.resolve(inner)
        if function == "Fn::Condition":  # !Condition NAME, inside Fn::And / Fn::Or
            return self.condition(argument)
        if function == "Fn::And":
            return all(self.resolve(a) for a in argument)
        if function == "Fn::Or":
            return any(self.resolve(a) for a in argument)
        raise KeyError(f"the evaluator does not know {function}")

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.values:
            return self.values[name]
        return self.physical_ids[name][0]

    def _sub(self, text: str, variables: Mapping[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if "." in name:
                resource, attribute = name.split(".", 1)
                return str(self._function("Fn::GetAtt", [resource, attribute]))
            return str(self._ref(name))

        return re.sub(r"\$\{([^}!]+)\}", replace, text)

    def resource(self, name: str) -> dict[str, Any]:
        resolved: dict[str, Any] = self.resolve(resources(self.template)[name])
        return resolved

    def policy(self, name: str) -> list[dict[str, Any]]:
        """The statements of a policy resource (ManagedPolicy, RolePolicy)."""
        return _statements(self.resource(name)["Properties"]["PolicyDocument"])

    def role_policies(self, role: str) -> list[dict[str, Any]]:
        """Every statement that applies to a role: inline, and policy resources naming it."""
        found = resources(self.template)
        statements = [
            s
            for policy in self.resource(role)["Properties"].get("Policies", [])
            for s in _statements(policy["PolicyDocument"])
        ]
        for name, body in found.items():
            if "Condition" in body and not self.condition(body["Condition"]):
                continue  # not created for these parameters
            properties = body.get("Properties", {})
            attached = [properties.get("RoleName"), *properties.get("Roles", [])]
            if body["Type"].startswith("AWS::IAM::") and {"Ref": role} in attached:
                statements.extend(self.policy(name))
        return statements

    def key_policy(self) -> list[dict[str, Any]]:
        return _statements(self.resource("KeyringKey")["Properties"]["KeyPolicy"])


def _statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    statement = document["Statement"]
    return list(statement) if isinstance(statement, list) else [statement]


def _flatten(items: Iterable[Any]) -> list[str]:
    flat: list[str] = []
    for item in items:
        flat.extend(_flatten(item) if isinstance(item, list) else [str(item)])
    return flat


# -- evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One authorisation IAM makes: an action on a resource, with its request context."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()
    principal: str = ""

    def with_principal(self, principal: str) -> Request:
        return Request(self.action, self.resource, self.context, principal)


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _wildcard(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM matching: `*` is any run of characters (slashes included), `?` one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    flags = re.IGNORECASE if ignore_case else 0
    return re.fullmatch(regex, value, flags) is not None


def _condition_holds(operator: str, key: str, expected: list[str], context: dict[str, str]) -> bool:
    present = key.lower() in context
    actual = context.get(key.lower())
    base = operator.removesuffix("IfExists")
    if operator == "Null":
        return (not present) == (expected == ["true"])
    if not present:
        # A missing key: ...IfExists holds, a negated operator holds, any other does not.
        return operator.endswith("IfExists") or "Not" in base
    assert actual is not None
    if base in ("StringEquals", "ArnEquals"):
        return actual in expected
    if base in ("StringNotEquals", "ArnNotEquals"):
        return actual not in expected
    if base in ("StringLike", "ArnLike"):
        return any(_wildcard(p, actual) for p in expected)
    if base in ("StringNotLike", "ArnNotLike"):
        return not any(_wildcard(p, actual) for p in expected)
    raise KeyError(f"the evaluator does not know the condition operator {operator}")


def _principal_matches(statement: dict[str, Any], principal: str) -> bool:
    """Key policies only: a role ARN, or the account root (any principal of the account)."""
    if "Principal" not in statement:
        return True
    named = _as_list(statement["Principal"].get("AWS", []))
    account_root = f"arn:aws:iam::{principal.split(':')[4]}:root" if principal else None
    return principal in named or account_root in named


def applies(statement: dict[str, Any], request: Request) -> bool:
    if "NotAction" in statement or "NotResource" in statement or "NotPrincipal" in statement:
        raise KeyError("the evaluator does not know NotAction / NotResource / NotPrincipal")
    if not any(
        _wildcard(a, request.action, ignore_case=True) for a in _as_list(statement["Action"])
    ):
        return False
    if not any(_wildcard(r, request.resource) for r in _as_list(statement["Resource"])):
        return False
    if not _principal_matches(statement, request.principal):
        return False
    context = {k.lower(): v for k, v in request.context}
    return all(
        _condition_holds(operator, key, _as_list(expected), context)
        for operator, keys in statement.get("Condition", {}).items()
        for key, expected in keys.items()
    )


def decide(statements: list[dict[str, Any]], request: Request) -> str:
    """One of "deny" (an explicit Deny applies), "allow", "implicit deny" (nothing allows)."""
    matching = [s for s in statements if applies(s, request)]
    if any(s["Effect"] == "Deny" for s in matching):
        return "deny"
    if any(s["Effect"] == "Allow" for s in matching):
        return "allow"
    return "implicit deny"


# -- what the rotator commands call ----------------------------------------------------------

PREFIX = "/connect-keys"
KEYRING = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{PREFIX}"
BLOG = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter"
KEY = "5a1e0000-0000-4000-8000-00000000aaaa"  # a key ID (Connect's AssociationId)
ROTATION = "7e570000-0000-4000-8000-00000000bbbb"  # a rotation ID (staging)
STAMP = "20261123T120000000000Z-a1b2c3"  # a history record
VIA_SSM = ("kms:ViaService", f"ssm.{REGION}.amazonaws.com")


def ssm(action: str, name: str, *context: tuple[str, str]) -> Request:
    return Request(f"ssm:{action}", f"{KEYRING}{name}", context)


def create(name: str) -> Request:
    return ssm("PutParameter", name, ("ssm:Overwrite", "false"))


def overwrite(name: str) -> Request:
    return ssm("PutParameter", name, ("ssm:Overwrite", "true"))


def kms(action: str, name: str) -> Request:
    """SSM calling KMS for the caller, for the SecureString `name` of the keyring."""
    return Request(
        f"kms:{action}",
        KEY_ARN,
        (VIA_SSM, ("kms:EncryptionContext:PARAMETER_ARN", f"{KEYRING}{name}")),
    )


def connect(action: str, resource: str) -> Request:
    return Request(f"connect:{action}", resource)


def _secure_write(name: str) -> tuple[Request, ...]:
    # SSM asks KMS for Encrypt (Standard tier) or GenerateDataKey (Advanced tier, which the
    # account's default parameter tier setting can impose).
    return (create(name), kms("Encrypt", name), kms("GenerateDataKey", name))


def _secure_read(name: str) -> tuple[Request, ...]:
    return (ssm("GetParameters", name), kms("Decrypt", name))


_LOCK = (
    ssm("GetParameter", f"/locks/{INSTANCE_ID}"),
    create(f"/locks/{INSTANCE_ID}"),
    overwrite(f"/locks/{INSTANCE_ID}"),  # the lease is renewed while a rotation runs
    ssm("DeleteParameter", f"/locks/{INSTANCE_ID}"),
)
_HISTORY = (
    create(f"/history/{INSTANCE_ID}/{STAMP}"),
    create(f"/history/keyring/{STAMP}"),
    # A create whose answer was lost meets its own record on botocore's retry: read it back.
    ssm("GetParameters", f"/history/{INSTANCE_ID}/{STAMP}"),
)
_READ_STATE = (
    ssm("GetParametersByPath", "/instances"),
    ssm("GetParametersByPath", "/keys"),
    ssm("GetParametersByPath", "/locks"),
    ssm("GetParameters", f"/instances/{INSTANCE_ID}/config"),
    ssm("GetParameters", f"/instances/{INSTANCE_ID}/current"),
    ssm("GetParameters", f"/instances/{INSTANCE_ID}/rotation"),
    ssm("GetParameters", f"/keys/{KEY}/metadata"),
    ssm("GetParameters", f"/keys/{KEY}/certificate"),
)
_READ_FLOWS = (
    connect("ListSecurityKeys", INSTANCE_ARN),
    connect("DescribeContactFlow", FLOW_ARN),
    connect("DescribeContactFlowModule", MODULE_ARN),
)
_UPDATE_FLOWS = (
    connect("UpdateContactFlowContent", FLOW_ARN),
    connect("UpdateContactFlowModuleContent", MODULE_ARN),
)
_ROTATION = (
    *_READ_STATE,
    *_LOCK,
    *_HISTORY,
    *_READ_FLOWS,
    *_UPDATE_FLOWS,
    overwrite(f"/staging/{ROTATION}/certificate"),
    *_secure_write(f"/staging/{ROTATION}/private-key"),
    *_secure_read(f"/staging/{ROTATION}/private-key"),
    ssm("GetParameters", f"/staging/{ROTATION}/certificate"),
    connect("AssociateSecurityKey", INSTANCE_ARN),
    *_secure_write(f"/keys/{KEY}/private-key"),
    *_secure_read(f"/keys/{KEY}/private-key"),
    overwrite(f"/keys/{KEY}/certificate"),
    overwrite(f"/keys/{KEY}/metadata"),
    overwrite(f"/instances/{INSTANCE_ID}/config"),
    overwrite(f"/instances/{INSTANCE_ID}/current"),
    overwrite(f"/instances/{INSTANCE_ID}/rotation"),
    ssm("DeleteParameters", f"/staging/{ROTATION}/certificate"),
    ssm("DeleteParameters", f"/staging/{ROTATION}/private-key"),
    # A key left in Connect's second slot after its grace period, or --emergency.
    connect("DisassociateSecurityKey", INSTANCE_ARN),
)

# Every call each command makes, as IAM authorises it (recorded against the sandbox, then
# written down): the machine-readable contract between the code and OperatorPolicy.
# tests/test_operator_walkthrough.py records the calls of deploy/README.md's first steps and
# the adopt runbook and checks that this list holds each of them.
OPERATOR_COMMANDS: dict[str, tuple[Request, ...]] = {
    "init": _ROTATION,
    "rotate": (
        *_ROTATION,
        # After the instances: staged keys no unfinished rotation owns are deleted.
        ssm("GetParametersByPath", "/staging"),
    ),
    "import": (
        *_READ_STATE,
        *_HISTORY,
        *_secure_write(f"/keys/{KEY}/private-key"),
        *_secure_read(f"/keys/{KEY}/private-key"),
        overwrite(f"/keys/{KEY}/certificate"),
        overwrite(f"/keys/{KEY}/metadata"),
        overwrite(f"/instances/{INSTANCE_ID}/current"),
        # --instance-id: the key must be the one Connect holds for the key ID.
        connect("ListSecurityKeys", INSTANCE_ARN),
        # Which KMS key protects the stored private key (a warning if not the configured one),
        Request("ssm:DescribeParameters", "*"),
        # ... and the re-protect commands that warning prints: `aws ssm delete-parameter`.
        ssm("DeleteParameter", f"/keys/{KEY}/private-key"),
        # --from-blog-parameters (runbooks/adopt-blog-deployment.md)
        Request("ssm:GetParameters", f"{BLOG}/CONNECT_INPUT_DECRYPTION_KEY"),
        Request("ssm:GetParameters", f"{BLOG}/CONNECT_INPUT_KEY_ID"),
    ),
    "verify": (  # one read of the state, as the report's (services/state.py), and canaries
        *_READ_STATE,
        *_secure_read(f"/keys/{KEY}/private-key"),
        Request("ssm:DescribeParameters", "*"),  # private keys stored; orphaned staged keys
        *_READ_FLOWS,
    ),
    "status": (  # the managed flows are read for drift (a dynamic key reference shows there)
        *_READ_STATE,
        connect("DescribeContactFlow", FLOW_ARN),
        connect("DescribeContactFlowModule", MODULE_ARN),
    ),
    "report": (
        *_READ_STATE,
        *_READ_FLOWS,
        Request("ssm:DescribeParameters", "*"),
        ssm("GetParametersByPath", "/history"),  # the rotation history
        # The cryptographic architecture: the spec of the KMS key protecting the private keys,
        # and the decrypt function's environment (ROTATOR_DECRYPT_FUNCTION) for private keys.
        Request("kms:DescribeKey", KEY_ARN),
        Request("lambda:GetFunctionConfiguration", DECRYPT_FUNCTION_ARN),
    ),
    "retire": (
        *_READ_STATE,
        *_LOCK,
        *_HISTORY,
        *_READ_FLOWS,
        overwrite(f"/keys/{KEY}/metadata"),
        connect("DisassociateSecurityKey", INSTANCE_ARN),
    ),
    "destroy": (
        *_READ_STATE,
        *_HISTORY,
        *_READ_FLOWS,
        overwrite(f"/keys/{KEY}/metadata"),
        ssm("DeleteParameters", f"/keys/{KEY}/private-key"),
    ),
    "rollback": (
        *_READ_STATE,
        *_LOCK,
        *_HISTORY,
        *_READ_FLOWS,
        *_UPDATE_FLOWS,
        overwrite(f"/keys/{KEY}/metadata"),
        overwrite(f"/instances/{INSTANCE_ID}/current"),
    ),
    "custodian": (
        # `custodian acknowledge`: one history record (sts:GetCallerIdentity needs no grant);
        # `custodian list`: the history read back.
        create(f"/history/custodians/{STAMP}"),
        ssm("GetParameters", f"/history/custodians/{STAMP}"),  # a lost answer's retry
        ssm("GetParametersByPath", "/history"),
    ),
    "runbook": (
        # Each run is two history records (started, ended); `runbook audit` reads them, and
        # the versions of audit/runbook-runs, where runs were recorded before the history
        # existed. The steps are the commands above, plus the `aws` commands the runbooks
        # print for evidence and restores.
        create(f"/history/runbooks/{STAMP}"),
        ssm("GetParameters", f"/history/runbooks/{STAMP}"),  # a lost answer's retry
        ssm("GetParametersByPath", "/history/runbooks"),
        ssm("GetParameterHistory", "/audit/runbook-runs"),
        ssm("GetParameter", f"/keys/{KEY}/certificate"),
        connect("DescribeContactFlow", FLOW_ARN),
    ),
}

# The rotation job's expiry events: PutEvents on the default bus, as the rotator role makes it
# (IAM adds the entry's source and detail type to the request's context).
EXPIRY_EVENT = Request(
    "events:PutEvents",
    f"arn:aws:events:{REGION}:{ACCOUNT}:event-bus/default",
    (
        ("events:source", "connect-key-rotator"),
        ("events:detail-type", "Connect Key Approaching Expiration"),
    ),
)

# The rotator Lambda runs rotate and the report; the rest of OperatorPolicy serves people.
ROTATOR_LAMBDA_EXTRA = {
    "events:putevents",
    "cloudwatch:putmetricdata",
    "sns:publish",
    "s3:putobject",
    "logs:createlogstream",
    "logs:putlogevents",
}
