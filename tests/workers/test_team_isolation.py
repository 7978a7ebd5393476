"""Two teams on one server: one team's plugin reads, alters, hangs and exhausts its worker; the other's events
are all stored, processed by their own plugins, and never reachable by the first.

Through the whole chain on the real services: the Celery source (Redis), the
Consumer, the WorkerPool with its zygote and team workers (hardened as in
production when run as root, as CI does), the Ingester (Postgres) and the
dead-letter store. Besides what the attacker's plugin reports, its worker's
memory is read from outside (``/proc/<pid>/mem``, root only): the other
team's secret is not there at all, while the other team's own worker does
hold it (the scan works).
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.test import override_settings

from plugin_server.exceptions import PluginsNotRun
from plugin_server.ingestion.consumer import Consumer, ConsumerOptions
from plugin_server.ingestion.ingester import Ingester
from plugin_server.ingestion.sources.celery import CelerySource
from plugin_server.models import DeadLetter, Event, PluginConfig, PluginLogEntry
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.host import MetaHost
from plugin_server.workers.pool import PoolSettings, WorkerPool
from tests.factories import create_plugin, create_plugin_config, create_team
from tests.plugins.sandbox_helpers import STICKY_DICT
from tests.workers.helpers import event, install

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]

FAST = {"poll_timeout": 0.0, "retry_backoff": 0.0, "retry_backoff_max": 0.0, "batch_size": 20}

# Uninterruptible: one C call (a square root to two million digits in libmpdec) that checks for no signal.
HANG = "import decimal\ndef hang():\n    with decimal.localcontext(decimal.Context(prec=2000000)):\n        return decimal.Decimal(2).sqrt()\n"

ATTACKER = HANG + STICKY_DICT + """
import collections, functools, string, time

def attempts(event, meta):
    tries = {
        'userstring format': lambda: collections.UserString('{0.__class__.__mro__}').format(event),
        'userstring format_map': lambda: collections.UserString('{m.__init__.__globals__}').format_map({'m': meta}),
        'str format': lambda: '{0.__class__.__base__.__subclasses__}'.format(()),
        'unbound format': lambda: functools.partial(str.format, '{0.__globals__}')(process_event),
        'format by map': lambda: list(map(str.format, ['{0.gi_frame.f_back.f_globals}'], [(i for i in [1])])),
        'nested spec': lambda: '{0:{1.__class__}}'.format(1, 2),
        'item then attribute': lambda: '{0[k].__class__}'.format({'k': 1}),
        'template': lambda: string.Template('${a.__class__}').substitute(a=1),
        'percent mapping': lambda: '%(k)s' % {'k': 'only items'},
        'frames': lambda: getattr((i for i in [1]), 'gi_' + 'frame'),
    }
    found = {}
    for name, attempt in tries.items():
        try:
            found[name] = str(attempt())
        except AttributeError:
            found[name] = 'AttributeError'
        except ValueError:
            found[name] = 'ValueError'
        except Exception as error:
            found[name] = 'other: ' + str(error)
    return found

def process_event(event, meta):
    attack = event['properties'].get('attack')
    if attack == 'read':
        event['properties']['found'] = attempts(event, meta)
    elif attack == 'alter':
        event['team_id'] = event['properties']['other_team']
    elif attack == 'hang':
        hang()
    elif attack == 'exhaust':
        hog = [bytearray(2 ** 30) for _ in range(4)]
    elif attack == 'return':
        return Sticky(event)
    event['properties']['a_processed'] = True
    return event
"""

VICTIM = """
def setup_plugin(meta):
    meta.global_['secret'] = meta.config['secret'] + '-in-global'

def process_event(event, meta):
    event['properties']['b_processed'] = meta.global_['secret'] == meta.config['secret'] + '-in-global'
    event['properties']['b_private'] = meta.config['secret'] + '-in-event'
    print('b log line', meta.config['secret'] + '-in-log')
    return event
"""


def memory_holds(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` is anywhere in the readable memory of process ``pid`` (needs root)."""
    found = False
    with open(f"/proc/{pid}/maps", encoding="ascii") as maps, open(f"/proc/{pid}/mem", "rb", 0) as memory:
        for line in maps:
            span, permissions = line.split()[:2]
            if not permissions.startswith("r") or "[vvar]" in line or "[vsyscall]" in line:
                continue
            start, end = (int(part, 16) for part in span.split("-"))
            try:
                memory.seek(start)
                if needle in memory.read(end - start):
                    found = True
            except OSError:
                continue
    return found


