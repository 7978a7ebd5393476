"""The plain-data boundary: what plugin code hands to trusted code, copied into plain JSON types.

Plugin code returns events, passes meta call arguments, logs messages and
raises exceptions. None of those objects is used by trusted code as it is:
a ``dict`` subclass whose ``items()`` never returns, a structure nested so
deep that encoding it overflows the stack, a ``str`` subclass with its own
``strip()`` would otherwise run plugin code *after* the plugin's time limit,
in the worker's own code, where no one is blamed.

:func:`to_plain` makes the copy. It looks at exact types only (``type(x) is
dict``), reads a subclass of ``dict``/``list``/``tuple``/``str``/``int``/
``float`` through the base type's C slots (``dict.items(x)``,
``str.__str__(x)``...), so it never calls a method a plugin can define or
override, and it is bounded: :data:`MAX_DEPTH` levels, :data:`MAX_NODES`
values, :data:`MAX_CHARS` characters. Anything else is refused with
:class:`PlainDataError`, the plugin's error. Because it runs no plugin code,
it is safe anywhere; the workers run it inside the plugin's time limit
anyway, so that its cost is the plugin's.

:func:`plain_failure` does the same for an exception: the name, the message
and the stack, as text, computed while the plugin's limit still runs.
:func:`log_text` for one ``print`` / ``meta.logger`` argument.

Runs in the worker: imports nothing from Django.
"""

from __future__ import annotations

import datetime
import decimal
import json
import marshal
import math
import traceback
import types
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from plugin_server.exceptions import PluginError, RetryError

MAX_DEPTH = 64
MAX_NODES = 2_000_000
MAX_CHARS = 48 * 1024 * 1024
# Integers wider than this are refused (JSON readers disagree beyond 64 bits; this is generous).
MAX_INT_BITS = 1024
MAX_STACK_CHARS = 4_000
MAX_CHAIN = 5
CAUSE_LINE = "\nThe above exception was the direct cause of the following exception:\n\n"
CONTEXT_LINE = "\nDuring handling of the above exception, another exception occurred:\n\n"

_SCALARS = (str, int, float, bool, type(None))
_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE


class PlainDataError(PluginError):
    """A plugin handed over a value that is not plain JSON data (or too big, or too deep)."""


class _Budget:
    __slots__ = ("nodes", "chars")

    def __init__(self) -> None:
        self.nodes = MAX_NODES
        self.chars = MAX_CHARS


def _too_big() -> PlainDataError:
    return PlainDataError(f"value too large: more than {MAX_NODES} values or {MAX_CHARS} characters")


def _text(value: str, budget: _Budget) -> str:
    budget.chars -= len(value)
    if budget.chars < 0:
        raise _too_big()
    return value


def _int(value: int) -> int:
    if int.bit_length(value) > MAX_INT_BITS:
        raise PlainDataError(f"an integer of more than {MAX_INT_BITS} bits is not plain data")
    return value


def _float(value: float) -> float | None:
    # As JSON.stringify: NaN and the infinities become null.
    return value if math.isfinite(value) else None


def _key(key: Any, budget: _Budget) -> str:
    kind = type(key)
    if kind is str:
        return _text(key, budget)
    if kind is bool:
        return "true" if key else "false"
    if kind is int:
        return str(_int(key))
    if kind is float:
        return float.__repr__(key)
    if key is None:
        return "null"
    if isinstance(key, str):
        return _text(str.__str__(key), budget)
    raise PlainDataError(f"a dict key must be a string or a number, not {_type_name(key)}")


def _datetime_text(value: Any) -> str | None:
    """ISO text of an exact date/datetime/time whose time zone is trusted (None or datetime.timezone)."""
    kind = type(value)
    if kind is datetime.date:
        return datetime.date.isoformat(value)
    if kind in (datetime.datetime, datetime.time):
        zone = kind.tzinfo.__get__(value)
        if zone is None or type(zone) is datetime.timezone:
            return str(kind.isoformat(value))
    return None


def stdlib_scalar_text(value: Any) -> str | None:
    """Exact standard-library scalars with a text form of their own; None if not one of them."""
    kind = type(value)
    if kind is decimal.Decimal:
        return str(decimal.Decimal.__str__(value))
    if kind is uuid.UUID:
        return str(value)
    return _datetime_text(value)


def _check(budget: _Budget, depth: int, count: int) -> None:
    if depth >= MAX_DEPTH:
        raise PlainDataError(f"value nested more than {MAX_DEPTH} levels deep")
    budget.nodes -= count
    if budget.nodes < 0 or budget.chars < 0:
        raise _too_big()


def _dict(value: Any, depth: int, budget: _Budget) -> dict[str, Any]:
    """Copy of a dict (or a subclass, read with ``dict.keys``/``dict.values``), keys made text."""
    _check(budget, depth, dict.__len__(value))
    keys = [key if type(key) is str else _key(key, budget) for key in dict.keys(value)]
    budget.chars -= sum(map(len, keys))
    return dict(zip(keys, _items(dict.values(value), depth, budget)))


