"""Compile and run a plugin's code under RestrictedPython, inside a worker process.

:func:`compile_plugin` checks the imports against the allow-list, compiles the
source with RestrictedPython plus our additions (below), runs the module body
in a fresh namespace (:func:`~plugin_server.plugins.guards.plugin_namespace`)
and returns what the plugin defines as :class:`PluginExports`.

Our additions to RestrictedPython's transformer:

- ``a ** b``, ``a << b`` and ``a * b`` become ``_pow_(a, b)``,
  ``_lshift_(a, b)`` and ``_mul_(a, b)``, which refuse integers of more than a
  million bits (``10**10**10`` would otherwise run in one C call that no time
  limit can interrupt; see :mod:`~plugin_server.plugins.interruptible`);
- a bare ``except:`` becomes ``except Exception:``, so plugin code cannot
  catch the time-limit interrupt;
- type hints are dropped: annotated assignments (``x: int = 1``) become plain
  assignments instead of being refused, and function annotations are removed
  (nothing can ``eval()`` a string annotation later).

RestrictedPython is not a sandbox by itself: the worker process that runs
this holds no credentials, no connections, a scrubbed environment and
rlimits (plugin_server/workers/hardening.py).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable
from typing import Any

from RestrictedPython import compile_restricted_exec
from RestrictedPython.transformer import RestrictingNodeTransformer

from plugin_server.exceptions import PluginError, PluginLoadError
from plugin_server.plugins.guards import PluginClasses, plugin_namespace
from plugin_server.plugins.code import PluginCode
from plugin_server.plugins.safe_modules import PLUGIN_MODULE_PREFIX, PluginImporter, check_imports, import_error
from plugin_server.plugins.time_limit import (
    call_with_time_limit,
    register_loops,
    register_waiting_code,
    timeout_deferred,
)

__all__ = [
    "PluginExports",
    "call_with_time_limit",
    "compile_plugin",
    "register_waiting_code",
    "timeout_deferred",
]

# Exported names: the snake_case name and its camelCase alias from the original.
METHOD_NAMES: dict[str, str] = {
    "setup_plugin": "setupPlugin",
    "teardown_plugin": "teardownPlugin",
    "process_event": "processEvent",
    "process_event_batch": "processEventBatch",
    "on_event": "onEvent",
    "on_snapshot": "onSnapshot",
    "run_every_minute": "runEveryMinute",
    "run_every_hour": "runEveryHour",
    "run_every_day": "runEveryDay",
}

Method = Callable[..., Any]


@dataclasses.dataclass(frozen=True, slots=True)
class PluginExports:
    """What a compiled plugin defines; ``None`` where it does not define a method."""

    setup_plugin: Method | None = None
    teardown_plugin: Method | None = None
    process_event: Method | None = None
    process_event_batch: Method | None = None
    on_event: Method | None = None
    on_snapshot: Method | None = None
    run_every_minute: Method | None = None
    run_every_hour: Method | None = None
    run_every_day: Method | None = None
    jobs: dict[str, Method] = dataclasses.field(default_factory=dict)


class PluginTransformer(RestrictingNodeTransformer):  # type: ignore[misc]
    """RestrictedPython's policy plus the integer-size guards and the catch-all rewrite."""

    _GUARDED_OPERATORS = {ast.Pow: "_pow_", ast.LShift: "_lshift_", ast.Mult: "_mul_"}

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        node = self.node_contents_visit(node)
        guard = self._GUARDED_OPERATORS.get(type(node.op))
        if guard is None:
            return node
        function = ast.copy_location(ast.Name(guard, ast.Load()), node)
        call = ast.Call(func=function, args=[node.left, node.right], keywords=[])
        return ast.copy_location(call, node)

    def visit_arguments(self, node: ast.arguments) -> ast.AST:
        # Annotations are dropped, not kept as strings or objects: stdlib code
        # such as typing.get_type_hints() would eval() string annotations
        # outside RestrictedPython.
        for argument in (*node.posonlyargs, *node.args, *node.kwonlyargs, node.vararg, node.kwarg):
            if argument is not None:
                argument.annotation = None
        return super().visit_arguments(node)  # type: ignore[no-any-return]

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        node.returns = None
        return super().visit_FunctionDef(node)  # type: ignore[no-any-return]

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        # RestrictedPython refuses annotated assignments; type hints are allowed
        # in plugins, so keep the assignment and drop the annotation.
        if node.value is None:
            return ast.copy_location(ast.Pass(), node)
        assign = ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node)
        return self.visit(assign)  # type: ignore[no-any-return]

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> ast.AST:
        bare = node.type is None
        result = super().visit_ExceptHandler(node)
        if bare:
            # "_plugin_exception_" is Exception; plugins cannot rebind "_" names.
            result.type = ast.copy_location(ast.Name("_plugin_exception_", ast.Load()), result)
        return result  # type: ignore[no-any-return]


