"""The plugin zygote: a clean process that forks one team worker per team.

Started once by the main process (:class:`plugin_server.workers.process.Zygote`;
with ``INGESTION_PROCESSES`` above one it forks the team workers of every
ingestion process too, through :mod:`plugin_server.workers.zygote_broker`)
with a fresh interpreter (``python -I``, scrubbed environment, no fd but its
control socket), it:

1. imports the sandbox and every module plugins may import, builds their
   read-only views, and loads the encodings (after the chroot nothing can
   be read from disk: whatever is not loaded now would fail later, see
   :func:`preload_plugin_modules`);
2. puts the guarded formatter in place of ``str.format``/``format_map``
   (:func:`~plugin_server.plugins.safe_format.install_safe_format`);
3. hardens what every team worker inherits (no environment, no core dumps,
   no file writes, no network, an empty root:
   :func:`~plugin_server.workers.hardening.harden_zygote`);
4. then serves fork requests: each carries a team worker's three fds (pipes
   to and from the main process, progress marker) as ``SCM_RIGHTS``, its
   user id and memory limit, never any team data. The child drops to its own
   user, limits itself and serves tasks (:func:`~plugin_server.workers.child.serve_team`);
   the zygote closes its copies of the fds and answers with the pid.

A fork costs a few milliseconds and shares the imported code with the
zygote (copy on write), where a fresh interpreter per team would cost
hundreds. The zygote never runs plugin code, never receives a plugin, a
config or an event, and dies with the main process (``PR_SET_PDEATHSIG``),
as its children die with it.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import signal
import socket
import sys
import traceback
from typing import Any

PR_SET_PDEATHSIG = 1
MADV_DONTNEED = 4
# V8's library (py_mini_racer), whose pages read at load time are dropped (drop_mapped_pages).
V8_LIBRARY = "/libmini_racer.so"
MAX_REQUEST_BYTES = 4096
ENCODINGS = ("encodings.idna", "encodings.latin_1", "encodings.ascii", "encodings.utf_16", "encodings.utf_32", "encodings.punycode")
# Modules the allowed ones import inside functions, on first use (not at their own import).
LAZY_IMPORTS = ("heapq", "_strptime", "ipaddress", "fractions", "bisect", "calendar", "locale", "copy", "stringprep", "unicodedata", "keyword", "reprlib")


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def preload_plugin_modules() -> list[str]:
    """Import and build the view of every allowed module, and exercise what they load lazily.

    Returns the names loaded. Some modules import helpers on first use (``decimal``'s
    context, ``statistics``' ``fractions``, ``urllib.parse``'s ``ipaddress`` for
    bracketed hosts, ``hmac``'s ``_hashlib``, ``re``'s compiler): a call of each
    here loads them while the disk is still there.
    """
    from plugin_server.plugins import safe_modules

    loaded = []
    for name in sorted(safe_modules.ALLOWED_MODULES):
        safe_modules.module_view(name)
        loaded.append(name)
    for name in ENCODINGS + LAZY_IMPORTS:
        importlib.import_module(name)
    warm_up_modules()
    return loaded


def warm_up_modules() -> None:
    """One small call of each allowed module's lazily-importing paths."""
    import base64
    import collections
    import datetime
    import decimal
    import hashlib
    import hmac
    import json as json_module
    import random
    import re
    import statistics
    import time
    import urllib.parse
    import uuid

    with decimal.localcontext(decimal.Context(prec=5)):
        decimal.Decimal("1.10") / decimal.Decimal(3)
    statistics.mean([1, 2, 3.5])
    statistics.median([decimal.Decimal(1), decimal.Decimal(2)])
    statistics.stdev([1.0, 2.0, 4.0])
    statistics.NormalDist(0, 1).cdf(0.5)
    hmac.new(b"k", b"m", "sha256").hexdigest()
    hmac.digest(b"k", b"m", "sha1")
    hashlib.new("md5", b"x").hexdigest()
    urllib.parse.urlsplit("http://[::1]:80/p?q=1#f")
    urllib.parse.parse_qs("a=1&b=%20")
    urllib.parse.urlencode({"a": "b c"})
    urllib.parse.quote("ü/x")
    urllib.parse.unquote("%C3%BC")
    urllib.parse.urljoin("http://a/b/", "../c")
    json_module.loads(json_module.dumps({"a": [1.5, None]}))
    re.compile(r"(?P<x>\w+)\s*").sub(r"\g<x>", "ab cd")
    datetime.datetime.strptime("2021-01-02T03:04:05+0000", "%Y-%m-%dT%H:%M:%S%z").astimezone(datetime.timezone.utc)
    datetime.datetime.fromisoformat("2021-01-02T03:04:05.123+00:00").isoformat()
    time.strftime("%Y", time.gmtime(0))
    time.strptime("2021", "%Y")
    uuid.uuid5(uuid.NAMESPACE_URL, "x")
    uuid.UUID(int=1).hex
    base64.b64encode(b"x").decode("ascii")
    base64.b32decode(base64.b32encode(b"x"))
    base64.b85encode(b"x")
    random.Random(1).choice([1, 2])
    collections.Counter("aab").most_common(1)
    point_class = collections.namedtuple("point_class", "x y")
    point_class(1, 2)._asdict()
    "bücher.example".encode("idna")


