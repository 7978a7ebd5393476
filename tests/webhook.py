"""A local HTTP endpoint that answers slowly and records what it was asked: an export target for tests."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class RecordingWebhook:
    """``url``; ``seen``: the paths asked for, in answer order; ``delay``: seconds per answer (``/slow...``: ``slow_delay``)."""

    def __init__(self, delay: float, slow_delay: float) -> None:
        self.url = ""
        self.seen: list[str] = []
        self.delay = delay
        self.slow_delay = slow_delay


@contextlib.contextmanager
def recording_webhook(delay: float = 0.1, slow_delay: float = 3.0) -> Iterator[RecordingWebhook]:
    hook = RecordingWebhook(delay, slow_delay)

    class Answer(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            time.sleep(hook.slow_delay if path.startswith("/slow") else hook.delay)
            hook.seen.append(path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    hook.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield hook
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def webhook() -> Iterator[RecordingWebhook]:
    """A recording webhook answering in 100 ms (set ``delay`` to change it); import it into a test module."""
    with recording_webhook() as hook:
        yield hook
