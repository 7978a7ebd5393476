"""The ingestion processes: N plugin servers in ``ingestion`` mode, started and watched by the main one.

With ``INGESTION_PROCESSES`` above one (0: one per core), the main process
does not ingest itself: it starts N processes in ``ingestion`` mode, forked
from the template (:mod:`~plugin_server.ingestion.template`, so that they
share its memory; fresh interpreters, ``python -m django run_plugin_server
--mode ingestion``, when there is none), each a whole
consumer loop with its own source, plugin workers, dead letters, back-pressure
and warm shutdown, exactly as a single server has them. Celery: child *i*
consumes slice *i* of the queue, filled by the main process's
:class:`~.router.Router`. Kafka: every child joins the consumer group, which
spreads the partitions over them (no router: a partition already keeps one
person's events in order). The children have no plugin zygote of their own:
each gets a control socket to the main process's
(plugin_server/workers/zygote_broker.py), made anew for every start, and its
team workers die with it.

:class:`IngestionProcesses` restarts a child that exits while the server
runs (with backoff, like a crashed service); what the child held in flight
is given back at once (Celery: the main process chose the child's consumer
id, and requeues that consumer's in-flight messages as soon as it has
waited for the process, before the replacement starts, so one person's
events stay in queue order across the crash; Kafka: the group's
rebalance), at least once, and the event uuid stores it once. At shutdown every child gets one SIGTERM (its own warm shutdown:
the batch in hand finished and acknowledged) and is killed only if it is
still there after ``shutdown_timeout`` seconds. A child whose parent is gone
(the main process killed) stops itself warmly (:class:`ParentWatch`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from plugin_server.service import Service
from plugin_server.workers.zygote_broker import ZYGOTE_FD_ENV

if TYPE_CHECKING:
    from plugin_server.ingestion.template import IngestionTemplate

logger = logging.getLogger(__name__)

PARENT_PID_ENV = "PLUGIN_SERVER_PARENT_PID"
INGESTION_INDEX_ENV = "PLUGIN_SERVER_INGESTION_INDEX"
# The Celery consumer id of an ingestion process, chosen by the main process so
# that it can give the process's messages back as soon as it sees it die.
CONSUMER_ID_ENV = "PLUGIN_SERVER_CONSUMER_ID"


def _project_root() -> str:
    """Where the settings package lives, so that ``-m django`` finds it from any directory."""
    settings_module = os.environ.get("DJANGO_SETTINGS_MODULE", "settings.base").split(".")[0]
    module = sys.modules.get(settings_module)
    module_file = getattr(module, "__file__", None)
    return str(Path(module_file).resolve().parent.parent) if module_file else os.getcwd()


class ChildProcess(Protocol):
    """An ingestion process: a ``subprocess.Popen`` or one forked by the template (template.py)."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, signum: int) -> None: ...

    def kill(self) -> None: ...


@dataclass
class _Child:
    index: int
    env: dict[str, str]
    overrides: dict[str, str]
    process: ChildProcess | None = None
    failures: int = 0
    restart_at: float = 0.0
    consumer_id: str = ""
    started_at: float = 0.0
    exits: list[int] = field(default_factory=list)


