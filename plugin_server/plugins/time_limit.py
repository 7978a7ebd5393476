"""Wall-clock limits on plugin calls, enforced with SIGALRM in the worker's main thread.

:func:`call_with_time_limit` arms a real-time interval timer. When it fires,
the handler raises :class:`_Deadline` (a ``BaseException``, so ``except
Exception`` in plugin code cannot catch it; bare ``except:`` is compiled as
``except Exception:`` and ``BaseException`` is not among the plugin's
builtins). The timer keeps firing every :data:`REPEAT_SECONDS` until the call
unwinds, so a ``finally:`` block that loops again is interrupted too; and the
call fails with :class:`~plugin_server.exceptions.PluginTimeout` even if the
plugin managed to return.

Every pure-Python construct is interrupted: loops, recursion, ``time.sleep``
and the regular-expression engine (it checks for signals). One C call that
never returns to the interpreter (a huge integer product) is not: the worker
pool's hard kill is the backstop for those, and the sandbox refuses the usual
ways to start one (``**``, ``<<``, ``pow``, ``math.factorial``...).

The message is the original's: ``Script execution timed out after
looping for 30 seconds on line 3:4`` when the plugin was inside a loop (the
loop's position), ``... after promise waited for 30 seconds`` when it was
waiting (``time.sleep``), ``... after running for 30 seconds on line L:C``
otherwise.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from plugin_server.exceptions import PluginTimeout
from plugin_server.plugins.safe_modules import WAITING_CODES

T = TypeVar("T")

# How often the timer fires once armed: after the deadline, to interrupt again
# until the call unwinds; in the worker's kept-handler mode, also the precision
# of the deadline (the handler compares the clock with it).
REPEAT_SECONDS = 0.05

# Loop positions of each compiled plugin file: filename → ((line, col, end_line, end_col), ...).
# One entry per plugin file compiled in this process (a reload replaces it).
_loops: dict[str, tuple[tuple[int, int, int, int], ...]] = {}
_extra_waiting_codes: set[types.CodeType] = set()


class _Deadline(BaseException):
    """Raised inside plugin code when its time is up. Never seen outside this module."""


class _State:
    """The one call being timed in this process (calls do not nest)."""

    def __init__(self) -> None:
        self.active = False
        self.expired = False
        self.deferred = 0
        self.pending = False
        self.seconds = 0.0
        self.deadline = 0.0
        self.message = ""
        self.kept_handler = False
        self.ticking = False


_state = _State()
# The SIGALRM handler keep_alarm_handler() replaced, for release_alarm_handler().
_previous_handler: Any = signal.SIG_DFL


def register_loops(filename: str, loops: tuple[tuple[int, int, int, int], ...]) -> None:
    """Remember where a compiled plugin's loops are, to name them in timeout messages."""
    _loops[filename] = loops


def register_waiting_code(code: types.CodeType) -> None:
    """Mark a function (e.g. the worker's wait for a meta answer) as "waiting" for the message."""
    _extra_waiting_codes.add(code)


def _plural(seconds: float) -> str:
    amount = int(seconds) if float(seconds).is_integer() else seconds
    return f"{amount} second" if amount == 1 else f"{amount} seconds"


def _innermost_loop(filename: str, line: int) -> tuple[int, int] | None:
    best: tuple[int, int] | None = None
    for start, col, end, _end_col in _loops.get(filename, ()):
        if start <= line <= end and (best is None or (start, col) > best):
            best = (start, col)
    return best


def timeout_message(frame: types.FrameType | None, seconds: float) -> str:
    """Describe what the plugin was doing in ``frame`` (the interrupted frame) when time ran out."""
    duration = _plural(seconds)
    first_plugin_line: tuple[int, int] | None = None
    while frame is not None:
        code = frame.f_code
        if code in WAITING_CODES or code in _extra_waiting_codes:
            return f"Script execution timed out after promise waited for {duration}"
        if code.co_filename in _loops:
            line = frame.f_lineno or 0
            loop = _innermost_loop(code.co_filename, line)
            if loop is not None:
                return f"Script execution timed out after looping for {duration} on line {loop[0]}:{loop[1]}"
            if first_plugin_line is None:
                first_plugin_line = (line, 0)
        frame = frame.f_back
    if first_plugin_line is not None:
        return f"Script execution timed out after running for {duration} on line {first_plugin_line[0]}"
    return f"Script execution timed out after running for {duration}"


def _on_alarm(signum: int, frame: types.FrameType | None) -> None:
    if not _state.active:
        return
    if not _state.expired:
        if time.monotonic() < _state.deadline:
            return  # a tick of the kept timer, before this call's deadline
        _state.expired = True
        _state.message = timeout_message(frame, _state.seconds)
    if frame is not None and frame.f_code in _OWN_CODES:
        # Between our own statements (before the call started or after it
        # returned): the result is thrown away below, no need to unwind.
        return
    if _state.deferred:
        _state.pending = True
        return
    raise _Deadline()


