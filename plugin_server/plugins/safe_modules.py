"""The import allow-list of docs/plugins.md and the read-only module views plugins get.

A plugin never receives a real module object: ``import json`` hands it a
:class:`SafeModule` holding only the module's public API (``__all__`` or an
explicit list). Submodules and imported helpers (``json.decoder``,
``datetime.sys``, ``re.enum``, ``random._os`` ...) are simply not there, the
view refuses writes, and the few calls that could hog a C loop that no
signal interrupts are bounded (``math.factorial``, ``hashlib.pbkdf2_hmac``)
or run in Python (``math.prod``, the endless ``itertools``; see
:mod:`~plugin_server.plugins.interruptible`).

``random`` is built per plugin around its own ``random.Random()``, so one
plugin's ``random.seed()`` cannot make another plugin's numbers predictable.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import math
import random
import time
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from plugin_server.plugins.interruptible import ITERTOOLS_REPLACEMENTS, prod

ALLOWED_MODULES = frozenset(
    {
        "json",
        "math",
        "re",
        "datetime",
        "time",
        "random",
        "hashlib",
        "hmac",
        "base64",
        "uuid",
        "urllib.parse",
        "collections",
        "itertools",
        "functools",
        "string",
        "decimal",
        "statistics",
    }
)
# Packages that only exist to reach an allowed submodule (``import urllib.parse``).
_PARENT_PACKAGES = {"urllib": ("parse",)}

# Key every plugin namespace holds (set by guards.plugin_namespace), to tell plugin functions apart.
PLUGIN_NAMESPACE_MARKER = "_plugin_namespace_"
# A plugin's module name (``__name__``, hence its classes' ``__module__``) starts with this.
PLUGIN_MODULE_PREFIX = "plugin_"

# Largest n for math.factorial/comb/perm: factorial(100000) takes ~0.3 s of C time.
MAX_MATH_N = 100_000
# Largest iteration count for hashlib.pbkdf2_hmac (~0.5 s for sha256).
MAX_PBKDF2_ITERATIONS = 1_000_000

# Modules without a usable ``__all__`` (or whose ``__all__`` holds too much):
# the exact public names a plugin gets.
_EXPLICIT_NAMES: dict[str, Sequence[str]] = {
    "time": (
        "time time_ns monotonic monotonic_ns perf_counter perf_counter_ns process_time process_time_ns "
        "sleep gmtime localtime mktime strftime strptime asctime ctime struct_time timezone altzone "
        "daylight tzname"
    ).split(),
    "hmac": ("new", "digest", "compare_digest", "HMAC", "digest_size"),
    "uuid": (
        "UUID uuid3 uuid4 uuid5 NAMESPACE_DNS NAMESPACE_URL NAMESPACE_OID NAMESPACE_X500 RESERVED_NCS "
        "RFC_4122 RESERVED_MICROSOFT RESERVED_FUTURE SafeUUID"
    ).split(),
}
_EXCLUDED_NAMES: dict[str, frozenset[str]] = {
    # Formatter.format("{0.__class__}") walks attributes inside the stdlib, past the guards.
    "string": frozenset({"Formatter"}),
    # Reads a file object; plugins have none, and the name invites confusion.
    "hashlib": frozenset({"file_digest"}),
    # register() evaluates string annotations with eval(), outside RestrictedPython.
    "functools": frozenset({"singledispatch", "singledispatchmethod"}),
    # The thread's shared context (and its templates) would let one plugin change
    # another's arithmetic; localcontext() and Context() remain.
    "decimal": frozenset({"getcontext", "setcontext", "DefaultContext", "BasicContext", "ExtendedContext"}),
}


class SafeModule:
    """A read-only view of part of a module: attribute reads only, writes refused."""

    __slots__ = ("_name", "_members")

    def __init__(self, name: str, members: dict[str, Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_members", members)

    def __getattr__(self, attribute: str) -> Any:
        try:
            return self._members[attribute]
        except KeyError:
            raise AttributeError(f"module '{self._name}' has no attribute '{attribute}' in plugins") from None

    def __setattr__(self, attribute: str, value: object) -> None:
        raise AttributeError(f"module '{self._name}' is read-only in plugins")

    def __delattr__(self, attribute: str) -> None:
        raise AttributeError(f"module '{self._name}' is read-only in plugins")

    def __contains__(self, attribute: str) -> bool:
        return attribute in self._members

    def __dir__(self) -> list[str]:
        return sorted(self._members)

    def __repr__(self) -> str:
        return f"<plugin module '{self._name}'>"


def import_error(name: str) -> ImportError:
    """The original's message, adapted to Python module names."""
    return ImportError(f"Cannot import '{name}'! This package is not provided by PostHog in plugins.")


