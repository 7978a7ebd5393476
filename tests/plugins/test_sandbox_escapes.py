"""The escape battery: known ways out of a Python sandbox, each denied, each without its side effect.

Every test runs a plugin that tries one technique to reach the file system, the
environment, processes, the interpreter's internals or another plugin's state.
The test asserts the error the plugin gets (at load: PluginLoadError; while
running: the exception the worker records) AND that what the plugin tried to
do did not happen: the marker file was not written, the secret was not
returned, the process was not spawned, the shared object was not changed.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from plugin_server.exceptions import PluginLoadError, PluginTimeout
from plugin_server.plugins.sandbox import call_with_time_limit
from tests.plugins.sandbox_helpers import compile_source

SECRET = "s3cr3t-database-password"


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A file the escaping plugin tries to create; it must never exist."""
    return tmp_path / "pwned"


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """A credential in this process's environment that no plugin may read."""
    monkeypatch.setenv("PLUGIN_SANDBOX_TEST_SECRET", SECRET)
    return SECRET


def run(source: str, *args: Any, seconds: float = 2.0) -> Any:
    """Compile ``source`` (which defines ``run``) and call ``run(*args)`` under a time limit."""
    exports = compile_source(f"{textwrap.dedent(source)}\njobs = {{'run': run}}\n")
    return call_with_time_limit(exports.jobs["run"], *args, seconds=seconds)


# --- walks from a literal to object.__subclasses__ -----------------------------------


def test_it_denies_the_subclasses_walk_from_a_literal(marker: Path) -> None:
    """().__class__.__bases__[0].__subclasses__() is refused at load; no file is written through os."""
    source = """
    def run(path):
        for cls in ().__class__.__bases__[0].__subclasses__():
            if cls.__name__ == "_wrap_close":
                cls.__init__.__globals__["system"]("touch " + path)
    """
    with pytest.raises(PluginLoadError, match='"__class__" is an invalid attribute name'):
        run(source, str(marker))
    assert not marker.exists()


def test_it_denies_getattr_with_a_computed_dunder_name(marker: Path) -> None:
    """getattr(x, "__cla" + "ss__") is refused at run time; the walk stops before reaching os."""
    source = """
    def run(path):
        klass = getattr((), "__cla" + "ss__")
        base = getattr(klass, "__ba" + "se__")
        return getattr(base, "__subcla" + "sses__")()
    """
    with pytest.raises(AttributeError, match='"__class__" is an invalid attribute name'):
        run(source, str(marker))
    assert not marker.exists()


def test_it_denies_getattr_with_a_default_on_a_dunder_name() -> None:
    """getattr(x, "__dict__", None) does not quietly return None: the name itself is refused."""
    with pytest.raises(AttributeError, match="starts with"):
        run("def run():\n    return getattr(run, '__glo' + 'bals__', None)\n")


def test_it_denies_str_subclass_names_that_lie_about_underscores() -> None:
    """A str subclass whose startswith() says "no" cannot smuggle "__class__" into getattr or setattr."""
    source = """
    class Name(str):
        def startswith(self, prefix):
            return False
    class Box:
        pass
    def run(which):
        if which == "get":
            return getattr((), Name("__class__"))
        setattr(Box(), Name("__class__"), int)
    """
    with pytest.raises(TypeError, match="must be a string"):
        run(source, "get")
    with pytest.raises(TypeError, match="must be a string"):
        run(source, "set")


def test_it_denies_hasattr_probing_of_hidden_names() -> None:
    """hasattr() answers through the guard: hidden attributes look absent."""
    assert run("def run():\n    return [hasattr(run, '__globals__'), hasattr(run, '__code__'), hasattr('', 'upper')]\n") == [
        False,
        False,
        True,
    ]


def test_it_denies_the_mro_walk_to_object() -> None:
    """int.mro() (a non-underscore way to reach object) is refused."""
    with pytest.raises(AttributeError, match='"mro" is a restricted name'):
        run("def run():\n    return int.mro()[-1]\n")


def _dangerous_objects() -> dict[int, str]:
    import builtins
    import importlib
    import sys

    names = ("open", "eval", "exec", "compile", "__import__", "getattr", "setattr", "delattr", "globals", "locals")
    found = {id(getattr(builtins, name)): f"builtins.{name}" for name in names + ("vars", "type", "super")}
    found.update({id(module): module.__name__ for module in (os, sys, importlib, builtins)})
    found[id(os.system)] = "os.system"
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict):
            found[id(namespace)] = f"globals of {getattr(module, '__name__', '?')}"
    return found