def drop_mapped_pages(library: str) -> int:
    """Unmap from this process the pages it has read of ``library``'s read-only mappings; returns the bytes.

    Loading V8 reads most of its library (some 25 MB of code and data). The zygote runs
    none of it, and a team worker runs a small part: dropped here, each worker maps only
    the pages it runs (from the page cache, shared), instead of every worker and the zygote
    keeping all of them mapped. A read-only private file mapping has no page of its own to
    lose (``MADV_DONTNEED`` only drops the page table entries; a later access maps the file again).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    # (start, end) of the read-only mappings of the library holding no page of their own: the
    # relocated ones (RELRO: read-only again after the loader wrote them) hold copies, kept.
    candidates: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    with open("/proc/self/smaps", encoding="ascii") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                current = None
                if len(fields) >= 6 and fields[5].endswith(library) and "w" not in fields[1]:
                    start, end = (int(value, 16) for value in fields[0].split("-"))
                    current = (start, end)
            elif current is not None and fields[:1] == ["Anonymous:"]:
                if int(fields[1]) == 0:
                    candidates.append(current)
                current = None
    dropped = 0
    for start, end in candidates:
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
            dropped += end - start
    return dropped


def _serve(control: socket.socket, sandbox: Any, report: Any, serve_team: Any) -> None:
    while True:
        try:
            data, fds, _flags, _address = socket.recv_fds(control, MAX_REQUEST_BYTES, 3)
        except InterruptedError:
            continue
        if not data:
            return  # the main process closed the control socket
        request = json.loads(data)
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            control.send(json.dumps({"error": "expected three fds"}).encode())
            continue
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                control.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                die_with_parent()
                serve_team(fds, int(request["memory_mb"]), int(request["uid"]), report, sandbox)
            except BaseException:  # noqa: BLE001 — a child never returns into the zygote's loop
                status = 1
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(status)
        for fd in fds:
            os.close(fd)
        control.send(json.dumps({"pid": pid}).encode())


def main(argv: list[str]) -> None:
    """``control_fd empty_dir``: prepare, harden, say hello, then fork team workers on request."""
    from plugin_server.plugins.guards import FORMATTER
    from plugin_server.plugins.safe_format import install_safe_format
    from plugin_server.workers.hardening import harden_zygote

    control_fd, empty_dir = int(argv[0]), argv[1]
    # A Ctrl-C in the terminal reaches the whole process group: the main process shuts the
    # team workers down in order; neither the zygote nor a worker (which inherits this) may die of it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    sandbox = importlib.import_module("plugin_server.plugins.sandbox")
    # Everything a team worker runs is imported now: after the chroot nothing can be read from disk.
    from plugin_server.workers.child import serve_team

    preload_plugin_modules()
    # V8 for JavaScript plugins: its library and ICU data are read now (no thread starts
    # before an isolate does, so the forks are clean); each worker makes its isolates.
    from plugin_server.plugins.js.engine import init_engine

    init_engine()
    drop_mapped_pages(V8_LIBRARY)
    install_safe_format(FORMATTER)
    # Children are reaped by the kernel; the main process watches them through pidfds.
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    report = harden_zygote(empty_dir, (control_fd,))
    control = socket.socket(fileno=control_fd)
    # Everything imported so far is shared with every team worker (copy on write): frozen, the
    # garbage collector of a worker never walks (so never writes to, so never copies) those objects.
    gc.collect()
    gc.freeze()
    control.send(json.dumps({"t": "hello", "pid": os.getpid(), "applied": report.applied, "skipped": report.skipped}).encode())
    _serve(control, sandbox, report, serve_team)