@contextlib.contextmanager
def timeout_deferred() -> Iterator[None]:
    """Hold the interrupt while the body runs (e.g. one request/answer on the worker's pipe).

    A deadline that passes inside is raised when the body is done, so a
    message is never cut in half.
    """
    _state.deferred += 1
    try:
        yield
    finally:
        _state.deferred -= 1
        if not _state.deferred and _state.pending and _state.active:
            _state.pending = False
            raise _Deadline()


def park() -> _State:
    """Set the running call's time limit aside while it waits, so that another call may run meanwhile.

    Used by the worker's concurrent calls (plugin_server/workers/concurrent_calls.py):
    only the call that runs is watched; :func:`unpark` puts this one back."""
    global _state
    parked = _state
    _state = _State()
    _state.kept_handler, _state.ticking = parked.kept_handler, parked.ticking
    return parked


def unpark(parked: _State, credit: float = 0.0) -> None:
    """Make a parked call the running one again, its deadline ``credit`` s later (time it was ready
    but another call ran); a deadline passed while it waited is raised when its wait ends."""
    global _state
    parked.kept_handler, parked.ticking = _state.kept_handler, _state.ticking
    parked.deadline += credit
    _state = parked
    if parked.active and not parked.expired and time.monotonic() >= parked.deadline:
        parked.expired = True
        parked.message = f"Script execution timed out after promise waited for {_plural(parked.seconds)}"
        parked.pending = True


def keep_alarm_handler() -> None:
    """Install the SIGALRM handler for good, for a process that times many calls in a row.

    Afterwards the timer ticks every :data:`REPEAT_SECONDS` while calls run
    and the handler compares the clock with the current call's deadline, so a
    call costs no system call at all (swapping the handler costs ~25 µs, arming
    the timer ~5 µs). Call :func:`disarm_alarm` when a run of calls is over, so
    an idle process is not woken. Used by plugin workers (main thread only).
    """
    global _previous_handler
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    if not _state.kept_handler:
        _previous_handler = previous
    _state.kept_handler = True


def release_alarm_handler() -> None:
    """Undo :func:`keep_alarm_handler`: stop the timer and put the previous handler back."""
    disarm_alarm()
    if _state.kept_handler:
        signal.signal(signal.SIGALRM, _previous_handler)
        _state.kept_handler = False


def disarm_alarm() -> None:
    """Stop the ticking timer (``keep_alarm_handler`` mode) until the next call."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    _state.ticking = False


def _run(fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    try:
        result = fn(*args)
    except BaseException:
        # Whatever unwound the call (the interrupt itself, or an error the
        # interrupt caused on its way out), past the deadline it is a timeout.
        if _state.expired:
            raise PluginTimeout(_state.message) from None
        raise
    if _state.expired:
        raise PluginTimeout(_state.message)
    return result


def _start(seconds: float) -> None:
    if _state.active:
        raise RuntimeError("call_with_time_limit calls do not nest")
    _state.expired, _state.pending, _state.deferred = False, False, 0
    _state.seconds = seconds
    _state.deadline = time.monotonic() + seconds
    _state.active = True


def call_with_time_limit(fn: Callable[..., T], *args: Any, seconds: float) -> T:
    """Call ``fn(*args)``; raise :class:`PluginTimeout` if it runs longer than ``seconds``.

    Must run in the process's main thread (SIGALRM). ``seconds <= 0`` means
    no limit. Calls do not nest.
    """
    if seconds <= 0:
        return fn(*args)
    if _state.kept_handler:
        _start(seconds)
        if not _state.ticking:
            signal.setitimer(signal.ITIMER_REAL, REPEAT_SECONDS, REPEAT_SECONDS)
            _state.ticking = True
        try:
            return _run(fn, args)
        finally:
            _state.active = False
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("call_with_time_limit must run in the main thread (it uses SIGALRM)")
    _start(seconds)
    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds, REPEAT_SECONDS)
    try:
        return _run(fn, args)
    finally:
        _state.active = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:
            # Someone else's timer was running (e.g. a test runner's timeout): give it back.
            remaining = max(outer_delay - (time.monotonic() - started), 0.001)
            signal.setitimer(signal.ITIMER_REAL, remaining, outer_interval)


# Frames of this module's own code: an interrupt landing there (just before the
# call starts or just after it returned) need not unwind anything.
_OWN_CODES = frozenset({call_with_time_limit.__code__, _run.__code__, _start.__code__})
