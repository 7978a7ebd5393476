"""The template the ingestion processes are forked from, so that they share the imported code.

With ``INGESTION_PROCESSES`` above one, a fresh interpreter per ingestion
process (``python -m django run_plugin_server --mode ingestion``) costs each
its own copy of Django, the drivers and the server: some 70 MiB of Python
objects, none of it shared. Instead, ``run_plugin_server`` (the main
process), before it opens any connection or starts any thread:

1. imports what an ingestion process runs (:data:`PRELOAD`), collects and
   freezes the garbage collector's generations (``gc.freeze()``: the
   collector never walks, so never writes to, the objects imported so far,
   which keeps their pages shared);
2. forks the *template* (:meth:`IngestionTemplate.fork`): a single-threaded
   process that holds no connection and no socket but its control socket
   to the main process, dies with the main process (``PR_SET_PDEATHSIG``),
   and only forks: each request names the environment of one ingestion
   process (its slice, consumer id, index, the template as its parent) and
   carries its zygote broker socket (plugin_server/workers/zygote_broker.py)
   as ``SCM_RIGHTS``. The forked process applies that environment (the
   settings it overrides are read again, the server instance id is its
   own), names itself ``ingestion-<i>`` and runs ``run_plugin_server --mode
   ingestion`` as a subprocess would, opening its own connections. The
   template reaps its children and reports each exit code to the main
   process, which starts a crashed one's replacement from the same template.

Every ingestion process thus shares with the template and the main process
the pages it does not write. The main process refuses to fork (and starts
fresh interpreters, as before) if a thread is running or a database
connection or a Redis client is open at that point; should the template itself die, the
ingestion processes it started stop (their parent is gone: ParentWatch) and
their replacements are fresh interpreters.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
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
import traceback
from typing import Any

logger = logging.getLogger(__name__)

# What an ingestion process imports beyond what the main process already has when it forks.
PRELOAD = (
    "plugin_server.server",
    "plugin_server.workers.pool",
    "plugin_server.workers.team_worker",
    "plugin_server.plugins.meta.host",
    "plugin_server.ingestion.ingester",
    "plugin_server.ingestion.consumer",
    "plugin_server.ingestion.sources.celery",
    "plugin_server.ingestion.router",
    "plugin_server.ingestion.dlq",
    "plugin_server.export_lane",
    "plugin_server.jobs",
    "plugin_server.pubsub",
    "plugin_server.sentry",
    "plugin_server.status",
    "plugin_server.staleness",
)
KAFKA_PRELOAD = (
    "plugin_server.ingestion.sources.kafka",
    "plugin_server.sinks.kafka",
    "plugin_server.ingestion.dlq_topic",
    "plugin_server.sinks.kafka_producer",
)
MAX_MESSAGE_BYTES = 65536
PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
ANSWER_TIMEOUT = 30.0


def _prctl(option: int, value: Any) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def set_process_name(name: str) -> None:
    """This process's name in ``ps`` and ``/proc/<pid>/comm`` (15 bytes at most)."""
    _prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]))


def preload(kafka: bool) -> list[str]:
    """Import what an ingestion process runs; returns the names that could not be imported."""
    failed = []
    for name in PRELOAD + (KAFKA_PRELOAD if kafka else ()):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 -- the ingestion process imports it itself (and reports the error)
            failed.append(name)
    return failed


def can_fork() -> str | None:
    """Why this process must not fork the template now (a thread, an open connection), or None."""
    from django.db import connections

    if threading.active_count() > 1:
        return f"{threading.active_count()} threads are running"
    for alias in connections:
        if connections[alias].connection is not None:
            return f"the database connection {alias!r} is open"
    from plugin_server.redis_client import get_redis

    if get_redis.cache_info().currsize:
        return "a Redis client is made"
    return None


