"""Every module of the import allow-list imports and works in a real, hardened team worker.

CI runs as root, so the workers there are chrooted into an empty directory
with no network, exactly as in production: a module (or a helper it imports
on first use) that was not loaded before the chroot fails here with
ModuleNotFoundError, as decimal, statistics, hmac and urllib.parse once did.
"""

from __future__ import annotations

import base64
import collections
import datetime
import decimal
import functools
import hashlib
import hmac
import itertools
import json
import math
import os
import random
import re
import statistics
import string
import time
import urllib.parse
import uuid
from typing import Any

import pytest

from plugin_server.models import PluginConfig
from plugin_server.plugins.safe_modules import ALLOWED_MODULES
from tests.workers.helpers import event, install

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

EVERY_MODULE = """
import json, math, re, datetime, time, random, hashlib, hmac, base64, uuid, collections
import itertools, functools, string, decimal, statistics
import urllib.parse
from decimal import Decimal, localcontext, Context
from statistics import NormalDist

def use_every_module():
    out = {}
    out['json'] = json.dumps(json.loads('{"a": [1, 2.5, null]}'), sort_keys=True)
    out['math'] = [math.sqrt(16), math.floor(2.7), math.factorial(10), round(math.log(math.e), 6)]
    out['re'] = re.sub(r'(?P<user>\\w+)@(\\w+)', r'\\g<user> at \\2', 'me@example and you@there')
    moment = datetime.datetime(2021, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc) + datetime.timedelta(days=1, hours=2)
    out['datetime'] = [moment.isoformat(), datetime.datetime.strptime('2021-03-04', '%Y-%m-%d').date().isoformat(),
                       datetime.datetime.fromisoformat('2021-01-02T03:04:05+02:00').astimezone(datetime.timezone.utc).isoformat()]
    out['time'] = [time.strftime('%Y-%m-%d', time.gmtime(86400)), time.time() > 1.6e9, time.monotonic() > 0]
    out['random'] = [random.Random(7).randint(1, 1000), 0 <= random.random() < 1]
    out['hashlib'] = [hashlib.sha256(b'x').hexdigest(), hashlib.md5(b'x').hexdigest(), hashlib.new('sha1', b'x').hexdigest(),
                      hashlib.pbkdf2_hmac('sha256', b'pw', b'salt', 1000).hex()]
    out['hmac'] = [hmac.new(b'key', b'msg', 'sha256').hexdigest(), hmac.digest(b'key', b'msg', 'sha1').hex(),
                   hmac.compare_digest('a', 'a'), hmac.new(b'key', b'msg', hashlib.sha512).hexdigest()[:16]]
    out['base64'] = [base64.b64encode(b'hi there').decode(), base64.urlsafe_b64decode('aGk=').decode(), base64.b32encode(b'x').decode(),
                     base64.b16encode(b'x').decode(), base64.b85encode(b'xyz').decode()]
    out['uuid'] = [str(uuid.uuid5(uuid.NAMESPACE_DNS, 'posthog.com')), str(uuid.uuid3(uuid.NAMESPACE_URL, 'x')), len(str(uuid.uuid4())),
                   uuid.UUID('12345678123456781234567812345678').hex]
    out['collections'] = [dict(collections.Counter('abracadabra').most_common(2)), list(collections.deque([1, 2, 3], maxlen=2)),
                          collections.namedtuple('P', 'x y')(1, 2).y, list(collections.OrderedDict(b=1, a=2)), dict(collections.ChainMap({'a': 1}, {'b': 2}))]
    out['itertools'] = [list(itertools.islice(itertools.count(5), 3)), list(itertools.chain([1], [2])), len(list(itertools.permutations('abc'))),
                        [k for k, _ in itertools.groupby('aabbc')], list(itertools.accumulate([1, 2, 3]))]
    out['functools'] = [functools.reduce(lambda a, b: a * b, [1, 2, 3, 4]), functools.partial(int, base=2)('101'),
                        functools.lru_cache(maxsize=4)(lambda n: n * 2)(21), functools.cmp_to_key(lambda a, b: a - b) is not None]
    out['string'] = [string.ascii_lowercase[:5], string.digits, string.Template('$who likes ${what}').substitute(who='tim', what='pie'),
                     string.capwords('hello world')]
    with localcontext(Context(prec=6)):
        third = str(Decimal(1) / Decimal(3))
    out['decimal'] = [str(Decimal('1.10') + Decimal('2.20')), third, str(Decimal('2').sqrt())[:10], str(Decimal('1.005').quantize(Decimal('0.01'))),
                      decimal.ROUND_HALF_UP, str(Decimal(1).exp())[:8]]
    out['statistics'] = [statistics.mean([1, 2, 3, 4]), statistics.median([3, 1, 2]), round(statistics.stdev([2, 4, 4, 4, 5, 5, 7, 9]), 6),
                         statistics.mode([1, 1, 2]), round(NormalDist(0, 1).cdf(1.0), 6), str(statistics.mean([Decimal('1.5'), Decimal('2.5')])),
                         round(statistics.fmean([1.0, 2.0]), 3), statistics.quantiles([1, 2, 3, 4, 5, 6, 7, 8], n=4)]
    parts = urllib.parse.urlparse('https://user@example.com:8080/a/b?q=1&r=two#frag')
    out['urllib.parse'] = [parts.netloc, parts.path, urllib.parse.parse_qs(parts.query), urllib.parse.quote('a b/ü'),
                           urllib.parse.unquote('%C3%BC'), urllib.parse.urlencode({'a': 'b c', 'd': 1}), urllib.parse.urljoin('http://x/a/b', '../c'),
                           urllib.parse.urlsplit('http://[::1]:80/p').hostname, urllib.parse.quote_plus('x y+z')]
    return out

def process_event(event, meta):
    event['properties']['modules'] = use_every_module()
    return event
"""


