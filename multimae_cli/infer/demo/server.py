"""The demo's web server: one page and a small JSON API, on the standard library's threading HTTP server.

No web framework: the page is one file of HTML and JavaScript (`page.html`) that talks to four endpoints,
so the demo needs nothing beyond the core install. Loopback unless the caller passes another host.

    GET  /                         the page
    GET  /api/info                 the checkpoint: inputs, outputs, examples, limits
    POST /api/example?name=N       an example's images, kept under ids
    POST /api/upload?modality=M    a file's bytes (`&name=` for messages), kept under an id
    POST /api/predict              JSON: {"images": {modality: id}, "visible": {...} | "dirichlet": {...}, "seed"}

POSTs carry `Content-Type: application/json` or `application/octet-stream` (types a page on another site cannot
send without the browser asking first); on loopback the `Host` must be a loopback name. Errors are JSON
`{"error": "one line"}` with a 4xx status (500 for a failure of the server itself); the page shows the line.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse, urlsplit

from ...errors import InputError, MultiMAEError

PAGE = Path(__file__).with_name("page.html")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
ACCEPTED_TYPES = ("application/json", "application/octet-stream")
MAX_JSON_BYTES = 100_000
DRAIN_BYTES = 256_000_000


class Demo(Protocol):
    """What the server asks of the engine (`engine.Demo`); its errors are `MultiMAEError`s."""

    max_upload_bytes: int

    def info(self) -> dict[str, Any]: ...
    def example(self, name: str) -> dict[str, Any]: ...
    def upload(self, modality: str, data: bytes, filename: str) -> dict[str, Any]: ...
    def predict(self, request: dict[str, Any]) -> dict[str, Any]: ...


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, demo: Demo | None, host: str, port: int, quiet: bool = True) -> None:
        self.demo, self.quiet = demo, quiet  # None until loaded: the socket is taken first, so a busy port fails fast
        self.page = PAGE.read_bytes()
        self.loopback = host in LOOPBACK
        if ":" in host:
            self.address_family = socket.AF_INET6
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            raise InputError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                             "pass another --port (0 picks a free one)") from None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def host_allowed(self, header: str | None) -> bool:
        """On loopback, only requests addressed to a loopback name: a page elsewhere that makes the browser
        resolve its own name to 127.0.0.1 (DNS rebinding) is refused."""
        if not self.loopback:
            return True
        try:
            return urlsplit(f"//{header or ''}").hostname in LOOPBACK
        except ValueError:
            return False


class _Handler(BaseHTTPRequestHandler):
    server: DemoServer
    server_version = "multimae-demo"
    timeout = 60  # seconds a client may take to send its request

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except Exception as exc:  # a bug, or the machine (out of memory): one line in the page, the server goes on
            sys.stderr.write(f"demo: {self.path}: {type(exc).__name__}: {exc}\n")
            if not self.wfile.closed:
                with contextlib.suppress(OSError):
                    self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

    def do_GET(self) -> None:
        if not self.server.host_allowed(self.headers.get("Host")):
            self._json(HTTPStatus.FORBIDDEN, {"error": "this demo answers requests to a loopback name only"})
            return
        path = urlparse(self.path).path
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/api/info":
            self._json(HTTPStatus.OK, self.server.demo.info())
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}"})

    def do_POST(self) -> None:
        if not self.server.host_allowed(self.headers.get("Host")):
            self._drain(self._length())
            self._json(HTTPStatus.FORBIDDEN, {"error": "this demo answers requests to a loopback name only"})
            return
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind not in ACCEPTED_TYPES:  # so another site's page cannot post here without the browser asking first
            self._drain(self._length())
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": f"requests of type {kind or 'none'} are not "
                                                                    f"accepted ({' or '.join(ACCEPTED_TYPES)})"})
            return
        url = urlparse(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        demo = self.server.demo
        try:
            if url.path == "/api/upload":
                body = self._body(demo.max_upload_bytes, query.get("name", "the file"))
                answer = demo.upload(query.get("modality", demo.info()["primary"]), body, query.get("name", "upload"))
            elif url.path == "/api/example":
                self._body(0, "an example request")
                answer = demo.example(query.get("name", ""))
            elif url.path == "/api/predict":
                answer = demo.predict(self._request())
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {url.path}"})
                return
        except _TooLarge as exc:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": str(exc)})
        except MultiMAEError as exc:  # a bad request or file: the page shows the line
            self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(exc)})
        else:
            self._json(HTTPStatus.OK, answer)

    def _body(self, limit: int, what: str) -> bytes:
        """The request body, refused unread when its declared length is over `limit`."""
        length = self._length()
        if length < 0 or length > limit:
            self._drain(length)
            raise _TooLarge(f"{what}: {max(length, 0) / 1e6:.1f} MB is over the upload limit of {limit / 1e6:.1f} MB")
        return self.rfile.read(length)

    def _length(self) -> int:
        """The declared body length; -1 when it is not a number."""
        try:
            return int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return -1

    def _drain(self, length: int) -> None:
        """Read a refused body away (so the client, still sending, gets the answer), up to DRAIN_BYTES; past
        that, or of unknown length, the connection is closed after the answer."""
        self.close_connection = True
        left = length if 0 <= length <= DRAIN_BYTES else 0
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)

    def _request(self) -> dict[str, Any]:
        try:
            request = json.loads(self._body(MAX_JSON_BYTES, "the request") or b"{}")
        except ValueError as exc:
            raise InputError(f"the request is not JSON ({exc})") from None
        if not isinstance(request, dict):
            raise InputError("the request must be a JSON object")
        return request

    def _json(self, status: HTTPStatus, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


class _TooLarge(Exception):
    pass


def serve(demo: Demo | Callable[[], Demo], host: str = "127.0.0.1", port: int = 7860, quiet: bool = True,
          ready: Callable[[str], None] | None = None) -> None:
    """Serve `demo` (or what `demo()` loads once the port is taken) until interrupted; `ready(url)` is called
    when the page can be opened."""
    with DemoServer(None, host, port, quiet) as server:
        server.demo = demo() if callable(demo) else demo
        if ready is not None:
            ready(server.url)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
