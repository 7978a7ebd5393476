"""Formatting reaches no attribute or item a plugin could not reach by writing the expression itself.

``str.format``/``format_map`` resolve their fields through the plugin guards
(:mod:`plugin_server.plugins.safe_format`), whatever carries the call: the
guards hand plugins the safe formatter, and in worker processes the ``str``
type's own methods are replaced by it (checked here in a fresh interpreter,
as the zygote does it, so that this test process keeps the real ones).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.plugins.sandbox_helpers import run_job

PROJECT = str(Path(__file__).resolve().parents[2])


def job(body: str) -> str:
    return f"import collections, string, functools\ndef run():\n{textwrap.indent(textwrap.dedent(body), '    ')}\njobs = {{'run': run}}\n"


@pytest.mark.parametrize(
    "expression",
    [
        "'{0.__class__}'.format(1)",
        "'{x.__globals__}'.format_map({'x': run})",
        "str.format('{0.__class__}', 1)",
        "functools.partial(str.format, '{0.__init__}')(1)",
        "list(map(str.format, ['{0.gi_frame}'], [(i for i in [1])]))",
        "'{0:{1.__class__}}'.format(1, 2)",
        "'{0[k].__class__}'.format({'k': 1})",
        "'{0[0].real.__class__}'.format([1])",
        "'{0!r:{0.__doc__}}'.format(1)",
    ],
    ids=["attribute", "format_map", "unbound", "partial", "map", "nested spec", "item then attribute", "deep", "spec field"],
)
def test_format_fields_go_through_the_guards(expression: str) -> None:
    """Attribute walks in format fields are refused by the same guard as plugin code, however the call is made."""
    with pytest.raises(AttributeError, match="starts with|restricted name"):
        run_job(job(f"return {expression}"))


def test_plain_formatting_still_works() -> None:
    """Numbering, items, plain attributes, conversions and specs: the format language as plugins use it."""
    source = job(
        """
        return [
            '{} and {}'.format('a', 'b'),
            '{1}-{0}'.format('x', 'y'),
            '{p[k]:>4}|{q.real}|{r!r}'.format(p={'k': 'v'}, q=3, r='s'),
            '{:{}}'.format(1.5, '.3f'),
            '{x}'.format_map({'x': 'mapped'}),
            str.format('{0}', 'unbound'),
            collections.UserString('{0}!').format('user'),
        ]
        """
    )
    assert run_job(source) == ["a and b", "y-x", "   v|3|'s'", "1.500", "mapped", "unbound", "user!"]


def test_percent_formatting_and_templates_read_items_only() -> None:
    """`%` with a mapping and string.Template look up keys, which plugins may read anyway; no attribute syntax."""
    source = job(
        """
        out = ['%(a)s/%(b)d' % {'a': 'x', 'b': 2}, (b'%(k)s' % {b'k': b'v'}).decode(),
               string.Template('$who ${what}').substitute({'who': 'me', 'what': 'this'})]
        try:
            string.Template('${a.__class__}').substitute(a=1)
        except ValueError:
            out.append('template refused')
        return out
        """
    )
    assert run_job(source) == ["x/2", "v", "me this", "template refused"]


WORKER_LIKE = """
import collections, functools, sys
sys.path.insert(0, sys.argv[1])
from plugin_server.plugins.guards import FORMATTER
from plugin_server.plugins.safe_format import install_safe_format
install_safe_format(FORMATTER)
class Sub(str):
    pass
results = []
for attempt in (
    lambda: collections.UserString('{0.__class__}').format(1),
    lambda: collections.UserString('{m.__init__}').format_map({'m': 1}),
    lambda: Sub('{0.__class__}').format(1),
    lambda: str.format('{0.__globals__}', print),
    lambda: functools.reduce(lambda acc, template: template.format(acc), ['{0.__class__}'], 1),
):
    try:
        results.append(attempt())
    except AttributeError as error:
        results.append('refused' if 'invalid attribute name' in str(error) else str(error))
results.append('{0.real} {1!r:>5}'.format(3, 'x'))
print(results)
"""


def test_in_a_worker_every_carrier_of_str_format_uses_the_guarded_formatter() -> None:
    """With the str type's own format replaced (as in the plugin zygote), stdlib code that calls format on a plugin's
    string (UserString), a str subclass, the unbound method and any indirect call all resolve fields through the guards."""
    completed = subprocess.run(
        [sys.executable, "-I", "-c", WORKER_LIKE, PROJECT], capture_output=True, text=True, timeout=60, check=True
    )
    assert completed.stdout.strip() == str(["refused"] * 5 + ["3   'x'"])
