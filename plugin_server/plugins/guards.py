"""The runtime guards RestrictedPython calls from compiled plugin code.

RestrictedPython rewrites ``a.b`` into ``_getattr_(a, "b")``, ``a.b = c`` into
``_write_(a).b = c``, ``for x in y`` into ``_getiter_(y)`` and so on; this
module supplies those functions and the plugin's builtins. Our transformer
(:mod:`plugin_server.plugins.sandbox`) adds ``_pow_``, ``_lshift_`` and
``_mul_`` for the operators that build a huge integer in one uninterruptible C
call (:mod:`plugin_server.plugins.interruptible`).

The guards are one layer only. The worker process (no credentials, rlimits,
scrubbed environment) is the boundary that holds if a guard is bypassed.
"""

from __future__ import annotations

import builtins
import operator
import types
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence
from RestrictedPython.transformer import INSPECT_ATTRIBUTES

from plugin_server.plugins.interruptible import (
    guarded_imul,
    guarded_lshift,
    guarded_mul,
    guarded_pow,
    plugin_iter,
    plugin_range,
)
from plugin_server.plugins.safe_format import SafeFormatter
from plugin_server.plugins.safe_modules import PLUGIN_NAMESPACE_MARKER

# Attributes that lead to frames, code, globals or the class tree even though
# their names do not start with "_" (RestrictedPython's own list plus the
# generator / coroutine ones and ``mro``, which walks to ``object``).
DENIED_ATTRIBUTES = frozenset(INSPECT_ATTRIBUTES) | frozenset(
    {
        "gi_frame",
        "gi_code",
        "gi_yieldfrom",
        "cr_frame",
        "cr_code",
        "cr_await",
        "cr_origin",
        "ag_frame",
        "ag_code",
        "ag_await",
        "f_back",
        "f_globals",
        "f_locals",
        "f_builtins",
        "f_code",
        "f_trace",
        "tb_frame",
        "tb_next",
        "co_code",
        "mro",
        "with_traceback",
    }
)

# Values a plugin must never hold, whatever attribute they come from.
DENIED_VALUE_TYPES: tuple[type, ...] = (
    types.ModuleType,
    types.FrameType,
    types.CodeType,
    types.TracebackType,
    types.CellType,
)

# Classes ``type(x)`` refuses to hand out: with them, a plugin could build
# functions from code objects, or new classes with the real metaclass.
_DENIED_TYPES = frozenset(
    {
        type,
        types.FunctionType,
        types.CodeType,
        types.FrameType,
        types.TracebackType,
        types.GeneratorType,
        types.CoroutineType,
        types.AsyncGeneratorType,
        types.ModuleType,
        types.MethodType,
        types.BuiltinFunctionType,
        types.CellType,
        types.MappingProxyType,
        types.SimpleNamespace,
        types.GetSetDescriptorType,
        types.MemberDescriptorType,
        types.WrapperDescriptorType,
        types.MethodWrapperType,
        types.MethodDescriptorType,
        types.ClassMethodDescriptorType,
        classmethod,
        staticmethod,
        property,
        super,
    }
)

_MISSING = object()
_FORMAT_NAMES = frozenset({"format", "format_map"})
# Attribute names already found plain (the fast path of guarded_getattr); capped,
# since a plugin can compute names.
_plain_names: set[str] = set()
_MAX_PLAIN_NAMES = 10_000
# Frames, code and tracebacks cannot be subclassed: an exact type test suffices.
_DENIED_EXACT_TYPES = frozenset(DENIED_VALUE_TYPES)


def _deny(message: str) -> AttributeError:
    return AttributeError(message)


def _check_name(obj: object, name: str) -> None:
    if type(name) is not str:
        raise TypeError("attribute name must be a string")
    if name.startswith("_"):
        raise _deny(f'"{name}" is an invalid attribute name because it starts with "_"')
    if name in DENIED_ATTRIBUTES:
        raise _deny(f'"{name}" is a restricted name, that is forbidden to access in plugins')
    if name == "obj":
        # AttributeError.obj is the object a lookup failed on, which may be one
        # deep inside the stdlib: plugins only get it from their own objects.
        if isinstance(obj, BaseException):
            raise _deny('"obj" of an exception is not available in plugins')
    elif len(_plain_names) < _MAX_PLAIN_NAMES:
        _plain_names.add(name)


def _is_str(obj: object) -> bool:
    return isinstance(obj, str) or (isinstance(obj, type) and issubclass(obj, str))