def _list(value: Any, depth: int, budget: _Budget) -> list[Any]:
    """Copy of a list or tuple (or a subclass, read with the base type's iterator)."""
    if isinstance(value, list):
        _check(budget, depth, list.__len__(value))
        return _items(list.__iter__(value), depth, budget)
    _check(budget, depth, tuple.__len__(value))
    return _items(tuple.__iter__(value), depth, budget)


def _items(values: Iterable[Any], depth: int, budget: _Budget) -> list[Any]:
    """Copies of the values of one container (already counted by :func:`_check`)."""
    out: list[Any] = []
    append = out.append
    for item in values:
        kind = type(item)
        # The common exact types inline: this runs for every value of every event.
        if kind is str:
            budget.chars -= len(item)
        elif kind is int:
            if item.bit_length() > MAX_INT_BITS:
                item = _int(item)
        elif kind is bool or item is None:
            pass
        elif kind is float:
            item = _float(item)
        elif kind is dict:
            item = _dict(item, depth + 1, budget)
        elif kind is list:
            item = _list(item, depth + 1, budget)
        else:
            item = _other_value(item, depth + 1, budget)
        append(item)
    return out


def _other_value(value: Any, depth: int, budget: _Budget) -> Any:
    """Anything but the exact common types: subclasses through their base type's slots, a few stdlib scalars."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return _dict({"": value}, depth, budget)[""]
    if isinstance(value, dict):
        return _dict(value, depth, budget)
    if isinstance(value, (list, tuple)):
        return _list(value, depth, budget)
    # Subclasses of the scalars, read through the base type's own slots: no method of theirs is called.
    if isinstance(value, str):
        return _text(str.__str__(value), budget)
    if isinstance(value, int):
        return _int(int.__int__(value))
    if isinstance(value, float):
        return _float(float.__float__(value))
    other = stdlib_scalar_text(value)
    if other is not None:
        return _text(other, budget)
    raise PlainDataError(f"{_type_name(value)} is not plain data (use dicts, lists, strings, numbers, booleans and None)")


def to_plain(value: Any) -> Any:
    """A copy of ``value`` made of exact ``dict`` (string keys), ``list``, ``str``, ``int``, ``float``, ``bool``, None.

    Tuples become lists; dict keys that are numbers, booleans or None become
    their JSON text; NaN and the infinities become None; an exact ``date``/
    ``datetime``/``time`` (naive or with a fixed ``timezone``), ``Decimal``
    or ``UUID`` becomes its text. Raises :class:`PlainDataError` otherwise.
    """
    budget = _Budget()
    try:
        copy = _other_value(value, 0, budget)
    except RecursionError:
        raise PlainDataError(f"value nested more than {MAX_DEPTH} levels deep") from None
    if budget.nodes < 0 or budget.chars < 0:
        raise _too_big()
    return copy


def snapshot(value: Any) -> Any:
    """What trusted plain data looks like now, to go back to with :func:`restore` (e.g. an event a plugin failed on).

    marshal's C copy of exact built-in types when it can (a fraction of
    :func:`to_plain`'s cost), else a plain copy.
    """
    try:
        return marshal.dumps(value)
    except ValueError:
        return to_plain(value)


def restore(frozen: Any) -> Any:
    """The value a :func:`snapshot` was taken of, as a fresh object."""
    return marshal.loads(frozen) if type(frozen) is bytes else to_plain(frozen)


def to_plain_or_none(value: Any) -> Any:
    """:func:`to_plain`, or None when the value cannot be copied (for what an error report shows)."""
    try:
        return to_plain(value)
    except PlainDataError:
        return None


def _type_name(value: Any) -> str:
    """The name of ``value``'s class, as an exact str (a class's ``__name__`` is a str the class chose)."""
    name = type.__dict__["__name__"].__get__(type(value))
    return str.__str__(name) if isinstance(name, str) else "object"


# --- text for logs and errors ---------------------------------------------------------


def _safe_repr(value: Any, depth: int, seen: set[int]) -> str:
    """A repr that only ever runs the C repr of exact scalar types: containers are walked here."""
    kind = type(value)
    if kind in _SCALARS:
        return repr(value)
    if id(value) in seen or depth > 8:
        return "[...]" if isinstance(value, list) else "{...}" if isinstance(value, dict) else "..."
    if isinstance(value, (dict, list, tuple)):
        seen = seen | {id(value)}
        if isinstance(value, dict):
            items = [f"{_safe_repr(k, depth + 1, seen)}: {_safe_repr(v, depth + 1, seen)}" for k, v in list(dict.items(value))[:100]]
            return "{" + ", ".join(items) + "}"
        iterate = list.__iter__(value) if isinstance(value, list) else tuple.__iter__(value)
        parts = [_safe_repr(item, depth + 1, seen) for _, item in zip(range(100), iterate)]
        return ("[" + ", ".join(parts) + "]") if isinstance(value, list) else ("(" + ", ".join(parts) + ")")
    other = stdlib_scalar_text(value)
    if other is not None:
        return other
    if isinstance(value, (str, int, float)):
        return repr(to_plain(value))
    return f"<{_type_name(value)} object>"


def _is_builtin_type(kind: type) -> bool:
    """A class defined in C (not a heap type): its methods are the interpreter's, not a plugin's."""
    return not type.__dict__["__flags__"].__get__(kind) & _HEAP_TYPE


def exception_message(error: BaseException) -> str:
    """``str(error)``, computed without calling anything a plugin's class could define."""
    args = BaseException.__dict__["args"].__get__(error)
    try:
        if _is_builtin_type(type(error)) and all(type(arg) in _SCALARS for arg in args):
            # A built-in exception over plain arguments: its C __str__ ("[Errno 2] ...", KeyError's repr).
            return str(error)
        if len(args) == 0:
            return ""
        if len(args) == 1:
            return _safe_repr(args[0], 0, set()) if isinstance(error, KeyError) else log_text(args[0])
        return _safe_repr(args, 0, set())
    except (PlainDataError, ValueError):
        return f"<message of {_type_name(error)}>"


