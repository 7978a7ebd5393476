"""Inflating a compressed Celery body without letting a bomb inflate whole.

kombu decompresses a ``compression`` header's body in one call: a 1 MB
message can inflate to gigabytes. Here the stdlib decompressors are asked
for at most ``max_bytes + 1`` bytes, so a body over the size limit is
refused (``too_large``) having cost no more memory than the limit. kombu's
names for the codecs are accepted (``application/x-gzip``/``gzip``/``zlib``,
``application/x-bz2``/``bzip2``, ``application/x-lzma``/``lzma``/``xz``);
any other compression is ``bad_content_type``.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable

from plugin_server.exceptions import InvalidMessage

_Decompressor = Callable[[], "zlib._Decompress | bz2.BZ2Decompressor | lzma.LZMADecompressor"]

_DECOMPRESSORS: dict[str, _Decompressor] = {
    "application/x-gzip": zlib.decompressobj,
    "gzip": zlib.decompressobj,
    "zlib": zlib.decompressobj,
    "application/x-bz2": bz2.BZ2Decompressor,
    "bzip2": bz2.BZ2Decompressor,
    "bzip": bz2.BZ2Decompressor,
    "application/x-lzma": lzma.LZMADecompressor,
    "lzma": lzma.LZMADecompressor,
    "xz": lzma.LZMADecompressor,
}


def inflate(data: bytes, compression: str, max_bytes: int) -> bytes:
    """``data`` decompressed, or :class:`InvalidMessage` (``too_large``, ``bad_body``, ``bad_content_type``)."""
    make = _DECOMPRESSORS.get(compression)
    if make is None:
        raise InvalidMessage("bad_content_type", f"compression {compression[:40]!r} is not accepted")
    decompressor = make()
    try:
        out = decompressor.decompress(data, max_bytes + 1)
    except (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError) as error:
        raise InvalidMessage("bad_body", f"compressed body cannot be inflated: {error}") from error
    if len(out) > max_bytes:
        raise InvalidMessage("too_large", f"compressed body inflates to more than the limit of {max_bytes} bytes")
    return out
