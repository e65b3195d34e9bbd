"""Amazon Connect emulator: instances, security keys, contact flows and flow modules over REST-JSON.

moto has no Connect security-key or contact-flow API. This module serves exactly the operations
the project needs, on the wire as botocore's Connect model describes them, so an unmodified boto3
`connect` client runs against it. The wire details are read from that model, not copied: each
operation's HTTP method and request URI, its query-string members, the largest MaxResults it
takes, the errors it may answer and each error's HTTP status. The emulator only adds a handler
per supported operation, keyed by operation name (`ConnectState.operations`). State is in memory,
behind one lock; tests read it through `ConnectState.update_count` (how often a flow was written)
and `reset`.

State is partitioned by AWS account and region, as Connect's is: an instance lives in the
(account, region) of the request that created it, its ARN says so
(`arn:aws:connect:REGION:ACCOUNT:instance/ID`), and a request signed for another account or
region does not find it (ResourceNotFoundException, as Connect answers for an ID it does not
hold). The region is the SigV4 credential scope's. The account is whatever `account_of` says of
the request; the sandbox passes moto's own rule (`rotator.sandbox.server.moto_account`), so that
the emulator and moto agree on who is calling; alone, every request is moto's default account.
`ConnectState.invoke` runs an operation in-process for a given partition, through the same
handlers and checks as the wire (the sandbox seeds fleets with it).

Connect's rules it enforces:
- at most two security keys per instance (ServiceQuotaExceededException, HTTP 402 as modelled);
- a security key is an RSA public key PEM of at most 1024 characters;
- the same public key (compared by its numbers, not its text) is associated once; a ClientToken
  repeated with the same key returns the first AssociationId, with another key is refused;
- flow and module content is flow-language JSON (Connect's flow-language reference): Version
  2019-10-30, a StartAction and every NextAction naming an action, each action an object with a
  unique Identifier, a Type, a Transitions object and a Parameters object, which the actions that
  take no parameters (`TransferContactToQueue`, `DisconnectParticipant`, ...) may leave out;
- a GetParticipantInput with InputEncryption stores its input (StoreInput "True", or "true" as
  the Set Touchtone Buffer Behavior block writes it) and validates it with
  InputValidation.CustomValidation (never PhoneNumberValidation); the Stop-and-Clear variant of
  that block (EnableDTMFBuffer "false") stores and encrypts the buffer without any validation;
- EncryptionKeyId and Key are each either a JSONPath (`$.Attributes.KeyId`: dynamic, resolved
  per contact, so not checked here) or static: a static EncryptionKeyId is an AssociationId of
  this instance, a static Key a certificate PEM, and when both are static the certificate holds
  that security key's public key.

Error codes where Connect's documentation does not say which one it returns (decisions):
- a parameter value Connect refuses (a PEM over 1024 characters or not an RSA public key,
  MaxResults out of range, an unknown NextToken, flow type or status): InvalidParameterException,
  whose modelled meaning is "one or more of the specified parameters are not valid", or
  InvalidRequestException where the operation does not model it (ListInstances).
  InvalidRequestException is also the answer to a request that cannot be read (body not a JSON
  object, a required member missing, an unknown IdentityManagementType).
- the same public key twice, or a ClientToken reused with another key: ResourceConflictException,
  the only conflict error AssociateSecurityKey models (it has no IdempotencyException).
- a flow or module name already used in the instance: DuplicateResourceException.
- invalid content: InvalidContactFlowException with `problems`, or
  InvalidContactFlowModuleException with `Problems` (the two shapes spell it differently).
- an unknown instance, flow, module or security key: ResourceNotFoundException whose message
  names the kind and the ID that was not found.
- a method and path no operation serves: UnknownOperationException, HTTP 404 (not modelled).
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import botocore.session
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from botocore.model import ServiceModel

DEFAULT_ACCOUNT = "123456789012"  # moto's default account, so ARNs agree across the sandbox
DEFAULT_REGION = "us-east-1"
# Connect's own limits (botocore's model: PEM max 1024; the quota of two keys an instance).
# Deliberately not imported from rotator.domain: the emulator stands for Connect, so a change on
# our side cannot loosen it.
PEM_LIMIT = 1024
MAX_SECURITY_KEYS = 2
MAX_PROBLEMS = 50  # the longest Problems list an invalid-flow error carries (model: max 50)
PROBLEM_LIMIT = 256  # the longest message of one problem (model: ProblemMessageString max 256)
FLOW_LANGUAGE_VERSION = "2019-10-30"  # the only version of the flow language
FLOW_TYPES = frozenset(
    {
        "CONTACT_FLOW",
        "CUSTOMER_QUEUE",
        "CUSTOMER_HOLD",
        "CUSTOMER_WHISPER",
        "AGENT_HOLD",
        "AGENT_WHISPER",
        "OUTBOUND_WHISPER",
        "AGENT_TRANSFER",
        "QUEUE_TRANSFER",
        "CAMPAIGN",
    }
)
FLOW_STATUSES = frozenset({"PUBLISHED", "SAVED"})
IDENTITY_TYPES = frozenset({"SAML", "CONNECT_MANAGED", "EXISTING_DIRECTORY"})
# Actions whose flow-language reference says "No parameters are expected" (or shows `{}`):
# Connect's own sample flows leave their Parameters out.
PARAMETERLESS_ACTIONS = frozenset(
    {
        "CheckOutboundCallStatus",
        "DisconnectParticipant",
        "DistributeByPercentage",
        "EndFlowExecution",
        "EndFlowModuleExecution",
        "ResumeContact",
        "StartVoiceIdStream",
        "TransferContactToAgent",
        "TransferContactToQueue",
    }
)
# "True" in the Store customer input block, "true" in Set Touchtone Buffer Behavior.
STORE_INPUT_VALUES = frozenset({"True", "true"})
# A value "defined dynamically": one JSONPath reference, `$.Attributes.KeyId` or `$.External['x']`.
_JSONPATH = re.compile(r"\$(?:\.[A-Za-z_][\w-]*|\['[^']+'\]|\[\"[^\"]+\"\])+")
UNKNOWN_OPERATION = "UnknownOperationException"
_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/\s,]+/\d{8}/([^/\s,]+)/([^/\s,]+)/aws4_request")
_URI_LABEL = re.compile(r"\{(\w+)(\+?)\}")
T = TypeVar("T")


def credential_scope(environ: Mapping[str, Any]) -> tuple[str, str] | None:
    """(region, service) of a SigV4 Authorization header, or None for any other request."""
    match = _CREDENTIAL_SCOPE.search(str(environ.get("HTTP_AUTHORIZATION", "")))
    return (match.group(1), match.group(2)) if match else None


def default_account(environ: Mapping[str, Any]) -> str:
    """The account of every request when nobody says otherwise: moto's default."""
    return DEFAULT_ACCOUNT


