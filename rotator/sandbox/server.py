"""`rotator sandbox`: moto and the Connect emulator behind one loopback HTTP endpoint."""

from __future__ import annotations

import shlex
import signal
import socket
import sys
import threading
import urllib.request
from collections.abc import Iterable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from werkzeug.serving import BaseWSGIServer, make_server

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


class SandboxApp:
    """Requests signed for service `connect` go to the emulator, every other one to moto."""

    def __init__(self, emulator: ConnectEmulator, moto_app: WSGIApplication) -> None:
        self.emulator = emulator
        self.moto_app = moto_app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        scope = credential_scope(environ)
        if scope is not None and scope[1] == "connect":
            return self.emulator(environ, start_response)
        if environ.get("PATH_INFO") == RESET_PATH and environ.get("REQUEST_METHOD") == "POST":
            self.emulator.state.reset()
        return self.moto_app(environ, start_response)


class Sandbox:
    """A running sandbox; stop it (or leave its `with` block) to release the port.

    The emulator's state belongs to this sandbox; moto's is process-wide (moto keeps one set of
    backends per process), so two sandboxes in one process share SSM, KMS and the rest.
    """

    def __init__(self, server: BaseWSGIServer, emulator: ConnectEmulator) -> None:
        self.emulator = emulator
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
    app = SandboxApp(emulator, DomainDispatcherApplication(create_backend_app))
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
    return Sandbox(server, emulator)


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
            out.flush()
            stopping.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