@pytest.fixture
def server(unique_name: str, redis_client: redis.Redis) -> Iterator[Callable[..., tuple[WorkerPool, Consumer, MetaHost]]]:
    """The consumer chain on a queue of this test's own, with a real pool; stopped at the end."""
    stops: list[Callable[[], None]] = []
    settings = override_settings(PLUGINS_CELERY_QUEUE=unique_name)
    settings.enable()

    def build(**pool_settings: Any) -> tuple[WorkerPool, Consumer, MetaHost]:
        host = MetaHost()
        values: dict[str, Any] = {"concurrency": 2, "task_timeout": 1.0, "memory_limit_mb": 400, "grace": 1.0}
        values.update(pool_settings)
        pool = WorkerPool(PoolSettings.from_config(**values), host=host)
        pool.start()
        celery = CelerySource(queue=unique_name)
        celery.start()
        stops.extend([host.close, pool.stop, celery.close])
        return pool, Consumer(celery, Ingester(), pool, options=ConsumerOptions.from_settings(**FAST)), host

    yield build
    for stop in reversed(stops):
        stop()
    settings.disable()
    redis_client.delete(unique_name)


def context(config: PluginConfig) -> PluginContext:
    return PluginContext(plugin_config_id=config.id, plugin_id=config.plugin_id, team_id=config.team_id, plugin_name=config.plugin.name)


def drain(consumer: Consumer, host: MetaHost) -> None:
    for _ in range(30):
        if consumer.run_once() == 0:
            host.flush()
            return
    raise AssertionError("the queue did not drain")


def test_one_team_attacks_and_the_other_teams_events_are_stored_processed_and_unread(server) -> None:  # type: ignore[no-untyped-def]
    """Team A's plugin tries to read (format walks by every carrier, frames), alter (move its event to team B),
    hang its worker (an uninterruptible C call), exhaust its memory and hand back an object whose methods never
    return. Team B's events, interleaved with A's in the same batches: all stored, each processed by B's own
    plugin, none dead-lettered; nothing of B's in anything A produced, nor anywhere in A's worker's memory."""
    secret = f"b-secret-{uuid.uuid4().hex}"
    team_a, team_b = create_team(ingested_event=True), create_team(ingested_event=True)
    attacker = create_plugin_config(team=team_a, plugin=create_plugin(organization=team_a.organization, source=ATTACKER))
    victim = create_plugin_config(team=team_b, plugin=create_plugin(organization=team_b.organization, source=VICTIM), config={"secret": secret})
    pool, consumer, host = server()
    attacks = ["read", "alter", "hang", "exhaust", "return", "read"]
    for position, attack in enumerate(attacks):
        host.call(context(attacker), "posthog", "capture", [f"a-{attack}", {"attack": attack, "other_team": team_b.id, "n": position}], {})
        for n in range(3):
            host.call(context(victim), "posthog", "capture", [f"b-{position}-{n}", {"n": n}], {})
    drain(consumer, host)

    # Team B: every event stored once, processed by B's plugin (with its set-up global), none set aside.
    stored_b = list(Event.objects.filter(team_id=team_b.id))
    assert sorted(e.event for e in stored_b) == sorted(f"b-{p}-{n}" for p in range(len(attacks)) for n in range(3))
    for stored in stored_b:
        assert stored.properties["b_processed"] is True and stored.properties["$plugins_succeeded"] == [f"{victim.plugin.name} ({victim.id})"]
    assert not DeadLetter.objects.filter(team_id=team_b.id).exists()
    assert PluginConfig.objects.get(pk=victim.pk).error is None

    # Team A: the read attempts found nothing (refused by the guards, whatever carried the format call) ...
    reads = [e for e in Event.objects.filter(team_id=team_a.id, event="a-read")]
    assert len(reads) == 2
    found = reads[0].properties["found"]
    assert found["percent mapping"] == "only items"
    assert found["item then attribute"] == "AttributeError" and found["nested spec"] == "AttributeError"
    assert found["template"] == "ValueError" and found["frames"] == "AttributeError"
    for carrier in ("userstring format", "userstring format_map", "str format", "unbound format", "format by map"):
        assert found[carrier] == "AttributeError", (carrier, found[carrier])
    # ... its event moved to team B was dropped, the hung and exhausted workers were replaced (the events stored
    # with A's call counted as failed), and the object that never answers was refused inside A's time limit.
    assert not Event.objects.filter(event="a-alter").exists()
    label = f"{attacker.plugin.name} ({attacker.id})"
    for name in ("a-hang", "a-exhaust"):
        [stored] = Event.objects.filter(team_id=team_a.id, event=name)
        assert stored.properties["$plugins_failed"] == [label] and "a_processed" not in stored.properties, name
    # The dict subclass was copied through dict's own slots: its items()/get() that never return were never called.
    [returned] = Event.objects.filter(team_id=team_a.id, event="a-return")
    assert returned.properties["$plugins_succeeded"] == [label] and returned.properties["attack"] == "return"
    messages = set(PluginLogEntry.objects.filter(plugin_config_id=attacker.id, type="ERROR").values_list("message", flat=True))
    joined = "\n".join(messages)
    assert "Illegal Operation: Plugin tried to change teamID" in joined
    assert "its worker was stopped" in joined and "memory" in joined and "Script execution timed out" in joined

    # Nothing of B's anywhere A's plugin could write to.
    everything_a_made = repr([e.properties for e in Event.objects.filter(team_id=team_a.id)]) + joined
    assert secret not in everything_a_made
    if os.geteuid() == 0:
        a_worker, b_worker = pool.team_worker(team_a.id), pool.team_worker(team_b.id)
        assert a_worker is not None and b_worker is not None and a_worker.pid != b_worker.pid
        assert memory_holds(b_worker.pid, secret.encode())
        assert not memory_holds(a_worker.pid, secret.encode())


