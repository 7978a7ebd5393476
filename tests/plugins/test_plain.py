"""The plain-data boundary: what plugin code hands over is copied without running any method of its own.

Each test hands over an object whose methods would hang, raise or lie if
called, written here with everything trusted Python allows (dunder methods
included, which plugins cannot even define), so the copy is shown to rely on
the structure (exact types, the base type's slots), not on what plugins
happen to be unable to write.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import uuid
from typing import Any

import pytest

from plugin_server.exceptions import PluginError
from plugin_server.plugins.plain import (
    MAX_DEPTH,
    PlainDataError,
    exception_message,
    log_text,
    plain_failure,
    to_plain,
)
from plugin_server.plugins.sandbox import call_with_time_limit
from tests.plugins.sandbox_helpers import STICKY_DICT, compile_source


class Trap(Exception):
    """Raised by any method the copy must never call."""


def _trap(*_args: Any, **_kwargs: Any) -> Any:
    raise Trap("a method of the plugin's object was called")


class TrappedDict(dict):  # type: ignore[type-arg]
    items = keys = values = get = __iter__ = __getitem__ = __len__ = __contains__ = __eq__ = __repr__ = __str__ = _trap


class TrappedList(list):  # type: ignore[type-arg]
    __iter__ = __getitem__ = __len__ = __repr__ = __str__ = _trap


class TrappedStr(str):
    # Not __hash__/__eq__: building the test's dict needs them (and plugins cannot define them).
    __str__ = __repr__ = __len__ = __iter__ = __getitem__ = encode = strip = _trap  # type: ignore[assignment]


class TrappedInt(int):
    __int__ = __index__ = __repr__ = __str__ = __bool__ = bit_length = _trap  # type: ignore[assignment]


class TrappedZone(datetime.tzinfo):
    utcoffset = tzname = dst = _trap  # type: ignore[assignment]


def test_subclasses_are_copied_through_the_base_types_slots_without_calling_them() -> None:
    """A dict/list/str/int subclass whose every method raises is copied: exact types come out, nothing was called."""
    inner = TrappedList([TrappedStr("text"), TrappedInt(7), (1, 2.5)])
    value = TrappedDict({TrappedStr("key"): inner, "n": None})
    copy = to_plain(value)
    assert copy == {"key": ["text", 7, [1, 2.5]], "n": None}
    assert type(copy) is dict and type(copy["key"]) is list and type(copy["key"][0]) is str and type(copy["key"][1]) is int
    assert all(type(key) is str for key in copy)


def test_json_like_conversions() -> None:
    """Tuples become lists, number keys text, NaN null; exact stdlib scalars become their text."""
    moment = datetime.datetime(2021, 5, 1, 12, tzinfo=datetime.timezone.utc)
    value = {1: (1, 2), 2.5: float("nan"), False: float("inf"), None: decimal.Decimal("1.10"), "t": moment, "u": uuid.UUID(int=1)}
    assert to_plain(value) == {
        "1": [1, 2], "2.5": None, "false": None, "null": "1.10", "t": "2021-05-01T12:00:00+00:00", "u": str(uuid.UUID(int=1)),
    }


@pytest.mark.parametrize(
    "value",
    [
        object(),
        {1, 2},
        b"bytes",
        collections.deque([1]),
        datetime.datetime(2021, 1, 1, tzinfo=TrappedZone()),  # its utcoffset() is never asked
        {("tuple", "key"): 1},
        2**2000,
    ],
    ids=["object", "set", "bytes", "deque", "plugin time zone", "tuple key", "huge int"],
)
def test_anything_else_is_refused_as_the_plugins_error(value: Any) -> None:
    with pytest.raises(PlainDataError):
        to_plain(value)
    assert issubclass(PlainDataError, PluginError)


def test_depth_and_size_are_bounded() -> None:
    """Nesting past MAX_DEPTH (or a cycle) and more than the value budget are refused, not a stack overflow."""
    deep: list[Any] = []
    cursor = deep
    for _ in range(100_000):
        cursor.append([])
        cursor = cursor[0]
    with pytest.raises(PlainDataError, match="nested"):
        to_plain(deep)
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    with pytest.raises(PlainDataError, match="nested"):
        to_plain(cycle)
    assert len(to_plain([[0] * 10] * (MAX_DEPTH * 10))) == MAX_DEPTH * 10
    with pytest.raises(PlainDataError, match="too large"):
        to_plain([[0] * 1000] * 3000)


def test_log_text_never_calls_the_objects_methods() -> None:
    """print()/meta.logger arguments: text as is, containers as JSON, others by class name only."""
    assert log_text(TrappedStr("said")) == "said"
    assert log_text(TrappedDict({"a": TrappedList([1])})) == '{"a":[1]}'
    assert log_text(TrappedInt(5)) == "5"

    class Opaque:
        __repr__ = __str__ = __format__ = _trap  # type: ignore[assignment]

    assert log_text(Opaque()) == "<Opaque object>"
    loop: list[Any] = []
    loop.append(Opaque())
    loop.append(loop)
    assert log_text(loop) == "[<Opaque object>, [...]]"


def test_an_exception_becomes_plain_text_without_formatting_its_objects() -> None:
    """An exception whose class and arguments trap every method becomes name, message and stack as plain text."""

    class Sneaky(ValueError):
        __str__ = __repr__ = _trap  # type: ignore[assignment]

    try:
        raise Sneaky(TrappedStr("what happened"), TrappedInt(3))
    except Sneaky as error:
        failure = plain_failure(error)
    assert (failure.name, failure.message) == ("Sneaky", "('what happened', 3)")
    assert "test_plain.py" in failure.stack and failure.stack.rstrip().endswith("Sneaky: ('what happened', 3)")
    assert exception_message(KeyError("k")) == "'k'" and exception_message(OSError(2, "gone")) == "[Errno 2] gone"


def test_a_failing_stack_formatter_still_gives_a_stack() -> None:
    """The worker's own traceback formatter runs inside the limit; if it fails, the frames are formatted plainly."""
    try:
        raise RuntimeError("boom")
    except RuntimeError as error:
        failure = plain_failure(error, stack=_trap)
    assert failure.stack.rstrip().endswith("RuntimeError: boom")


def test_a_plugin_object_whose_methods_never_return_is_copied_inside_the_limit() -> None:
    """Through the sandbox: a plugin's dict subclass whose items()/get() loop forever is copied at once."""
    exports = compile_source(STICKY_DICT + "def run():\n    return Sticky(a=Sticky(b=[1]))\njobs = {'run': run}\n")
    result = call_with_time_limit(lambda: to_plain(exports.jobs["run"]()), seconds=2)
    assert result == {"a": {"b": [1]}} and type(result["a"]) is dict
