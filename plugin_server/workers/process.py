"""The plugin zygote and one team worker, seen from the main process.

:class:`Zygote` starts the zygote (:mod:`plugin_server.workers.zygote`) with
a fresh interpreter (``python -I``) from a clean entry point, never by
forking the main process: the main process holds database and Redis
connections and credentials, a fork would hand them to plugin code. It gets
a scrubbed environment (:func:`~plugin_server.workers.hardening.worker_environment`)
and no fd but its control socket. With ``INGESTION_PROCESSES`` above one the
main process's zygote also forks the ingestion processes' team workers
(:mod:`plugin_server.workers.zygote_broker`); a :class:`WorkerProcess` takes
either as its :class:`Forker`.

:class:`WorkerProcess` is one team worker: the main process makes its pipes
and progress marker, hands them to the zygote, which forks the worker with
them (a few ms: the imports are done). The worker is not the main process's
child; it is watched and killed through a pidfd, and its death is seen as
the end of its pipe.

:meth:`WorkerProcess.exchange` sends one task and waits for its result,
serving the worker's meta requests meanwhile. It watches the progress
marker: when the running step's deadline plus ``grace`` has passed, the
worker is declared hung (:class:`WorkerHung`); an EOF, a malformed frame or
an exit is :class:`~plugin_server.exceptions.WorkerDied`. Either way the
caller kills and replaces it.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from plugin_server.exceptions import WorkerDied
from plugin_server.workers import protocol
from plugin_server.workers.hardening import worker_environment
from plugin_server.workers.zygote_broker import Liveness

logger = logging.getLogger(__name__)

PROJECT_ROOT = str(Path(__file__).resolve().parent.parent.parent)
# -I: ignore PYTHON* variables and the user site; the project root is put on
# sys.path explicitly because -I leaves the current directory out.
BOOTSTRAP = "import sys; sys.path.insert(0, sys.argv[1]); from plugin_server.workers.zygote import main; main(sys.argv[2:])"
START_TIMEOUT = 30.0
POLL_SECONDS = 0.1

# (config id, api, method, args, kwargs) → JSON-able answer; raises to refuse.
MetaServer = Callable[[int, str, str, list[Any], dict[str, Any]], Any]


def readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` is readable (or closed) within ``timeout`` s; poll(), as a pool may hold thousands of fds."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


class Zygote:
    """The zygote process and its control socket; :meth:`fork` makes a team worker."""

    def __init__(self, empty_dir: str) -> None:
        self._lock = threading.Lock()
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-c", BOOTSTRAP, PROJECT_ROOT, str(theirs.fileno()), empty_dir],
                env=worker_environment(dict(os.environ)),
                stdin=subprocess.DEVNULL,
                # Stray output goes to our stderr, never into a protocol pipe.
                stdout=2,
                close_fds=True,
                pass_fds=(theirs.fileno(),),
                cwd=empty_dir,
            )
        finally:
            theirs.close()
        hello = self._answer(START_TIMEOUT)
        if hello.get("t") != "hello":
            self.close()
            raise WorkerDied("the plugin zygote did not start")
        self.applied: list[str] = list(hello.get("applied") or [])
        self.skipped: dict[str, str] = dict(hello.get("skipped") or {})

    def _answer(self, timeout: float) -> dict[str, Any]:
        data = self._control.recv(4096) if readable(self._control.fileno(), timeout) else b""
        if not data:
            raise WorkerDied("the plugin zygote did not answer")
        answer = json.loads(data)
        if not isinstance(answer, dict):
            raise WorkerDied("the plugin zygote answered nonsense")
        return answer

    def alive(self) -> bool:
        return self.process.poll() is None

    def pid(self) -> int:
        return self.process.pid

    def spawn(self, fds: tuple[int, int, int], uid: int, memory_mb: int) -> tuple[int, Zygote]:
        """:meth:`fork`, and the zygote that forked (the worker dies with it)."""
        return self.fork(fds, uid, memory_mb), self

    def fork(self, fds: tuple[int, int, int], uid: int, memory_mb: int) -> int:
        """A new team worker holding ``fds``; returns its pid."""
        request = json.dumps({"uid": uid, "memory_mb": memory_mb}).encode()
        with self._lock:
            try:
                socket.send_fds(self._control, [request], list(fds))
                answer = self._answer(START_TIMEOUT)
            except OSError as error:
                raise WorkerDied(f"the plugin zygote is gone: {error}") from None
        pid = answer.get("pid")
        if not isinstance(pid, int):
            raise WorkerDied(f"the plugin zygote could not fork: {answer.get('error')}")
        return pid

    def close(self) -> None:
        self._control.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()


class _NotStarted:
    def alive(self) -> bool:
        return False


_NOT_STARTED = _NotStarted()

# (request id, config id, api, method, args, kwargs) of one meta request, checked.
MetaCall = tuple[int, int, str, str, list[Any], dict[str, Any]]


class _Serving:
    """Meta requests of one task being served on other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.last = 0.0  # when the last one was answered: the worker's step starts again from there
        self.failed: str | None = None

    def begin(self) -> None:
        with self._lock:
            self.count += 1

    def end(self) -> None:
        with self._lock:
            self.count -= 1
            self.last = time.monotonic()


