"""deploy/README.md section 3 and the adopt runbook, walked as written against the sandbox: every
AWS call each command sends, evaluated against the template's OperatorPolicy (issue 14's proof).

The walk runs once per module: a fresh instance gets its first key as the README says (status,
init, verify, report), then an instance running the AWS blog's setup is adopted with the three
procedures of runbooks/adopt-blog-deployment.md, with the decrypt Lambda's test calls between
them. A botocore handler on boto3's default session records every call of every client the
commands build; each call becomes the IAM authorisations it needs (SSM and Connect, and the KMS
calls SSM makes for the caller on a SecureString), evaluated with tests/cfn_policy.py against the
template resolved for the sandbox's account, region, keyring prefix, instances and KMS key.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import takewhile
from pathlib import Path
from typing import Any

import boto3
import pytest

import rotator.entrypoints.cli as cli
from lambda_decrypt import handler
from rotator.domain.connect_cipher import encrypt_like_connect
from rotator.domain.flows import encrypting_blocks
from rotator.domain.keys import self_signed_material
from rotator.sandbox.sample_flows import (
    CARD_INPUT_ACTION,
    PaymentInstance,
    create_payment_instance,
    payment_flow_content,
)
from rotator.sandbox.server import REGION, Sandbox
from tests import cfn_policy
from tests.cfn_policy import OPERATOR_COMMANDS, Request, Stack, decide, load_template
from tests.conftest import NOW, TEST_CARD
from tests.world import KeyPool, World, build_world

ACCOUNT = "123456789012"  # moto's account: the sandbox's ARNs are in it
OPERATOR_ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/connect-key-operators"
BLOG_PARAMETERS = ("CONNECT_INPUT_DECRYPTION_KEY", "CONNECT_INPUT_KEY_ID")
# SecureStrings without a KeyId (the blog's) are under SSM's AWS managed key. Its key policy
# lets every principal of the account use it through SSM: IAM needs no grant for it.
AWS_SSM_KEY = "alias/aws/ssm"
DECRYPT_LAMBDA = "decrypt Lambda"
ZERO, RETIRE_AT = timedelta(), timedelta(days=8, hours=1)  # part 3: after the 7-day grace

# The calls each command of the walk sends (SSM, Connect, STS), measured against the sandbox; the
# table is quoted in deploy/README.md ("Measured: ..."). A runbook's step is the command the
# runbook ran; "runbook run" alone is the runner's own calls (its two audit records and the
# principal that ran it). STS: GetCallerIdentity, once per command that records a change.
# KMS + Lambda: the report's evidence (DescribeKey, the decrypt function's configuration).
CALLS_PER_COMMAND: tuple[tuple[str, str, int, int, int, int], ...] = (
    ("section 3", "rotator status", 3, 0, 0, 0),
    ("section 3", "rotator init", 23, 8, 1, 0),
    ("section 3", "rotator verify", 6, 3, 0, 0),
    ("section 3", "rotator report", 5, 3, 0, 2),
    ("adopt, part 1", "rotator runbook run adopt-blog-deployment", 2, 0, 1, 0),
    ("adopt, part 1", "rotator import", 14, 1, 1, 0),
    ("adopt, part 1", "rotator status", 3, 2, 0, 0),  # the managed payment flow and module
    ("adopt, part 1", "decrypt Lambda test call", 1, 0, 0, 0),
    (
        "adopt, part 2",
        "rotator runbook run adopt-blog-deployment --procedure take-over",
        2,
        0,
        1,
        0,
    ),
    ("adopt, part 2", "rotator init", 26, 5, 1, 0),
    ("adopt, part 2", "rotator verify", 6, 2, 0, 0),
    ("adopt, part 2", "rotator status", 3, 3, 0, 0),  # ... and the blog instance's flow
    ("adopt, part 2", "decrypt Lambda test call", 1, 0, 0, 0),
    (
        "adopt, part 3",
        "rotator runbook run adopt-blog-deployment --procedure retire-blog-key",
        2,
        0,
        1,
        0,
    ),
    ("adopt, part 3", "rotator retire", 9, 3, 1, 0),
    ("adopt, part 3", "rotator verify", 6, 2, 0, 0),
    ("adopt, audit", "rotator runbook audit", 2, 0, 0, 0),
)

# Granted by OperatorPolicy, never called by the walk, and why they must stay.
UNREACHED_ACTIONS = {
    # SSM encrypts an Advanced-tier SecureString with a data key (GenerateDataKey), a Standard
    # one with Encrypt. The private keys are created without a tier: Standard, unless the
    # account's default parameter tier is Advanced (or Intelligent-Tiering picks it), which
    # the sandbox does not model.
    "kms:GenerateDataKey": "Advanced-tier SecureStrings (an account's default tier setting)",
}
# The same for the decrypt role and its Lambda's test calls.
UNREACHED_BY_THE_DECRYPT_LAMBDA = {
    # The reader lists the keyring only past its lookup budget (30 unknown key IDs a minute).
    "ssm:GetParametersByPath": "the key-ID listing of a container flooded with unknown key IDs",
    # The Lambda service writes the function's log with the role, not the function's code.
    "logs:CreateLogStream": "the function's log group",
    "logs:PutLogEvents": "the function's log group",
}


# -- recording ---------------------------------------------------------------------------------


@dataclass
class Call:
    """One API call as a client sent it, and what it answered (None: nothing parsed)."""

    step: tuple[str, str]  # where in the documents, what ran: a row of CALLS_PER_COMMAND
    command: str  # the CLI command that sent it (OPERATOR_COMMANDS's key), or DECRYPT_LAMBDA
    service: str
    operation: str
    params: dict[str, Any]
    answer: dict[str, Any] | None = None


@dataclass
class Recorder:
    """Every call of the clients built from one boto3 session while a command runs."""

    calls: list[Call] = field(default_factory=list)
    running: list[tuple[tuple[str, str], str]] = field(default_factory=list)

    def install(self, session: boto3.Session) -> None:
        # before-parameter-build carries the parameters as the caller gave them, once per API
        # call (each page of a paginator is a call; botocore's retries are not); after-call
        # the parsed answer, error answers included.
        session.events.register("before-parameter-build", self._sent)
        session.events.register("after-call", self._answered)

    @contextlib.contextmanager
    def command(self, step: tuple[str, str], command: str) -> Iterator[None]:
        self.running.append((step, command))
        try:
            yield
        finally:
            self.running.pop()

    def _sent(self, params: Mapping[str, Any], model: Any, **_: Any) -> None:
        assert self.running, f"a call outside the walk's commands: {model.name}"
        step, command = self.running[-1]
        service = model.service_model.service_name
        self.calls.append(Call(step, command, service, model.name, dict(params)))

    def _answered(self, parsed: Mapping[str, Any], model: Any, **_: Any) -> None:
        assert self.calls and self.calls[-1].operation == model.name
        self.calls[-1].answer = dict(parsed)


def subcommand(argv: Sequence[str]) -> str:
    """The command of a CLI argv, past the global options (each of which takes a value)."""
    tokens = iter(argv)
    for token in tokens:
        if not token.startswith("--"):
            return token
        next(tokens, None)
    raise AssertionError(f"no command in {argv}")


# -- the walk ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Walk:
    world: World
    blog: PaymentInstance
    kms_key_arn: str
    calls: list[Call]
    protection: dict[str, str]  # SecureString name -> the KMS key SSM encrypts it with

    @property
    def instance_arns(self) -> list[str]:
        return [connect_arn(i) for i in (self.world.instance_id, self.blog.instance_id)]


def connect_arn(instance_id: str, kind: str = "", resource_id: str = "") -> str:
    arn = f"arn:aws:connect:{REGION}:{ACCOUNT}:instance/{instance_id}"
    return f"{arn}/{kind}/{resource_id}" if kind else arn


def parameter_arn(name: str) -> str:
    return f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{name if name.startswith('/') else '/' + name}"


def blog_setup(world: World, key_pool: KeyPool, folder: Path) -> tuple[PaymentInstance, str, Path]:
    """The AWS blog's manual setup on a second instance: a key associated by hand, its
    certificate in the flow's card block, the private key and key ID in the blog's two
    SecureStrings (SSM's default key), the certificate copied out of the flow into a file."""
    blog = create_payment_instance(world.connect, "blog")
    material = self_signed_material(
        key_pool.private_keys[-1], now=NOW - timedelta(days=30), subject="CN=blog"
    )
    key_id = world.connect.associate_security_key(
        InstanceId=blog.instance_id, Key=material.public_key_pem
    )["AssociationId"]
    world.connect.update_contact_flow_content(
        InstanceId=blog.instance_id,
        ContactFlowId=blog.flow_id,
        Content=payment_flow_content(key_id, material.certificate_pem),
    )
    # moto outlives the worlds: these two names may be left by another module's walk.
    for name, value in zip(BLOG_PARAMETERS, (material.private_key_pem, key_id), strict=True):
        world.ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
    certificate = folder / "blog-certificate.pem"
    certificate.write_text(material.certificate_pem)
    return blog, key_id, certificate


def caller_types(world: World, instance_id: str, flow_id: str) -> str:
    """What Connect does when a caller reaches the flow's card block: encrypt with its key."""
    content = world.connect.describe_contact_flow(InstanceId=instance_id, ContactFlowId=flow_id)
    block = encrypting_blocks(content["ContactFlow"]["Content"])[0]
    assert block.key_id is not None and block.certificate_pem is not None
    return encrypt_like_connect(
        TEST_CARD.encode(), key_id=block.key_id, certificate_pem=block.certificate_pem
    )


def create_decrypt_function() -> None:
    """The deployed decrypt function, as the report's copy inventory finds it (a clean
    environment); made before the recording starts, like the rest of the setup."""
    role = boto3.client("iam").create_role(RoleName="decrypt", AssumeRolePolicyDocument="{}")
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return {}\n")
    boto3.client("lambda").create_function(
        FunctionName=cfn_policy.DECRYPT_FUNCTION,
        Runtime="python3.11",
        Role=role["Role"]["Arn"],
        Handler="handler.handler",
        Code={"ZipFile": code.getvalue()},
        Environment={"Variables": {"KEYRING_PREFIX": "/connect-keys"}},
    )


def walk_the_documents(sandbox: Sandbox, key_pool: KeyPool, folder: Path) -> Walk:
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("KEYRING_", "ROTATOR_")):
                mp.delenv(name)
        for name, value in sandbox.environment().items():
            mp.setenv(name, value)
        world = build_world(sandbox, key_pool, mp)
        kms_key_arn = boto3.client("kms").create_key(Description="keyring")["KeyMetadata"]["Arn"]
        create_decrypt_function()  # the template's, by the name tests/cfn_policy.py gives it
        blog, blog_key_id, certificate = blog_setup(world, key_pool, folder)
        protection = {
            p["Name"]: p["KeyId"]
            for p in world.ssm.describe_parameters(
                ParameterFilters=[{"Key": "Name", "Values": list(BLOG_PARAMETERS)}]
            )["Parameters"]
        }

        # From here on every client is recorded (the world's own, made before, are not).
        recorder = Recorder()
        session = boto3.Session()
        recorder.install(session)
        mp.setattr(boto3, "DEFAULT_SESSION", session)
        handler.reset_container()
        real_main = cli.main

        def runbook_step(argv: Sequence[str], out: Any = None) -> int:
            """A runbook's step (the runner calls cli.main): a command of its own."""
            (where, _), _ = recorder.running[-1]
            with recorder.command((where, f"rotator {subcommand(argv)}"), subcommand(argv)):
                return real_main(argv, out)

        mp.setattr(cli, "main", runbook_step)
        # deploy/README.md section 3 and the runbook: the keyring's prefix and KMS key first.
        mp.setenv("KEYRING_PREFIX", world.prefix)
        mp.setenv("ROTATOR_KMS_KEY_ID", kms_key_arn)
        mp.setenv("ROTATOR_KEY_SIZE", "2048")  # quick keys; the calls do not depend on it
        mp.setenv("ROTATOR_DECRYPT_FUNCTION", cfn_policy.DECRYPT_FUNCTION)  # as the template sets

        def rotator(where: str, *argv: str, after: timedelta = ZERO, answers: str = "") -> str:
            """`rotator ARGV` at NOW + after, answering a runbook's [y/N] questions."""
            sandbox.clock.stand_at(NOW + after)
            mp.setattr(sys, "stdin", io.StringIO(answers))
            out, err = io.StringIO(), io.StringIO()
            # The row: the command and what names the procedure, not the values filled in.
            shown = argv[:1] if argv[0] != "runbook" else takewhile(lambda a: a != "--param", argv)
            what = shlex.join(["rotator", *shown])
            with recorder.command((where, what), argv[0]), contextlib.redirect_stderr(err):
                code = real_main(list(argv), out)
            text = out.getvalue()
            assert code == 0, f"rotator {shlex.join(argv)} -> {code}\n{text}{err.getvalue()}"
            return text

        def decrypt_test_call(where: str, instance_id: str, flow_id: str) -> None:
            """The runbook's check: a caller types the test card, the decrypt Lambda answers."""
            contact = caller_types(world, instance_id, flow_id)
            with recorder.command((where, f"{DECRYPT_LAMBDA} test call"), DECRYPT_LAMBDA):
                assert world.lambda_decrypts(contact) == {"status": "ok", "Card": TEST_CARD}

        i, f, m, b = world.instance_id, world.flow_id, world.module_id, blog.instance_id
        adopt = ("runbook", "run", "adopt-blog-deployment")

        # deploy/README.md section 3: a fresh instance, its card blocks named.
        assert "holds no keys" in rotator("section 3", "status")
        first = rotator(
            "section 3",
            "init", "--instance-id", i, "--flow-id", f, "--flow-module-id", m,
            "--encrypt-block", f"{f}:{CARD_INPUT_ACTION}",
            "--encrypt-block", f"{m}:{CARD_INPUT_ACTION}",
        )  # fmt: skip
        assert f"{i}: rotated: no key -> " in first and "(first key)" in first
        assert "all invariants hold (" in rotator("section 3", "verify")
        report = rotator("section 3", "report")
        assert "findings: 0 critical" in report and f"`{i}`" in report

        # runbooks/adopt-blog-deployment.md on the blog instance: its three procedures.
        part1 = rotator(
            "adopt, part 1",
            *adopt,
            "--param", f"INSTANCE_ID={b}",
            "--param", f"KEY_PARAMETER={BLOG_PARAMETERS[0]}",
            "--param", f"KEY_ID_PARAMETER={BLOG_PARAMETERS[1]}",
            "--param", f"CERTIFICATE_FILE={certificate}",
            answers="y\n",
        )  # fmt: skip
        assert f"imported: key {blog_key_id} (2048 bits) state active" in part1
        assert f"private key encrypted with KMS key {kms_key_arn}" in part1
        # The manual change (decrypt Lambda deployed, the flow's Invoke Lambda block pointed at
        # it) is the world's: its handler reads this keyring. Then the runbook's test call.
        decrypt_test_call("adopt, part 1", b, blog.flow_id)
        part2 = rotator(
            "adopt, part 2",
            *adopt, "--procedure", "take-over",
            "--param", f"INSTANCE_ID={b}", "--param", f"FLOW_ID={blog.flow_id}",
            "--param", "MODULE_ID=",
            after=timedelta(hours=1), answers="y\n",
        )  # fmt: skip
        assert f"rotated: {blog_key_id} -> " in part2 and "all invariants hold" in part2
        decrypt_test_call("adopt, part 2", b, blog.flow_id)
        part3 = rotator(
            "adopt, part 3",
            *adopt, "--procedure", "retire-blog-key",
            "--param", f"INSTANCE_ID={b}", "--param", f"BLOG_KEY_ID={blog_key_id}",
            after=RETIRE_AT, answers="y\n",
        )  # fmt: skip
        assert f"key {blog_key_id} retired: disassociated from {b}, still decrypts" in part3
        assert "3 run(s)" in rotator("adopt, audit", "runbook", "audit", after=RETIRE_AT)

        for call in recorder.calls:
            if call.operation == "PutParameter" and call.params.get("Type") == "SecureString":
                protection[call.params["Name"]] = call.params.get("KeyId", AWS_SSM_KEY)
        handler.reset_container()
        sandbox.clock.reset()
        world.ssm.delete_parameters(Names=list(BLOG_PARAMETERS))
        return Walk(world, blog, kms_key_arn, recorder.calls, protection)