def _sample_instances(importer: Any) -> list[Any]:
    """Objects a plugin gets by calling what the allowed modules offer (their instance attributes count too)."""
    re, hmac, hashlib, json, datetime, decimal, collections, functools, string, statistics, uuid, random, itertools = (
        importer(name)
        for name in (
            "re hmac hashlib json datetime decimal collections functools string statistics uuid random itertools"
        ).split()
    )
    parse = importer("urllib.parse", fromlist=("quote",))
    try:
        json.loads("{")
    except ValueError as error:
        decode_error = error
    return [
        re.compile("a(?P<x>b)"), re.match("a", "ab"), re.compile("a").scanner("aa"),
        hmac.new(b"k", b"m", "sha256"), hashlib.sha256(b"x"), json.JSONDecoder(), json.JSONEncoder(), decode_error,
        datetime.datetime.now(datetime.timezone.utc), datetime.timedelta(1), decimal.Decimal("1.5"),
        decimal.Context(prec=5), decimal.localcontext(), collections.OrderedDict(a=1), collections.deque([1]),
        collections.Counter("ab"), collections.defaultdict(list), collections.namedtuple("Point", "x y")(1, 2),
        collections.ChainMap({}), functools.partial(len), functools.lru_cache(len), string.Template("$x"),
        statistics.NormalDist(), uuid.uuid4(), parse.urlparse("http://x/y?z=1"), random.Random(),
        itertools.count(), itertools.groupby("aab"), range(10 ** 12), iter(int, 1),
    ]


def test_it_denies_reaching_the_interpreter_by_walking_public_attributes() -> None:
    """A walk over every public attribute (and container item), 7 levels deep, from every allowed module and
    builtin, through the plugin's getattr, never meets os, sys, importlib, a module's globals or an unguarded
    builtin such as open/eval/getattr/type."""
    import collections
    import types

    from plugin_server.plugins.guards import SAFE_BUILTINS, guarded_getattr
    from plugin_server.plugins.safe_modules import ALLOWED_MODULES, PluginImporter

    importer = PluginImporter()
    dangerous = _dangerous_objects()
    queue: collections.deque[tuple[Any, str, int]] = collections.deque()
    queue.extend((importer(name, fromlist=("quote",) if "." in name else ()), name, 0) for name in ALLOWED_MODULES)
    queue.extend((value, f"builtins.{name}", 0) for name, value in SAFE_BUILTINS.items())
    queue.extend((value, f"instance {index}", 0) for index, value in enumerate(_sample_instances(importer)))
    seen: set[int] = set()
    reached: list[str] = []
    while queue and len(seen) < 100_000:
        obj, path, depth = queue.popleft()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if id(obj) in dangerous or isinstance(obj, (types.ModuleType, types.FrameType, types.CodeType)):
            reached.append(f"{path} -> {dangerous.get(id(obj), type(obj).__name__)}")
        if isinstance(obj, dict):
            queue.extend((value, f"{path}[{key!r}]", depth + 1) for key, value in list(obj.items())[:50])
        elif isinstance(obj, (list, tuple, set, frozenset)):
            queue.extend((value, f"{path}[{index}]", depth + 1) for index, value in enumerate(list(obj)[:50]))
        if depth >= 7:
            continue
        for name in dir(obj):
            try:
                value = guarded_getattr(obj, name)
            except Exception:  # refused by the guard, or a property that needs an instance
                continue
            queue.append((value, f"{path}.{name}", depth + 1))
    assert len(seen) > 3000, "the walk should cover the whole public surface"
    assert reached == []


# --- str.format / format_map attribute access ------------------------------------------


def test_it_denies_str_format_attribute_walks(secret_env: str) -> None:
    """'{0.__class__...}'.format(x) resolves its fields through the guards: refused like x.__class__."""
    source = """
    def run():
        return "{0.__class__.__base__.__subclasses__}".format(())
    """
    with pytest.raises(AttributeError, match='"__class__" is an invalid attribute name'):
        run(source)
    assert run("def run():\n    return '{0} {x[k]:>3} {0.real}'.format(7, x={'k': 'v'})\n") == "7   v 7"


def test_it_denies_str_format_map() -> None:
    """format_map with an attribute walk is refused too."""
    with pytest.raises(AttributeError, match="starts with"):
        run("def run():\n    return '{x.__globals__}'.format_map({'x': run})\n")


def test_it_denies_the_unbound_str_format() -> None:
    """str.format(template, x) through the class is refused like the bound method."""
    with pytest.raises(AttributeError, match="starts with"):
        run("def run():\n    return str.format('{0.__class__}', 1)\n")


def test_it_denies_string_formatter() -> None:
    """string.Formatter (the same attribute walk in pure Python) is not offered."""
    with pytest.raises(PluginLoadError, match="Cannot import 'string.Formatter'"):
        run("from string import Formatter\ndef run():\n    return Formatter().format('{0.__class__}', 1)\n")
    with pytest.raises(AttributeError, match="has no attribute 'Formatter'"):
        run("import string\ndef run():\n    return string.Formatter\n")