@functools.cache
def connect_model() -> ServiceModel:
    """botocore's Connect service model, loaded once (about 0.2 s)."""
    return botocore.session.get_session().get_service_model("connect")


@functools.cache
def operation_named(name: str) -> Operation:
    """One operation as the model describes it, read once per process."""
    return Operation.from_model(name)


@dataclass(frozen=True)
class Operation:
    """What botocore's model says about one operation: where it is served, what it answers."""

    name: str
    method: str
    request_uri: str
    errors: frozenset[str]
    query: Mapping[str, str]  # wire name -> member name
    list_query: frozenset[str]  # query members that repeat (lists)
    page_limit: int | None  # the largest MaxResults, for the list operations

    @classmethod
    def from_model(cls, name: str) -> Operation:
        model = connect_model().operation_model(name)
        members = model.input_shape.members if model.input_shape else {}
        query = {
            member.serialization["name"]: member_name
            for member_name, member in members.items()
            if member.serialization.get("location") == "querystring"
        }
        max_results = members.get("MaxResults")
        return cls(
            name=name,
            method=model.http["method"],
            request_uri=model.http["requestUri"],
            errors=frozenset(shape.name for shape in model.error_shapes),
            query=query,
            list_query=frozenset(n for n in query.values() if members[n].type_name == "list"),
            page_limit=max_results.metadata["max"] if max_results is not None else None,
        )

    def rule(self) -> Rule:
        """The werkzeug rule of the request URI: `{InstanceId}` becomes `<InstanceId>`."""
        path = self.request_uri.split("?", 1)[0]
        pattern = _URI_LABEL.sub(lambda m: f"<{'path:' if m[2] else ''}{m[1]}>", path)
        return Rule(pattern, methods=[self.method], endpoint=self.name)