@pytest.fixture(scope="module")
def walk(sandbox: Sandbox, key_pool: KeyPool, tmp_path_factory: pytest.TempPathFactory) -> Walk:
    return walk_the_documents(sandbox, key_pool, tmp_path_factory.mktemp("walk"))


# -- calls as IAM authorises them --------------------------------------------------------------

VIA_SSM = ("kms:ViaService", f"ssm.{REGION}.amazonaws.com")
# Which request parameter names the Connect resource each action is authorised on.
CONNECT_RESOURCES = {
    "ListSecurityKeys": None,
    "AssociateSecurityKey": None,
    "DisassociateSecurityKey": None,
    "DescribeContactFlow": ("contact-flow", "ContactFlowId"),
    "UpdateContactFlowContent": ("contact-flow", "ContactFlowId"),
    "DescribeContactFlowModule": ("flow-module", "ContactFlowModuleId"),
    "UpdateContactFlowModuleContent": ("flow-module", "ContactFlowModuleId"),
}
SSM_READS = ("GetParameter", "GetParameters", "GetParametersByPath", "GetParameterHistory")


def kms_key_arn(key: str) -> str:
    return key if key.startswith("arn:") else f"arn:aws:kms:{REGION}:{ACCOUNT}:{key}"


def through_ssm(action: str, key: str, name: str) -> Request:
    """The KMS call SSM makes for the caller on the SecureString `name`."""
    context = (VIA_SSM, ("kms:EncryptionContext:PARAMETER_ARN", parameter_arn(name)))
    return Request(f"kms:{action}", kms_key_arn(key), context)