class IngestionTemplate:
    """The main process's side of the template: start ingestion processes, learn of their exits."""

    def __init__(self, pid: int, control: socket.socket) -> None:
        self.pid = pid
        self._control = control
        self._lock = threading.Lock()
        self._next_id = 0
        self._started: dict[int, int] = {}
        self.exits: dict[int, int] = {}
        self._exit_code: int | None = None

    @classmethod
    def fork(cls, kafka: bool = False) -> IngestionTemplate | None:
        """Preload, freeze and fork the template (None, with a warning, when this process cannot fork safely)."""
        reason = can_fork()
        if reason is not None:
            logger.warning("the ingestion processes start as fresh interpreters: %s", reason)
            return None
        # No collection from here to the fork: what it would free leaves holes in the shared pages,
        # which the next allocations of every process fill (and so copy).
        gc.disable()
        try:
            failed = preload(kafka)
            if failed:
                logger.warning("the ingestion template could not preload %s", ", ".join(failed))
            gc.freeze()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            parent = os.getpid()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                try:
                    ours.close()
                    _serve(theirs, parent)
                finally:
                    os._exit(1)
        finally:
            gc.enable()
        theirs.close()
        ours.set_inheritable(False)
        return cls(pid, ours)

    def alive(self) -> bool:
        if self._exit_code is not None:
            return False
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self._exit_code = -1
            return False
        if pid == 0:
            return True
        self._exit_code = os.waitstatus_to_exitcode(status)
        return False

    def _read(self, timeout: float) -> bool:
        """Read one message (lock held); False when none came within ``timeout``."""
        poller = select.poll()
        poller.register(self._control.fileno(), select.POLLIN)
        if not poller.poll(max(0, int(timeout * 1000))):
            return False
        try:
            data = self._control.recv(MAX_MESSAGE_BYTES)
        except OSError:
            data = b""
        if not data:
            raise OSError("the ingestion template is gone")
        message = json.loads(data)
        if message.get("t") == "exit":
            self.exits[int(message["pid"])] = int(message["code"])
        elif message.get("t") == "started":
            self._started[int(message["id"])] = int(message["pid"])
        return True

    def collect(self) -> None:
        """Take in the exits the template has reported."""
        with self._lock:
            try:
                while self._read(0):
                    pass
            except OSError:
                pass

    def spawn(self, env: dict[str, str], fds: list[int]) -> ForkedProcess:
        """Fork an ingestion process with ``env`` applied and ``fds`` (its zygote broker socket) inherited."""
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
            socket.send_fds(self._control, [json.dumps({"id": request_id, "env": env}).encode()], fds)
            deadline = time.monotonic() + ANSWER_TIMEOUT
            while request_id not in self._started:
                if time.monotonic() > deadline:
                    raise OSError("the ingestion template did not answer")
                self._read(0.1)
            pid = self._started.pop(request_id)
        return ForkedProcess(self, pid)

    def close(self) -> None:
        """Stop the template (after its ingestion processes): it sees the socket close and exits."""
        self._control.close()
        deadline = time.monotonic() + 5
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


class ForkedProcess:
    """An ingestion process forked by the template, driven like a ``subprocess.Popen``."""

    def __init__(self, template: IngestionTemplate, pid: int) -> None:
        self.template = template
        self.pid = pid
        self.returncode: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:
            self._pidfd = -1

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        self.template.collect()
        code = self.template.exits.pop(self.pid, None)
        if code is None and self._ended() and not self.template.alive():
            code = 1  # reaped by someone else than the (dead) template: the code is lost
        if code is not None:
            self.returncode = code
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1
        return self.returncode

    def _ended(self) -> bool:
        if self._pidfd < 0:
            return True
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired([str(self.pid)], timeout or 0.0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None and self._pidfd >= 0:
            try:
                signal.pidfd_send_signal(self._pidfd, signum)
            except OSError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


# --- the template process ------------------------------------------------------------------


def _serve(control: socket.socket, parent: int) -> None:
    """The template's loop: fork on request, reap, report exits; exit when the main process closes the socket."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)  # the main process died before the line above
    # A Ctrl-C reaches the whole process group: the main process stops the ingestion processes in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_process_name("ingest-template")
    poller = select.poll()
    poller.register(control.fileno(), select.POLLIN)
    while True:
        _reap(control)
        if not poller.poll(100):
            continue
        try:
            data, fds, _flags, _address = socket.recv_fds(control, MAX_MESSAGE_BYTES, 4)
        except InterruptedError:
            continue
        if not data:
            os._exit(0)
        request = json.loads(data)
        pid = os.fork()
        if pid == 0:
            _run_child(control, request, fds)
        for fd in fds:
            os.close(fd)
        _send(control, {"t": "started", "id": request["id"], "pid": pid})


def _send(control: socket.socket, message: dict[str, Any]) -> None:
    try:
        control.send(json.dumps(message).encode())
    except OSError:
        os._exit(0)  # the main process is gone


def _reap(control: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(control, {"t": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status)})


def _run_child(control: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
    """In the forked ingestion process: take its environment, then run the server in ingestion mode."""
    code = 1
    try:
        control.close()
        gc.enable()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        env = {str(name): str(value) for name, value in request["env"].items()}
        from plugin_server.workers.zygote_broker import ZYGOTE_FD_ENV

        if fds:
            env[ZYGOTE_FD_ENV] = str(fds[0])
        os.environ.update(env)
        apply_settings(env)
        _new_instance_id()
        from django.core.management import call_command

        call_command("run_plugin_server", mode="ingestion")
        code = 0
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else 1
    except BaseException:  # noqa: BLE001 -- a child never returns into the template's loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def apply_settings(env: dict[str, str]) -> None:
    """The app settings named in ``env`` read again from the environment (as a fresh interpreter would)."""
    from django.conf import settings

    from plugin_server import app_settings, config
    from plugin_server.redis_client import reset_redis

    spec = importlib.util.find_spec(app_settings.__name__)
    assert spec is not None and spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    for name in env:
        if name in app_settings.APP_SETTING_NAMES:
            setattr(settings, name, getattr(fresh, name))
    config._drop_config()
    reset_redis()


def _new_instance_id() -> None:
    """This process's own server instance id (the template's was made before the fork)."""
    from plugin_server.plugins.meta.logger import renew_server_instance_id

    renew_server_instance_id()
