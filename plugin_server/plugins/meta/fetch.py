"""``meta.fetch``: the only network a plugin gets, served in the main process.

Outbound HTTP with ``requests``, bounded on every side: http and https only;
a wall-clock deadline for the whole exchange (``PLUGIN_FETCH_TIMEOUT``, which
a plugin may shorten, never lengthen); a response body of at most
``PLUGIN_FETCH_MAX_RESPONSE_BYTES``; at most 5 redirects; no proxies from
the environment. Unless ``PLUGIN_FETCH_ALLOW_PRIVATE_NETWORKS`` is set, a
connection to a loopback, private, link-local or otherwise non-public
address is refused, for every redirect hop too. The check is made before
connecting, on every address the name resolves to (so a plugin cannot tell
a closed internal port from an open one), and again on the socket actually
connected (so a name that resolves differently the second time, DNS
rebinding, gains nothing).
"""

from __future__ import annotations

import http.cookiejar
import ipaddress
import json as jsonlib
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

import plugin_server
from plugin_server.config import get_config
from plugin_server.exceptions import MetaCallError
from plugin_server.plugins.meta.context import PluginContext

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_REDIRECTS = 5
_CHUNK_BYTES = 65_536
_UNSET: Any = object()


class BlockedAddress(Exception):
    """A connection reached a non-public address. Not an OSError on purpose:
    urllib3 would wrap an OSError into a retryable connection error."""