def test_it_denies_dunder_attributes_in_f_strings() -> None:
    """f"{x.__class__}" is refused at load (f-string expressions go through the same checks)."""
    with pytest.raises(PluginLoadError, match="__class__"):
        run("def run():\n    return f'{run.__class__}'\n")


# --- generator, coroutine and frame attributes ---------------------------------------------


def test_it_denies_generator_frames(marker: Path) -> None:
    """g.gi_frame.f_back.f_globals (reaching the caller's globals) is refused at load."""
    source = """
    def run(path):
        g = (i for i in [1])
        return g.gi_frame.f_back.f_globals
    """
    with pytest.raises(PluginLoadError, match='"gi_frame" is a restricted name'):
        run(source, str(marker))
    assert not marker.exists()


def test_it_denies_generator_frames_through_getattr() -> None:
    """getattr(g, "gi_frame") at run time is refused as well."""
    with pytest.raises(AttributeError, match='"gi_frame" is a restricted name'):
        run("def run():\n    g = (i for i in [1])\n    return getattr(g, 'gi_' + 'frame')\n")


def test_it_denies_generator_code_objects() -> None:
    """gi_code (a code object, from which a function could be built) is refused."""
    with pytest.raises(AttributeError, match="restricted name"):
        run("def run():\n    g = (i for i in [1])\n    return getattr(g, 'gi_code')\n")


def test_it_denies_async_functions() -> None:
    """async def (coroutine frames, cr_frame) is refused at load."""
    with pytest.raises(PluginLoadError, match="AsyncFunctionDef"):
        run("async def helper():\n    return 1\ndef run():\n    return helper().cr_frame\n")


# --- exception tracebacks ---------------------------------------------------------------


def test_it_denies_tracebacks_from_exceptions(secret_env: str) -> None:
    """e.__traceback__.tb_frame (frames and their globals) is refused at load."""
    source = """
    def run():
        try:
            1 / 0
        except ZeroDivisionError as error:
            return error.__traceback__.tb_frame.f_back.f_globals
    """
    with pytest.raises(PluginLoadError, match="__traceback__"):
        run(source)


def test_it_denies_tracebacks_through_getattr() -> None:
    """getattr(error, "__traceback__") and the tb_* names are refused at run time."""
    source = """
    def run():
        try:
            1 / 0
        except ZeroDivisionError as error:
            return getattr(error, "__trace" + "back__")
    """
    with pytest.raises(AttributeError, match="starts with"):
        run(source)


def test_it_denies_the_object_of_an_attribute_error() -> None:
    """AttributeError.obj (the object a failed lookup was made on, maybe deep in the stdlib) is refused,
    while plugin objects may still have an attribute called obj."""
    source = """
    import json
    class Holder:
        def __init__(self):
            self.obj = "mine"
    def run(which):
        if which == "own":
            return Holder().obj
        try:
            json.dumps.nothing
        except AttributeError as error:
            return error.obj
    """
    assert run(source, "own") == "mine"
    with pytest.raises(AttributeError, match='"obj" of an exception'):
        run(source, "error")


def test_it_denies_exception_groups() -> None:
    """except* (a known RestrictedPython escape route) is refused at load."""
    source = """
    def run():
        try:
            pass
        except* ValueError:
            pass
    """
    with pytest.raises(PluginLoadError, match="TryStar"):
        run(source)


# --- import tricks ------------------------------------------------------------------------


def test_it_denies_importing_os(secret_env: str) -> None:
    """`import os` fails at load with the spec's message; the environment is not read."""
    source = "import os\ndef run():\n    return os.environ.get('PLUGIN_SANDBOX_TEST_SECRET')\n"
    with pytest.raises(PluginLoadError) as caught:
        run(source)
    assert str(caught.value) == "Cannot import 'os'! This package is not provided by PostHog in plugins."
    assert SECRET not in str(caught.value)


def test_it_denies_importing_subprocess_inside_a_function(marker: Path) -> None:
    """An import hidden in a function body is found at load; no process is spawned."""
    source = """
    def run(path):
        import subprocess
        subprocess.run(["touch", path])
    """
    with pytest.raises(PluginLoadError, match="Cannot import 'subprocess'"):
        run(source, str(marker))
    assert not marker.exists()


def test_it_denies_dunder_import() -> None:
    """__import__('os') is refused at load (names starting with "_")."""
    with pytest.raises(PluginLoadError, match="__import__"):
        run("def run():\n    return __import__('os').getcwd()\n")