def authorisations(call: Call, protection: Mapping[str, str]) -> list[Request]:
    """What IAM authorises for one call: one request per named parameter (GetParameters and
    DeleteParameters are authorised per name, GetParametersByPath on the path), the SSM
    condition keys the request sets, and the KMS calls SSM makes for the caller."""
    params, action = call.params, f"{call.service}:{call.operation}"
    if call.service == "sts":
        # GetCallerIdentity (who made a change, for the history) needs no IAM permission: an
        # explicit deny cannot refuse it either, so IAM authorises nothing.
        assert call.operation == "GetCallerIdentity", call
        return []
    if call.service == "kms":  # the report describes the keyring's KMS key (metadata only)
        assert call.operation == "DescribeKey", call
        return [Request(action, kms_key_arn(params["KeyId"]))]
    if call.service == "lambda":  # the report's copy inventory of the decrypt function
        assert call.operation == "GetFunctionConfiguration", call
        name = params["FunctionName"]
        arn = (
            name
            if name.startswith("arn:")
            else f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
        )
        return [Request(action, arn)]
    if call.service == "connect":
        resource = CONNECT_RESOURCES[call.operation]
        arn = connect_arn(params["InstanceId"])
        if resource is not None:
            arn = connect_arn(params["InstanceId"], resource[0], params[resource[1]])
        return [Request(action, arn)]
    assert call.service == "ssm", call
    if call.operation == "DescribeParameters":
        return [Request(action, "*")]  # it takes no resource
    if call.operation == "PutParameter":
        context = []
        if "Overwrite" in params:
            context.append(("ssm:Overwrite", str(params["Overwrite"]).lower()))
        if "Policies" in params:
            context.append(("ssm:Policies", "true"))
        requests = [Request(action, parameter_arn(params["Name"]), tuple(context))]
        if params.get("Type") == "SecureString":
            encrypt = "GenerateDataKey" if params.get("Tier") == "Advanced" else "Encrypt"
            key = params.get("KeyId", AWS_SSM_KEY)
            requests.append(through_ssm(encrypt, key, params["Name"]))
        return requests
    names = params.get("Names") or [params.get("Name") or params["Path"]]
    requests = [Request(action, parameter_arn(name)) for name in names]
    if call.operation in SSM_READS and params.get("WithDecryption"):
        answer = call.answer or {}
        returned = answer.get("Parameters") or [answer.get("Parameter", {})]
        requests += [
            through_ssm("Decrypt", protection[p["Name"]], p["Name"])
            for p in returned
            if p.get("Type") == "SecureString"
        ]
    return requests


