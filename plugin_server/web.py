"""Health and readiness over HTTP, on WEB_HOSTNAME:WEB_PORT unless DISABLE_WEB.

- ``GET /_health``: 200 while the process runs (liveness).
- ``GET /_ready``: 200 while every service of the server is running and
  healthy (the consumer's loop went round recently, the scheduler's thread
  is alive, ...) and the server is not stopping, else 503. The body names
  each service with its state, restarts, last crash and current problem::

      {"status": "ready", "mode": "all",
       "services": {"consumer": {"state": "running", "restarts": 0}, ...}}

- With ``app`` (a WSGI application), every other request goes to it:
  ``run_plugin_server`` passes Django's when ``CAPTURE_ENABLED``, so that one
  command is a complete standalone server (PostHog's SDKs send to it, the
  consumer in the same process ingests; docs/capture.md).

The original had no routes at v0.21.3; these are the port's. A stdlib
threading server run by a supervised service: two tiny GETs need no
framework. Other parts may mount extra routes with :meth:`HealthServer.route`.
A busy capture endpoint is better served by a WSGI server of its own
(gunicorn with ``settings.wsgi``), scaled apart from ingestion.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, TYPE_CHECKING, Any, cast
from urllib.parse import unquote
from wsgiref.handlers import SimpleHandler

from django.db import connections

from plugin_server.service import Service

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)

# A readiness answer: (ready?, body fields such as the services' health).
Readiness = Callable[[], "bool | tuple[bool, dict[str, Any]]"]
# A mounted route: handler(request) answers the request itself.
RouteHandler = Callable[[BaseHTTPRequestHandler], None]

# How long handle_request blocks before the loop looks at the stop flag.
POLL_SECONDS = 0.5


class HealthServer(Service):
    """Answers /_health and /_ready; ``ready()`` says whether the server is ready (and why)."""

    name = "web"

    def __init__(self, host: str, port: int, ready: Readiness, app: WSGIApplication | None = None) -> None:
        super().__init__()
        self._ready = ready
        self._app = app
        self._host = host
        self._routes: dict[tuple[str, str], RouteHandler] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- the stdlib's name
                path = self.path.split("?", 1)[0]
                if path == "/_health":
                    self._answer(200, {"status": "ok"})
                elif path == "/_ready":
                    is_ready, details = server.readiness()
                    self._answer(200 if is_ready else 503, {"status": "ready" if is_ready else "not ready", **details})
                elif not server._dispatch("GET", path, self):
                    self._answer(404, {"status": "not found"})

            def do_POST(self) -> None:  # noqa: N802 -- the stdlib's name
                if not server._dispatch("POST", self.path.split("?", 1)[0], self):
                    self._answer(404, {"status": "not found"})

            def do_OPTIONS(self) -> None:  # noqa: N802 -- the stdlib's name (CORS preflight)
                if not server._dispatch("OPTIONS", self.path.split("?", 1)[0], self):
                    self._answer(404, {"status": "not found"})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- the stdlib's name
                logger.debug("web: " + format, *args)

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._httpd.timeout = POLL_SECONDS

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def route(self, method: str, path: str, handler: RouteHandler) -> None:
        """Mount ``handler`` on ``method path`` (it writes the whole answer)."""
        self._routes[(method.upper(), path)] = handler

    def _dispatch(self, method: str, path: str, request: BaseHTTPRequestHandler) -> bool:
        handler = self._routes.get((method, path))
        if handler is None:
            if self._app is None:
                return False
            self._serve_wsgi(self._app, request)
            return True
        handler(request)
        return True

    def _serve_wsgi(self, app: WSGIApplication, request: BaseHTTPRequestHandler) -> None:
        environ = wsgi_environ(request, self._host, self.port)
        handler = SimpleHandler(request.rfile, cast(IO[bytes], request.wfile), sys.stderr, environ, multithread=True)
        # The server's own HTTP version (1.0: it closes the connection after each answer), not the
        # client's: answering "HTTP/1.1" would invite the client to reuse a connection about to close.
        handler.http_version = request.protocol_version.split("/")[-1]
        try:
            handler.run(app)
        finally:
            # The request's thread ends now: so does any database connection it opened.
            connections.close_all()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        answer = self._ready()
        if isinstance(answer, tuple):
            return answer
        return bool(answer), {}

    def prepare(self) -> None:
        logger.info("web: %s on port %d", "health, readiness and capture" if self._app else "health and readiness", self.port)

    def run(self) -> None:
        # handle_request with a timeout rather than serve_forever: no shutdown() handshake that
        # could wait forever on a loop that is not running (between a crash and its restart).
        while not self.stopping:
            self._httpd.handle_request()

    def cleanup(self) -> None:
        self._httpd.server_close()


def wsgi_environ(request: BaseHTTPRequestHandler, host: str, port: int) -> WSGIEnvironment:
    """The WSGI environment of one request read by the stdlib server (as wsgiref builds it)."""
    path, _, query = request.path.partition("?")
    environ: WSGIEnvironment = {
        "REQUEST_METHOD": request.command,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path, "iso-8859-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": request.request_version,
        "REMOTE_ADDR": request.client_address[0],
        "CONTENT_TYPE": request.headers.get("Content-Type", ""),
        "CONTENT_LENGTH": request.headers.get("Content-Length", ""),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": request.rfile,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers.items():
        key = "HTTP_" + name.upper().replace("-", "_")
        if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH") or "_" in name:
            continue  # a header spelled with "_" could pass for another one
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ
