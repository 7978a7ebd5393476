"""meta.fetch against a real local HTTP server started by the test."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import override_settings

from plugin_server.exceptions import MetaCallError
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.fetch import FetchLimits, PluginFetch, is_public_address
from plugin_server.plugins.meta.wire import FetchResponse

CTX = PluginContext(plugin_config_id=39, plugin_id=60, team_id=2, plugin_name="test-maxmind-plugin")
RESULTS = {"count": 2, "query": "bla", "results": [True, True]}


class Recorder(BaseHTTPRequestHandler):
    """Answers by path; records every request it received."""

    received: list[tuple[str, str, dict[str, str], bytes]] = []

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def _record(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.received.append((self.command, self.path, dict(self.headers), body))
        return body

    def do_POST(self) -> None:
        body = self._record()
        self._answer(200, body, "application/json")

    def do_GET(self) -> None:
        self._record()
        if self.path.startswith("/results.json"):
            self._answer(200, json.dumps(RESULTS).encode(), "application/json")
        elif self.path == "/big":
            self._answer(200, b"x" * 2048, "text/plain")
        elif self.path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(4):
                self.wfile.write(b"200\r\n" + b"y" * 512 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/slow":
            time.sleep(1.5)
            self._answer(200, b"late", "text/plain")
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b".")
                self.wfile.flush()
                time.sleep(0.05)
        elif self.path.startswith("/redirect/"):
            left = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", f"/redirect/{left - 1}" if left else "/results.json")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path in ("/gzip", "/gzip-bomb"):
            plain = json.dumps(RESULTS).encode() if self.path == "/gzip" else b"0" * 1_000_000
            body = gzip.compress(plain)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/set-cookie":
            self.send_response(200)
            self.send_header("Set-Cookie", "session=secret-of-plugin-a; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/peer":
            self._answer(200, str(self.client_address[1]).encode(), "text/plain")
        elif self.path == "/latin1":
            self._answer(200, "café".encode("latin-1"), "text/plain; charset=iso-8859-1")
        else:
            self._answer(404, b"not here", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that gave up (timeout, size limit) breaks the pipe: expected here.
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.received = []
    httpd = QuietServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


LOCAL = FetchLimits(timeout=5.0, max_response_bytes=1024, allow_private_networks=True)


def test_get_json(server: str) -> None:
    """It fetches a URL and the worker-side response gives status, headers, text and json()."""
    answer = PluginFetch(LOCAL).fetch(CTX, f"{server}/results.json?query=fetched")
    response = FetchResponse.from_wire(answer)
    assert (response.status, response.status_code, response.ok) == (200, 200, True)
    assert response.json() == RESULTS
    assert response.headers["content-type"] == "application/json"
    assert Recorder.received[0][:2] == ("GET", "/results.json?query=fetched")


def test_answer_crosses_the_pipe_as_plain_data(server: str) -> None:
    """It answers with JSON-able values and bytes only."""
    answer = PluginFetch(LOCAL).fetch(CTX, f"{server}/results.json")
    assert set(answer) == {"status", "ok", "url", "headers", "content", "encoding"}
    assert isinstance(answer["content"], bytes)
    json.dumps({key: value for key, value in answer.items() if key != "content"})


def test_post_json_with_headers(server: str) -> None:
    """It sends a JSON body with its content type and the plugin's headers."""
    PluginFetch(LOCAL).fetch(CTX, f"{server}/echo", method="post", headers={"X-Token": "abc"}, json={"a": [1]})
    method, _, headers, body = Recorder.received[0]
    assert method == "POST"
    assert body == b'{"a":[1]}'
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Token"] == "abc"


def test_no_cookies_carried_between_calls(server: str) -> None:
    """It keeps no cookie a server set: the next call (maybe another plugin's) sends none."""
    fetch = PluginFetch(LOCAL)
    fetch.fetch(CTX, f"{server}/set-cookie")
    fetch.fetch(CTX, f"{server}/results.json")
    assert "Cookie" not in Recorder.received[1][2]


def test_connections_are_reused(server: str) -> None:
    """It keeps connections alive between calls (one TCP connection for two requests)."""
    Recorder.protocol_version = "HTTP/1.1"
    try:
        fetch = PluginFetch(LOCAL)
        ports = {fetch.fetch(CTX, f"{server}/peer")["content"] for _ in range(3)}
        fetch.close()
    finally:
        Recorder.protocol_version = "HTTP/1.0"
    assert len(ports) == 1


def test_not_found_is_an_answer(server: str) -> None:
    """It returns a 404 as a response (ok False), not an error."""
    response = FetchResponse.from_wire(PluginFetch(LOCAL).fetch(CTX, f"{server}/missing"))
    assert (response.status, response.ok, response.text) == (404, False, "not here")


def test_text_uses_the_declared_charset(server: str) -> None:
    """It decodes text with the charset the server declared."""
    assert FetchResponse.from_wire(PluginFetch(LOCAL).fetch(CTX, f"{server}/latin1")).text == "café"