class IngestionProcesses(Service):
    """Starts N ingestion processes, restarts one that exits, stops them warmly."""

    name = "ingestion processes"

    def __init__(
        self,
        count: int,
        child_env: Callable[[int], dict[str, str]],
        shutdown_timeout: float = 30.0,
        command: list[str] | None = None,
        give_back: Callable[[int, str], object] | None = None,
        connect: Callable[[str], socket.socket] | None = None,
        template: IngestionTemplate | None = None,
    ) -> None:
        super().__init__()
        # The main process's zygote broker: each process started gets a control socket of its own.
        self.connect = connect
        # What the processes are forked from (None: each is a fresh interpreter).
        self.template = template
        self.command = command or [sys.executable, "-m", "django", "run_plugin_server", "--mode", "ingestion"]
        self.shutdown_timeout = shutdown_timeout
        self.give_back = give_back
        root = _project_root()
        base = dict(os.environ)
        base["PYTHONPATH"] = os.pathsep.join(filter(None, [root, base.get("PYTHONPATH", "")]))
        self.children_ = []
        for index in range(count):
            overrides = {**child_env(index), INGESTION_INDEX_ENV: str(index)}
            self.children_.append(_Child(index, {**base, **overrides, PARENT_PID_ENV: str(os.getpid())}, overrides))
        self._cwd = root

    def pids(self) -> list[int]:
        """The live children's process ids (index order; for tests and the benchmark)."""
        return [child.process.pid for child in self.children_ if child.process is not None and child.process.poll() is None]

    def _spawn(self, child: _Child) -> None:
        child.consumer_id = uuid.uuid4().hex
        control = self.connect(f"ingestion-{child.index}") if self.connect is not None else None
        try:
            template = self.template
            if template is not None and not template.alive():
                logger.error("the ingestion template is gone: ingestion process %d starts as a fresh interpreter", child.index)
                template = self.template = None
            if template is not None:
                overrides = {**child.overrides, CONSUMER_ID_ENV: child.consumer_id, PARENT_PID_ENV: str(template.pid)}
                try:
                    child.process = template.spawn(overrides, [control.fileno()] if control is not None else [])
                except OSError as error:
                    logger.error("the ingestion template failed (%s): ingestion process %d starts as a fresh interpreter", error, child.index)
                    template = self.template = None
            if template is None:
                env = {**child.env, CONSUMER_ID_ENV: child.consumer_id}
                if control is not None:
                    env[ZYGOTE_FD_ENV] = str(control.fileno())
                pass_fds = (control.fileno(),) if control is not None else ()
                child.process = subprocess.Popen(self.command, env=env, cwd=self._cwd, pass_fds=pass_fds)
        finally:
            if control is not None:
                control.close()
        child.started_at = time.monotonic()
        logger.info("ingestion process %d started (pid %d)", child.index, child.process.pid if child.process is not None else -1)

    def prepare(self) -> None:
        for child in self.children_:
            self._spawn(child)

    def run(self) -> None:
        while not self.sleep(0.2):
            now = time.monotonic()
            for child in self.children_:
                if child.process is None:
                    if now >= child.restart_at:
                        self._spawn(child)
                    continue
                code = child.process.poll()
                if code is None:
                    continue
                child.exits.append(code)
                self._give_back(child)
                child.failures = 1 if now - child.started_at >= 60 else child.failures + 1
                delay = min(self.restart_backoff * 2 ** (child.failures - 1), self.restart_backoff_max)
                logger.error("ingestion process %d (pid %d) exited with %d; restarting in %.1fs", child.index, child.process.pid, code, delay)
                child.process = None
                child.restart_at = now + delay
                self.restarts += 1

    def _give_back(self, child: _Child) -> None:
        # What the dead process held goes back at once, before its replacement
        # takes anything: one person's events stay in queue order across the
        # crash. If this fails, the heartbeat's expiry gives them back later.
        if self.give_back is None:
            return
        try:
            self.give_back(child.index, child.consumer_id)
        except Exception:  # noqa: BLE001 -- the TTL recovery is the fallback
            logger.exception("could not give back the messages of ingestion process %d", child.index)

    def problem(self) -> str | None:
        down = [str(child.index) for child in self.children_ if child.process is None or child.process.poll() is not None]
        return f"ingestion processes not running: {', '.join(down)}" if down else None

    def cleanup(self) -> None:
        running = [child.process for child in self.children_ if child.process is not None and child.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout
        for process in running:
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                logger.error("ingestion process pid %d did not stop in time; killed", process.pid)
                process.kill()
                process.wait()
        if self.template is not None:
            self.template.close()


class ParentWatch(Service):
    """In an ingestion process: asks the server to stop when the main process that started it is gone."""

    name = "parent watch"

    def __init__(self, parent_pid: int, on_orphaned: Callable[[], None]) -> None:
        super().__init__()
        self.parent_pid = parent_pid
        self.on_orphaned = on_orphaned

    def run(self) -> None:
        orphaned = False
        while not self.sleep(0.5):
            if not orphaned and os.getppid() != self.parent_pid:
                orphaned = True
                logger.error("the main plugin server process (pid %d) is gone: stopping", self.parent_pid)
                self.on_orphaned()