SLOW_A = "import time\ndef process_event(event, meta):\n    time.sleep(0.6)\n    event['properties']['a'] = True\n    return event\n"
MARK_B = "def process_event(event, meta):\n    event['properties']['b'] = True\n    return event\n"


def test_a_killed_worker_costs_only_its_own_team(make_pool) -> None:  # type: ignore[no-untyped-def]
    """Team A's worker is killed (SIGKILL) in the middle of its part of a batch: team B's part, in the same call,
    comes back processed by B's plugin; A's events are retried on a fresh worker with the fatal call skipped."""
    team_a, team_b = create_team(), create_team()
    slow = install(SLOW_A, team_a)
    install(MARK_B, team_b)
    pool = make_pool(concurrency=2, task_timeout=5.0)
    worker_a = pool.team_worker(team_a.id)
    worker_b = pool.team_worker(team_b.id)
    batch = [event(team_a.id if n % 2 else team_b.id, f"p{n}", n) for n in range(10)]
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.extend(pool.process_events(batch)))
    thread.start()
    deadline = time.monotonic() + 10
    while worker_a.marker.read()[1:] != (slow.id, 1):  # inside A's call on its second event
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(worker_a.pid, 9)
    thread.join(60)
    assert [e["properties"]["n"] for e in result] == list(range(10))
    assert all(e["properties"].get("b") for e in result if e["team_id"] == team_b.id)
    assert pool.team_worker(team_b.id).pid == worker_b.pid  # B's worker never noticed
    assert pool.team_worker(team_a.id).pid != worker_a.pid
    failed = [e for e in result if e["team_id"] == team_a.id and e["properties"]["$plugins_failed"]]
    assert len(failed) == 1 and all(e["properties"].get("a") for e in result if e["team_id"] == team_a.id and e not in failed)


HANGS = HANG + "def process_event(event, meta):\n    if event['properties'].get('hang'):\n        hang()\n    return event\n"


def test_a_worker_lost_twice_dead_letters_that_teams_events_and_counts_towards_disabling(make_pool) -> None:  # type: ignore[no-untyped-def]
    """Two events of team A whose plugin hangs its worker each time: the retry on a fresh worker is lost too, so
    A's events come back as PluginsNotRun (for the dead-letter store) with the reason, while team B's results are
    complete. Each loss is recorded on A's config; at WORKER_LOSSES_TO_DISABLE it is disabled and leaves the chain."""
    team_a, team_b = create_team(), create_team()
    hanger = install(HANGS, team_a)
    install(MARK_B, team_b)
    pool = make_pool(concurrency=2, task_timeout=0.5, grace=0.5, losses_to_disable=3)
    batch = [event(team_a.id, "x", 0, properties={"hang": True}), event(team_b.id, "y", 1), event(team_a.id, "x", 2, properties={"hang": True})]
    with pytest.raises(PluginsNotRun) as caught:
        pool.process_events(batch)
    assert [e["team_id"] for e in caught.value.processed] == [team_b.id] and caught.value.processed[0]["properties"]["b"]
    assert [e["properties"] for e in (event for event, _ in caught.value.failed)] == [{"hang": True}, {"hang": True}]
    assert all(f"team {team_a.id}" in reason for _, reason in caught.value.failed)
    hanger.refresh_from_db()
    assert hanger.enabled and hanger.error["message"].startswith("Script execution timed out")
    # A third loss disables it; its events then go on without it.
    out = pool.process_events([event(team_a.id, "x", 3, properties={"hang": True})])
    assert out[0]["properties"]["$plugins_failed"] == [f"{hanger.plugin.name} ({hanger.id})"]
    hanger.refresh_from_db()
    assert not hanger.enabled
    assert PluginLogEntry.objects.filter(plugin_config_id=hanger.id, source="SYSTEM", message__contains="hung or killed its worker 3 times").exists()
    assert pool.process_events([event(team_a.id, "x", 4, properties={"hang": True})])[0]["properties"] == {"hang": True}