def needs_iam(request: Request) -> bool:
    """Every request but the use of SSM's AWS managed key (its key policy grants that)."""
    return request.resource != kms_key_arn(AWS_SSM_KEY)


def as_principal(principal: str, request: Request) -> Request:
    """The request as `principal` makes it (IAM adds aws:PrincipalArn to every request)."""
    context = (*request.context, ("aws:PrincipalArn", principal))
    return Request(request.action, request.resource, context, principal)


@dataclass(frozen=True)
class Evaluated:
    """The walk's calls, each with its authorisations, against the stack it was deployed as."""

    walk: Walk
    stack: Stack
    requests: list[tuple[Call, Request]]

    def operator_requests(self) -> list[tuple[Call, Request]]:
        return [(c, r) for c, r in self.requests if c.command != DECRYPT_LAMBDA]

    def lambda_requests(self) -> list[tuple[Call, Request]]:
        return [(c, r) for c, r in self.requests if c.command == DECRYPT_LAMBDA]


@pytest.fixture(scope="module")
def evaluated(walk: Walk) -> Evaluated:
    parameters = {
        "KeyringPrefix": walk.world.prefix,
        "ConnectInstanceArns": walk.instance_arns,
        "OperatorRoleArns": [OPERATOR_ROLE_ARN],
    }
    key_id = walk.kms_key_arn.rsplit("/", 1)[1]
    stack = Stack(load_template(), parameters, region=REGION, account=ACCOUNT, key_id=key_id)
    requests = [(c, r) for c in walk.calls for r in authorisations(c, walk.protection)]
    return Evaluated(walk, stack, requests)


