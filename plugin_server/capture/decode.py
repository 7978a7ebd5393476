"""Request body → JSON payload, the ways PostHog's SDKs have sent it since 2020.

Where the data is (as PostHog's capture looked for it):

- POST with content type ``application/json``, ``text/plain`` or none: the
  raw body (posthog-python, posthog-js' ``fetch``/``sendBeacon``);
- POST form-encoded: the ``data`` field (older posthog-js), unless the body
  is JSON itself (``curl -d '{...}'`` says form-encoded);
- GET: the ``data`` query parameter (image pixels, old clients).

How it is packed: ``compression`` (query, then form field, then the
``Content-Encoding`` header) = ``gzip`` or ``gzip-js`` (gzip), ``lz64``
(posthog-js' lz-string, base64 alphabet, spaces standing for ``+``), else
none, except that a raw body starting with gzip's magic bytes is gunzipped
(today's posthog-js sends ``/e/`` gzipped without saying so); then, when the text does not start like JSON, base64 (plain JSON is
not tried as base64, which PostHog's capture did and so now and then turned
valid JSON into garbage). ``NaN`` and ``Infinity`` become ``null``.

Decompressed payloads are bounded by the same byte limit as bodies, so a
small gzip bomb is refused rather than inflated.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import orjson
from lzstring import LZString

from plugin_server.capture.errors import CaptureError, invalid_payload, too_large

RAW_BODY_TYPES = frozenset({"", "text/plain", "application/json"})
GZIP_NAMES = frozenset({"gzip", "gzip-js"})
GZIP_MAGIC = b"\x1f\x8b"
_JSON_START = frozenset(b"{[")
_GZIP_WBITS = 16 + zlib.MAX_WBITS


@dataclass(frozen=True, slots=True)
class RawRequest:
    """What decoding needs of an HTTP request (no Django in here)."""

    method: str
    query: Mapping[str, str]  # the first value of each query parameter
    content_type: str  # lower case, without parameters
    content_encoding: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Payload:
    """The decoded JSON (``None`` when the request carried no data) and the form fields."""

    data: object
    form: Mapping[str, str] = field(default_factory=dict)


def decode_request(request: RawRequest, max_bytes: int) -> Payload:
    """The request's payload; raises :class:`CaptureError` (``invalid_payload``, 413)."""
    form: dict[str, str] = {}
    data: bytes | str | None
    if request.method == "POST":
        if request.content_type in RAW_BODY_TYPES:
            data = request.body
        elif _looks_like_json(request.body):
            data = request.body  # JSON sent with a form's content type (``curl -d '{...}'``)
        else:
            form = _form_fields(request.body)
            data = form.get("data")
    else:
        data = request.query.get("data")
    if not data:
        return Payload(None, form)
    compression = (request.query.get("compression") or form.get("compression") or request.content_encoding).lower()
    if compression in GZIP_NAMES or (not compression and isinstance(data, bytes) and data.startswith(GZIP_MAGIC)):
        data = gunzip(_as_bytes(data), max_bytes)
    elif compression == "lz64":
        data = lz64(_as_text(data))
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    return Payload(parse_json(data), form)


def _form_fields(body: bytes) -> dict[str, str]:
    # Form bodies are ASCII (percent-encoded); a first value per name, as request.POST.get did.
    fields: dict[str, str] = {}
    for name, value in parse_qsl(body.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="surrogateescape"):
        fields.setdefault(name, value)
    return fields


def _as_bytes(data: bytes | str) -> bytes:
    # Binary data in a form field or query arrives as latin-1-decoded text.
    return data if isinstance(data, bytes) else data.encode("latin-1", "replace")


def _as_text(data: bytes | str) -> str:
    return data if isinstance(data, str) else data.decode("latin-1")


def gunzip(data: bytes, max_bytes: int) -> bytes:
    """Every gzip member of ``data``, at most ``max_bytes`` of output."""
    out = bytearray()
    rest = data
    try:
        while rest:
            inflater = zlib.decompressobj(_GZIP_WBITS)
            out += inflater.decompress(rest, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise too_large(max_bytes)
            if not inflater.eof:
                raise invalid_payload("Failed to decompress data. Compressed file ended before the end-of-stream marker was reached")
            rest = inflater.unused_data.lstrip(b"\0")
    except zlib.error as error:
        raise invalid_payload(f"Failed to decompress data. {error}") from None
    return bytes(out)


def lz64(data: str) -> str:
    """posthog-js' lz-string ``compressToBase64`` undone."""
    try:
        text = LZString().decompressFromBase64(data.replace(" ", "+"))
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        text = None
    if not text:
        raise invalid_payload("Failed to decompress data.")
    return str(text)


def _looks_like_json(data: bytes | str) -> bool:
    head = (data[:64].lstrip() if isinstance(data, bytes) else data[:64].lstrip().encode())[:1]
    return bool(head) and head[0] in _JSON_START


def _unbase64(data: bytes | str) -> bytes | None:
    text = data if isinstance(data, str) else data.decode("latin-1")
    try:
        return base64.b64decode(text.strip().replace(" ", "+") + "===")
    except (binascii.Error, ValueError):
        return None


def parse_json(data: bytes | str) -> object:
    """JSON (or base64 of JSON) → Python; ``NaN``/``Infinity`` → ``None``."""
    if not _looks_like_json(data):
        decoded = _unbase64(data)
        if decoded is not None and _looks_like_json(decoded):
            data = decoded
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass  # NaN, Infinity, lone surrogates: the standard library's parser takes them
    try:
        text = data if isinstance(data, str) else data.decode("utf-8", "surrogatepass")
        return json.loads(text, parse_constant=lambda _name: None)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise invalid_payload(f"Invalid JSON: {error}") from None


__all__ = ["CaptureError", "Payload", "RawRequest", "decode_request", "gunzip", "lz64", "parse_json"]