def guarded_getattr(obj: object, name: str, default: object = _MISSING) -> Any:
    """``getattr`` for plugins: no "_" names, no frame/code walks; ``str.format`` resolves through these guards.

    ``str.format`` and ``format_map`` would resolve ``{0.__class__}`` inside C
    code, past every guard: on a string (or the ``str`` class) they are the
    :class:`~plugin_server.plugins.safe_format.SafeFormatter`'s, whose fields
    come back here. ``AttributeError.obj`` (the object a failed lookup was
    made on, possibly one inside the stdlib) is refused. Every ``a.b`` in
    plugin code comes here, hence the fast path for names already checked
    (never for those whose answer depends on the object).
    """
    if name not in _plain_names:
        _check_name(obj, name)
    if name in _FORMAT_NAMES and _is_str(obj):
        if isinstance(obj, str):
            return FORMATTER.bound(obj, name)
        return FORMATTER.format if name == "format" else FORMATTER.format_map
    try:
        value = getattr(obj, name)
    except AttributeError:
        if default is _MISSING:
            raise
        return default
    if type(value) in _DENIED_EXACT_TYPES or isinstance(value, types.ModuleType):
        raise _deny(f'"{name}" leads to a module, frame or code object, which plugins may not hold')
    return value


def guarded_hasattr(obj: object, name: str) -> bool:
    """``hasattr`` that answers through :func:`guarded_getattr`, so it cannot probe hidden names."""
    try:
        guarded_getattr(obj, name)
    except AttributeError:
        return False
    return True


def guarded_getitem(obj: Any, index: Any) -> Any:
    """Item access: any key, but never a module, frame, code, traceback or cell as the value."""
    value = obj[index]
    if type(value) in _DENIED_EXACT_TYPES or isinstance(value, types.ModuleType):
        raise TypeError("this item is a module, frame or code object, which plugins may not hold")
    return value


def guarded_type(obj: object) -> type:
    """One-argument ``type()`` only, and never for functions, code, frames or classes."""
    result = type(obj)
    if result in _DENIED_TYPES or issubclass(result, type):
        raise TypeError(f"type() of a {result.__name__} object is not available in plugins")
    return result


FORMATTER = SafeFormatter(guarded_getattr, guarded_getitem)


_INPLACE_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd,
    "-=": operator.isub,
    "*=": guarded_imul,
    "/=": operator.itruediv,
    "//=": operator.ifloordiv,
    "%=": operator.imod,
    "**=": guarded_pow,
    "<<=": guarded_lshift,
    ">>=": operator.irshift,
    "&=": operator.iand,
    "|=": operator.ior,
    "^=": operator.ixor,
    "@=": operator.imatmul,
}


def guarded_inplacevar(op: str, target: Any, value: Any) -> Any:
    """``x op= y`` on a plain name (RestrictedPython forbids it on attributes and items)."""
    try:
        function = _INPLACE_OPERATORS[op]
    except KeyError:
        raise SyntaxError(f"operator {op} is not allowed in plugins") from None
    return function(target, value)