class WorkerHung(WorkerDied):
    """The worker ran past its step's deadline plus the grace period."""


@dataclass(frozen=True, slots=True)
class Blame:
    """What the worker was doing when it died or hung (from its progress marker)."""

    plugin_config_id: int
    item: int
    hung: bool
    reason: str


class Forker(Protocol):
    """A zygote: this process's own (:class:`Zygote`) or the main process's (plugin_server/workers/zygote_broker.py)."""

    def spawn(self, fds: tuple[int, int, int], uid: int, memory_mb: int) -> tuple[int, Liveness]: ...


class WorkerProcess:
    """A started team worker: its pid(fd), pipes and progress marker."""

    def __init__(self, zygote: Forker, index: int, uid: int, memory_limit_mb: int, grace: float) -> None:
        self.index = index
        self.grace = grace
        # The zygote it was forked from: if that died, so did this worker (PR_SET_PDEATHSIG), through no plugin's fault.
        self.zygote: Liveness = _NOT_STARTED
        self.hardening: dict[str, Any] = {}
        self.pidfd = -1
        # Replies may be written from meta-serving threads; closing takes the same lock.
        self._write_lock = threading.Lock()
        to_child_read, self._to_child = os.pipe()
        self._from_child, from_child_write = os.pipe()
        self.marker, marker_fd = protocol.ProgressMarker.create()
        child_fds = (to_child_read, from_child_write, marker_fd)
        try:
            self.pid, self.zygote = zygote.spawn(child_fds, uid, memory_limit_mb)
        except WorkerDied:
            self._close()
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError:
            pass  # already gone: the hello below fails with EOF
        self._await_hello()

    def _await_hello(self) -> None:
        if not readable(self._from_child, START_TIMEOUT):
            self.kill()
            raise WorkerDied(f"worker {self.index} did not start within {START_TIMEOUT:.0f}s")
        hello = protocol.receive_from_worker(self._from_child)
        protocol.check_reply(hello.get("t") == "hello", "expected hello")
        self.hardening = {"applied": hello.get("applied"), "skipped": hello.get("skipped")}
        if hello.get("skipped"):
            logger.warning(
                "plugin worker %d runs without some isolation layers: %s",
                self.index,
                ", ".join(sorted(hello["skipped"])),
                extra={"worker": self.index, "pid": self.pid},
            )

    def alive(self) -> bool:
        if self.pidfd < 0:
            return False
        return not readable(self.pidfd, 0)

    def blame(self, reason: str, hung: bool) -> Blame:
        _deadline, plugin_config_id, item = self.marker.read()
        return Blame(plugin_config_id=plugin_config_id, item=item, hung=hung, reason=reason)

    def exchange(
        self, kind: str, payload: Any, task_timeout: float, serve_meta: MetaServer, meta_executor: Executor | None = None
    ) -> dict[str, Any]:
        """Run one task; returns the worker's ``result`` message.

        With ``meta_executor``, meta requests are served on its threads and
        answered as each is done (the worker runs several calls at once while
        they wait: plugin_server/workers/concurrent_calls.py); while any is
        being served the worker is waiting on us, so it is not hung."""
        try:
            protocol.send_to_worker(self._to_child, (kind, payload))
        except OSError as error:
            raise WorkerDied(f"could not send to worker {self.index}: {error}") from None
        floor = time.monotonic() + task_timeout
        serving = _Serving()
        while True:
            deadline, plugin_config_id, _item = self.marker.read()
            if not serving.count and time.monotonic() > max(deadline, floor, serving.last) + self.grace:
                raise WorkerHung(f"worker {self.index} gave no answer in time (plugin config {plugin_config_id})")
            if serving.failed:
                raise WorkerDied(f"could not answer worker {self.index}: {serving.failed}")
            if not readable(self._from_child, POLL_SECONDS):
                if not self.alive():
                    raise WorkerDied(f"worker {self.index} exited")
                continue
            message = protocol.receive_from_worker(self._from_child)
            kind_of = message["t"]
            if kind_of == "result":
                return message
            protocol.check_reply(kind_of == "meta", f"unexpected {kind_of!r}")
            call = self._meta_call(message)
            if meta_executor is None:
                self._reply(self._serve(call, serve_meta))
            else:
                serving.begin()
                meta_executor.submit(self._serve_later, call, serve_meta, serving)

    def _meta_call(self, message: dict[str, Any]) -> MetaCall:
        request_id = message.get("id")
        protocol.check_reply(isinstance(request_id, int), "meta id")
        config_id, api, method = message.get("cfg"), message.get("api"), message.get("method")
        args, kwargs = message.get("args"), message.get("kwargs")
        protocol.check_reply(isinstance(config_id, int) and isinstance(api, str) and isinstance(method, str), "meta call")
        protocol.check_reply(isinstance(args, list) and isinstance(kwargs, dict), "meta arguments")
        # The check_reply calls above have vetted each type; mypy cannot see through them.
        return (
            cast(int, request_id), cast(int, config_id), cast(str, api), cast(str, method),
            cast(list[Any], args), cast(dict[str, Any], kwargs),
        )

    @staticmethod
    def _serve(call: MetaCall, serve_meta: MetaServer) -> dict[str, Any]:
        request_id, config_id, api, method, args, kwargs = call
        # "at": when the answer was ready (CLOCK_MONOTONIC, the same in every process); a call that
        # then waits for another call to yield the worker is not charged that time.
        try:
            return {"id": request_id, "value": serve_meta(config_id, api, method, args, kwargs), "at": time.monotonic()}
        except Exception as error:  # noqa: BLE001 — any failure is the plugin's answer, not ours
            return {"id": request_id, "error": str(error) or type(error).__name__, "at": time.monotonic()}

    def _serve_later(self, call: MetaCall, serve_meta: MetaServer, serving: _Serving) -> None:
        try:
            self._reply(self._serve(call, serve_meta))
        except WorkerDied as error:
            serving.failed = str(error)
        finally:
            serving.end()

    def _reply(self, reply: dict[str, Any]) -> None:
        with self._write_lock:
            if self._to_child < 0:
                raise WorkerDied(f"worker {self.index} is gone")
            try:
                protocol.send_to_worker(self._to_child, ("meta_reply", reply))
            except OSError as error:
                raise WorkerDied(f"could not answer worker {self.index}: {error}") from None

    def kill(self) -> None:
        """SIGKILL and wait for the end; safe to call twice."""
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                readable(self.pidfd, START_TIMEOUT)
            except OSError:
                pass
            os.close(self.pidfd)
            self.pidfd = -1
        self._close()

    def _close(self) -> None:
        with self._write_lock:
            for fd in (self._to_child, self._from_child):
                if fd < 0:
                    continue
                try:
                    os.close(fd)
                except OSError:
                    continue
            self._to_child = self._from_child = -1
        if not self.marker.closed:
            self.marker.close()