# --- bounded replacements -------------------------------------------------------


def sleep(seconds: float) -> None:
    """``time.sleep`` for plugins: a wait the call's time limit reports as waiting."""
    time.sleep(seconds)


def _bounded_n(function: Callable[..., int]) -> Callable[..., int]:
    def bounded(n: int, *args: int) -> int:
        if isinstance(n, int) and n > MAX_MATH_N:
            raise OverflowError(f"math.{function.__name__}() of more than {MAX_MATH_N} is refused in plugins")
        return function(n, *args)

    bounded.__name__ = function.__name__
    bounded.__doc__ = function.__doc__
    return bounded


def pbkdf2_hmac(hash_name: str, password: bytes, salt: bytes, iterations: int, dklen: int | None = None) -> bytes:
    """``hashlib.pbkdf2_hmac`` with at most :data:`MAX_PBKDF2_ITERATIONS` iterations."""
    if iterations > MAX_PBKDF2_ITERATIONS:
        raise ValueError(f"pbkdf2_hmac with more than {MAX_PBKDF2_ITERATIONS} iterations is refused in plugins")
    return hashlib.pbkdf2_hmac(hash_name, password, salt, iterations, dklen)


def _is_plugin_function(obj: object) -> bool:
    return isinstance(obj, types.FunctionType) and obj.__globals__.get(PLUGIN_NAMESPACE_MARKER) is True


def update_wrapper(
    wrapper: Any,
    wrapped: Any,
    assigned: Iterable[str] = functools.WRAPPER_ASSIGNMENTS,
    updated: Iterable[str] = functools.WRAPPER_UPDATES,
) -> Any:
    """``functools.update_wrapper`` with its standard attribute lists only, onto the plugin's own functions.

    The real one reads and writes any attribute names it is given, past the
    guards: ``updated=("__globals__",)`` would copy a stdlib module's globals
    (``sys``, the real builtins) into the plugin's namespace.
    """
    assigned, updated = tuple(assigned), tuple(updated)
    if not set(assigned) <= set(functools.WRAPPER_ASSIGNMENTS) or not set(updated) <= set(functools.WRAPPER_UPDATES):
        raise ValueError("functools.update_wrapper only takes its default attribute lists in plugins")
    if not _is_plugin_function(wrapper):
        raise TypeError("functools.update_wrapper only updates functions the plugin defined")
    return functools.update_wrapper(wrapper, wrapped, assigned, updated)


def wraps(
    wrapped: Any,
    assigned: Iterable[str] = functools.WRAPPER_ASSIGNMENTS,
    updated: Iterable[str] = functools.WRAPPER_UPDATES,
) -> Callable[[Any], Any]:
    """``functools.wraps`` built on the plugin-safe :func:`update_wrapper`."""
    return functools.partial(update_wrapper, wrapped=wrapped, assigned=tuple(assigned), updated=tuple(updated))


def total_ordering(cls: Any) -> Any:
    """``functools.total_ordering`` for the plugin's own classes only (it sets attributes on the class)."""
    if not isinstance(cls, type) or not str(getattr(cls, "__module__", "")).startswith(PLUGIN_MODULE_PREFIX):
        raise TypeError("functools.total_ordering only decorates classes the plugin defined")
    return functools.total_ordering(cls)


