"""acceptance.md "Worker task runner": the original's worker tasks, through the port's WorkerPool.

The original's tasks map onto the pool's methods (docs/architecture.md):
``processEvent`` → ``process_events``, ``getPluginSchedule`` →
``scheduled_tasks``, ``runEvery*`` → ``run_scheduled``, ``reloadPlugins`` /
``reloadSchedule`` → ``reload``, ``teardownPlugins`` → ``stop``. The lines
not already covered elsewhere (see tests/acceptance_index.md) are here, run
in real worker processes.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from plugin_server.models import PluginConfig, PluginLogEntry
from tests.factories import create_team
from tests.workers.conftest import make_pool  # noqa: F401  (fixture)
from tests.workers.helpers import event, install

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.redis]

EVERY = """
def run_every_minute(meta):
    print('minute', meta.config.get('n'))

def runEveryHour(meta):
    print('hour', meta.config.get('n'))

def run_every_day(meta):
    print('day', meta.config.get('n'))
"""


def console_lines(config: PluginConfig) -> list[str]:
    return list(PluginLogEntry.objects.filter(plugin_config_id=config.id, source="CONSOLE").order_by("timestamp", "id").values_list("message", flat=True))


def test_hello(make_pool) -> None:  # type: ignore[no-untyped-def]
    """The worker's `hello` task with the name "world" answers "hello world!"."""
    pool = make_pool(concurrency=1)
    # Asked of a team's worker (started for it).
    assert pool.hello(create_team().id, "world") == "hello world!"


@pytest.mark.parametrize("name", ["runEveryMinute", "runEveryHour", "runEveryDay"])
def test_run_every_tasks_run_that_task_of_that_config(make_pool, name: str) -> None:  # type: ignore[no-untyped-def]
    """run_scheduled(config, runEvery*) runs that config's task, and only that config's (snake or camel names)."""
    team = create_team()
    first = install(EVERY, team, order=1, config={"n": "first"})
    second = install(EVERY, team, order=2, config={"n": "second"})
    pool = make_pool(concurrency=2)
    pool.run_scheduled(first.id, name)
    period = name.removeprefix("runEvery").lower()
    assert console_lines(first) == [f"{period} first"]
    assert console_lines(second) == []


def test_reload_plugins_runs_setup_again(make_pool) -> None:  # type: ignore[no-untyped-def]
    """After a config changes, reload sets the plugin up again: the next event sees the new setup."""
    config = install(
        "def setup_plugin(meta):\n    meta.global_['greeting'] = meta.config.get('greeting')\n"
        "def process_event(event, meta):\n    event['properties']['greeting'] = meta.global_['greeting']\n    return event\n",
        config={"greeting": "hello"},
    )
    pool = make_pool(concurrency=1)
    assert pool.process_events([event(config.team_id)])[0]["properties"]["greeting"] == "hello"
    # As PostHog's API does: the reload decision is on updated_at (plugins.md §2.1).
    PluginConfig.objects.filter(id=config.id).update(config={"greeting": "bonjour"}, updated_at=timezone.now())
    pool.reload()
    assert pool.process_events([event(config.team_id)])[0]["properties"]["greeting"] == "bonjour"


def test_reload_schedule_rebuilds_the_schedule(make_pool) -> None:  # type: ignore[no-untyped-def]
    """A config enabled after start is in the schedule after reload; a disabled one leaves it (every team, two workers)."""
    old = install("def run_every_hour(meta):\n    pass\n")
    other = install("def run_every_minute(meta):\n    pass\n")
    pool = make_pool(concurrency=2)
    assert pool.scheduled_tasks() == {"runEveryMinute": [other.id], "runEveryHour": [old.id], "runEveryDay": []}
    new = install("def run_every_day(meta):\n    pass\n")
    PluginConfig.objects.filter(id=old.id).update(enabled=False, updated_at=timezone.now())
    pool.reload()
    assert pool.scheduled_tasks() == {"runEveryMinute": [other.id], "runEveryHour": [], "runEveryDay": [new.id]}
