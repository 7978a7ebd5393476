"""What a plugin may do in the sandbox, how its exports are found, and the time limit (plugins.md §3, §7)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from plugin_server.exceptions import PluginLoadError, PluginTimeout
from plugin_server.plugins.sandbox import PluginExports, call_with_time_limit, compile_plugin
from tests.plugins.sandbox_helpers import compile_source, plugin_code, run_job

# --- exports ------------------------------------------------------------------------


def test_empty_plugin_has_no_methods() -> None:
    """Empty code compiles to exports with every method None and no jobs."""
    assert compile_source("") == PluginExports()


def test_snake_case_exports_are_found() -> None:
    """Every method of python-plugins.md is found by its snake_case name."""
    names = [
        "setup_plugin",
        "teardown_plugin",
        "process_event",
        "process_event_batch",
        "on_event",
        "on_snapshot",
        "run_every_minute",
        "run_every_hour",
        "run_every_day",
    ]
    exports = compile_source("".join(f"def {name}(*args):\n    return '{name}'\n" for name in names))
    for name in names:
        assert getattr(exports, name)() == name


def test_camel_case_aliases_are_accepted() -> None:
    """processEvent, runEveryMinute ... are accepted as aliases; snake_case wins when both exist."""
    exports = compile_source(
        """
        def processEvent(event, meta):
            return "camel"
        def runEveryMinute(meta):
            return "minute"
        def setupPlugin(meta):
            return "setup"
        def setup_plugin(meta):
            return "snake"
        """
    )
    assert exports.process_event is not None and exports.process_event({}, None) == "camel"
    assert exports.run_every_minute is not None and exports.run_every_minute(None) == "minute"
    assert exports.setup_plugin is not None and exports.setup_plugin(None) == "snake"


def test_non_callable_exports_are_ignored() -> None:
    """A module-level value that is not a function (e.g. `run_every_minute = None`) is not a method."""
    exports = compile_source("run_every_minute = None\nprocess_event = 3\n")
    assert exports.run_every_minute is None and exports.process_event is None


def test_jobs_dict_is_exported() -> None:
    """`jobs = {"name": fn}` becomes PluginExports.jobs."""
    exports = compile_source("def hello(payload, meta):\n    return payload * 2\njobs = {'hello': hello}\n")
    assert exports.jobs["hello"](21, None) == 42


def test_jobs_must_be_a_dict_of_functions() -> None:
    """`jobs` that is not a dict of functions is a load error."""
    with pytest.raises(PluginLoadError, match='"jobs" must be a dict'):
        compile_source("jobs = [1]\n")
    with pytest.raises(PluginLoadError, match='"jobs" entries'):
        compile_source("jobs = {'x': 1}\n")


def test_setup_state_is_kept_in_meta_global() -> None:
    """setup_plugin stores into meta.global_ and process_event reads it back (vm.test 'setupPlugin sync')."""

    class Meta:
        global_: dict[str, Any] = {}

    exports = compile_source(
        """
        def setup_plugin(meta):
            meta.global_["name"] = "haha"
        def process_event(event, meta):
            event["event"] = meta.global_["name"]
            return event
        """
    )
    meta = Meta()
    assert exports.setup_plugin is not None and exports.process_event is not None
    exports.setup_plugin(meta)
    assert exports.process_event({"event": "x"}, meta) == {"event": "haha"}


def test_process_event_returns_the_same_mutated_object() -> None:
    """The event dict handed in is the one mutated and returned."""
    exports = compile_source("def process_event(event, meta):\n    event['event'] = 'changed event'\n    return event\n")
    event = {"event": "original"}
    assert exports.process_event is not None
    assert exports.process_event(event, None) is event and event["event"] == "changed event"


def test_injected_globals_are_visible() -> None:
    """Names the pool injects (posthog) are plugin globals."""

    class Posthog:
        def __init__(self) -> None:
            self.captured: list[tuple[str, dict[str, Any]]] = []

        def capture(self, event: str, properties: dict[str, Any] | None = None) -> None:
            self.captured.append((event, properties or {}))

    posthog = Posthog()
    exports = compile_source(
        "def run_every_minute(meta):\n    posthog.capture('my-new-event', {'random': 'properties'})\n    return 'haha'\n",
        posthog=posthog,
    )
    assert exports.run_every_minute is not None and exports.run_every_minute(None) == "haha"
    assert posthog.captured == [("my-new-event", {"random": "properties"})]


def test_print_goes_to_the_injected_print() -> None:
    """print(...) in a plugin calls the injected print with the same arguments."""
    printed: list[tuple[Any, ...]] = []
    exports = compile_source("def process_event(event, meta):\n    print('logged event', 1)\n    return event\n", printed)
    assert exports.process_event is not None
    exports.process_event({}, None)
    assert printed == [("logged event", 1)]


def test_print_to_a_file_is_refused() -> None:
    """print(file=...) is refused: a plugin has no files."""
    with pytest.raises(TypeError, match="file"):
        run_job("def run():\n    print('x', file=1)\njobs = {'run': run}\n")


# --- allowed constructs ------------------------------------------------------------


def test_it_allows_comprehensions_closures_and_lambdas() -> None:
    """List/dict/set comprehensions, generators, closures and lambdas work."""
    source = """
    def make_adder(n):
        def add(x):
            return x + n
        return add
    def run():
        squares = [i * i for i in range(5)]
        index = {str(i): i for i in squares if i}
        odd = {i for i in squares if i % 2}
        total = sum(x for x in squares)
        add3 = make_adder(3)
        double = lambda x: x * 2
        return squares, index, sorted(odd), total, add3(4), double(5)
    jobs = {"run": run}
    """
    assert run_job(source) == ([0, 1, 4, 9, 16], {"1": 1, "4": 4, "9": 9, "16": 16}, [1, 9], 30, 7, 10)


def test_it_allows_classes_with_init_and_attributes() -> None:
    """Plugin classes with __init__, methods, inheritance and attribute writes on their instances work."""
    source = """
    class Counter:
        def __init__(self, start):
            self.value = start
        def bump(self):
            self.value = self.value + 1
            return self.value
        def __eq__(self, other):
            return isinstance(other, Counter) and other.value == self.value
    class Twice(Counter):
        def bump(self):
            Counter.bump(self)
            return Counter.bump(self)
    def run():
        counter = Twice(1)
        counter.label = "x"
        Counter.kind = "class attribute"
        return counter.bump(), counter.label, Twice.kind, Counter(3) == counter
    jobs = {"run": run}
    """
    assert run_job(source) == (3, "x", "class attribute", True)


def test_it_allows_try_except_finally_and_raise() -> None:
    """try / except / else / finally and raising built-in exceptions work as in Python."""
    source = """
    def run():
        trail = []
        try:
            raise ValueError("boom")
        except ValueError as error:
            trail.append(str(error))
        else:
            trail.append("else")
        finally:
            trail.append("finally")
        try:
            {}["missing"]
        except:
            trail.append("bare except")
        return trail
    jobs = {"run": run}
    """
    assert run_job(source) == ["boom", "finally", "bare except"]


def test_it_allows_f_strings_percent_formatting_and_augmented_assignment() -> None:
    """f-strings with format specs, % formatting and `x += ...` (names) work."""
    source = """
    def run():
        total = 0
        for i in range(4):
            total += i
        total **= 2
        name = "pi"
        return f"{name}={3.14159:.2f} {total:>4}|", "%s-%d" % ("a", 5), "%(k)s" % {"k": "v"}
    jobs = {"run": run}
    """
    assert run_job(source) == ("pi=3.14   36|", "a-5", "v")


def test_it_allows_unpacking_star_args_and_decorators() -> None:
    """Tuple unpacking in for loops, *args/**kwargs calls and plain decorators work."""
    source = """
    def shout(function):
        def wrapper(*args, **kwargs):
            return function(*args, **kwargs).upper()
        return wrapper
    @shout
    def greet(name, punctuation="!"):
        return "hi " + name + punctuation
    def run():
        pairs = [(1, "a"), (2, "b")]
        out = []
        for number, (letter,) in [(n, (l,)) for n, l in pairs]:
            out.append(str(number) + letter)
        first, *rest = [1, 2, 3]
        return out, first, rest, greet(*["bob"], **{"punctuation": "?"})
    jobs = {"run": run}
    """
    assert run_job(source) == (["1a", "2b"], 1, [2, 3], "HI BOB?")


def test_it_allows_type_hints() -> None:
    """Type annotations are allowed (the spec's 'TypeScript is accepted') and dropped."""
    source = """
    def run(x: int = 1) -> dict[str, int]:
        value: int = x + 1
        later: str
        return {"value": value}
    jobs = {"run": run}
    """
    assert run_job(source) == {"value": 2}
    # Dropped at compile time: nothing (typing.get_type_hints, singledispatch) can eval them later.
    assert compile_source(source).jobs["run"].__annotations__ == {}


def test_it_allows_small_integer_powers() -> None:
    """`**`, pow() and `<<` work for ordinary numbers (the size guard only refuses giant integers)."""
    source = """
    def run():
        return 2 ** 10, pow(3, 4), pow(2, 100, 7), 1 << 8, 2.0 ** 0.5, (-2) ** 3, 10 ** 1000 > 0
    jobs = {"run": run}
    """
    assert run_job(source) == (1024, 81, 2, 256, 2.0**0.5, -8, True)


@pytest.mark.parametrize(
    "statement, expected",
    [
        ("import json\nvalue = json.loads(json.dumps({'a': [1, 2]}))", {"a": [1, 2]}),
        ("import math\nvalue = (math.floor(math.pi), math.factorial(5), math.sqrt(16))", (3, 120, 4.0)),
        ("import re\nvalue = re.sub(r'\\d+', '#', 'a1b22') + str(bool(re.match('a', 'abc')))", "a#b#True"),
        (
            "import datetime\nvalue = (datetime.datetime(2021, 5, 1) + datetime.timedelta(days=1)).isoformat()",
            "2021-05-02T00:00:00",
        ),
        ("import time\nvalue = time.time() > 0 and time.strftime('%Y', time.gmtime(0))", "1970"),
        ("import random\nrandom.seed(1)\nvalue = 0 <= random.randint(1, 6) - 1 < 6", True),
        ("import hashlib\nvalue = hashlib.sha256(b'x').hexdigest()[:8]", "2d711642"),
        ("import hmac\nvalue = hmac.new(b'k', b'm', 'sha256').hexdigest()[:8]", "b60090e3"),
        ("import base64\nvalue = base64.b64encode(b'hi').decode()", "aGk="),
        ("import uuid\nvalue = str(uuid.uuid5(uuid.NAMESPACE_DNS, 'posthog.com'))[:8]", "83223374"),
        ("import urllib.parse\nvalue = urllib.parse.urlencode({'q': 'a b'})", "q=a+b"),
        ("from urllib.parse import quote\nvalue = quote('a b')", "a%20b"),
        ("from urllib import parse\nvalue = parse.unquote('a%20b')", "a b"),
        ("import collections\nvalue = collections.Counter('abca').most_common(1)", [("a", 2)]),
        ("import itertools\nvalue = list(itertools.chain([1], [2]))", [1, 2]),
        ("import functools\nvalue = functools.reduce(lambda a, b: a + b, [1, 2, 3])", 6),
        ("import string\nvalue = string.Template('$x!').substitute(x='y') + string.digits[:2]", "y!01"),
        ("import decimal\nvalue = str(decimal.Decimal('1.1') + decimal.Decimal('2.2'))", "3.3"),
        ("import statistics\nvalue = statistics.mean([1, 2, 3])", 2),
        ("from collections import OrderedDict, defaultdict\nd = defaultdict(list)\nd['a'].append(1)\nvalue = dict(d)", {"a": [1]}),
    ],
    ids=lambda value: value.split("\n")[0] if isinstance(value, str) else None,
)
def test_it_allows_each_allow_listed_module(statement: str, expected: object) -> None:
    """Every module of python-plugins.md's allow-list imports and works."""
    source = f"{statement}\ndef run():\n    return value\njobs = {{'run': run}}\n"
    assert run_job(source) == expected


def test_each_plugin_gets_its_own_random_generator() -> None:
    """random.seed in one plugin does not fix another plugin's sequence (each has its own generator)."""
    seeded = "import random\ndef run():\n    random.seed(42)\n    return [random.random() for i in range(3)]\njobs = {'run': run}\n"
    reader = "import random\ndef run():\n    return [random.random() for i in range(3)]\njobs = {'run': run}\n"
    first = run_job(seeded)
    second_exports = compile_source(reader)
    compile_source(seeded).jobs["run"]()
    assert run_job(seeded) == first
    assert second_exports.jobs["run"]() != first


def test_decimal_local_context_is_allowed() -> None:
    """decimal.localcontext() works (the shared getcontext() is not offered)."""
    source = """
    import decimal
    def run():
        with decimal.localcontext() as context:
            context.prec = 3
            return str(decimal.Decimal(1) / decimal.Decimal(7))
    jobs = {"run": run}
    """
    # Attribute writes on a Context the plugin did not define are refused: use Context(prec=...) instead.
    with pytest.raises(TypeError, match="own classes"):
        run_job(source)
    source_ok = """
    import decimal
    def run():
        with decimal.localcontext(decimal.Context(prec=3)):
            return str(decimal.Decimal(1) / decimal.Decimal(7))
    jobs = {"run": run}
    """
    assert run_job(source_ok) == "0.143"


# --- load errors ------------------------------------------------------------------


def test_syntax_error_is_a_load_error_with_the_line() -> None:
    """A syntax error raises PluginLoadError naming the problem and the line."""
    with pytest.raises(PluginLoadError, match=r"SyntaxError: .*line 2"):
        compile_source("def process_event(event, meta):\nreturn event\n")


def test_exception_in_module_body_is_a_load_error() -> None:
    """An exception while running the module body raises PluginLoadError with its type and message."""
    with pytest.raises(PluginLoadError, match="ZeroDivisionError: division by zero"):
        compile_source("x = 1 / 0\n")


def test_import_outside_the_allow_list_fails_at_load_with_the_spec_message() -> None:
    """`import kea` fails at load: `Cannot import 'kea'! This package is not provided by PostHog in plugins.`"""
    with pytest.raises(PluginLoadError) as caught:
        compile_source("def process_event(event, meta):\n    import kea\n    return event\n")
    assert str(caught.value) == "Cannot import 'kea'! This package is not provided by PostHog in plugins."


# --- time limits ------------------------------------------------------------------


def test_call_with_time_limit_returns_the_result() -> None:
    """Within its time the call returns its value and leaves no timer behind."""
    exports = compile_source("def process_event(event, meta):\n    return event\n")
    assert exports.process_event is not None
    assert call_with_time_limit(exports.process_event, {"a": 1}, None, seconds=1) == {"a": 1}
    time.sleep(0.05)  # a stray timer would raise here


def test_while_true_times_out_with_the_loop_position() -> None:
    """`while True: pass` is stopped after the limit: `... after looping for 1 second on line 3:4`."""
    source = "\ndef run():\n    while True:\n        pass\njobs = {'run': run}\n"
    started = time.monotonic()
    with pytest.raises(PluginTimeout) as caught:
        run_job(source, seconds=1)
    assert time.monotonic() - started >= 1
    assert str(caught.value) == "Script execution timed out after looping for 1 second on line 3:4"


def test_for_loop_time_out_message_is_plural() -> None:
    """A long for loop is stopped; the message says `seconds` for a non-one limit."""
    source = "def run():\n    x = 0\n    for i in range(10 ** 12):\n        x = x + i\njobs = {'run': run}\n"
    with pytest.raises(PluginTimeout, match=r"^Script execution timed out after looping for 0.3 seconds on line 3:4$"):
        run_job(source, seconds=0.3)


def test_loop_in_a_called_function_is_named() -> None:
    """The innermost loop on the plugin's stack is the one named, even through calls."""
    source = """
    def spin():
        y = 0
        return y
    def run():
        while True:
            spin()
    jobs = {"run": run}
    """
    with pytest.raises(PluginTimeout, match=r"looping for 0.3 seconds on line 6:4$"):
        run_job(source, seconds=0.3)


def test_sleep_times_out_as_waiting() -> None:
    """time.sleep past the limit fails with `Script execution timed out after promise waited for ...`."""
    source = "import time\ndef run():\n    time.sleep(4)\njobs = {'run': run}\n"
    started = time.monotonic()
    with pytest.raises(PluginTimeout) as caught:
        run_job(source, seconds=0.5)
    assert time.monotonic() - started < 2
    assert str(caught.value) == "Script execution timed out after promise waited for 0.5 seconds"


def test_small_sleeps_add_up_to_a_timeout() -> None:
    """Four sequential 0.3 s sleeps under a 0.5 s limit time out (vm.timeout 'small promises')."""
    source = "import time\ndef run():\n    for i in range(4):\n        time.sleep(0.3)\njobs = {'run': run}\n"
    with pytest.raises(PluginTimeout, match="timed out"):
        run_job(source, seconds=0.5)


def test_catastrophic_regex_times_out() -> None:
    """A regex with catastrophic backtracking is interrupted by the time limit."""
    source = "import re\ndef run():\n    return re.match(r'(a+)+$', 'a' * 40 + 'b')\njobs = {'run': run}\n"
    started = time.monotonic()
    with pytest.raises(PluginTimeout, match="timed out after running for 0.5 seconds on line 3"):
        run_job(source, seconds=0.5)
    assert time.monotonic() - started < 2


def test_huge_power_is_refused_at_once() -> None:
    """`10**10**10` is refused immediately instead of hogging the CPU past any limit."""
    started = time.monotonic()
    with pytest.raises(OverflowError, match="more than 1000000 bits"):
        run_job("def run():\n    return 10 ** 10 ** 10\njobs = {'run': run}\n", seconds=1)
    assert time.monotonic() - started < 2


def test_module_body_is_time_limited() -> None:
    """compile_plugin(seconds=...) stops a module body that never ends."""
    with pytest.raises(PluginTimeout, match="looping for 0.3 seconds on line 1:0"):
        compile_plugin(plugin_code("while True:\n    pass\n"), {}, seconds=0.3)


def test_timeout_in_one_call_does_not_leak_into_the_next() -> None:
    """After a timeout, the next call of the same plugin runs normally."""
    exports = compile_source("def run(n):\n    while n:\n        pass\n    return 'done'\njobs = {'run': run}\n")
    with pytest.raises(PluginTimeout):
        call_with_time_limit(exports.jobs["run"], 1, seconds=0.2)
    assert call_with_time_limit(exports.jobs["run"], 0, seconds=0.2) == "done"
    time.sleep(0.1)


def test_nested_calls_are_refused() -> None:
    """call_with_time_limit does not nest."""
    with pytest.raises(RuntimeError, match="do not nest"):
        call_with_time_limit(lambda: call_with_time_limit(lambda: None, seconds=1), seconds=1)


def test_ranges_and_iterators_keep_their_behaviour() -> None:
    """range, iter, itertools.repeat/count and math.prod give the usual answers (huge ranges included)."""
    source = """
    import itertools, math
    def run():
        small = range(2, 10, 2)
        huge = range(10 ** 12)
        items = []
        for item in iter([1, 2, 3].pop, 1):
            items.append(item)
        counted = list(itertools.islice(itertools.count(5), 3))
        listed = [1, 2]
        alias = listed
        listed *= 2
        return (list(small), len(small), small[1], 4 in small, len(huge), huge[-1], 10 ** 11 in huge,
                huge.index(7), list(huge[3:6]), items, counted, list(itertools.repeat("x", 2)),
                math.prod([2, 3, 4]), alias)
    jobs = {"run": run}
    """
    assert run_job(source) == (
        [2, 4, 6, 8], 4, 4, True, 10**12, 10**12 - 1, True, 7, [3, 4, 5], [3, 2], [5, 6, 7], ["x", "x"], 24,
        [1, 2, 1, 2],
    )


def test_an_outer_timer_is_given_back() -> None:
    """A SIGALRM timer armed before the call (e.g. a test runner's) is re-armed afterwards, minus the time used."""
    import signal

    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 5.0)
        call_with_time_limit(time.sleep, 0.1, seconds=1)
        remaining, _interval = signal.getitimer(signal.ITIMER_REAL)
        assert 3.0 < remaining < 4.95
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired == []


@pytest.fixture
def kept_alarm_handler() -> Any:
    """The worker's mode: handler installed once, a ticking timer, deadlines compared with the clock."""
    from plugin_server.plugins import time_limit

    time_limit.keep_alarm_handler()
    yield time_limit
    time_limit.release_alarm_handler()


def test_kept_handler_mode_times_out_and_runs_the_next_call(kept_alarm_handler: Any) -> None:
    """With the handler kept, an endless loop still times out (message and all), and the next call runs."""
    exports = compile_source("def run(n):\n    while n:\n        pass\n    return 'done'\njobs = {'run': run}\n")
    started = time.monotonic()
    with pytest.raises(PluginTimeout, match=r"looping for 0.3 seconds on line 2:4$"):
        call_with_time_limit(exports.jobs["run"], 1, seconds=0.3)
    assert 0.3 <= time.monotonic() - started < 2
    assert call_with_time_limit(exports.jobs["run"], 0, seconds=0.3) == "done"
    kept_alarm_handler.disarm_alarm()
    time.sleep(0.1)  # an idle worker is not interrupted


def test_kept_handler_mode_deadline_is_per_call(kept_alarm_handler: Any) -> None:
    """Each call gets its own deadline: many short calls in a row never add up to a timeout."""
    exports = compile_source("import time\ndef run():\n    time.sleep(0.05)\n    return 1\njobs = {'run': run}\n")
    assert sum(call_with_time_limit(exports.jobs["run"], seconds=0.2) for _ in range(8)) == 8


def test_memory_error_in_module_body_stays_a_memory_error() -> None:
    """Running out of memory while loading is not disguised as a load error: the pool must see it to recycle."""
    with pytest.raises(MemoryError):
        compile_source("raise MemoryError('out of memory')\n")
