"""The wire between the main process and a plugin worker.

A frame is a 4-byte big-endian length, one codec byte and the body. The two
directions are deliberately asymmetric:

- main → worker frames are pickled (``P``): the main process is trusted and
  the worker needs to receive bytes (attachments) and Python tuples cheaply;
- worker → main frames must be JSON (``J``): the worker runs untrusted code,
  so the main process never unpickles anything it sends, caps the frame size
  and checks every message's shape before acting on it (:func:`check_reply`).

The worker's progress is not sent over the pipe but written to a small
shared-memory record (:class:`ProgressMarker`): the deadline of the plugin
call it is running and which plugin config and item that call is for. The
main process reads it to spot a hung worker and to know whom to blame
when a worker dies, without costing the worker a system call per plugin
call.
"""

from __future__ import annotations

import json
import mmap
import os
import pickle
import struct
from typing import Any

from plugin_server import json_codec
from plugin_server.exceptions import WorkerDied
from plugin_server.plugins.plain import stdlib_scalar_text

_HEADER = struct.Struct(">IB")
CODEC_PICKLE = ord("P")
CODEC_JSON = ord("J")

# A worker answer larger than this is refused (and the worker replaced): it
# bounds what an untrusted process can make the main process allocate.
MAX_WORKER_FRAME = 64 * 1024 * 1024


class ProtocolError(WorkerDied):
    """A worker sent something that is not a valid frame or message."""


def _read_exactly(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise WorkerDied("the worker closed its pipe")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def send_to_worker(fd: int, message: Any) -> None:
    """Main side: pickle ``message`` (trusted direction) and write one frame."""
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, _HEADER.pack(len(body), CODEC_PICKLE) + body)


def receive_from_main(fd: int) -> Any:
    """Worker side: read one frame written by :func:`send_to_worker`."""
    size, codec = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    body = _read_exactly(fd, size)
    if codec != CODEC_PICKLE:
        raise ProtocolError(f"unexpected codec {codec!r} from the main process")
    return pickle.loads(body)


def send_to_main(fd: int, message: dict[str, Any]) -> None:
    """Worker side: JSON-encode ``message`` and write one frame.

    Everything in a message is plain data already (plugin values were copied
    by :mod:`plugin_server.plugins.plain` inside the plugin's time limit); the
    ``default`` hook only knows exact standard-library scalars (a date in an
    event the main process sent), so nothing here calls into a plugin object.
    """
    body = json.dumps(message, separators=(",", ":"), default=_scalar_text).encode("utf-8")
    _write_all(fd, _HEADER.pack(len(body), CODEC_JSON) + body)


def _scalar_text(value: Any) -> str:
    text = stdlib_scalar_text(value)
    if text is None:
        raise TypeError(f"a {type(value).__name__} cannot cross to the main process")
    return text


def receive_from_worker(fd: int) -> dict[str, Any]:
    """Main side: read one JSON frame, refusing pickles and oversized frames."""
    size, codec = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    if codec != CODEC_JSON:
        raise ProtocolError(f"the worker sent a frame with codec {codec!r}; only JSON is accepted")
    if size > MAX_WORKER_FRAME:
        raise ProtocolError(f"the worker sent a frame of {size} bytes (limit {MAX_WORKER_FRAME})")
    try:
        message = json_codec.loads(_read_exactly(fd, size))
    except ValueError as error:
        raise ProtocolError(f"the worker sent invalid JSON: {error}") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ProtocolError("the worker sent a message that is not an object with a type")
    return message


def check_reply(condition: bool, what: str) -> None:
    """Raise :class:`ProtocolError` unless a worker message has the expected shape."""
    if not condition:
        raise ProtocolError(f"malformed message from the worker: {what}")


class ProgressMarker:
    """What a worker is doing now, in 24 bytes of shared memory.

    Fields: the monotonic deadline of the running step (a plugin call, or
    the worker's own bookkeeping between calls), the plugin config id whose
    call is running (0 when none) and the index of the item it works on.
    ``time.monotonic()`` is CLOCK_MONOTONIC on Linux, the same clock in every
    process, so the main process can compare the deadline with its own time.
    """

    _LAYOUT = struct.Struct("=dqq")
    SIZE = _LAYOUT.size

    def __init__(self, fd: int) -> None:
        # Sized by its creator: a worker may not grow any file (RLIMIT_FSIZE 0).
        if os.fstat(fd).st_size < self.SIZE:
            os.ftruncate(fd, self.SIZE)
        self._map = mmap.mmap(fd, self.SIZE)

    @classmethod
    def create(cls) -> tuple[ProgressMarker, int]:
        """A new marker backed by a memfd; returns it and the fd to hand to the worker."""
        fd = os.memfd_create("plugin-worker-progress", os.MFD_CLOEXEC)
        return cls(fd), fd

    def set(self, deadline: float, plugin_config_id: int = 0, item: int = -1) -> None:
        self._LAYOUT.pack_into(self._map, 0, deadline, plugin_config_id, item)

    def read(self) -> tuple[float, int, int]:
        deadline, plugin_config_id, item = self._LAYOUT.unpack_from(self._map, 0)
        return float(deadline), int(plugin_config_id), int(item)

    @property
    def closed(self) -> bool:
        return bool(self._map.closed)

    def close(self) -> None:
        self._map.close()