_REPLACEMENTS: dict[str, dict[str, Any]] = {
    "time": {"sleep": sleep},
    "math": {"prod": prod, **{name: _bounded_n(getattr(math, name)) for name in ("factorial", "comb", "perm")}},
    "hashlib": {"pbkdf2_hmac": pbkdf2_hmac},
    "itertools": ITERTOOLS_REPLACEMENTS,
    "functools": {"update_wrapper": update_wrapper, "wraps": wraps, "total_ordering": total_ordering},
}

# Code objects whose frames mean "the plugin is waiting", for the time limit's message.
WAITING_CODES: frozenset[types.CodeType] = frozenset({sleep.__code__})


# --- building the views ---------------------------------------------------------


def _public_names(module: types.ModuleType) -> Iterable[str]:
    explicit = _EXPLICIT_NAMES.get(module.__name__)
    if explicit is not None:
        return explicit
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name in dir(module) if not name.startswith("_")]
    return names


def _members(name: str) -> dict[str, Any]:
    module = importlib.import_module(name)
    excluded = _EXCLUDED_NAMES.get(name, frozenset())
    replacements = _REPLACEMENTS.get(name, {})
    members: dict[str, Any] = {}
    for attribute in _public_names(module):
        if attribute in excluded or attribute.startswith("_"):
            continue
        value = replacements.get(attribute, getattr(module, attribute))
        if isinstance(value, types.ModuleType):
            continue
        if isinstance(value, (set, list)):
            # Shared by every plugin of the worker: hand out an immutable copy.
            value = frozenset(value) if isinstance(value, set) else tuple(value)
        members[attribute] = value
    return members


def _random_members() -> dict[str, Any]:
    """``random``'s module functions, bound to a generator of this plugin's own."""
    generator = random.Random()
    members = _members("random")
    for attribute, value in list(members.items()):
        if getattr(value, "__self__", None) is getattr(random, "_inst"):
            members[attribute] = getattr(generator, attribute)
    return members


_shared_views: dict[str, SafeModule] = {}


def module_view(name: str) -> SafeModule:
    """The read-only view of an allowed module, shared by every plugin of the process (not ``random``)."""
    view = _shared_views.get(name)
    if view is None:
        view = SafeModule(name, _members(name))
        _shared_views[name] = view
    return view


def check_imports(tree: ast.AST) -> list[str]:
    """Every module a plugin's source imports that is not allowed, found before running anything."""
    denied: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            denied.extend(alias.name for alias in node.names if not _allowed(alias.name))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                denied.append("." * node.level + module)
            elif module in _PARENT_PACKAGES:
                denied.extend(
                    f"{module}.{alias.name}" for alias in node.names if alias.name not in _PARENT_PACKAGES[module]
                )
            elif not _allowed(module):
                denied.append(module)
    return denied


def _allowed(name: str) -> bool:
    return name in ALLOWED_MODULES or name in _PARENT_PACKAGES


class PluginImporter:
    """The ``__import__`` of one plugin: allowed modules only, as :class:`SafeModule` views."""

    def __init__(self) -> None:
        self._random: SafeModule | None = None

    def _view(self, name: str) -> SafeModule:
        if name == "random":
            if self._random is None:
                self._random = SafeModule("random", _random_members())
            return self._random
        if name in _PARENT_PACKAGES:
            view = _shared_views.get(name)
            if view is None:
                children = {child: module_view(f"{name}.{child}") for child in _PARENT_PACKAGES[name]}
                view = _shared_views[name] = SafeModule(name, children)
            return view
        return module_view(name)

    def __call__(
        self,
        name: str,
        globals: dict[str, Any] | None = None,
        locals: dict[str, Any] | None = None,
        fromlist: tuple[str, ...] | list[str] | None = (),
        level: int = 0,
    ) -> SafeModule:
        if level != 0 or not isinstance(name, str) or not _allowed(name):
            raise import_error(str(name))
        view = self._view(name)
        if not fromlist:
            # ``import urllib.parse`` binds the top package, as Python does.
            top = name.partition(".")[0]
            return self._view(top) if top != name else view
        for attribute in fromlist:
            if attribute not in view:
                raise import_error(f"{name}.{attribute}")
        return view