def guarded_apply(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls written with ``*args`` / ``**kwargs``."""
    return function(*args, **kwargs)


class PluginClasses:
    """The classes one plugin defined: the only non-container objects it may write attributes on.

    RestrictedPython compiles every ``class`` statement with
    ``metaclass=__metaclass__``; :meth:`metaclass` is that hook. Weak
    references, so a reloaded plugin's classes are not kept alive.
    """

    def __init__(self) -> None:
        self._classes: weakref.WeakSet[type] = weakref.WeakSet()

    def metaclass(self, name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> type:
        cls = type(name, bases, namespace)
        self._classes.add(cls)
        return cls

    def owns(self, obj: object) -> bool:
        """True for a class the plugin defined or an instance of one."""
        if isinstance(obj, type):
            return obj in self._classes
        return type(obj) in self._classes


class _WriteProxy:
    """What ``_write_`` returns for an object the plugin may change items of but not attributes."""

    __slots__ = ("_target", "_attributes_allowed")
    _target: Any
    _attributes_allowed: bool

    def __init__(self, target: Any, attributes_allowed: bool) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_attributes_allowed", attributes_allowed)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._target[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._target[key]

    def __setattr__(self, name: str, value: Any) -> None:
        self._check_attribute(name)
        setattr(self._target, name, value)

    def __delattr__(self, name: str) -> None:
        self._check_attribute(name)
        delattr(self._target, name)

    def _check_attribute(self, name: str) -> None:
        if type(name) is not str:
            # A str subclass could override startswith() and slip a "_" name past the check.
            raise TypeError("attribute name must be a string")
        if name.startswith("_"):
            raise AttributeError(f'"{name}" is an invalid attribute name because it starts with "_"')
        if not self._attributes_allowed:
            kind = type(self._target).__name__
            raise TypeError(f"plugins may only set attributes on objects of their own classes, not on a {kind}")


def make_write_guard(classes: PluginClasses) -> Callable[[Any], Any]:
    """``_write_``: dicts and lists as they are; attributes only on the plugin's own objects."""

    def write_guard(obj: Any) -> Any:
        if type(obj) in (dict, list):
            return obj
        return _WriteProxy(obj, classes.owns(obj))

    return write_guard


def make_setattr(write_guard: Callable[[Any], Any]) -> Callable[[Any, str, Any], None]:
    """The ``setattr`` builtin, routed through the write guard."""

    def guarded_setattr(obj: Any, name: str, value: Any) -> None:
        setattr(write_guard(obj), name, value)

    return guarded_setattr


def make_delattr(write_guard: Callable[[Any], Any]) -> Callable[[Any, str], None]:
    """The ``delattr`` builtin, routed through the write guard."""

    def guarded_delattr(obj: Any, name: str) -> None:
        delattr(write_guard(obj), name)

    return guarded_delattr


def guarded_iter(obj: Iterable[Any]) -> Any:
    """``_getiter_``: iteration itself is harmless; the items are guarded where used."""
    return iter(obj)


# Builtins handed to every plugin, by name. What is missing is deliberate:
# open, exec, eval, compile, globals, locals, vars, dir, input, breakpoint,
# help, exit, quit, memoryview, super, and the BaseException family (a plugin
# must not be able to catch the time-limit interrupt).
_PLAIN_BUILTINS = (
    "None False True NotImplemented Ellipsis abs all any ascii bin bool bytearray bytes callable chr "
    "classmethod complex dict divmod enumerate filter float frozenset hash hex id int isinstance "
    "issubclass len list map max min next object oct ord property repr reversed round set "
    "slice sorted staticmethod str sum tuple zip"
).split()
_EXCEPTIONS = (
    "ArithmeticError AssertionError AttributeError BufferError EOFError Exception FloatingPointError "
    "ImportError IndexError KeyError LookupError MemoryError NameError NotImplementedError OSError "
    "OverflowError RecursionError ReferenceError RuntimeError StopIteration SyntaxError TimeoutError "
    "TypeError UnboundLocalError UnicodeDecodeError UnicodeEncodeError UnicodeError ValueError "
    "ZeroDivisionError Warning UserWarning DeprecationWarning RuntimeWarning"
).split()

SAFE_BUILTINS: dict[str, Any] = {name: getattr(builtins, name) for name in _PLAIN_BUILTINS + _EXCEPTIONS}
SAFE_BUILTINS.update(
    {
        "getattr": guarded_getattr,
        "hasattr": guarded_hasattr,
        "type": guarded_type,
        "pow": guarded_pow,
        "iter": plugin_iter,
        "range": plugin_range,
        "__build_class__": builtins.__build_class__,
    }
)


def plugin_namespace(classes: PluginClasses, importer: Callable[..., Any]) -> dict[str, Any]:
    """Fresh globals for one plugin: its own builtins dict and the names compiled code calls.

    Each plugin gets a new builtins dict, so nothing one plugin does to its
    namespace can reach the next one.
    """
    write_guard = make_write_guard(classes)
    plugin_builtins = dict(SAFE_BUILTINS)
    plugin_builtins.update(
        {
            "setattr": make_setattr(write_guard),
            "delattr": make_delattr(write_guard),
            "__import__": importer,
        }
    )
    return {
        "__builtins__": plugin_builtins,
        "_getattr_": guarded_getattr,
        "_getitem_": guarded_getitem,
        "_getiter_": guarded_iter,
        "_write_": write_guard,
        "_inplacevar_": guarded_inplacevar,
        "_apply_": guarded_apply,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_pow_": guarded_pow,
        "_lshift_": guarded_lshift,
        "_mul_": guarded_mul,
        "_plugin_exception_": Exception,
        PLUGIN_NAMESPACE_MARKER: True,
        "__metaclass__": classes.metaclass,
    }