def test_events_whose_plugins_could_not_run_become_dead_letters_not_stored_events(server) -> None:  # type: ignore[no-untyped-def]
    """Through the consumer: team A's events whose worker is lost twice are dead-lettered as plugins_failed, with
    the reason and the raw message (a replay runs them again); the rest of the batch, team B's, is stored."""
    team_a, team_b = create_team(ingested_event=True), create_team(ingested_event=True)
    hanger = create_plugin_config(team=team_a, plugin=create_plugin(organization=team_a.organization, source=HANGS))
    marker = create_plugin_config(team=team_b, plugin=create_plugin(organization=team_b.organization, source=MARK_B))
    pool, consumer, host = server(task_timeout=0.5, grace=0.5, losses_to_disable=5)
    for n in range(2):
        host.call(context(hanger), "posthog", "capture", [f"a-{n}", {"hang": True}], {})
        host.call(context(marker), "posthog", "capture", [f"b-{n}", {}], {})
    drain(consumer, host)
    assert sorted(Event.objects.filter(team_id=team_b.id).values_list("event", flat=True)) == ["b-0", "b-1"]
    assert not Event.objects.filter(team_id=team_a.id).exists()
    letters = list(DeadLetter.objects.filter(team_id=team_a.id))
    assert len(letters) == 2 and {letter.reason for letter in letters} == {"plugins_failed"}
    assert all(re.search(rf"plugins of team {team_a.id} could not run", letter.error) for letter in letters)
    assert all(letter.event_uuid and bytes(letter.payload) for letter in letters)


def test_a_teardown_that_hangs_its_worker_is_blamed_on_its_config(make_pool) -> None:  # type: ignore[no-untyped-def]
    """teardown_plugin running an uninterruptible call when the pool stops: the worker is killed and the hang is
    recorded on that config, like any other call's."""
    config = install(HANG + "def teardown_plugin(meta):\n    hang()\ndef process_event(event, meta):\n    return event\n")
    pool = make_pool(concurrency=1, task_timeout=0.5, grace=0.5)
    assert pool.process_events([event(config.team_id)])[0]["event"] == "e0"
    started = time.monotonic()
    pool.stop()
    assert time.monotonic() - started < 15
    config.refresh_from_db()
    assert config.error["message"].startswith("Script execution timed out") and "its worker was stopped" in config.error["message"]


def test_a_worker_lost_between_tasks_is_blamed_on_its_last_config_and_never_on_another_teams(make_pool) -> None:  # type: ignore[no-untyped-def]
    """A worker that dies while idle is blamed on the config that ran last in it; its progress marker is written by
    the (untrusted) worker, so a marker naming another team's config blames no one."""
    team_a, team_b = create_team(), create_team()
    mine, theirs = install(MARK_B, team_a), install(MARK_B, team_b)
    pool = make_pool(concurrency=1)
    pool.process_events([event(team_a.id), event(team_b.id)])
    worker = pool.team_worker(team_a.id)
    os.kill(worker.pid, 9)
    assert pool.process_events([event(team_a.id)])[0]["properties"]["b"] is True  # a fresh worker took over
    assert PluginConfig.objects.get(pk=mine.pk).error["message"].startswith("The plugin's worker process died")
    forged = pool.team_worker(team_a.id)
    forged.marker.set(time.monotonic() + 60, theirs.id, 0)  # what a worker that escaped its sandbox could write
    os.kill(forged.pid, 9)
    assert pool.process_events([event(team_a.id)])[0]["properties"]["b"] is True
    assert PluginConfig.objects.get(pk=theirs.pk).error is None and PluginConfig.objects.get(pk=theirs.pk).enabled