def error_status(code: str) -> int:
    """The HTTP status botocore's model gives an error shape."""
    if code == UNKNOWN_OPERATION:
        return 404
    return int(connect_model().shape_for(code).metadata["error"]["httpStatusCode"])


class ConnectError(Exception):
    """An error answer: `code` goes into the x-amzn-ErrorType header botocore reads."""

    def __init__(self, code: str, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.problems = problems

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"Message": self.message}
        if self.problems is not None:
            name = "problems" if self.code == "InvalidContactFlowException" else "Problems"
            body[name] = [
                {"message": problem[:PROBLEM_LIMIT]} for problem in self.problems[:MAX_PROBLEMS]
            ]
        return body


def _not_found(kind: str, resource_id: str, where: str = "") -> ConnectError:
    return ConnectError("ResourceNotFoundException", f"{kind} not found: {resource_id}{where}")


@dataclass
class HeldSecurityKey:
    association_id: str
    pem: str
    numbers: rsa.RSAPublicNumbers
    created: float


@dataclass
class Flow:
    """A contact flow or a flow module; they differ on the wire, not in what is kept."""

    id: str
    arn: str
    name: str
    description: str | None
    content: str
    flow_type: str | None = None  # modules have none
    status: str = "PUBLISHED"


@dataclass
class Instance:
    id: str
    arn: str
    account: str
    alias: str | None
    identity_type: str
    inbound: bool
    outbound: bool
    created: float
    keys: dict[str, HeldSecurityKey] = field(default_factory=dict)  # in association order
    tokens: dict[str, tuple[rsa.RSAPublicNumbers, str]] = field(default_factory=dict)
    flows: dict[str, Flow] = field(default_factory=dict)
    modules: dict[str, Flow] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The members InstanceSummary (ListInstances) and Instance (DescribeInstance) share."""
        summary: dict[str, Any] = {
            "Id": self.id,
            "Arn": self.arn,
            "IdentityManagementType": self.identity_type,
            "CreatedTime": self.created,
            # Connect's service-linked role, one per instance.
            "ServiceRole": f"arn:aws:iam::{self.account}:role/aws-service-role/"
            f"connect.amazonaws.com/AWSServiceRoleForAmazonConnect_{self.id.replace('-', '')[:20]}",
            "InstanceStatus": "ACTIVE",
            "InboundCallsEnabled": self.inbound,
            "OutboundCallsEnabled": self.outbound,
        }
        if self.alias:
            summary["InstanceAlias"] = self.alias
            summary["InstanceAccessUrl"] = f"https://{self.alias}.my.connect.aws"
        return summary


class Params:
    """One request's members by model name (JSON body, query string and URI labels merged)."""

    def __init__(
        self, operation: Operation, members: dict[str, Any], region: str, account: str
    ) -> None:
        self.operation = operation
        self.members = members
        self.region = region
        self.account = account

    def required(self, name: str) -> str:
        value = self.members.get(name)
        if not isinstance(value, str):
            raise ConnectError("InvalidRequestException", f"{name} is required (a string)")
        return value

    def optional(self, name: str) -> Any:
        return self.members.get(name)

    def invalid(self, message: str) -> ConnectError:
        """A refused parameter value, as the operation's model lets it be answered."""
        if "InvalidParameterException" in self.operation.errors:
            return ConnectError("InvalidParameterException", message)
        return ConnectError("InvalidRequestException", message)


