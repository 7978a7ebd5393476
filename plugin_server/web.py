"""Health and readiness over HTTP, on WEB_HOSTNAME:WEB_PORT unless DISABLE_WEB.

- ``GET /_health``: 200 while the process runs (liveness).
- ``GET /_ready``: 200 while the consumer loop went round in the last
  ``stale_after`` seconds and the server is not stopping, else 503 (for a
  load balancer or Kubernetes readiness probe).

The original had no routes at v0.21.3; these are the port's. A stdlib
threading server on a daemon thread: two tiny GETs need no framework.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger(__name__)


class HealthServer:
    """Answers /_health and /_ready; ``ready()`` says whether the server is ready."""

    def __init__(self, host: str, port: int, ready: Callable[[], bool]) -> None:
        self._ready = ready
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- the stdlib's name
                if self.path == "/_health":
                    self._answer(200, {"status": "ok"})
                elif self.path == "/_ready":
                    is_ready = server._ready()
                    self._answer(200 if is_ready else 503, {"status": "ready" if is_ready else "not ready"})
                else:
                    self._answer(404, {"status": "not found"})

            def _answer(self, status: int, body: dict[str, str]) -> None:
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
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="web", daemon=True)
        self._thread.start()
        logger.info("web: health and readiness on port %d", self.port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