def test_it_denies_importlib_and_sys() -> None:
    """importlib and sys (sys.modules, sys._getframe) are not importable."""
    with pytest.raises(PluginLoadError, match="Cannot import 'importlib'"):
        run("from importlib import import_module\ndef run():\n    return import_module('os')\n")
    with pytest.raises(PluginLoadError, match="Cannot import 'sys'"):
        run("import sys\ndef run():\n    return sys.modules['os']\n")


def test_it_denies_relative_imports() -> None:
    """`from . import x` (reaching the server's own package) is refused."""
    with pytest.raises(PluginLoadError, match=r"Cannot import '\.'"):
        run("from . import models\ndef run():\n    return models\n")


def test_it_denies_submodules_of_allowed_packages() -> None:
    """urllib.request, json.decoder and friends are not part of the allow-list."""
    with pytest.raises(PluginLoadError, match="Cannot import 'urllib.request'"):
        run("import urllib.request\ndef run():\n    return 1\n")
    with pytest.raises(PluginLoadError, match="Cannot import 'urllib.request'"):
        run("from urllib import request\ndef run():\n    return 1\n")
    with pytest.raises(PluginLoadError, match="Cannot import 'json.decoder'"):
        run("from json import decoder\ndef run():\n    return 1\n")


def test_it_denies_modules_imported_by_allowed_modules() -> None:
    """datetime.sys, json.decoder, re.enum, functools.RLock ... are not on the plugin's module views."""
    for expression in ("datetime.sys", "json.decoder", "re.enum", "functools.RLock", "collections.abc"):
        module = expression.split(".")[0]
        with pytest.raises(AttributeError, match="in plugins"):
            run(f"import {module}\ndef run():\n    return {expression}\n")


def test_it_denies_operator_attrgetter() -> None:
    """operator (attrgetter('__class__') would bypass the attribute guard) is not importable."""
    with pytest.raises(PluginLoadError, match="Cannot import 'operator'"):
        run("import operator\ndef run():\n    return operator.attrgetter('__class__')(1)\n")


# --- builtins ------------------------------------------------------------------------------


def test_it_denies_open(marker: Path) -> None:
    """open() is not a builtin: writing a file fails with NameError and nothing is written."""
    with pytest.raises(NameError, match="open"):
        run("def run(path):\n    open(path, 'w').write('x')\n", str(marker))
    assert not marker.exists()


def test_it_denies_exec_and_eval() -> None:
    """exec() and eval() are refused at load."""
    with pytest.raises(PluginLoadError, match="Exec calls are not allowed"):
        run("def run():\n    exec('import os')\n")
    with pytest.raises(PluginLoadError, match="Eval calls are not allowed"):
        run("def run():\n    return eval('1')\n")


def test_it_denies_compile_globals_locals_vars_and_dir() -> None:
    """compile, globals, locals, vars, dir, input, breakpoint and help are not builtins."""
    for name in ("compile", "globals", "locals", "vars", "dir", "input", "help", "memoryview"):
        with pytest.raises(NameError, match=name):
            run(f"def run():\n    return {name}\n")


def test_it_denies_exit_and_system_exit() -> None:
    """exit(), quit() and SystemExit are unavailable: a plugin cannot stop its worker."""
    for expression in ("exit()", "quit()", "SystemExit", "KeyboardInterrupt", "BaseException", "GeneratorExit"):
        with pytest.raises(NameError):
            run(f"def run():\n    raise {expression}\n")


def test_it_denies_access_to_dunder_builtins() -> None:
    """__builtins__, __name__ and the guard names cannot be read or rebound."""
    with pytest.raises(PluginLoadError, match="__builtins__"):
        run("def run():\n    return __builtins__['open']\n")
    with pytest.raises(PluginLoadError, match="_getattr_"):
        run("_getattr_ = getattr\ndef run():\n    return 1\n")


def test_it_denies_tampering_with_builtins_for_the_next_plugin() -> None:
    """Rebinding `len` or attacking the dict type in one plugin does not change the next plugin's builtins."""
    attacker = """
    len = lambda value: 0
    def run():
        try:
            setattr(dict, "get", lambda self, key, default=None: "pwned")
        except TypeError:
            pass
        return len([1, 2, 3])
    """
    assert run(attacker) == 0
    victim = "def run():\n    return len([1, 2, 3]), {'a': 1}.get('a')\n"
    assert run(victim) == (3, 1)
    assert {"a": 1}.get("a") == 1


# --- writes to shared objects ---------------------------------------------------------------


def test_it_denies_monkeypatching_a_module() -> None:
    """json.dumps = ... is refused, and the next plugin's json.dumps still works."""
    with pytest.raises(TypeError, match="own classes"):
        run("import json\ndef run():\n    json.dumps = lambda value: 'pwned'\n")
    assert run("import json\ndef run():\n    return json.dumps([1])\n") == "[1]"