class ConnectState:
    """Every instance with its keys, flows and modules, by (account, region); each operation
    runs under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partitions: dict[tuple[str, str], dict[str, Instance]] = {}
        self._updates: Counter[tuple[str, str]] = Counter()
        self.operations: dict[str, Callable[[Params], dict[str, Any]]] = {
            "CreateInstance": self._create_instance,
            "ListInstances": self._list_instances,
            "DescribeInstance": self._describe_instance,
            "AssociateSecurityKey": self._associate_security_key,
            "ListSecurityKeys": self._list_security_keys,
            "DisassociateSecurityKey": self._disassociate_security_key,
            "CreateContactFlow": self._create_contact_flow,
            "ListContactFlows": self._list_contact_flows,
            "DescribeContactFlow": self._describe_contact_flow,
            "UpdateContactFlowContent": self._update_contact_flow_content,
            "CreateContactFlowModule": self._create_contact_flow_module,
            "ListContactFlowModules": self._list_contact_flow_modules,
            "DescribeContactFlowModule": self._describe_contact_flow_module,
            "UpdateContactFlowModuleContent": self._update_contact_flow_module_content,
        }

    def handle(self, params: Params) -> dict[str, Any]:
        with self._lock:
            return self.operations[params.operation.name](params)

    def invoke(
        self,
        operation: str,
        members: Mapping[str, Any],
        *,
        account: str = DEFAULT_ACCOUNT,
        region: str = DEFAULT_REGION,
    ) -> dict[str, Any]:
        """Run one operation (`"CreateInstance"`, members by model name) as a request from this
        account and region would, without HTTP: the same handler and the same checks, and the
        same ConnectError a client would get as an error answer."""
        if operation not in self.operations:
            raise ConnectError(UNKNOWN_OPERATION, f"the Connect emulator serves no {operation}")
        return self.handle(Params(operation_named(operation), dict(members), region, account))

    def instances(self) -> list[tuple[str, str, Instance]]:
        """(account, region, instance) of every instance, partition by partition."""
        with self._lock:
            return [
                (account, region, instance)
                for (account, region), held in self._partitions.items()
                for instance in held.values()
            ]

    def reset(self) -> None:
        """Forget everything, in every account and region, as a new sandbox would."""
        with self._lock:
            self._partitions.clear()
            self._updates.clear()

    def update_count(self, instance_id: str, flow_id: str) -> int:
        """How many Update*Content calls named this flow or module, accepted or refused."""
        with self._lock:
            return self._updates[(instance_id, flow_id)]

    def _create_instance(self, p: Params) -> dict[str, Any]:
        identity_type = p.required("IdentityManagementType")
        if identity_type not in IDENTITY_TYPES:
            raise ConnectError(
                "InvalidRequestException", f"unknown IdentityManagementType {identity_type!r}"
            )
        instance_id = str(uuid.uuid4())
        arn = f"arn:aws:connect:{p.region}:{p.account}:instance/{instance_id}"
        held = self._partitions.setdefault((p.account, p.region), {})
        held[instance_id] = Instance(
            id=instance_id,
            arn=arn,
            account=p.account,
            alias=p.optional("InstanceAlias"),
            identity_type=identity_type,
            inbound=bool(p.optional("InboundCallsEnabled")),
            outbound=bool(p.optional("OutboundCallsEnabled")),
            created=time.time(),
        )
        return {"Id": instance_id, "Arn": arn}

    def _list_instances(self, p: Params) -> dict[str, Any]:
        instances, next_token = _page(list(self._held(p).values()), p)
        listed = [instance.summary() for instance in instances]
        return _with_token({"InstanceSummaryList": listed}, next_token)

    def _describe_instance(self, p: Params) -> dict[str, Any]:
        return {"Instance": self._instance(p).summary()}

    def _associate_security_key(self, p: Params) -> dict[str, Any]:
        instance = self._instance(p)
        pem = p.required("Key")
        numbers = _public_key_numbers(pem, p)
        token = p.optional("ClientToken")
        if isinstance(token, str) and token in instance.tokens:
            first_numbers, first_id = instance.tokens[token]
            if first_numbers != numbers:
                raise ConnectError(
                    "ResourceConflictException", "ClientToken was already used with another key"
                )
            if first_id in instance.keys:
                return {"AssociationId": first_id}
        for key in instance.keys.values():
            if key.numbers == numbers:
                raise ConnectError(
                    "ResourceConflictException",
                    f"this public key is already associated as {key.association_id}",
                )
        if len(instance.keys) >= MAX_SECURITY_KEYS:
            raise ConnectError(
                "ServiceQuotaExceededException",
                f"instance {instance.id} already has {MAX_SECURITY_KEYS} security keys",
            )
        association_id = str(uuid.uuid4())
        instance.keys[association_id] = HeldSecurityKey(association_id, pem, numbers, time.time())
        if isinstance(token, str):
            instance.tokens[token] = (numbers, association_id)
        return {"AssociationId": association_id}

    def _list_security_keys(self, p: Params) -> dict[str, Any]:
        keys, next_token = _page(list(self._instance(p).keys.values()), p)
        listed = [
            {"AssociationId": k.association_id, "Key": k.pem, "CreationTime": k.created}
            for k in keys
        ]
        return _with_token({"SecurityKeys": listed}, next_token)

    def _disassociate_security_key(self, p: Params) -> dict[str, Any]:
        instance = self._instance(p)
        association_id = p.required("AssociationId")
        if instance.keys.pop(association_id, None) is None:
            raise _not_found("Security key", association_id, f" in instance {instance.id}")
        return {}

    def _create_contact_flow(self, p: Params) -> dict[str, Any]:
        instance = self._instance(p)
        flow_type = p.required("Type")
        if flow_type not in FLOW_TYPES:
            raise p.invalid(f"unknown flow Type {flow_type!r}")
        status = p.optional("Status") or "PUBLISHED"
        if status not in FLOW_STATUSES:
            raise p.invalid(f"unknown flow Status {status!r}")
        flow = self._create(
            instance, instance.flows, p, "contact-flow", "InvalidContactFlowException"
        )
        flow.flow_type = flow_type
        flow.status = status
        return {"ContactFlowId": flow.id, "ContactFlowArn": flow.arn}

    def _list_contact_flows(self, p: Params) -> dict[str, Any]:
        types = p.optional("ContactFlowTypes")
        flows = [f for f in self._instance(p).flows.values() if not types or f.flow_type in types]
        page, next_token = _page(flows, p)
        summaries = [
            {
                "Id": f.id,
                "Arn": f.arn,
                "Name": f.name,
                "ContactFlowType": f.flow_type,
                "ContactFlowState": "ACTIVE",
                "ContactFlowStatus": f.status,
            }
            for f in page
        ]
        return _with_token({"ContactFlowSummaryList": summaries}, next_token)

    def _describe_contact_flow(self, p: Params) -> dict[str, Any]:
        instance = self._instance(p)
        flow = _find(instance.flows, p.required("ContactFlowId"), "Contact flow", instance)
        described = _described(flow)
        described["Type"] = flow.flow_type
        described["Status"] = flow.status
        return {"ContactFlow": described}

    def _update_contact_flow_content(self, p: Params) -> dict[str, Any]:
        instance = self._instance(p)
        flow = _find(instance.flows, p.required("ContactFlowId"), "Contact flow", instance)
        self._updates[(instance.id, flow.id)] += 1
        content = p.required("Content")
        _check_content(content, instance, "InvalidContactFlowException")
        flow.content = content
        return {}

    def _create_contact_flow_module(self, p: Params) -> dict[str, Any]:
        instance = self._instance(p)
        module = self._create(
            instance, instance.modules, p, "flow-module", "InvalidContactFlowModuleException"
        )
        return {"Id": module.id, "Arn": module.arn}

    def _list_contact_flow_modules(self, p: Params) -> dict[str, Any]:
        # Every module here is ACTIVE, so a filter for ARCHIVED ones finds none.
        archived = p.optional("ContactFlowModuleState") == "ARCHIVED"
        modules = [] if archived else list(self._instance(p).modules.values())
        page, next_token = _page(modules, p)
        summaries = [{"Id": m.id, "Arn": m.arn, "Name": m.name, "State": "ACTIVE"} for m in page]
        return _with_token({"ContactFlowModulesSummaryList": summaries}, next_token)

    def _describe_contact_flow_module(self, p: Params) -> dict[str, Any]:
        instance = self._instance(p)
        module = _find(instance.modules, p.required("ContactFlowModuleId"), "Flow module", instance)
        described = _described(module)
        described["Status"] = "PUBLISHED"
        return {"ContactFlowModule": described}

    def _update_contact_flow_module_content(self, p: Params) -> dict[str, Any]:
        instance = self._instance(p)
        module = _find(instance.modules, p.required("ContactFlowModuleId"), "Flow module", instance)
        self._updates[(instance.id, module.id)] += 1
        # Content is optional in the model: a call may change only the module's Settings.
        content = p.optional("Content")
        if content is not None:
            _check_content(content, instance, "InvalidContactFlowModuleException")
            module.content = content
        return {}

    def _instance(self, p: Params) -> Instance:
        instance_id = p.required("InstanceId")
        # Only the caller's partition is searched: an instance of another account or region is
        # not found, whatever its ID (Connect never answers AccessDenied for it).
        instance = self._held(p).get(instance_id)
        if instance is None:
            raise _not_found("Instance", instance_id)
        return instance

    def _held(self, p: Params) -> Mapping[str, Instance]:
        """The instances of the request's account and region."""
        return self._partitions.get((p.account, p.region), {})

    @staticmethod
    def _create(
        instance: Instance, flows: dict[str, Flow], p: Params, arn_kind: str, error_code: str
    ) -> Flow:
        name = p.required("Name")
        if any(flow.name == name for flow in flows.values()):
            raise ConnectError("DuplicateResourceException", f"a {arn_kind} named {name!r} exists")
        content = p.required("Content")
        _check_content(content, instance, error_code)
        flow_id = str(uuid.uuid4())
        flows[flow_id] = Flow(
            id=flow_id,
            arn=f"{instance.arn}/{arn_kind}/{flow_id}",
            name=name,
            description=p.optional("Description"),
            content=content,
        )
        return flows[flow_id]