def test_redirects_followed_up_to_five(server: str) -> None:
    """It follows up to five redirects and refuses a longer chain."""
    response = FetchResponse.from_wire(PluginFetch(LOCAL).fetch(CTX, f"{server}/redirect/4"))
    assert response.json() == RESULTS
    with pytest.raises(MetaCallError, match="more than 5 redirects"):
        PluginFetch(LOCAL).fetch(CTX, f"{server}/redirect/9")


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
def test_response_size_is_bounded(server: str, path: str) -> None:
    """It refuses a body above the limit, whether announced by Content-Length or chunked."""
    with pytest.raises(MetaCallError, match="response larger than 1024 bytes"):
        PluginFetch(LOCAL).fetch(CTX, f"{server}{path}")


def test_compressed_body_is_decoded(server: str) -> None:
    """It decodes a gzip-encoded body."""
    assert FetchResponse.from_wire(PluginFetch(LOCAL).fetch(CTX, f"{server}/gzip")).json() == RESULTS


def test_decompression_bomb_is_bounded(server: str) -> None:
    """It counts the size limit on decoded bytes, so a small gzip of a huge body is refused."""
    with pytest.raises(MetaCallError, match="response larger than 1024 bytes"):
        PluginFetch(LOCAL).fetch(CTX, f"{server}/gzip-bomb")


def test_slow_server_times_out(server: str) -> None:
    """It gives up on a server that does not answer within the timeout the plugin asked for."""
    started = time.monotonic()
    with pytest.raises(MetaCallError, match="timed out after 0.3 s"):
        PluginFetch(LOCAL).fetch(CTX, f"{server}/slow", timeout=0.3)
    assert time.monotonic() - started < 1.4


def test_dripping_server_stops_at_the_deadline(server: str) -> None:
    """It stops a response that keeps dribbling bytes past the whole-request deadline."""
    limits = FetchLimits(timeout=0.5, max_response_bytes=1024, allow_private_networks=True)
    started = time.monotonic()
    with pytest.raises(MetaCallError, match="timed out"):
        PluginFetch(limits).fetch(CTX, f"{server}/drip")
    assert time.monotonic() - started < 2


def test_plugin_cannot_raise_the_timeout(server: str) -> None:
    """It caps a plugin's timeout at the server's limit."""
    limits = FetchLimits(timeout=0.3, max_response_bytes=1024, allow_private_networks=True)
    with pytest.raises(MetaCallError, match="timed out after 0.3 s"):
        PluginFetch(limits).fetch(CTX, f"{server}/slow", timeout=60)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "0.0.0.0"])
def test_loopback_is_refused_by_default(server: str, host: str) -> None:
    """It refuses loopback addresses (by IP or by name) unless the setting allows them; nothing reaches the server."""
    port = server.rsplit(":", 1)[1]
    strict = FetchLimits(timeout=2.0, max_response_bytes=1024, allow_private_networks=False)
    with pytest.raises(MetaCallError, match=r"refused|Connection"):
        PluginFetch(strict).fetch(CTX, f"http://{host}:{port}/results.json")
    assert Recorder.received == []


def test_settings_decide_by_default(server: str) -> None:
    """It reads its limits from the settings: private networks off by default, on when allowed."""
    with pytest.raises(MetaCallError, match="127.0.0.1 is not a public address"):
        PluginFetch().fetch(CTX, f"{server}/results.json")
    with override_settings(PLUGIN_FETCH_ALLOW_PRIVATE_NETWORKS=True):
        assert PluginFetch().fetch(CTX, f"{server}/results.json")["status"] == 200


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2a00:1450:4001::1", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("224.0.0.1", False),
    ],
)
def test_public_address_check(address: str, public: bool) -> None:
    """It tells public addresses from loopback, private, link-local (cloud metadata), shared and mapped ones."""
    assert is_public_address(address) is public


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "file:///etc/passwd"}, "only http and https"),
        ({"url": "ftp://example.com/x"}, "only http and https"),
        ({"url": "gopher://127.0.0.1:6379/_FLUSHALL"}, "only http and https"),
        ({"url": "http://"}, "only http and https"),
        ({"url": 42}, "only http and https"),
        ({"url": "http://example.com", "method": "TRACE"}, "unsupported method"),
        ({"url": "http://example.com", "headers": {"a": 1}}, "dict of strings"),
        ({"url": "http://example.com", "json": {1, 2}}, "not JSON-serialisable"),
        ({"url": "http://example.com", "json": {}, "data": "x"}, "not both"),
        ({"url": "http://example.com", "data": "x" * 2000}, "request body larger"),
        ({"url": "http://example.com", "timeout": -1}, "positive number"),
    ],
)
def test_bad_requests_are_refused_before_sending(kwargs: dict[str, object], message: str) -> None:
    """It refuses a bad URL, scheme, method, header or body with a clear error, sending nothing."""
    with pytest.raises(MetaCallError, match=message):
        PluginFetch(LOCAL).fetch(CTX, **kwargs)  # type: ignore[arg-type]


def test_connection_refused_is_a_clear_error() -> None:
    """It reports a server that is not there as a fetch error naming the URL."""
    with pytest.raises(MetaCallError, match=r"fetch http://127.0.0.1:1/: ConnectionError"):
        PluginFetch(LOCAL).fetch(CTX, "http://127.0.0.1:1/")