def describe(call: Call, request: Request) -> str:
    where, what = call.step
    return f"{where}: {what}: {request.action} {request.resource} {dict(request.context)}"


def in_cfn_policy_terms(request: Request, walk: Walk) -> Request:
    """The request as tests/cfn_policy.py writes OPERATOR_COMMANDS: its account, region, prefix,
    instance, flow, module, KMS key, and one placeholder per key, rotation and history record."""
    ids = {
        walk.world.instance_id: cfn_policy.INSTANCE_ID,
        walk.blog.instance_id: cfn_policy.INSTANCE_ID,
        walk.world.flow_id: cfn_policy.FLOW_ARN.rsplit("/", 1)[1],
        walk.blog.flow_id: cfn_policy.FLOW_ARN.rsplit("/", 1)[1],
        walk.world.module_id: cfn_policy.MODULE_ARN.rsplit("/", 1)[1],
        walk.blog.module_id: cfn_policy.MODULE_ARN.rsplit("/", 1)[1],
        walk.kms_key_arn.rsplit("/", 1)[1]: cfn_policy.KEY_ID,
        f"parameter{walk.world.prefix}/": f"parameter{cfn_policy.PREFIX}/",
        f":{REGION}:{ACCOUNT}:": f":{cfn_policy.REGION}:{cfn_policy.ACCOUNT}:",
        f"ssm.{REGION}.": f"ssm.{cfn_policy.REGION}.",
    }
    uuid = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    placeholders = {
        rf"/keys/{uuid}/": f"/keys/{cfn_policy.KEY}/",
        rf"/staging/{uuid}/": f"/staging/{cfn_policy.ROTATION}/",
        r"/\d{8}T\d{12}Z-[0-9a-f]+$": f"/{cfn_policy.STAMP}",
    }

    def translate(text: str) -> str:
        for walked, written in ids.items():
            text = text.replace(walked, written)
        for pattern, written in placeholders.items():
            text = re.sub(pattern, written, text)
        return text

    context = tuple((key, translate(value)) for key, value in request.context)
    return Request(request.action, translate(request.resource), context)


