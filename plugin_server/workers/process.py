"""One plugin worker process, seen from the main process.

:class:`WorkerProcess` starts the worker with a fresh interpreter
(``python -I``) from a clean entry point, never by forking the main process:
the main process holds database and Redis connections and credentials, a
fork would hand them to plugin code. The worker gets a scrubbed environment
(:func:`~plugin_server.workers.hardening.worker_environment`), no fds but
its two pipes and its progress marker, and hardens itself before reading
any plugin.

:meth:`WorkerProcess.exchange` sends one task and waits for its result,
serving the worker's meta requests meanwhile. It watches the progress
marker: when the running step's deadline plus ``grace`` has passed, the
worker is declared hung (:class:`WorkerHung`); an EOF, a malformed frame or
an exit is :class:`~plugin_server.exceptions.WorkerDied`. Either way the
caller kills and replaces it.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from plugin_server.exceptions import WorkerDied
from plugin_server.workers import protocol
from plugin_server.workers.hardening import worker_environment

logger = logging.getLogger(__name__)

PROJECT_ROOT = str(Path(__file__).resolve().parent.parent.parent)
# -I: ignore PYTHON* variables and the user site; the project root is put on
# sys.path explicitly because -I leaves the current directory out.
BOOTSTRAP = "import sys; sys.path.insert(0, sys.argv[1]); from plugin_server.workers.child import main; main(sys.argv[2:])"
START_TIMEOUT = 30.0
POLL_SECONDS = 0.1

# (config id, item index, api, method, args, kwargs) → JSON-able answer; raises to refuse.
MetaServer = Callable[[int, str, str, list[Any], dict[str, Any]], Any]


class WorkerHung(WorkerDied):
    """The worker ran past its step's deadline plus the grace period."""


@dataclass(frozen=True, slots=True)
class Blame:
    """What the worker was doing when it died or hung (from its progress marker)."""

    plugin_config_id: int
    item: int
    hung: bool
    reason: str


class WorkerProcess:
    """A started worker: its process, pipes and progress marker."""

    def __init__(self, index: int, memory_limit_mb: int, empty_dir: str, grace: float) -> None:
        self.index = index
        self.grace = grace
        self.hardening: dict[str, Any] = {}
        to_child_read, self._to_child = os.pipe()
        self._from_child, from_child_write = os.pipe()
        self.marker, marker_fd = protocol.ProgressMarker.create()
        child_fds = (to_child_read, from_child_write, marker_fd)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-c", BOOTSTRAP, PROJECT_ROOT, *map(str, child_fds), str(memory_limit_mb), empty_dir, str(index)],
                env=worker_environment(dict(os.environ)),
                stdin=subprocess.DEVNULL,
                # The worker's stray output goes to our stderr, never into the protocol pipes.
                stdout=2,
                close_fds=True,
                pass_fds=child_fds,
                cwd=empty_dir,
            )
        finally:
            for fd in child_fds:
                os.close(fd)
        self.pid = self.process.pid
        self._await_hello()

    def _await_hello(self) -> None:
        ready, _, _ = select.select([self._from_child], [], [], START_TIMEOUT)
        if not ready:
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
        return self.process.poll() is None

    def blame(self, reason: str, hung: bool) -> Blame:
        _deadline, plugin_config_id, item = self.marker.read()
        return Blame(plugin_config_id=plugin_config_id, item=item, hung=hung, reason=reason)

    def exchange(self, kind: str, payload: Any, task_timeout: float, serve_meta: MetaServer) -> dict[str, Any]:
        """Run one task; returns the worker's ``result`` message."""
        try:
            protocol.send_to_worker(self._to_child, (kind, payload))
        except OSError as error:
            raise WorkerDied(f"could not send to worker {self.index}: {error}") from None
        floor = time.monotonic() + task_timeout
        while True:
            deadline, plugin_config_id, _item = self.marker.read()
            if time.monotonic() > max(deadline, floor) + self.grace:
                raise WorkerHung(f"worker {self.index} gave no answer in time (plugin config {plugin_config_id})")
            ready, _, _ = select.select([self._from_child], [], [], POLL_SECONDS)
            if not ready:
                if not self.alive():
                    raise WorkerDied(f"worker {self.index} exited with {self.process.returncode}")
                continue
            message = protocol.receive_from_worker(self._from_child)
            kind_of = message["t"]
            if kind_of == "result":
                return message
            protocol.check_reply(kind_of == "meta", f"unexpected {kind_of!r}")
            self._answer_meta(message, serve_meta)

    def _answer_meta(self, message: dict[str, Any], serve_meta: MetaServer) -> None:
        request_id = message.get("id")
        protocol.check_reply(isinstance(request_id, int), "meta id")
        config_id, api, method = message.get("cfg"), message.get("api"), message.get("method")
        args, kwargs = message.get("args"), message.get("kwargs")
        protocol.check_reply(isinstance(config_id, int) and isinstance(api, str) and isinstance(method, str), "meta call")
        protocol.check_reply(isinstance(args, list) and isinstance(kwargs, dict), "meta arguments")
        try:
            # The check_reply calls above have vetted each type; mypy cannot see through them.
            value = serve_meta(
                cast(int, config_id), cast(str, api), cast(str, method), cast(list[Any], args), cast(dict[str, Any], kwargs)
            )
            reply = {"id": request_id, "value": value}
        except Exception as error:  # noqa: BLE001 — any failure is the plugin's answer, not ours
            reply = {"id": request_id, "error": str(error) or type(error).__name__}
        try:
            protocol.send_to_worker(self._to_child, ("meta_reply", reply))
        except OSError as error:
            raise WorkerDied(f"could not answer worker {self.index}: {error}") from None

    def kill(self) -> None:
        """SIGKILL and reap; safe to call twice."""
        if self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self._close()

    def _close(self) -> None:
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                continue
        self._to_child = self._from_child = -1
        self.marker.close()