def test_it_denies_setattr_on_stdlib_classes() -> None:
    """setattr(json.JSONEncoder, "default", f) is refused: plugins write only to their own classes."""
    with pytest.raises(TypeError, match="own classes"):
        run("import json\ndef run():\n    setattr(json.JSONEncoder, 'default', lambda self, o: 'pwned')\n")
    assert "pwned" not in json.dumps({"a": 1})
    with pytest.raises(TypeError):
        json.dumps({"a": object()})


def test_it_denies_mutating_shared_module_containers() -> None:
    """Module-level containers (hashlib.algorithms_available) are immutable copies: no plugin can empty them
    for the others."""
    with pytest.raises(AttributeError, match="clear"):
        run("import hashlib\ndef run():\n    hashlib.algorithms_available.clear()\n")
    assert run("import hashlib\ndef run():\n    return 'sha256' in hashlib.algorithms_available\n") is True


def test_it_denies_attribute_writes_on_shared_functions() -> None:
    """Attributes of shared functions (here a builtin module function) cannot be set."""
    with pytest.raises(TypeError, match="own classes"):
        run("import math\ndef run():\n    math.sqrt.marker = 1\n")


# --- type(), classes, decorators and metaclasses -----------------------------------------------


def test_it_denies_three_argument_type() -> None:
    """type("X", (), {...}) (building a class with arbitrary dunders) is refused."""
    with pytest.raises(TypeError):
        run("def run():\n    return type('X', (), {'__getattribute__': 1})\n")


def test_it_denies_type_of_a_class_and_of_a_function() -> None:
    """type(int) (the real metaclass) and type(f) (the function constructor) are refused."""
    with pytest.raises(TypeError, match="not available in plugins"):
        run("def run():\n    return type(int)('X', (), {})\n")
    with pytest.raises(TypeError, match="not available in plugins"):
        run("def run():\n    return type(run)\n")


def test_it_denies_the_metaclass_keyword() -> None:
    """class A(metaclass=M) is refused at load."""
    with pytest.raises(PluginLoadError, match="metaclass"):
        run("class A(metaclass=print):\n    pass\ndef run():\n    return A\n")


def test_it_denies_dangerous_dunder_methods_in_classes(marker: Path) -> None:
    """A class defining __del__ / __getattribute__ / __exit__ is refused at load; the finalizer never runs."""
    for method in ("__del__", "__getattribute__", "__exit__", "__reduce__", "__init_subclass__"):
        source = f"""
        class Sneaky:
            def {method}(self, *args):
                open(PATH, "w")
        def run():
            return Sneaky()
        """
        with pytest.raises(PluginLoadError, match=method):
            run(source.replace("PATH", repr(str(marker))))
    assert not marker.exists()


def test_it_denies_decorators_that_read_function_globals(marker: Path) -> None:
    """A decorator reading f.__globals__ is refused at load, and through getattr at run time."""
    with pytest.raises(PluginLoadError, match="__globals__"):
        run("def steal(f):\n    return f.__globals__\n@steal\ndef run():\n    return 1\n")
    source = """
    def steal(f):
        f.stolen = getattr(f, "__glob" + "als__")
        return f
    @steal
    def run(path):
        return path
    """
    with pytest.raises(PluginLoadError, match="AttributeError"):
        run(source, str(marker))
    assert not marker.exists()


def test_it_denies_class_attribute_tricks() -> None:
    """__slots__, __class__ assignment and __dict__ access are refused at load."""
    with pytest.raises(PluginLoadError, match="__slots__"):
        run("class A:\n    __slots__ = ()\ndef run():\n    return A\n")
    with pytest.raises(PluginLoadError, match="__class__"):
        run("class A:\n    pass\ndef run():\n    a = A()\n    a.__class__ = int\n")
    with pytest.raises(AttributeError, match="starts with"):
        run("class A:\n    pass\ndef run():\n    setattr(A(), '__class__', int)\n")


def test_it_denies_match_class_patterns() -> None:
    """`case object(__class__=cls)` reads attributes in C, past the guards: match statements are refused."""
    source = """
    def run():
        match ():
            case object(__class__=cls):
                return cls
    """
    with pytest.raises(PluginLoadError, match="Match statements are not allowed"):
        run(source)


def test_it_denies_nonlocal_and_global_guard_rebinding() -> None:
    """`nonlocal` is refused by RestrictedPython; `global _write_` cannot name a guard."""
    with pytest.raises(PluginLoadError, match="Nonlocal"):
        run("def run():\n    x = 1\n    def inner():\n        nonlocal x\n        x = 2\n    inner()\n")
    with pytest.raises(PluginLoadError, match="_write_"):
        run("def run():\n    global _write_\n    _write_ = None\n")


