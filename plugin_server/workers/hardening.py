"""Locking a plugin worker process down before it runs any plugin code.

RestrictedPython is one layer; this module is the OS's. It runs in two
steps. :func:`harden_zygote`, in the plugin zygote (started by exec, never
forked from the main process, with a scrubbed environment: see
:func:`worker_environment`) once it has imported everything a worker will
ever need, applies what every team worker inherits:

1. no core dumps, file size 0 (no file can be written);
2. a new, empty network namespace (``unshare(CLONE_NEWNET)``): no interface
   but a downed loopback, so no socket reaches anything;
3. ``chroot`` into an empty directory: no file, no Unix socket (a Postgres
   or Redis socket path) and no ``/proc`` to read.

:func:`harden_worker`, in each team worker right after the fork and before
it reads a single plugin:

4. data size (``WORKER_MEMORY_LIMIT_MB``; not the address space, which V8
   reserves by the terabyte for its sandbox), open files, and a network
   namespace of its own (no abstract Unix socket shared between teams);
5. drop to an unprivileged user of its own (``WORKER_UID_BASE`` + its index
   among live team workers, falling back to ``nobody``) with no
   supplementary groups, then ``RLIMIT_NPROC = MAX_WORKER_THREADS`` (the V8
   isolates of JavaScript plugins need a thread each; with a user per
   worker this bounds the worker's threads and processes, and neither
   sandbox can fork) and ``PR_SET_NO_NEW_PRIVS``: no way back to root.

The namespace, chroot and user steps need root (or the capabilities); on a
developer machine without them each step is skipped and reported, and the main process logs which
layers are missing (see :class:`HardeningReport`). This module imports
nothing from Django on purpose.
"""

from __future__ import annotations

import ctypes
import os
import resource
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38
PR_SET_DUMPABLE = 4
NOBODY = 65534
# Worker N runs as user WORKER_UID_BASE + N (no name, no home, no files): a
# worker cannot signal or trace another one, as it could if all were nobody.
WORKER_UID_BASE = 61000
# Pipes to the main process, the progress memfd and stdio, with room to spare.
MAX_OPEN_FILES = 16
# Threads (and processes) a team worker's user may have: its own, plus one per V8 isolate of its JavaScript plugins.
MAX_WORKER_THREADS = 64

# Variables a worker keeps from its parent. Everything else (DATABASE_URL,
# REDIS_URL, SECRET_KEY, cloud credentials, ...) never reaches it.
KEPT_VARIABLES = ("LANG", "LC_ALL", "TZ")


def worker_environment(parent: dict[str, str]) -> dict[str, str]:
    """The whole environment a worker is started with."""
    environment = {name: parent[name] for name in KEPT_VARIABLES if name in parent}
    environment["PYTHONHASHSEED"] = "random"
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    return environment


@dataclass
class HardeningReport:
    """Which layers were applied in a worker, sent to the main process at start."""

    applied: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _step(report: HardeningReport, name: str, action: object) -> None:
    try:
        assert callable(action)
        action()
    except (OSError, ValueError, AttributeError) as error:
        report.skipped[name] = str(error)
    else:
        report.applied.append(name)


def _set_limit(kind: int, value: int) -> None:
    resource.setrlimit(kind, (value, value))


def _unshare_network() -> None:
    libc = _libc()
    if libc.unshare(CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _enter_empty_root(empty_dir: str) -> None:
    os.chdir(empty_dir)
    os.chroot(empty_dir)
    os.chdir("/")


def _drop_privileges(uid: int) -> None:
    os.setgroups([])
    try:
        os.setgid(uid)
        os.setuid(uid)
    except OSError:
        # A user namespace may map only a few ids; nobody is always there.
        os.setgid(NOBODY)
        os.setuid(NOBODY)


def _bounded_threads() -> None:
    if os.getuid() == 0:
        # Root is not bound by RLIMIT_NPROC; without the privilege drop this
        # layer would be a pretence.
        raise OSError("still root: RLIMIT_NPROC would not apply")
    _set_limit(resource.RLIMIT_NPROC, MAX_WORKER_THREADS)


def _no_new_privileges() -> None:
    libc = _libc()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    # Not dumpable: another process of the same user cannot ptrace us.
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def close_other_fds(keep: tuple[int, ...]) -> None:
    """Close every fd but stdio and ``keep`` (the worker is exec'd with close_fds too)."""
    keep_set = set(keep) | {0, 1, 2}
    for fd in range(3, 1024):
        if fd not in keep_set:
            try:
                os.close(fd)
            except OSError:
                continue


def harden_zygote(empty_dir: str, keep_fds: tuple[int, ...]) -> HardeningReport:
    """The layers every team worker inherits, applied once in the zygote before it forks any.

    No environment, no stray fds, no core dumps, no file writes, no network
    and an empty root. The zygote stays root (it must hand each team worker
    a user of its own) but never runs plugin code.
    """
    report = HardeningReport()
    close_other_fds(keep_fds)
    os.environ.clear()
    _step(report, "no_core_dumps", lambda: _set_limit(resource.RLIMIT_CORE, 0))
    _step(report, "no_file_writes", lambda: _set_limit(resource.RLIMIT_FSIZE, 0))
    _step(report, "no_network", _unshare_network)
    _step(report, "empty_root", lambda: _enter_empty_root(empty_dir))
    return report


def harden_worker(memory_limit_mb: int, uid: int, report: HardeningReport) -> HardeningReport:
    """The layers a forked team worker applies to itself before it reads a plugin."""
    if memory_limit_mb > 0:
        limit = memory_limit_mb * 1024 * 1024
        _step(report, "memory_limit", lambda: _set_limit(resource.RLIMIT_DATA, limit))
    _step(report, "few_open_files", lambda: _set_limit(resource.RLIMIT_NOFILE, MAX_OPEN_FILES))
    # A network namespace of its own too (the zygote's is already empty): no abstract Unix socket is shared
    # between team workers.
    _step(report, "own_network", _unshare_network)
    _step(report, "unprivileged_user", lambda: _drop_privileges(uid))
    _step(report, "bounded_threads", _bounded_threads)
    _step(report, "no_new_privileges", _no_new_privileges)
    return report