class ConnectEmulator:
    """The WSGI application; `state` is the in-memory Connect it serves, `account_of` names the
    account a request comes from (by default, moto's default account for every request)."""

    def __init__(
        self,
        state: ConnectState | None = None,
        *,
        account_of: Callable[[WSGIEnvironment], str] = default_account,
    ) -> None:
        self.state = state or ConnectState()
        self.account_of = account_of
        self.operations = {name: operation_named(name) for name in self.state.operations}
        self._routes = Map([operation.rule() for operation in self.operations.values()])

    def reset(self) -> None:
        self.state.reset()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        try:
            params = self._params(request)
            response = _json_response(200, self.state.handle(params))
        except ConnectError as error:
            response = _error_response(error)
        return response(environ, start_response)

    def _params(self, request: Request) -> Params:
        try:
            name, labels = self._routes.bind_to_environ(request.environ).match()
        except HTTPException:
            raise ConnectError(
                UNKNOWN_OPERATION, f"the Connect emulator serves no {request.method} {request.path}"
            ) from None
        operation = self.operations[str(name)]
        members: dict[str, Any] = {}
        body = request.get_data()
        if body:
            try:
                members = json.loads(body)
            except ValueError:
                raise ConnectError("InvalidRequestException", "the body is not JSON") from None
            if not isinstance(members, dict):
                raise ConnectError("InvalidRequestException", "the body is not a JSON object")
        for wire_name, member_name in operation.query.items():
            values = request.args.getlist(wire_name)
            if values:
                listed = member_name in operation.list_query
                members[member_name] = values if listed else values[0]
        members.update(labels)
        scope = credential_scope(request.environ)
        region = scope[0] if scope else DEFAULT_REGION
        return Params(operation, members, region, self.account_of(request.environ))


