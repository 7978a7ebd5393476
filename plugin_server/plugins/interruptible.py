"""Arithmetic and iterators a plugin's time limit can interrupt.

The time limit (:mod:`~plugin_server.plugins.time_limit`) raises from a signal
handler, and CPython runs signal handlers only between bytecodes. A single C
call that never comes back to the interpreter cannot be interrupted:
``10**10**10``, ``x * x`` on million-digit numbers, or ``sum(range(10**12))``
and ``any(itertools.repeat(0))`` (a C function consuming a C iterator).

So the sandbox hands plugins:

- ``**``, ``pow()``, ``<<`` and ``*`` that refuse to build integers of more
  than :data:`MAX_INT_BITS` bits, and ``*`` that refuses sequence
  repetitions beyond :data:`MAX_REPEAT_ITEMS` items, before computing them;
- Python generators in place of the C iterators that can run (nearly)
  forever: two-argument ``iter()``, ``range()`` beyond
  :data:`MAX_C_ITERATION` items, ``itertools.count/repeat/cycle`` and the
  combinatoric iterators, and a ``math.prod`` that multiplies in Python. A C
  function consuming a generator resumes the interpreter for every item,
  where the time limit can strike. (``yield from`` would not do: CPython
  delegates it in C.)

What remains (e.g. a ``decimal`` square root to millions of digits, which
libmpdec computes without checking for signals) is caught by the worker
pool's hard kill.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Integers above this many bits cannot be made with ``**``, ``pow()``, ``<<`` or ``*``.
MAX_INT_BITS = 1_000_000
# Largest ``sequence * n`` result, in items.
MAX_REPEAT_ITEMS = 50_000_000
# Ranges longer than this are iterated in Python (interruptible) rather than in C.
MAX_C_ITERATION = 10_000_000
# Largest exponent bits × modulus bits for a three-argument pow() (RSA-4096 is 1.7e7).
MAX_MODULAR_POW_WORK = 100_000_000


def _refuse_bits(bits: int, what: str) -> None:
    if bits > MAX_INT_BITS:
        raise OverflowError(f"{what} would make an integer of more than {MAX_INT_BITS} bits, refused in plugins")


def guarded_pow(base: Any, exponent: Any, modulo: Any = None) -> Any:
    """``**`` and ``pow()``: refuses giant integer powers before computing them."""
    if modulo is not None:
        if isinstance(exponent, int) and isinstance(modulo, int):
            if exponent.bit_length() * abs(modulo).bit_length() > MAX_MODULAR_POW_WORK:
                raise OverflowError("this modular power is too large to compute in plugins")
        return pow(base, exponent, modulo)
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 1 and abs(base) > 1:
        _refuse_bits(exponent * abs(base).bit_length(), "this power")
    return base**exponent


def guarded_lshift(value: Any, shift: Any) -> Any:
    """``<<``: refuses shifting an integer past :data:`MAX_INT_BITS` bits."""
    if isinstance(value, int) and isinstance(shift, int) and value != 0 and shift > 0:
        _refuse_bits(shift + abs(value).bit_length(), "this shift")
    return value << shift


def check_mul(left: Any, right: Any) -> None:
    """Refuse ``left * right`` if it is a giant integer product or sequence repetition."""
    left_int = isinstance(left, int)
    right_int = isinstance(right, int)
    if left_int and right_int:
        _refuse_bits(left.bit_length() + right.bit_length(), "this product")
    elif left_int != right_int:
        count, sequence = (left, right) if left_int else (right, left)
        if isinstance(sequence, (str, bytes, bytearray, list, tuple)) and count > 0:
            if len(sequence) * count > MAX_REPEAT_ITEMS:
                raise MemoryError(f"repeating a sequence to more than {MAX_REPEAT_ITEMS} items is refused in plugins")


def guarded_mul(left: Any, right: Any) -> Any:
    """``*``: refuses giant integer products and giant sequence repetitions."""
    check_mul(left, right)
    return left * right


def guarded_imul(target: Any, value: Any) -> Any:
    """``*=``: the same checks, then in place (a list stays the same list)."""
    check_mul(target, value)
    target *= value
    return target


def _python_iteration(iterator: Iterable[Any]) -> Iterator[Any]:
    # A plain for/yield loop: the interpreter runs between items, so the time limit can strike.
    for item in iterator:
        yield item


def plugin_iter(obj: Any, *sentinel: Any) -> Iterator[Any]:
    """``iter()``; the two-argument form (which can call a C function forever) runs in Python."""
    if not sentinel:
        return iter(obj)
    return _python_iteration(iter(obj, *sentinel))


class LargeRange:
    """A ``range`` too long to hand to C consumers: same answers, iterated in Python."""

    __slots__ = ("_range",)

    def __init__(self, inner: range) -> None:
        self._range = inner

    start = property(lambda self: self._range.start)
    stop = property(lambda self: self._range.stop)
    step = property(lambda self: self._range.step)

    def __iter__(self) -> Iterator[int]:
        return _python_iteration(self._range)

    def __reversed__(self) -> Iterator[int]:
        return _python_iteration(reversed(self._range))

    def __len__(self) -> int:
        return len(self._range)

    def __contains__(self, value: object) -> bool:
        return value in self._range

    def __getitem__(self, index: Any) -> Any:
        item = self._range[index]
        return _range(item) if isinstance(item, range) else item

    def __eq__(self, other: object) -> bool:
        return self._range == (other._range if isinstance(other, LargeRange) else other)

    def __hash__(self) -> int:
        return hash(self._range)

    def count(self, value: Any) -> int:
        return self._range.count(value)

    def index(self, value: Any) -> int:
        return self._range.index(value)

    def __repr__(self) -> str:
        return repr(self._range)


def _range(inner: range) -> range | LargeRange:
    try:
        length = len(inner)
    except OverflowError:  # longer than sys.maxsize
        return LargeRange(inner)
    return inner if length <= MAX_C_ITERATION else LargeRange(inner)


def plugin_range(*args: Any) -> range | LargeRange:
    """``range()``; a range of more than :data:`MAX_C_ITERATION` items iterates in Python."""
    return _range(range(*args))


def _generator_version(function: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    def python_level(*args: Any, **kwargs: Any) -> Iterator[Any]:
        return _python_iteration(function(*args, **kwargs))

    python_level.__name__ = function.__name__
    python_level.__doc__ = function.__doc__
    return python_level


def repeat(value: Any, times: int | None = None) -> Iterator[Any]:
    """``itertools.repeat``; endless or very long repetitions iterate in Python."""
    if times is not None and times <= MAX_C_ITERATION:
        return itertools.repeat(value, times)
    return _python_iteration(itertools.repeat(value) if times is None else itertools.repeat(value, times))


def prod(iterable: Iterable[Any], *, start: Any = 1) -> Any:
    """``math.prod``, one guarded multiplication at a time."""
    result = start
    for item in iterable:
        result = guarded_mul(result, item)
    return result


ITERTOOLS_REPLACEMENTS: dict[str, Any] = {
    "repeat": repeat,
    **{
        name: _generator_version(getattr(itertools, name))
        for name in ("count", "cycle", "product", "permutations", "combinations", "combinations_with_replacement")
    },
}
