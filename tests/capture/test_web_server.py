"""run_plugin_server's own web server passing requests to a WSGI application (CAPTURE_ENABLED)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import requests

from plugin_server.web import HealthServer


def echo_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    answer = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}?{environ['QUERY_STRING']} {environ.get('HTTP_X_THING', '-')} {environ['REMOTE_ADDR']} ".encode() + body
    start_response("201 Created", [("Content-Type", "text/plain"), ("Content-Length", str(len(answer)))])
    return [answer]


@pytest.fixture
def web() -> Iterator[str]:
    server = HealthServer("127.0.0.1", 0, lambda: True, app=echo_app)
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


def test_health_routes_stay_and_everything_else_goes_to_the_app(web: str) -> None:
    """/_health is the server's; any other path and method reaches the WSGI app with its query, headers and body."""
    assert requests.get(web + "/_health", timeout=5).json() == {"status": "ok"}
    answer = requests.post(web + "/e/?ver=1", data=b"payload", headers={"X-Thing": "yes"}, timeout=5)
    assert (answer.status_code, answer.text) == (201, "POST /e/?ver=1 yes 127.0.0.1 payload")
    assert requests.options(web + "/flags/", timeout=5).text.startswith("OPTIONS /flags/")


def test_a_keep_alive_client_never_finds_its_connection_closed(web: str) -> None:
    """The server closes each connection after its answer and says so (HTTP/1.0): a pooling client
    (requests, as in the posthog SDK) opens a new one instead of reusing a closed one."""
    session = requests.Session()
    for number in range(50):
        answer = session.post(web + "/batch/", data=str(number), timeout=5)
        assert answer.status_code == 201
        assert answer.raw.version == 10
