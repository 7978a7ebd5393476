"""Answers that cross the worker pipe as plain data and become objects in the worker.

Free of Django imports: the worker builds these from what the main process
sends back, so a plugin gets a familiar object while the pipe carries only
JSON-able values and bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class FetchResponse:
    """What ``meta.fetch`` returns to a plugin: a small ``requests``-like response.

    ``status`` / ``status_code``, ``ok``, ``url``, ``headers`` (a plain dict,
    names lower-cased), ``content`` (bytes), ``text`` and ``json()``.
    """

    __slots__ = ("status", "ok", "url", "headers", "content", "encoding")

    def __init__(self, status: int, ok: bool, url: str, headers: Mapping[str, str], content: bytes, encoding: str | None) -> None:
        self.status = status
        self.ok = ok
        self.url = url
        self.headers = {name.lower(): value for name, value in headers.items()}
        self.content = content
        self.encoding = encoding

    @classmethod
    def from_wire(cls, answer: Mapping[str, Any]) -> FetchResponse:
        """Build from the dict :func:`plugin_server.plugins.meta.fetch.PluginFetch.fetch` returns."""
        return cls(
            status=int(answer["status"]),
            ok=bool(answer["ok"]),
            url=str(answer["url"]),
            headers=dict(answer["headers"]),
            content=bytes(answer["content"]),
            encoding=answer.get("encoding"),
        )

    @property
    def status_code(self) -> int:
        return self.status

    @property
    def text(self) -> str:
        return self.content.decode(self.encoding or "utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.text)

    def __repr__(self) -> str:
        return f"<FetchResponse [{self.status}]>"