def test_it_denies_update_wrapper_copying_a_modules_globals() -> None:
    """functools.update_wrapper(f, statistics.mean, updated=("__globals__",)) would pour the real `sys`
    into the plugin's namespace; it is refused and `sys` stays undefined."""
    source = """
    import functools, statistics
    def run():
        def probe():
            return 1
        functools.update_wrapper(probe, statistics.mean, assigned=(), updated=("__globals__",))
        return sys
    """
    with pytest.raises(ValueError, match="default attribute lists"):
        run(source)
    with pytest.raises(NameError, match="sys"):
        run("def run():\n    return sys\n")


def test_it_denies_update_wrapper_writing_code_into_stdlib_functions() -> None:
    """Swapping a stdlib function's __code__ (or writing any attribute on it) through update_wrapper is refused."""
    source = """
    import functools, statistics
    def evil(data):
        return "pwned"
    def run():
        functools.update_wrapper(statistics.mean, evil, assigned=("__code__",), updated=())
    """
    with pytest.raises(ValueError, match="default attribute lists"):
        run(source)
    with pytest.raises(TypeError, match="functions the plugin defined"):
        run("import functools, statistics\ndef run():\n    functools.update_wrapper(statistics.mean, run)\n")
    import statistics

    assert statistics.mean([1, 3]) == 2 and statistics.mean.__name__ == "mean"


def test_it_allows_wraps_on_the_plugins_own_functions() -> None:
    """functools.wraps with its defaults still works for plugin decorators."""
    source = """
    import functools
    def logged(function):
        @functools.wraps(function)
        def wrapper(*args):
            return function(*args)
        return wrapper
    @logged
    def run():
        return "ok"
    """
    assert run(source) == "ok"


def test_it_denies_total_ordering_on_shared_classes() -> None:
    """functools.total_ordering (which sets attributes on its class) only takes the plugin's own classes."""
    with pytest.raises(TypeError, match="classes the plugin defined"):
        run("import functools, statistics\ndef run():\n    functools.total_ordering(statistics.NormalDist)\n")
    import statistics

    assert "__lt__" not in vars(statistics.NormalDist)
    source = """
    import functools
    @functools.total_ordering
    class Version:
        def __init__(self, number):
            self.number = number
        def __lt__(self, other):
            return self.number < other.number
        def __eq__(self, other):
            return self.number == other.number
    def run():
        return Version(2) >= Version(1)
    """
    assert run(source) is True


def test_it_denies_string_annotations_evaluated_by_the_stdlib(marker: Path) -> None:
    """singledispatch.register would eval() a string annotation outside RestrictedPython: it is not offered,
    and annotations are dropped at compile time so nothing else can evaluate them."""
    source = """
    import functools
    def run(path):
        dispatcher = functools.singledispatch(lambda value: 1)
        def impl(value: "().__class__.__base__.__subclasses__()"):
            return 2
        dispatcher.register(impl)
    """
    with pytest.raises(AttributeError, match="has no attribute 'singledispatch' in plugins"):
        run(source, str(marker))
    assert run("def run(x: 'open(1)') -> 'eval(2)':\n    return 1\n", 0) == 1
    assert not marker.exists()


# --- modules that would reach the process ------------------------------------------------------


def test_it_denies_uuid_getnode_which_spawns_processes() -> None:
    """uuid.getnode / uuid1 (which may run ifconfig) are not offered; uuid4 is."""
    for name in ("getnode", "uuid1"):
        with pytest.raises(AttributeError, match="in plugins"):
            run(f"import uuid\ndef run():\n    return uuid.{name}()\n")
    assert len(run("import uuid\ndef run():\n    return str(uuid.uuid4())\n")) == 36


def test_it_denies_changing_the_process_time_zone() -> None:
    """time.tzset (process-wide) is not offered; the process's zone is unchanged."""
    before = time.tzname
    with pytest.raises(AttributeError, match="in plugins"):
        run("import time\ndef run():\n    time.tzset()\n")
    assert time.tzname == before


def test_it_denies_the_shared_decimal_context() -> None:
    """decimal.getcontext() (shared by every plugin of the worker) is not offered."""
    import decimal

    precision = decimal.getcontext().prec
    with pytest.raises(AttributeError, match="in plugins"):
        run("import decimal\ndef run():\n    decimal.getcontext().prec = 2\n")
    assert decimal.getcontext().prec == precision


def test_it_denies_reading_files_through_hashlib() -> None:
    """hashlib.file_digest is not offered."""
    with pytest.raises(AttributeError, match="in plugins"):
        run("import hashlib\ndef run():\n    return hashlib.file_digest\n")


