"""`rotator sandbox`: moto and the Connect emulator behind one loopback HTTP endpoint.

Accounts and regions. moto keeps its state per account and region, and so does the Connect
emulator, by the same rule: a request is in the region of its SigV4 credential scope and in the
account moto would give it (`moto_account`: the `MOTO_ACCOUNT_ID` variable, else an
`x-moto-account-id` header, else the account of its access key, which for credentials from STS
AssumeRole is the role's account; any other key is moto's default account 123456789012). So a
fleet runs in one sandbox: assume `arn:aws:iam::ACCOUNT:role/NAME` (moto lets the default account
assume a role of any account, whether or not it exists) and every client made with those
credentials sees only that account's SSM, KMS, ... and Connect instances.

Seeding a fleet, in Python (an in-process sandbox, as the tests and benches have):

- `Sandbox.add_instance(alias, *, account=DEFAULT_ACCOUNT, region=REGION) -> PaymentInstance`:
  a Connect instance with the payment flow and card-capture module (as `create_payment_instance`
  makes over the wire), in that account and region, in-process (no HTTP, the same checks);
- `Sandbox.session(*, account=DEFAULT_ACCOUNT, region=REGION) -> boto3.Session`: clients of it
  act in that account (assumed-role credentials) and region;
- `Sandbox.environment(*, account=DEFAULT_ACCOUNT, region=REGION)`: the same as environment
  variables, for a child process.

Over HTTP (a `rotator sandbox` in another process), unsigned, like the clock:

- `POST /_sandbox/instances {"alias": A, "account": ACCOUNT, "region": REGION}` (account and
  region optional) answers `{"Account", "Region", "InstanceId", "InstanceArn", "FlowId",
  "ModuleId"}`;
- `GET /_sandbox/instances` lists every instance: `{"Instances": [{"Account", "Region",
  "InstanceId", "InstanceArn", "Alias"}]}`.

The simulated clock and the reset are the sandbox's, not an account's: time is the same in every
account, and moto's reset empties every account.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import sys
import threading
import urllib.request
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from werkzeug.serving import BaseWSGIServer, make_server

from rotator.clock import SANDBOX_CLOCK_MARK, SANDBOX_CLOCK_PATH
from rotator.sandbox.connect_emulator import (
    DEFAULT_ACCOUNT,
    ConnectEmulator,
    ConnectError,
    credential_scope,
)
from rotator.sandbox.sample_flows import (
    PaymentInstance,
    decrypt_lambda_arn,
    payment_flow_content,
    payment_module_content,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from boto3 import Session

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto accepts any credentials; these only have to exist so that no real ones are looked up.
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "sandbox",
    "AWS_SECRET_ACCESS_KEY": "sandbox",  # noqa: S105 - a dummy, not a secret
}
MOTO_SERVICES = "SSM, KMS, S3, SNS, CloudWatch, EventBridge, Scheduler"
RESET_PATH = "/moto-api/reset"  # moto's own reset endpoint; the emulator is reset with it
INSTANCES_PATH = "/_sandbox/instances"  # seeds and lists Connect instances of any account
# The role `Sandbox.session` assumes in another account; moto needs no such role to exist.
SANDBOX_ROLE = "sandbox-account-access"
_ACCOUNT = re.compile(r"\d{12}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")


def moto_account(environ: WSGIEnvironment) -> str:
    """The account moto gives this request, by moto's own rule (its `get_current_account`: the
    MOTO_ACCOUNT_ID variable, the x-moto-account-id header, the access key's account)."""
    from moto.core.responses import BaseResponse
    from werkzeug.datastructures import EnvironHeaders

    response = BaseResponse(service_name="connect")
    response.headers = EnvironHeaders(environ)
    response.querystring = {}
    return response.get_current_account()


class SimulatedClock:
    """Real time plus an offset that only the sandbox's owner moves (the demo, tests, curl);
    `stand_at` stops it at one moment, so that tests can name exact times."""

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._standing: datetime | None = None
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._standing or datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            if self._standing is not None:
                self._standing += delta
            else:
                self._offset += delta
        return self.now()

    def stand_at(self, moment: datetime) -> None:
        with self._lock:
            self._standing = moment

    def reset(self) -> None:
        with self._lock:
            self._offset = timedelta(0)
            self._standing = None

    def answer(self) -> dict[str, str | bool]:
        with self._lock:
            moved = self._standing is not None or self._offset != timedelta(0)
        return {"service": SANDBOX_CLOCK_MARK, "now": self.now().isoformat(), "simulated": moved}