def log_text(value: Any) -> str:
    """One ``print`` / ``meta.logger`` argument as the console prints it (docs/plugin-meta.md):
    text as is, a dict or list as compact JSON, an error as ``Name: message``."""
    kind = type(value)
    try:
        if kind is str:
            return str(value)
        if kind in _SCALARS:
            return str(value)
        if isinstance(value, str):
            return str.__str__(value)
        if isinstance(value, int):
            return int.__repr__(value)
        if isinstance(value, float):
            return float.__repr__(value)
        if isinstance(value, BaseException):
            return f"{_type_name(value)}: {exception_message(value)}"
        if isinstance(value, (dict, list, tuple)):
            try:
                return json.dumps(to_plain(value), separators=(",", ":"), ensure_ascii=False)
            except PlainDataError:
                return _safe_repr(value, 0, set())
        if kind is bytes or kind is bytearray:
            return bytes(value).decode("utf-8", errors="replace")
        other = stdlib_scalar_text(value)
        return other if other is not None else f"<{_type_name(value)} object>"
    except (PlainDataError, ValueError):
        # An integer too long to print, a value too large to copy.
        return f"<{_type_name(value)} object>"


class PluginFailure(PluginError):
    """A plugin's exception as plain text: its class name, message and stack.

    Made inside the plugin's time limit (:func:`plain_failure`), so that
    nothing later formats the plugin's own exception object.
    """

    def __init__(self, name: str, message: str, stack: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.stack = stack


def error_name(error: BaseException) -> str:
    """The class name a plugin's error is reported under (the original's, for a :class:`PluginFailure`)."""
    return error.name if isinstance(error, PluginFailure) else type(error).__name__


class RetryFailure(PluginFailure, RetryError):
    """A plugin job's ``RetryError`` (or a subclass), as plain text."""


def _stack(error: BaseException) -> str:
    """The traceback of ``error`` and its causes, formatted from frames only (never from the exception's objects)."""
    parts: list[str] = []
    current: BaseException | None = error
    for _ in range(MAX_CHAIN):
        if current is None:
            break
        trace = BaseException.__dict__["__traceback__"].__get__(current)
        lines = traceback.format_list(traceback.extract_tb(trace)) if isinstance(trace, types.TracebackType) else []
        parts.insert(0, "Traceback (most recent call last):\n" + "".join(lines) + f"{_type_name(current)}: {exception_message(current)}\n")
        cause = BaseException.__dict__["__cause__"].__get__(current)
        context = BaseException.__dict__["__context__"].__get__(current)
        suppress = BaseException.__dict__["__suppress_context__"].__get__(current)
        current = cause if cause is not None else (None if suppress else context)
        if current is not None:
            parts.insert(0, CAUSE_LINE if cause is not None else CONTEXT_LINE)
    return "".join(parts)[-MAX_STACK_CHARS:]


def plain_failure(error: BaseException, stack: Callable[[], str] | None = None) -> PluginFailure:
    """``error`` turned into a :class:`PluginFailure` (a :class:`RetryFailure` for a ``RetryError``).

    ``stack`` formats the traceback as the plugin's author reads it (the
    worker's :func:`~plugin_server.plugins.tracebacks.code_traceback`); it
    runs here, inside the time limit, and its text is copied. Without it, or
    if it fails, the frames are formatted by :func:`_stack`.
    """
    kind = RetryFailure if isinstance(error, RetryError) else PluginFailure
    text = None
    if stack is not None:
        try:
            text = str.__str__(stack())
        except Exception:  # noqa: BLE001 — a plugin's odd exception must still be reported
            text = None
    return kind(_type_name(error), exception_message(error), text if text is not None else _stack(error))