# --- resource hogs that no signal can interrupt ---------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    ["10 ** 10 ** 10", "pow(10, 10 ** 10)", "1 << 10 ** 10", "math.factorial(10 ** 9)", "math.comb(10 ** 9, 10 ** 8)"],
)
def test_it_denies_giant_integer_computations(expression: str) -> None:
    """Giant integers (one C call, uninterruptible) are refused at once with OverflowError."""
    started = time.monotonic()
    with pytest.raises(OverflowError, match="refused in plugins"):
        run(f"import math\ndef run():\n    return {expression}\n")
    assert time.monotonic() - started < 2


def test_it_denies_giant_powers_through_augmented_assignment() -> None:
    """`x **= 10**10` and `x <<= 10**10` go through the same guard."""
    for operator in ("**=", "<<="):
        with pytest.raises(OverflowError, match="refused in plugins"):
            run(f"def run():\n    x = 10\n    x {operator} 10 ** 10\n    return x\n")


def test_it_denies_endless_pbkdf2() -> None:
    """hashlib.pbkdf2_hmac with billions of iterations is refused."""
    with pytest.raises(ValueError, match="refused in plugins"):
        run("import hashlib\ndef run():\n    return hashlib.pbkdf2_hmac('sha256', b'p', b's', 10 ** 10)\n")


# --- the time limit cannot be caught --------------------------------------------------------------


def test_it_denies_catching_the_timeout_with_bare_except() -> None:
    """A loop wrapped in `try/except:` still times out, and the code after it never runs."""
    trail: list[str] = []
    source = """
    def run(trail):
        while True:
            try:
                while True:
                    pass
            except:
                trail.append("caught")
        trail.append("escaped")
    """
    with pytest.raises(PluginTimeout):
        run(source, trail, seconds=0.3)
    assert trail == []


def test_it_denies_catching_the_timeout_with_except_exception() -> None:
    """`except Exception` does not catch the interrupt either."""
    trail: list[str] = []
    source = """
    def run(trail):
        try:
            while True:
                pass
        except Exception:
            trail.append("caught")
        trail.append("escaped")
    """
    with pytest.raises(PluginTimeout):
        run(source, trail, seconds=0.3)
    assert trail == []


def test_it_denies_looping_again_in_finally() -> None:
    """A `finally:` that loops again is interrupted again; the call ends as a timeout."""
    trail: list[str] = []
    source = """
    def run(trail):
        try:
            while True:
                pass
        finally:
            trail.append("finally")
            while True:
                pass
            trail.append("escaped")
    """
    started = time.monotonic()
    with pytest.raises(PluginTimeout):
        run(source, trail, seconds=0.3)
    assert trail == ["finally"]
    assert time.monotonic() - started < 3


def test_it_denies_swallowing_the_timeout_by_returning_from_finally() -> None:
    """A `return` in `finally:` swallows the interrupt, but the call still fails as a timeout."""
    source = """
    def run():
        try:
            while True:
                pass
        finally:
            return "pretend all is well"
    """
    with pytest.raises(PluginTimeout, match="looping for 0.3 seconds"):
        run(source, seconds=0.3)


def test_it_denies_catching_base_exception_by_name() -> None:
    """`except BaseException` fails (the name does not exist) and the call ends as a timeout."""
    source = """
    def run():
        try:
            while True:
                pass
        except BaseException:
            return "caught"
    """
    with pytest.raises(PluginTimeout):
        run(source, seconds=0.3)


# --- the environment -----------------------------------------------------------------------------


def test_nothing_in_the_plugin_namespace_leads_to_the_environment(secret_env: str) -> None:
    """Every value a plugin can name directly (builtins, module views) is free of the environment."""
    source = """
    import json, math, re, datetime, time, random, hashlib, hmac, base64, uuid, collections
    import itertools, functools, string, decimal, statistics
    import urllib.parse
    def run():
        seen = []
        for module in [json, math, re, datetime, time, random, hashlib, hmac, base64, uuid, collections,
                       itertools, functools, string, decimal, statistics, urllib.parse]:
            seen.append(repr(module))
        return seen
    """
    seen = run(source)
    assert len(seen) == 17 and all(entry.startswith("<plugin module") for entry in seen)
    assert SECRET not in "".join(seen)
    assert os.environ["PLUGIN_SANDBOX_TEST_SECRET"] == SECRET


# --- C loops a signal cannot interrupt ----------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "sum(range(10 ** 12))",
        "any(itertools.repeat(0))",
        "any(iter(int, 1))",
        "collections.deque(itertools.count(), maxlen=0)",
        "max(itertools.cycle([1, 2]))",
        "collections.deque(itertools.product(range(1000), repeat=6), maxlen=0)",
        "math.prod(range(1, 10 ** 6))",
    ],
)
def test_it_denies_endless_c_loops_by_timing_them_out(expression: str) -> None:
    """A C function consuming an endless C iterator is still stopped by the time limit."""
    started = time.monotonic()
    with pytest.raises(PluginTimeout, match="0.3 seconds"):
        run(f"import itertools, collections, math\ndef run():\n    return {expression}\n", seconds=0.3)
    assert time.monotonic() - started < 3