def expected() -> dict[str, Any]:
    """The same calls, run here with the real modules (tuples as the plain-data boundary makes them: lists)."""
    moment = datetime.datetime(2021, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc) + datetime.timedelta(days=1, hours=2)
    with decimal.localcontext(decimal.Context(prec=6)):
        third = str(decimal.Decimal(1) / decimal.Decimal(3))
    parts = urllib.parse.urlparse("https://user@example.com:8080/a/b?q=1&r=two#frag")
    normal = statistics.NormalDist(0, 1)
    return {
        "json": json.dumps({"a": [1, 2.5, None]}, sort_keys=True),
        "math": [4.0, 2, math.factorial(10), 1.0],
        "re": "me at example and you at there",
        "datetime": [moment.isoformat(), "2021-03-04", "2021-01-02T01:04:05+00:00"],
        "time": [time.strftime("%Y-%m-%d", time.gmtime(86400)), True, True],
        "random": [random.Random(7).randint(1, 1000), True],
        "hashlib": [hashlib.sha256(b"x").hexdigest(), hashlib.md5(b"x").hexdigest(), hashlib.sha1(b"x").hexdigest(),
                    hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", 1000).hex()],
        "hmac": [hmac.new(b"key", b"msg", "sha256").hexdigest(), hmac.digest(b"key", b"msg", "sha1").hex(), True,
                 hmac.new(b"key", b"msg", hashlib.sha512).hexdigest()[:16]],
        "base64": [base64.b64encode(b"hi there").decode(), "hi", base64.b32encode(b"x").decode(), "78", base64.b85encode(b"xyz").decode()],
        "uuid": [str(uuid.uuid5(uuid.NAMESPACE_DNS, "posthog.com")), str(uuid.uuid3(uuid.NAMESPACE_URL, "x")), 36,
                 "12345678123456781234567812345678"],
        "collections": [{"a": 5, "b": 2}, [2, 3], 2, ["b", "a"], {"a": 1, "b": 2}],
        "itertools": [[5, 6, 7], [1, 2], 6, ["a", "b", "c"], [1, 3, 6]],
        "functools": [24, 5, 42, True],
        "string": ["abcde", string.digits, "tim likes pie", "Hello World"],
        "decimal": ["3.30", third, str(decimal.Decimal(2).sqrt())[:10], "1.00", decimal.ROUND_HALF_UP, str(decimal.Decimal(1).exp())[:8]],
        "statistics": [2.5, 2, round(statistics.stdev([2, 4, 4, 4, 5, 5, 7, 9]), 6), 1, round(normal.cdf(1.0), 6),
                       str(statistics.mean([decimal.Decimal("1.5"), decimal.Decimal("2.5")])), 1.5,
                       statistics.quantiles([1, 2, 3, 4, 5, 6, 7, 8], n=4)],
        "urllib.parse": [parts.netloc, parts.path, {"q": ["1"], "r": ["two"]}, urllib.parse.quote("a b/ü"), "ü",
                         "a=b+c&d=1", "http://x/c", "::1", "x+y%2Bz"],
    }


def test_every_allowed_module_works_in_a_hardened_worker(make_pool) -> None:  # type: ignore[no-untyped-def]
    """One plugin uses every allowed module (and what each loads on first use) in a team worker locked down as
    in production (as root, as CI runs: chroot, no network, own user); every result equals the real module's."""
    config = install(EVERY_MODULE)
    pool = make_pool(concurrency=1)
    worker = pool.team_worker(config.team_id)
    assert worker is not None
    if os.geteuid() == 0:
        assert worker.hardening["skipped"] == {}, worker.hardening
        assert {"empty_root", "no_network", "unprivileged_user"} <= set(worker.hardening["applied"])
    [out] = pool.process_events([event(config.team_id)])
    config = PluginConfig.objects.get(pk=config.pk)
    assert config.error is None, config.error
    modules = out["properties"]["modules"]
    assert set(modules) == set(ALLOWED_MODULES), "every allowed module must be exercised here"
    want = expected()
    for name in sorted(ALLOWED_MODULES):
        assert modules[name] == want[name], name