def _json_response(status: int, body: dict[str, Any]) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
    return response


def _error_response(error: ConnectError) -> Response:
    response = _json_response(error_status(error.code), error.body())
    response.headers["x-amzn-ErrorType"] = error.code
    return response


def _page(items: list[T], p: Params) -> tuple[list[T], str | None]:
    """One page and the token of the next; tokens are offsets, opaque to clients."""
    limit = p.operation.page_limit
    assert limit is not None, f"{p.operation.name} takes no MaxResults"
    try:
        size = int(p.optional("MaxResults") or limit)
        start = int(p.optional("NextToken") or 0)
    except ValueError:
        raise p.invalid("MaxResults or NextToken is not valid") from None
    if not 1 <= size <= limit:
        raise p.invalid(f"MaxResults must be 1 to {limit}")
    if not 0 <= start <= len(items):
        raise p.invalid("NextToken is not valid")
    end = start + size
    return items[start:end], str(end) if end < len(items) else None


def _with_token(body: dict[str, Any], next_token: str | None) -> dict[str, Any]:
    if next_token is not None:
        body["NextToken"] = next_token
    return body


def _find(flows: dict[str, Flow], flow_id: str, kind: str, instance: Instance) -> Flow:
    flow = flows.get(flow_id)
    if flow is None:
        raise _not_found(kind, flow_id, f" in instance {instance.id}")
    return flow