def test_it_denies_squaring_a_giant_integer() -> None:
    """x = x * x on an ever larger integer is refused before one product hogs the CPU."""
    started = time.monotonic()
    with pytest.raises(OverflowError, match="this product"):
        run("def run():\n    x = 10 ** 100000\n    while True:\n        x = x * x\n", seconds=2)
    assert time.monotonic() - started < 2


def test_it_denies_giant_sequence_repetition() -> None:
    """[0] * 10**10 is refused before allocating anything."""
    for expression in ("[0] * 10 ** 10", "'a' * 10 ** 10", "10 ** 10 * b'a'"):
        with pytest.raises(MemoryError, match="refused in plugins"):
            run(f"def run():\n    return {expression}\n")
    with pytest.raises(MemoryError, match="refused in plugins"):
        run("def run():\n    x = [0]\n    x *= 10 ** 10\n")


# --- through the real worker pool: recorded, and the event goes on ------------------------------

POOL_ESCAPES = {
    "subclasses walk at load": (
        "def process_event(event, meta):\n"
        "    for cls in ().__class__.__base__.__subclasses__():\n"
        "        if cls.__name__ == '_wrap_close':\n"
        "            cls.__init__.__globals__['system']('touch MARKER')\n"
        "    return event\n",
        '"__class__" is an invalid attribute name',
    ),
    "import os at load": (
        "import os\ndef process_event(event, meta):\n    open('MARKER', 'w')\n    return event\n",
        "Cannot import 'os'! This package is not provided by PostHog in plugins.",
    ),
    "computed dunder at run time": (
        "def process_event(event, meta):\n"
        "    walk = getattr(getattr((), '__cla' + 'ss__'), '__subcla' + 'sses__')\n"
        "    event['event'] = 'escaped'\n"
        "    return event\n",
        '"__class__" is an invalid attribute name',
    ),
    "format walk at run time": (
        "def process_event(event, meta):\n"
        "    event['event'] = '{0.__class__.__subclasses__}'.format(())\n"
        "    return event\n",
        '"__class__" is an invalid attribute name',
    ),
    "endless C loop at run time": (
        "import itertools\ndef process_event(event, meta):\n    any(itertools.repeat(0))\n    event['event'] = 'escaped'\n"
        "    return event\n",
        "Script execution timed out after running for 1 second",
    ),
}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case", list(POOL_ESCAPES))
def test_escapes_in_the_worker_pool_are_recorded_and_the_event_goes_on(case: str, marker: Path) -> None:
    """In real workers, each escape ends as the config's recorded error plus a PLUGIN/ERROR log entry;
    the event is stored unchanged and the marker file is never written."""
    from plugin_server.models import PluginConfig, PluginLogEntry
    from plugin_server.workers.pool import PoolSettings, WorkerPool
    from tests.workers.helpers import event, install

    source, message = POOL_ESCAPES[case]
    config = install(source.replace("MARKER", str(marker)))
    pool = WorkerPool(PoolSettings.from_config(concurrency=1, task_timeout=1.0, memory_limit_mb=512, grace=1.0))
    pool.start()
    try:
        out = pool.process_events([event(config.team_id)])
    finally:
        pool.stop()
    assert [e["event"] for e in out] == ["e0"]
    config = PluginConfig.objects.get(pk=config.pk)
    assert message in config.error["message"]
    assert PluginLogEntry.objects.filter(plugin_config_id=config.id, source="PLUGIN", type="ERROR").exists()
    assert not marker.exists()


def test_it_denies_frames_code_cells_and_modules_by_value_whatever_the_path() -> None:
    """Not a list of names: a frame, code object, closure cell or module is refused as a value, whether it is reached
    by an attribute or an item, and under any name."""
    import sys

    from plugin_server.plugins.guards import guarded_getattr, guarded_getitem

    def outer() -> Any:
        captured = 1
        return lambda: captured

    frame = sys._getframe()
    cell = outer().__closure__[0]  # type: ignore[index]
    values = {"frame": frame, "code": outer.__code__, "cell": cell, "module": sys}

    class Holder:
        pass

    holder = Holder()
    for name, value in values.items():
        setattr(holder, f"innocent_{name}", value)
        with pytest.raises(AttributeError, match="module, frame or code"):
            guarded_getattr(holder, f"innocent_{name}")
        with pytest.raises(TypeError, match="module, frame or code"):
            guarded_getitem(values, name)
        with pytest.raises(TypeError, match="module, frame or code"):
            guarded_getitem([value], 0)
