"""One plugin zygote for the whole server: the main process forks team workers for its ingestion processes.

With ``INGESTION_PROCESSES`` above one, every ingestion process needs team
workers, and a zygote of its own each would cost a whole interpreter with
its imports and V8 per process. Instead the main process's worker pool owns
the one zygote (:class:`~plugin_server.workers.process.Zygote`, started when
a team worker is first needed, by the main process or any ingestion
process, and started again if it dies) and a :class:`ZygoteBroker`:

- each ingestion process is started with a control socket of its own
  (:meth:`ZygoteBroker.connect`, a Unix socket pair; the process inherits
  its end, which it marks close-on-exec at once): no other process has it,
  and team workers, forked by the zygote, never see it;
- through it the process's pool (:class:`ZygoteClient`) sends the same fork
  request a pool sends its own zygote: the team worker's three fds (pipes
  to and from that process, progress marker) as ``SCM_RIGHTS``, its user id
  and memory limit, never any team data, plus a request id. The broker
  forwards it to the zygote and answers with the worker's pid, the
  zygote's pid (the worker's death is the zygote's fault only if that
  zygote is gone) and the request id; an answer to an earlier request
  that timed out is dropped by the id. A replacement process gets a new
  socket pair: nothing meant for the dead one reaches it;
- the team workers of an ingestion process die with it: when its end
  of the socket closes (its exit, a kill -9) the broker SIGKILLs every
  worker it forked for it (pidfds). All team workers die with the zygote,
  which dies with the main process.

Each ingestion process's workers run as users of their own range
(:data:`UIDS_PER_PROCESS` apart), so workers of two processes never share
a user id.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol

from plugin_server.exceptions import WorkerDied

logger = logging.getLogger(__name__)

# The fd number of an ingestion process's end of its broker socket.
ZYGOTE_FD_ENV = "PLUGIN_SERVER_ZYGOTE_FD"
# Team worker user ids of ingestion process i start at WORKER_UID_BASE + (i + 1) * UIDS_PER_PROCESS.
UIDS_PER_PROCESS = 100_000
MAX_MESSAGE_BYTES = 4096
ANSWER_TIMEOUT = 30.0


class Liveness(Protocol):
    def alive(self) -> bool: ...


class LocalZygote(Protocol):
    """What the broker needs of the zygote (plugin_server.workers.process.Zygote)."""

    skipped: dict[str, str]
    applied: list[str]

    def fork(self, fds: tuple[int, int, int], uid: int, memory_mb: int) -> int: ...

    def pid(self) -> int: ...


class _ProcessLiveness:
    """Whether a process (not necessarily our child) is still running, through a pidfd."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:
            self._pidfd = -1

    def alive(self) -> bool:
        if self._pidfd < 0:
            return False
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        if poller.poll(0):
            os.close(self._pidfd)
            self._pidfd = -1
            return False
        return True


def _kill(pidfd: int) -> None:
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass  # already gone
    os.close(pidfd)