def is_public_address(address: str) -> bool:
    """True for an address on the public internet."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _refuse_non_public_host(host: str, port: int) -> None:
    # Checked before connecting, so that "connection refused" from an internal
    # port never reaches a plugin (no port scanning through fetch).
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return  # the connect that follows reports the name error
    for info in infos:
        address = str(info[4][0])
        if not is_public_address(address):
            raise BlockedAddress(address)


def _refuse_non_public_peer(sock: socket.socket) -> socket.socket:
    # Checked again on the socket actually connected: the name may have
    # resolved differently this time (DNS rebinding).
    peer = sock.getpeername()[0]
    if not is_public_address(peer):
        sock.close()
        raise BlockedAddress(peer)
    return sock


class _PublicHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        _refuse_non_public_host(self._dns_host, self.port)
        return _refuse_non_public_peer(super()._new_conn())


class _PublicHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        _refuse_non_public_host(self._dns_host, self.port)
        return _refuse_non_public_peer(super()._new_conn())


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class _PublicOnlyAdapter(HTTPAdapter):
    """An adapter whose connections refuse non-public peers."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """The bounds of one fetch."""

    timeout: float
    max_response_bytes: int
    allow_private_networks: bool

    @classmethod
    def from_settings(cls) -> FetchLimits:
        config = get_config()
        return cls(
            timeout=config.plugin_fetch_timeout,
            max_response_bytes=config.plugin_fetch_max_response_bytes,
            allow_private_networks=config.plugin_fetch_allow_private_networks,
        )


def _session(allow_private_networks: bool) -> requests.Session:
    session = requests.Session()
    # Shared by every plugin for its connection pool (keep-alive, TLS reuse),
    # so it must carry nothing from one plugin to the next: no cookies.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    # The main process's proxy variables are not the plugin's to use.
    session.trust_env = False
    session.max_redirects = MAX_REDIRECTS
    if not allow_private_networks:
        adapter = _PublicOnlyAdapter(max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
    session.headers["User-Agent"] = f"posthog-plugin-server/{getattr(plugin_server, '__version__', 'dev')}"
    return session


def _check_request(url: object, method: object, headers: object) -> tuple[str, str, dict[str, str]]:
    if not isinstance(url, str) or urlsplit(url).scheme.lower() not in ("http", "https") or not urlsplit(url).hostname:
        raise MetaCallError(f"fetch: only http and https URLs can be fetched, not {str(url)[:200]!r}")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise MetaCallError(f"fetch: unsupported method {method!r}")
    if headers is None:
        headers = {}
    if not isinstance(headers, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise MetaCallError("fetch: headers must be a dict of strings")
    return url, method.upper(), dict(headers)


class PluginFetch:
    """Serves ``meta.fetch``. ``limits`` None reads the settings on every call."""

    def __init__(self, limits: FetchLimits | None = None) -> None:
        self._limits = limits
        self._sessions: dict[bool, requests.Session] = {}
        self._lock = threading.Lock()

    def _session_for(self, limits: FetchLimits) -> requests.Session:
        with self._lock:
            session = self._sessions.get(limits.allow_private_networks)
            if session is None:
                session = self._sessions[limits.allow_private_networks] = _session(limits.allow_private_networks)
            return session

    def close(self) -> None:
        """Close pooled connections."""
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()

    def fetch(
        self,
        ctx: PluginContext,
        url: str,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        json: Any = _UNSET,
        data: str | bytes | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Run one request; the answer is rebuilt as a FetchResponse in the worker."""
        limits = self._limits or FetchLimits.from_settings()
        url, method, headers = _check_request(url, method, headers)
        body = self._body(json, data, headers, limits)
        seconds = limits.timeout
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
                raise MetaCallError(f"fetch: timeout must be a positive number of seconds, not {timeout!r}")
            seconds = min(float(timeout), limits.timeout)
        deadline = time.monotonic() + seconds
        session = self._session_for(limits)
        try:
            response = session.request(method, url, headers=headers, data=body, timeout=seconds, stream=True)
            with response:
                content = self._read(response, deadline, limits, url)
                return {
                    "status": response.status_code,
                    "ok": response.ok,
                    "url": response.url,
                    "headers": dict(response.headers),
                    "content": content,
                    "encoding": response.encoding,
                }
        except BlockedAddress as error:
            raise MetaCallError(f"fetch {url}: refused, {error} is not a public address") from None
        except (requests.Timeout, urllib3.exceptions.TimeoutError):
            raise MetaCallError(f"fetch {url}: timed out after {seconds:g} s") from None
        except requests.TooManyRedirects:
            raise MetaCallError(f"fetch {url}: more than {MAX_REDIRECTS} redirects") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as error:
            raise MetaCallError(f"fetch {url}: {type(error).__name__}: {_reason(error)}") from None

    @staticmethod
    def _body(json: Any, data: str | bytes | None, headers: dict[str, str], limits: FetchLimits) -> bytes | None:
        if json is not _UNSET and data is not None:
            raise MetaCallError("fetch: pass json or data, not both")
        body: bytes | None
        if json is not _UNSET:
            try:
                body = jsonlib.dumps(json, separators=(",", ":"), ensure_ascii=False).encode()
            except (TypeError, ValueError) as error:
                raise MetaCallError(f"fetch: json body is not JSON-serialisable: {error}") from None
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(data, str):
            body = data.encode()
        elif data is None or isinstance(data, bytes):
            body = data
        else:
            raise MetaCallError("fetch: data must be str or bytes")
        if body is not None and len(body) > limits.max_response_bytes:
            raise MetaCallError(f"fetch: request body larger than {limits.max_response_bytes} bytes")
        return body

    @staticmethod
    def _read(response: requests.Response, deadline: float, limits: FetchLimits, url: str) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limits.max_response_bytes:
            raise MetaCallError(f"fetch {url}: response larger than {limits.max_response_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            # read1 returns what has arrived (up to the chunk size) instead of waiting
            # for a full chunk, so the deadline is checked as bytes trickle in.
            chunk = response.raw.read1(_CHUNK_BYTES, decode_content=True)
            if not chunk:
                break
            size += len(chunk)
            if size > limits.max_response_bytes:
                raise MetaCallError(f"fetch {url}: response larger than {limits.max_response_bytes} bytes")
            # requests' timeout is per socket read; a server dripping bytes must still stop.
            if time.monotonic() > deadline:
                raise requests.Timeout()
            chunks.append(chunk)
        return b"".join(chunks)


def _reason(error: BaseException) -> str:
    # requests nests urllib3's reason a few levels deep; the innermost says what happened.
    while error.__context__ is not None and not isinstance(error.__context__, BlockedAddress):
        error = error.__context__
    return str(error)[:300]