def _described(flow: Flow) -> dict[str, Any]:
    described: dict[str, Any] = {
        "Arn": flow.arn,
        "Id": flow.id,
        "Name": flow.name,
        "State": "ACTIVE",
        "Content": flow.content,
    }
    if flow.description is not None:
        described["Description"] = flow.description
    return described


def _public_key_numbers(pem: str, p: Params) -> rsa.RSAPublicNumbers:
    if len(pem) > PEM_LIMIT:
        raise p.invalid(f"Key is {len(pem)} characters; a security key PEM has at most {PEM_LIMIT}")
    try:
        public_key = serialization.load_pem_public_key(pem.encode("utf-8"))
    except (ValueError, UnsupportedAlgorithm):
        raise p.invalid("Key is not a PEM public key") from None
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise p.invalid("Key is not an RSA public key")
    return public_key.public_numbers()


def _check_content(content: str, instance: Instance, error_code: str) -> None:
    problems = _content_problems(content, instance.keys)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ConnectError(error_code, f"content is not valid: {problems[0]}{more}", problems)


def _content_problems(content: str, keys: Mapping[str, HeldSecurityKey]) -> list[str]:
    try:
        document = json.loads(content)
    except ValueError:
        return ["content is not JSON"]
    if not isinstance(document, dict):
        return ["content is not a JSON object"]
    problems = []
    if document.get("Version") != FLOW_LANGUAGE_VERSION:
        problems.append(f"Version must be {FLOW_LANGUAGE_VERSION!r}")
    actions = document.get("Actions")
    if not isinstance(actions, list):
        return [*problems, "Actions must be a list"]
    identifiers: set[str] = set()
    for index, action in enumerate(actions):
        problems.extend(_action_problems(index, action, identifiers, keys))
    start = document.get("StartAction")
    if not isinstance(start, str) or start not in identifiers:
        problems.append(f"StartAction {start!r} does not name an action")
    for action in actions:
        transitions = action.get("Transitions") if isinstance(action, dict) else None
        if isinstance(transitions, dict):
            problems.extend(
                f"action {action.get('Identifier')!r}: NextAction {target!r} names no action"
                for target in _next_actions(transitions)
                if not isinstance(target, str) or target not in identifiers
            )
    return problems