def _loop_spans(tree: ast.AST) -> tuple[tuple[int, int, int, int], ...]:
    loop_types = (ast.For, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    return tuple(
        (node.lineno, node.col_offset, node.end_lineno or node.lineno, node.end_col_offset or 0)
        for node in ast.walk(tree)
        if isinstance(node, loop_types)
    )


def plugin_filename(code: PluginCode) -> str:
    """The file name tracebacks and timeout messages show for this plugin."""
    return f"plugin-{code.plugin_id}/{code.main_filename}"


def _parse(code: PluginCode, filename: str) -> ast.Module:
    try:
        return ast.parse(code.source, filename=filename)
    except SyntaxError as error:
        # Named by the plugin's own file; the SyntaxError stays the cause (plugins/tracebacks.py shows it).
        raise PluginLoadError(
            f"SyntaxError: {error.msg} ({code.main_filename}, line {error.lineno}, column {error.offset})"
        ) from error
    except ValueError as error:  # e.g. a NUL byte in the source
        raise PluginLoadError(f"SyntaxError: {error}") from None


def _compile(code: PluginCode) -> tuple[Any, str]:
    filename = plugin_filename(code)
    tree = _parse(code, filename)
    denied = check_imports(tree)
    if denied:
        raise PluginLoadError(str(import_error(denied[0])))
    register_loops(filename, _loop_spans(tree))
    result = compile_restricted_exec(tree, filename=filename, policy=PluginTransformer)
    if result.errors:
        raise PluginLoadError("Plugin code is not allowed: " + "; ".join(result.errors))
    return result.code, filename


class _PrintForwarder:
    """RestrictedPython turns ``print(...)`` into ``_print_(...)._call_print(...)``; this forwards it."""

    __slots__ = ("_print",)

    def __init__(self, print_function: Callable[..., None]) -> None:
        self._print = print_function

    def _call_print(self, *objects: Any, sep: str = " ", end: str = "\n", file: Any = None, flush: bool = False) -> None:
        if file is not None:
            raise TypeError("print(file=...) is not available in plugins")
        self._print(*objects)

    def __call__(self) -> str:
        # The name ``printed`` (RestrictedPython's collected output): nothing is collected.
        return ""


def _discard(*objects: Any) -> None:
    """The default ``print`` when the caller provides none."""


def _find(namespace: dict[str, Any], name: str) -> Method | None:
    value = namespace.get(name) or namespace.get(METHOD_NAMES.get(name, name))
    return value if callable(value) else None


def _exports(namespace: dict[str, Any]) -> PluginExports:
    methods = {name: _find(namespace, name) for name in METHOD_NAMES}
    jobs_value = namespace.get("jobs")
    jobs: dict[str, Method] = {}
    if jobs_value is not None:
        if not isinstance(jobs_value, dict):
            raise PluginLoadError(f'"jobs" must be a dict of job name to function, not {type(jobs_value).__name__}')
        # Read through dict's own slot, names copied as exact text: the worker
        # later sorts and compares them outside any time limit.
        for job_name, handler in dict.items(jobs_value):
            if not isinstance(job_name, str) or not callable(handler):
                raise PluginLoadError('"jobs" entries must map a name to a function')
            jobs[str.__str__(job_name)] = handler
    return PluginExports(**methods, jobs=jobs)


def compile_plugin(
    code: PluginCode, injected_globals: dict[str, object], *, seconds: float | None = None
) -> PluginExports:
    """Compile ``code``, run its module body, and return its exports.

    ``injected_globals`` are extra names the plugin sees (the pool passes
    ``print`` and ``posthog``); ``print`` is wired through RestrictedPython's
    print hook. ``seconds`` limits the module body's run time.
    A syntax error, a forbidden construct or import, or an exception in the
    module body raises :class:`PluginLoadError`; running out of time raises
    :class:`~plugin_server.exceptions.PluginTimeout`.
    """
    compiled, filename = _compile(code)
    namespace = plugin_namespace(PluginClasses(), PluginImporter())
    extras = dict(injected_globals)
    print_function: Callable[..., None] = extras.pop("print", None) or _discard  # type: ignore[assignment]
    for name in extras:
        if name.startswith("_"):
            raise ValueError(f"injected global {name!r} must not start with '_'")
    namespace.update(extras)
    namespace["_print_"] = lambda _getattr=None: _PrintForwarder(print_function)
    namespace["__name__"] = f"{PLUGIN_MODULE_PREFIX}{code.plugin_id}"
    try:
        if seconds:
            call_with_time_limit(exec, compiled, namespace, seconds=seconds)
        else:
            exec(compiled, namespace)
    except (PluginError, MemoryError):
        # A MemoryError stays one: the worker pool replaces a worker that ran out of memory.
        raise
    except ImportError as error:
        raise PluginLoadError(str(error)) from error
    except Exception as error:
        raise PluginLoadError(f"{type(error).__name__}: {error}") from error
    return _exports(namespace)
