"""A local HTTP endpoint that stands in for Sentry's ingest: it keeps the events sentry-sdk sends.

The SDK posts envelopes (one JSON header line, then item header and payload
lines; gzip- or brotli-compressed) to ``/api/<project>/envelope/``. The
collector decodes them and keeps every event payload.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import brotli


class SentryCollector:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 -- the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = self.headers.get("Content-Encoding")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "br":
                    body = brotli.decompress(body)
                collector._keep(body)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- the stdlib's name
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.dsn = f"http://publickey@127.0.0.1:{self._httpd.server_address[1]}/1"

    def _keep(self, envelope: bytes) -> None:
        for line in envelope.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and "level" in item and ("message" in item or "exception" in item or "logentry" in item):
                with self._lock:
                    self.events.append(item)

    def messages(self) -> list[str]:
        """Each event's message (a captured message, a log line, or the exception's text)."""
        with self._lock:
            events = list(self.events)
        texts = []
        for event in events:
            logentry = event.get("logentry") or {}
            text = event.get("message") or logentry.get("formatted") or logentry.get("message")
            if not text and event.get("exception"):
                value = event["exception"]["values"][-1]
                text = f"{value.get('type')}: {value.get('value')}"
            texts.append(str(text))
        return texts

    def find(self, fragment: str) -> dict[str, Any] | None:
        with self._lock:
            events = list(self.events)
        for event, text in zip(events, self.messages()):
            if fragment in text:
                return event
        return None


@contextmanager
def sentry_collector() -> Iterator[SentryCollector]:
    collector = SentryCollector()
    thread = threading.Thread(target=collector._httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        collector._httpd.shutdown()
        collector._httpd.server_close()