class _Owner:
    """One ingestion process's connection: its socket and the team workers forked for it."""

    def __init__(self, name: str, sock: socket.socket) -> None:
        self.name = name
        self.sock = sock
        self.workers: list[int] = []  # pidfds
        self.thread: threading.Thread | None = None

    def keep(self, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return  # already gone
        live = []
        for fd in self.workers:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if poller.poll(0):
                os.close(fd)
            else:
                live.append(fd)
        self.workers = live + [pidfd]

    def kill_workers(self) -> None:
        workers, self.workers = self.workers, []
        for pidfd in workers:
            _kill(pidfd)


class ZygoteBroker:
    """In the main process: serves the fork requests of the ingestion processes with the one zygote."""

    def __init__(self, zygote: Callable[[], LocalZygote]) -> None:
        self._zygote = zygote
        self._lock = threading.Lock()
        self._owners: list[_Owner] = []
        self._closed = False

    def connect(self, name: str) -> socket.socket:
        """A new control socket for one ingestion process: returns its end (inheritable), serves ours."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.set_inheritable(True)
        owner = _Owner(name, ours)
        owner.thread = threading.Thread(target=self._serve, args=(owner,), name=f"zygote-broker-{name}", daemon=True)
        with self._lock:
            if self._closed:
                ours.close()
                theirs.close()
                raise WorkerDied("the zygote broker is closed")
            self._owners.append(owner)
        owner.thread.start()
        return theirs

    def owners(self) -> int:
        """How many ingestion processes are connected (for tests)."""
        with self._lock:
            return len(self._owners)

    def _serve(self, owner: _Owner) -> None:
        try:
            while True:
                try:
                    data, fds, _flags, _address = socket.recv_fds(owner.sock, MAX_MESSAGE_BYTES, 3)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not data:
                    break  # the process exited (or was killed): its workers go with it
                answer = self._fork(owner, data, fds)
                try:
                    owner.sock.send(json.dumps(answer).encode())
                except OSError:
                    break
        finally:
            owner.kill_workers()
            owner.sock.close()
            with self._lock:
                if owner in self._owners:
                    self._owners.remove(owner)

    def _fork(self, owner: _Owner, data: bytes, fds: list[int]) -> dict[str, Any]:
        request_id: Any = None
        try:
            request = json.loads(data)
            request_id = request.get("id") if isinstance(request, dict) else None
            if not isinstance(request_id, int) or len(fds) != 3:
                return {"id": request_id, "error": "expected a request id and three fds"}
            zygote = self._zygote()
            pid = zygote.fork((fds[0], fds[1], fds[2]), int(request["uid"]), int(request["memory_mb"]))
            owner.keep(pid)
            return {"id": request_id, "pid": pid, "zygote": zygote.pid(), "skipped": zygote.skipped, "applied": zygote.applied}
        except Exception as error:  # noqa: BLE001 -- the requester's WorkerDied
            return {"id": request_id, "error": str(error) or type(error).__name__}
        finally:
            for fd in fds:
                os.close(fd)

    def close(self) -> None:
        """Stop serving: every connected process's socket is shut (its workers are killed)."""
        with self._lock:
            self._closed = True
            owners = list(self._owners)
        for owner in owners:
            try:
                owner.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for owner in owners:
            if owner.thread is not None:
                owner.thread.join(5)


class ZygoteClient:
    """In an ingestion process: the zygote of the main process, reached through the inherited socket."""

    def __init__(self, fd: int) -> None:
        os.set_inheritable(fd, False)  # never passed on to anything this process starts
        self._sock = socket.socket(fileno=fd)
        self._lock = threading.Lock()
        self._next_id = 0
        self._zygotes: dict[int, _ProcessLiveness] = {}
        self.skipped: dict[str, str] = {}
        self.applied: list[str] = []
        self._closed = False

    def alive(self) -> bool:
        """True until closed: the main process restarts the zygote behind the socket if it dies."""
        return not self._closed

    def spawn(self, fds: tuple[int, int, int], uid: int, memory_mb: int) -> tuple[int, Liveness]:
        """A new team worker holding ``fds``: its pid and the liveness of the zygote that forked it."""
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
            request = json.dumps({"id": request_id, "uid": uid, "memory_mb": memory_mb}).encode()
            try:
                socket.send_fds(self._sock, [request], list(fds))
                answer = self._answer(request_id)
            except OSError as error:
                raise WorkerDied(f"the main process's plugin zygote is out of reach: {error}") from None
        pid, zygote_pid = answer.get("pid"), answer.get("zygote")
        if not isinstance(pid, int) or not isinstance(zygote_pid, int):
            raise WorkerDied(f"the plugin zygote could not fork: {answer.get('error')}")
        if not self.skipped and answer.get("skipped"):
            logger.warning("the plugin zygote runs without some isolation layers: %s", ", ".join(sorted(answer["skipped"])))
        self.skipped = dict(answer.get("skipped") or {})
        self.applied = list(answer.get("applied") or [])
        zygote = self._zygotes.get(zygote_pid)
        if zygote is None or not zygote.alive():
            zygote = self._zygotes[zygote_pid] = _ProcessLiveness(zygote_pid)
        return pid, zygote

    def _answer(self, request_id: int) -> dict[str, Any]:
        """The answer to ``request_id`` (an answer to an earlier request that timed out is dropped)."""
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        while True:
            if not poller.poll(int(ANSWER_TIMEOUT * 1000)):
                raise WorkerDied("the main process's plugin zygote did not answer")
            data = self._sock.recv(MAX_MESSAGE_BYTES)
            if not data:
                raise WorkerDied("the main process closed the plugin zygote's socket")
            answer = json.loads(data)
            if isinstance(answer, dict) and answer.get("id") == request_id:
                return answer

    def close(self) -> None:
        self._closed = True
        self._sock.close()