class SandboxApp:
    """Requests signed for service `connect` go to the emulator, every other one to moto; the
    simulated clock answers on its own path."""

    def __init__(
        self, emulator: ConnectEmulator, moto_app: WSGIApplication, clock: SimulatedClock
    ) -> None:
        self.emulator = emulator
        self.moto_app = moto_app
        self.clock = clock

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        scope = credential_scope(environ)
        if scope is not None and scope[1] == "connect":
            return self.emulator(environ, start_response)
        if environ.get("PATH_INFO") == SANDBOX_CLOCK_PATH:
            return self._clock(environ, start_response)
        if environ.get("PATH_INFO") == INSTANCES_PATH:
            return self._instances(environ, start_response)
        if environ.get("PATH_INFO") == RESET_PATH and environ.get("REQUEST_METHOD") == "POST":
            self.emulator.state.reset()
            self.clock.reset()
        return self.moto_app(environ, start_response)

    def _clock(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """GET: the simulated time. POST {"advance_days": N} moves it forward; POST
        {"stand_at": ISO 8601} stops it at that moment (tests name exact times); POST
        {"real_time": true} puts it back on real time."""
        status = "200 OK"
        if environ.get("REQUEST_METHOD") == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = json.loads(environ["wsgi.input"].read(min(length, 4096)))
                if body.get("real_time") is True:
                    self.clock.reset()
                elif "stand_at" in body:
                    moment = datetime.fromisoformat(str(body["stand_at"]))
                    self.clock.stand_at(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
                else:
                    days = float(body["advance_days"])
                    if not 0 <= days <= 36500:
                        raise ValueError(days)
                    self.clock.advance(timedelta(days=days))
            except (ValueError, KeyError, TypeError, AttributeError):
                status = "400 Bad Request"
        body = json.dumps(self.clock.answer()).encode()
        start_response(status, [("Content-Type", "application/json")])
        return [body]

    def _instances(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """POST {"alias", "account", "region"}: a payment instance in that partition; GET: every
        instance of every partition."""
        status = "200 OK"
        answer: dict[str, Any]
        if environ.get("REQUEST_METHOD") == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = json.loads(environ["wsgi.input"].read(min(length, 4096)))
                answer = add_payment_instance(
                    self.emulator,
                    str(body["alias"]),
                    account=str(body.get("account", DEFAULT_ACCOUNT)),
                    region=str(body.get("region", REGION)),
                )
            except (ValueError, KeyError, TypeError, AttributeError, ConnectError) as error:
                status, answer = "400 Bad Request", {"Message": _refusal(error)}
        else:
            answer = {
                "Instances": [
                    {
                        "Account": account,
                        "Region": region,
                        "InstanceId": instance.id,
                        "InstanceArn": instance.arn,
                        "Alias": instance.alias,
                    }
                    for account, region, instance in self.emulator.state.instances()
                ]
            }
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]


def _refusal(error: Exception) -> str:
    if isinstance(error, ConnectError):
        return f"{error.code}: {error.message}"
    return "give a JSON object with alias (and account: 12 digits, region: like eu-west-2)"


def add_payment_instance(
    emulator: ConnectEmulator, alias: str, *, account: str, region: str
) -> dict[str, str]:
    """A Connect instance with the payment flow and card-capture module in one partition, made
    through the emulator's own handlers (as `create_payment_instance` makes it over the wire)."""
    if not _ACCOUNT.fullmatch(account) or not _REGION.fullmatch(region):
        raise ValueError((account, region))
    state = emulator.state
    where = {"account": account, "region": region}
    lambda_arn = decrypt_lambda_arn(account, region)
    instance = state.invoke(
        "CreateInstance",
        {
            "IdentityManagementType": "CONNECT_MANAGED",
            "InstanceAlias": alias,
            "InboundCallsEnabled": True,
            "OutboundCallsEnabled": False,
        },
        **where,
    )
    flow = state.invoke(
        "CreateContactFlow",
        {
            "InstanceId": instance["Id"],
            "Name": "Payment IVR",
            "Type": "CONTACT_FLOW",
            "Content": payment_flow_content(None, None, lambda_arn=lambda_arn),
        },
        **where,
    )
    module = state.invoke(
        "CreateContactFlowModule",
        {
            "InstanceId": instance["Id"],
            "Name": "Card capture",
            "Content": payment_module_content(None, None, lambda_arn=lambda_arn),
        },
        **where,
    )
    return {
        "Account": account,
        "Region": region,
        "InstanceId": instance["Id"],
        "InstanceArn": instance["Arn"],
        "FlowId": flow["ContactFlowId"],
        "ModuleId": module["Id"],
    }


class Sandbox:
    """A running sandbox; stop it (or leave its `with` block) to release the port.

    The emulator's state belongs to this sandbox; moto's is process-wide (moto keeps one set of
    backends per process), so two sandboxes in one process share SSM, KMS and the rest.
    """

    def __init__(
        self, server: BaseWSGIServer, emulator: ConnectEmulator, clock: SimulatedClock
    ) -> None:
        self.emulator = emulator
        self.clock = clock
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="sandbox", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.port)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def environment(
        self, *, account: str = DEFAULT_ACCOUNT, region: str = REGION
    ) -> dict[str, str]:
        """What a process needs to use the sandbox through boto3's standard variables, acting in
        this account (moto's default: dummy credentials; another: assumed-role ones) and region."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_DEFAULT_REGION": region,
            **self.credentials(account),
        }

    def credentials(self, account: str = DEFAULT_ACCOUNT) -> dict[str, str]:
        """Environment-variable credentials that moto and the emulator take for this account:
        the default account's dummy ones, or those of `SANDBOX_ROLE` in `account`, assumed from
        the default account (moto lets it assume a role of any account). Not cached: a reset
        makes moto forget assumed roles, and their keys would then act in the default account,
        so ask again after one."""
        if account == DEFAULT_ACCOUNT:
            return dict(DUMMY_CREDENTIALS)
        if not _ACCOUNT.fullmatch(account):
            raise ValueError(f"an AWS account ID is 12 digits, not {account!r}")
        import boto3

        sts = boto3.client(
            "sts",
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        assumed = sts.assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/{SANDBOX_ROLE}", RoleSessionName="sandbox"
        )["Credentials"]
        return {
            "AWS_ACCESS_KEY_ID": assumed["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": assumed["SecretAccessKey"],
            "AWS_SESSION_TOKEN": assumed["SessionToken"],
        }

    def session(self, *, account: str = DEFAULT_ACCOUNT, region: str = REGION) -> Session:
        """A boto3 session acting in this account and region; give its clients
        `endpoint_url=sandbox.url` (or set AWS_ENDPOINT_URL)."""
        import boto3

        credentials = self.credentials(account)
        return boto3.Session(
            aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=credentials.get("AWS_SESSION_TOKEN"),
            region_name=region,
        )

    def add_instance(
        self, alias: str, *, account: str = DEFAULT_ACCOUNT, region: str = REGION
    ) -> PaymentInstance:
        """A Connect instance with the payment flow and card-capture module (their card-number
        blocks not yet encrypting), in this account and region; in-process, so a fleet of a
        thousand is seeded in moments."""
        created = add_payment_instance(self.emulator, alias, account=account, region=region)
        return PaymentInstance(created["InstanceId"], created["FlowId"], created["ModuleId"])

    def reset(self) -> None:
        """Empty every service in every account, as a fresh sandbox is."""
        # S310: the URL is this sandbox's own http://127.0.0.1 address, never user input.
        request = urllib.request.Request(self.url + RESET_PATH, method="POST")  # noqa: S310
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310
            pass

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_sandbox(port: int = 0, *, log_requests: bool = False) -> Sandbox:
    """Serve on 127.0.0.1:port (0: a free port) from a background thread, holding nothing.

    Requests are logged only with `log_requests` (the foreground `rotator sandbox`); the demo
    and tests would drown in them. Raises OSError if the port cannot be bound.
    """
    try:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
    except ImportError:
        raise SystemExit(
            "the sandbox needs moto with its server extra: pip install 'moto[server]'"
        ) from None

    class RequestHandler(MotoRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if log_requests:
                super().log_request(code, size)

    emulator = ConnectEmulator(account_of=moto_account)
    clock = SimulatedClock()
    app = SandboxApp(emulator, DomainDispatcherApplication(create_backend_app), clock)
    # Bound here, not by werkzeug, which answers a busy port with sys.exit().
    listener = socket.create_server((HOST, port))
    try:
        server = make_server(
            HOST,
            listener.getsockname()[1],
            app,
            threaded=True,
            request_handler=RequestHandler,
            fd=listener.fileno(),
        )
    finally:
        listener.close()  # the server holds its own duplicate of the socket
    return Sandbox(server, emulator, clock)


def run_sandbox(port: int, out: TextIO) -> int:
    """Serve in the foreground until SIGINT or SIGTERM, after printing how to use it."""
    try:
        sandbox = start_sandbox(port, log_requests=True)
    except OSError as error:
        print(f"error: cannot listen on {HOST}:{port}: {error.strerror}", file=sys.stderr)
        return 1
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous: dict[signal.Signals, Any] = {
        sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with sandbox:
            for name, value in sandbox.environment().items():
                out.write(f"export {name}={shlex.quote(value)}\n")
            out.write(
                f"# sandbox on {sandbox.url}: moto ({MOTO_SERVICES}) and the Connect emulator, "
                "empty until you create something; Ctrl-C stops it and forgets everything\n"
            )
            out.write(
                f"# simulated clock (rotator commands run at its time, and say so): "
                f"curl -d '{{\"advance_days\": 30}}' {sandbox.url}{SANDBOX_CLOCK_PATH}\n"
            )
            out.write(
                "# a payment instance in another account and region (assume "
                f"arn:aws:iam::ACCOUNT:role/{SANDBOX_ROLE} to see it): curl -d "
                f'\'{{"alias": "payments-b", "account": "111111111111", '
                f'"region": "eu-west-2"}}\' {sandbox.url}{INSTANCES_PATH}\n'
            )
            out.flush()
            stopping.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
