"""`rotator sandbox`: moto and the Connect emulator behind one loopback HTTP endpoint."""

from __future__ import annotations

import json
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
from rotator.sandbox.connect_emulator import ConnectEmulator, credential_scope

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto accepts any credentials; these only have to exist so that no real ones are looked up.
DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "sandbox",
    "AWS_SECRET_ACCESS_KEY": "sandbox",  # noqa: S105 - a dummy, not a secret
}
MOTO_SERVICES = "SSM, KMS, S3, SNS, CloudWatch, EventBridge, Scheduler"
RESET_PATH = "/moto-api/reset"  # moto's own reset endpoint; the emulator is reset with it


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

    def environment(self) -> dict[str, str]:
        """What a process needs to use the sandbox through boto3's standard variables."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_DEFAULT_REGION": REGION, **DUMMY_CREDENTIALS}

    def reset(self) -> None:
        """Empty every service, as a fresh sandbox is."""
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

    emulator = ConnectEmulator()
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
            out.flush()
            stopping.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