def _action_problems(
    index: int, action: Any, identifiers: set[str], keys: Mapping[str, HeldSecurityKey]
) -> list[str]:
    if not isinstance(action, dict):
        return [f"Actions[{index}] is not an object"]
    identifier = action.get("Identifier")
    label = f"action {identifier!r}" if isinstance(identifier, str) else f"Actions[{index}]"
    problems = []
    if not isinstance(identifier, str) or not identifier:
        problems.append(f"{label}: Identifier must be a non-empty string")
    elif identifier in identifiers:
        problems.append(f"{label}: Identifier is not unique")
    else:
        identifiers.add(identifier)
    action_type = action.get("Type")
    if not isinstance(action_type, str):
        problems.append(f"{label}: Type must be a string")
    if not isinstance(action.get("Transitions"), dict):
        problems.append(f"{label}: Transitions must be an object")
    parameters = action.get("Parameters")
    if "Parameters" in action or action_type not in PARAMETERLESS_ACTIONS:
        if not isinstance(parameters, dict):
            problems.append(f"{label}: Parameters must be an object")
        elif action_type == "GetParticipantInput" and "InputEncryption" in parameters:
            problems.extend(f"{label}: {p}" for p in _encryption_problems(parameters, keys))
    return problems


def _encryption_problems(
    parameters: dict[str, Any], keys: Mapping[str, HeldSecurityKey]
) -> list[str]:
    problems = []
    if parameters.get("StoreInput") not in STORE_INPUT_VALUES:
        problems.append('InputEncryption needs StoreInput "True"')
    if not _stops_touchtone_buffer(parameters):
        validation = parameters.get("InputValidation")
        if not (
            isinstance(validation, dict)
            and isinstance(validation.get("CustomValidation"), dict)
            and "PhoneNumberValidation" not in validation
        ):
            problems.append(
                "InputEncryption may only be given with InputValidation.CustomValidation"
            )
    encryption = parameters["InputEncryption"]
    if not isinstance(encryption, dict):
        return [*problems, "InputEncryption must be an object"]
    key_id, certificate_pem = encryption.get("EncryptionKeyId"), encryption.get("Key")
    key = None
    if not _is_dynamic(key_id):
        key = keys.get(key_id) if isinstance(key_id, str) else None
        if key is None:
            return [*problems, f"EncryptionKeyId {key_id!r} is not a security key of this instance"]
    if _is_dynamic(certificate_pem):
        return problems
    try:
        certificate = x509.load_pem_x509_certificate(str(certificate_pem).encode("utf-8"))
        public_key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return [*problems, "Key is not a PEM X.509 certificate"]
    if not isinstance(public_key, rsa.RSAPublicKey):
        problems.append("Key is not a certificate for an RSA key")
    elif key is not None and public_key.public_numbers() != key.numbers:
        problems.append(f"Key is not a certificate for security key {key_id}")
    return problems


def _stops_touchtone_buffer(parameters: dict[str, Any]) -> bool:
    """The Set Touchtone Buffer Behavior block's Stop-and-Clear mode (EnableDTMFBuffer false)."""
    return str(parameters.get("EnableDTMFBuffer", "")).lower() == "false"


def _is_dynamic(value: Any) -> bool:
    """A value "defined dynamically": one JSONPath reference, resolved when a contact runs."""
    return isinstance(value, str) and _JSONPATH.fullmatch(value) is not None


def _next_actions(transitions: dict[str, Any]) -> list[Any]:
    """Every NextAction of a Transitions object: the default, each error and each condition."""
    targets = [transitions["NextAction"]] if "NextAction" in transitions else []
    for branch in ("Errors", "Conditions"):
        entries = transitions.get(branch)
        if isinstance(entries, list):
            targets.extend(
                e["NextAction"] for e in entries if isinstance(e, dict) and "NextAction" in e
            )
    return targets
