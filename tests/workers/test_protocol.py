"""The worker wire: what the main process accepts from an (untrusted) worker."""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterator

import pytest

from plugin_server.exceptions import WorkerDied
from plugin_server.workers import protocol


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        try:
            os.close(fd)
        except OSError:
            pass


def test_round_trip_both_directions(pipe):
    """Main → worker frames carry bytes and tuples; worker → main frames are JSON objects."""
    read_fd, write_fd = pipe
    protocol.send_to_worker(write_fd, ("meta_reply", {"id": 1, "value": b"\x00bytes"}))
    assert protocol.receive_from_main(read_fd) == ("meta_reply", {"id": 1, "value": b"\x00bytes"})
    protocol.send_to_main(write_fd, {"t": "result", "value": [1, "two"]})
    assert protocol.receive_from_worker(read_fd) == {"t": "result", "value": [1, "two"]}


def test_main_refuses_a_pickle_from_the_worker(pipe):
    """It never unpickles what a worker sends: a pickle frame is a protocol error."""
    read_fd, write_fd = pipe
    body = pickle.dumps({"t": "result"})
    os.write(write_fd, struct.pack(">IB", len(body), protocol.CODEC_PICKLE) + body)
    with pytest.raises(protocol.ProtocolError, match="only JSON"):
        protocol.receive_from_worker(read_fd)


def test_main_refuses_an_oversized_frame_before_reading_it(pipe):
    """A length above MAX_WORKER_FRAME is refused from the header alone (no allocation)."""
    read_fd, write_fd = pipe
    os.write(write_fd, struct.pack(">IB", protocol.MAX_WORKER_FRAME + 1, protocol.CODEC_JSON))
    with pytest.raises(protocol.ProtocolError, match="limit"):
        protocol.receive_from_worker(read_fd)


@pytest.mark.parametrize("body", [b"[1, 2]", b'{"no": "type"}', b"not json"], ids=["list", "untyped", "garbage"])
def test_main_refuses_malformed_messages(pipe, body):
    """A frame that is not a JSON object with a type is a protocol error."""
    read_fd, write_fd = pipe
    os.write(write_fd, struct.pack(">IB", len(body), protocol.CODEC_JSON) + body)
    with pytest.raises(protocol.ProtocolError):
        protocol.receive_from_worker(read_fd)


def test_a_closed_pipe_is_a_dead_worker(pipe):
    """EOF in the middle of a frame means the worker died."""
    read_fd, write_fd = pipe
    os.write(write_fd, struct.pack(">IB", 100, protocol.CODEC_JSON) + b'{"t":')
    os.close(write_fd)
    with pytest.raises(WorkerDied):
        protocol.receive_from_worker(read_fd)


def test_progress_marker_is_shared_through_its_fd():
    """What one side writes into the marker, a second mapping of the same memfd reads."""
    marker, fd = protocol.ProgressMarker.create()
    other = protocol.ProgressMarker(fd)
    marker.set(123.5, 42, 7)
    assert other.read() == (123.5, 42, 7)
    marker.close()
    other.close()
    os.close(fd)