def measured(walk: Walk) -> list[tuple[str, str, int, int, int, int]]:
    """CALLS_PER_COMMAND's rows, from the recording, in the walk's order."""
    counts = Counter((c.step, c.service) for c in walk.calls)
    steps = dict.fromkeys(c.step for c in walk.calls)
    assert {c.service for c in walk.calls} <= {"ssm", "connect", "sts", "kms", "lambda"}
    return [
        (
            *step,
            counts[(step, "ssm")],
            counts[(step, "connect")],
            counts[(step, "sts")],
            counts[(step, "kms")] + counts[(step, "lambda")],
        )
        for step in steps
    ]


def table(rows: Sequence[tuple[str, str, int, int, int, int]]) -> str:
    """The rows as deploy/README.md quotes them."""
    lines = [
        "| walk | command | SSM | Connect | STS | KMS + Lambda | calls |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for where, what, ssm, connect, sts, other in rows:
        shown = f"`{what}`" if what.startswith("rotator ") else what
        total = ssm + connect + sts + other
        lines.append(f"| {where} | {shown} | {ssm} | {connect} | {sts} | {other} | {total} |")
    return "\n".join(lines)


def allowed_actions(statements: Sequence[Mapping[str, Any]]) -> set[str]:
    return {
        action.lower()
        for s in statements
        if s["Effect"] == "Allow"
        for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }


# -- the proof ---------------------------------------------------------------------------------


def test_every_call_of_the_walk_is_allowed_by_the_operator_policy(evaluated: Evaluated) -> None:
    policy = evaluated.stack.policy("OperatorPolicy")
    key_policy = evaluated.stack.key_policy()
    refused = []
    for call, request in evaluated.operator_requests():
        if not needs_iam(request):
            continue
        if decide(policy, as_principal(OPERATOR_ROLE_ARN, request)) != "allow":
            refused.append(f"OperatorPolicy: {describe(call, request)}")
        if request.action.startswith("kms:") and (
            decide(key_policy, request.with_principal(OPERATOR_ROLE_ARN)) != "allow"
        ):
            refused.append(f"key policy: {describe(call, request)}")
    assert refused == []


def test_the_rotator_role_makes_the_same_calls_but_never_reads_the_blog_parameters(
    evaluated: Evaluated,
) -> None:
    role = str(evaluated.stack.physical_ids["RotatorRole"][1])
    statements = evaluated.stack.role_policies("RotatorRole")
    blog = {parameter_arn(name) for name in BLOG_PARAMETERS}
    decisions = {
        describe(call, request): decide(statements, as_principal(role, request))
        for call, request in evaluated.operator_requests()
        if needs_iam(request)
    }
    reads_blog = [describe(c, r) for c, r in evaluated.operator_requests() if r.resource in blog]
    assert reads_blog and {decisions[d] for d in reads_blog} == {"implicit deny"}
    assert [
        d for d, decision in decisions.items() if d not in reads_blog and decision != "allow"
    ] == []


def test_every_keyring_secure_string_is_under_the_keyring_key_the_blogs_under_aws_ssm(
    evaluated: Evaluated,
) -> None:
    """The runbook sets ROTATOR_KMS_KEY_ID first: no keyring SecureString is ever under SSM's
    default key; only the blog's own parameters are (read, never changed)."""
    walk = evaluated.walk
    keyring_parameter = parameter_arn(walk.world.prefix + "/")
    # The KMS calls SSM makes for a SecureString (the report's own DescribeKey is not one).
    kms = [r for _, r in evaluated.requests if r.action.startswith("kms:") and r.context]
    under_default = {
        dict(r.context)["kms:EncryptionContext:PARAMETER_ARN"] for r in kms if not needs_iam(r)
    }
    assert under_default == {parameter_arn(name) for name in BLOG_PARAMETERS}
    keyring = [
        r
        for r in kms
        if dict(r.context)["kms:EncryptionContext:PARAMETER_ARN"].startswith(keyring_parameter)
    ]
    assert {r.resource for r in keyring} == {walk.kms_key_arn}
    assert {r.action for r in keyring} == {"kms:Encrypt", "kms:Decrypt"}


def test_each_command_sends_the_calls_the_readme_states(evaluated: Evaluated) -> None:
    rows = measured(evaluated.walk)
    assert all(ssm + connect > 0 for _, _, ssm, connect, _, _ in rows)
    assert table(rows) == table(CALLS_PER_COMMAND), f"measured:\n{table(rows)}"
    readme = (Path(__file__).parents[1] / "deploy" / "README.md").read_text()
    assert table(CALLS_PER_COMMAND) in readme


def test_the_operator_policy_grants_no_action_the_walk_does_not_use(evaluated: Evaluated) -> None:
    statements = evaluated.stack.policy("OperatorPolicy")
    used = {r.action.lower() for _, r in evaluated.operator_requests() if needs_iam(r)}
    granted = allowed_actions(statements)
    assert granted - used == {action.lower() for action in UNREACHED_ACTIONS}
    # Every Allow statement serves a call of the walk: none is there for nothing.
    idle = [
        s["Sid"]
        for s in statements
        if s["Effect"] == "Allow"
        and not any(
            decide([s], as_principal(OPERATOR_ROLE_ARN, r)) == "allow"
            for _, r in evaluated.operator_requests()
        )
    ]
    assert idle == []


def test_the_decrypt_lambdas_test_calls_are_allowed_by_its_role_and_need_all_of_it(
    evaluated: Evaluated,
) -> None:
    role = str(evaluated.stack.physical_ids["DecryptRole"][1])
    statements = evaluated.stack.role_policies("DecryptRole")
    requests = evaluated.lambda_requests()
    used = {r.action.lower() for _, r in requests}
    unreached = {action.lower() for action in UNREACHED_BY_THE_DECRYPT_LAMBDA}
    assert allowed_actions(statements) - used == unreached
    refused = [
        describe(c, r)
        for c, r in requests
        if decide(statements, as_principal(role, r)) != "allow"
        or (
            r.action.startswith("kms:")
            and decide(evaluated.stack.key_policy(), r.with_principal(role)) != "allow"
        )
    ]
    assert refused == []


def test_operator_commands_lists_every_call_the_walk_made(evaluated: Evaluated) -> None:
    """tests/cfn_policy.py's OPERATOR_COMMANDS (what test_deploy_iam.py evaluates for any
    stack) holds every request of the walk, per command, in its own terms."""
    missing = sorted(
        {
            f"{call.command}: {written}"
            for call, request in evaluated.operator_requests()
            if needs_iam(request)
            and (written := in_cfn_policy_terms(request, evaluated.walk))
            not in OPERATOR_COMMANDS[call.command]
        }
    )
    assert missing == [], "\n".join(missing)
