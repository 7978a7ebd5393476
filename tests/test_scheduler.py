"""The scheduler (spec: plugins.md §10; acceptance "Scheduler"): real workers, real Redis, real time on short periods."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from plugin_server.locks import LockKeeper, RedisLock
from plugin_server.models import PluginConfig
from plugin_server.scheduler import Scheduler
from plugin_server.workers.pool import WorkerPool
from tests.e2e.test_server_e2e import start_server, wait_for  # noqa: F401  (fixture)
from tests.workers.conftest import make_pool  # noqa: F401  (fixture)
from tests.workers.helpers import install

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.redis]

COUNTING = (
    "import time\n"
    "def run_every_minute(meta):\n    meta.cache.incr('minute')\n    time.sleep(meta.config.get('sleep', 0))\n"
    "def run_every_hour(meta):\n    meta.cache.incr('hour')\n"
)


def runs(client: redis.Redis, config: PluginConfig, name: str) -> int:
    value = client.get(f"@plugin/{config.plugin_id}/{config.team_id}/{name}")
    return int(value) if value is not None else 0


def wait_until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def make_scheduler(redis_client: redis.Redis, unique_name: str) -> Iterator[Callable[..., Scheduler]]:
    """Schedulers on a lock and boundary keys of this test only; stopped at the end."""
    made: list[Scheduler] = []

    def make(pool: WorkerPool, lock_key: str = f"{unique_name}:lock", **options: object) -> Scheduler:
        keeper = LockKeeper(RedisLock(lock_key, 2, redis_client))
        scheduler = Scheduler(pool, keeper, client=redis_client, key_prefix=f"{unique_name}:tick", **options)  # type: ignore[arg-type]
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.stop()


def clean(client: redis.Redis, config: PluginConfig) -> None:
    client.delete(*(f"@plugin/{config.plugin_id}/{config.team_id}/{name}" for name in ("minute", "hour")))


def test_tasks_run_on_their_boundaries_only(make_pool, make_scheduler, redis_client) -> None:
    """A minute boundary runs run_every_minute; an hour boundary runs both; nothing runs at start or between boundaries."""
    config = install(COUNTING)
    clean(redis_client, config)
    scheduler = make_scheduler(make_pool(concurrency=1))
    scheduler.keeper.step()
    assert scheduler.load_schedule() == {"runEveryMinute": [config.id], "runEveryHour": [config.id], "runEveryDay": []}
    start = 3_600 * 1_000_000 + 10.0
    assert scheduler.tick(start) == []  # the first tick only remembers where the clock is
    assert scheduler.tick(start + 30) == []
    assert scheduler.tick(start + 55) == [("runEveryMinute", config.id)]
    assert scheduler.wait(10)
    assert scheduler.tick(start + 3_600) == [("runEveryMinute", config.id), ("runEveryHour", config.id)]
    assert scheduler.wait(10)
    assert (runs(redis_client, config, "minute"), runs(redis_client, config, "hour")) == (2, 1)


def test_a_run_still_going_is_skipped_not_doubled(make_pool, make_scheduler, redis_client) -> None:
    """Dispatching three times quickly while the first run sleeps runs the task once (runScheduleDebounced)."""
    config = install(COUNTING, config={"sleep": 1})
    clean(redis_client, config)
    scheduler = make_scheduler(make_pool(concurrency=1))
    results = [scheduler.dispatch("runEveryMinute", config.id) for _ in range(3)]
    assert results == [True, False, False]
    assert scheduler.wait(10)
    assert runs(redis_client, config, "minute") == 1
    assert scheduler.dispatch("runEveryMinute", config.id)  # finished: the next one runs
    assert scheduler.wait(10)
    assert runs(redis_client, config, "minute") == 2


def test_an_exception_in_a_task_is_recorded_and_nothing_breaks(make_pool, make_scheduler) -> None:
    """run_every_minute raising 'lol': the error lands on the config and waiting for tasks completes."""
    config = install("def run_every_minute(meta):\n    raise ValueError('lol')\n")
    scheduler = make_scheduler(make_pool(concurrency=1))
    assert scheduler.dispatch("runEveryMinute", config.id)
    assert scheduler.wait(10)
    config.refresh_from_db()
    assert config.error["message"] == "lol"
    assert config.error["name"] == "ValueError"


def test_a_config_no_longer_in_force_is_recorded_as_a_rejected_dispatch(make_pool, make_scheduler) -> None:
    """A dispatch the pool refuses (config not in force) is logged and waiting completes."""
    scheduler = make_scheduler(make_pool(concurrency=1))
    assert scheduler.dispatch("runEveryMinute", 987_654)
    assert scheduler.wait(10)
    assert scheduler.running() == []


def test_the_schedule_reflects_loaded_plugins_not_the_database(make_pool, make_scheduler) -> None:
    """A new plugin in the database is not scheduled until the pool reloads (acceptance: loading the schedule)."""
    first = install("def run_every_minute(meta):\n    pass\n")
    pool = make_pool(concurrency=1)
    scheduler = make_scheduler(pool)
    assert scheduler.load_schedule() == {"runEveryMinute": [first.id], "runEveryHour": [], "runEveryDay": []}
    second = install("def run_every_day(meta):\n    pass\n")
    assert scheduler.load_schedule() == {"runEveryMinute": [first.id], "runEveryHour": [], "runEveryDay": []}
    pool.reload()
    assert scheduler.load_schedule() == {"runEveryMinute": [first.id], "runEveryHour": [], "runEveryDay": [second.id]}


def test_without_the_lock_nothing_is_dispatched(make_pool, make_scheduler, redis_client, unique_name) -> None:
    """Only the lock holder dispatches: a scheduler whose lock is held elsewhere lets boundaries pass."""
    config = install(COUNTING)
    clean(redis_client, config)
    redis_client.set(f"{unique_name}:lock", "another server", px=10_000)
    scheduler = make_scheduler(make_pool(concurrency=1))
    scheduler.keeper.step()
    scheduler.load_schedule()
    start = 7_200 * 1_000_000.0
    scheduler.tick(start)
    assert scheduler.tick(start + 60) == []
    assert runs(redis_client, config, "minute") == 0


def test_a_boundary_runs_once_even_if_two_servers_think_they_hold_the_lock(make_pool, make_scheduler, redis_client, unique_name) -> None:
    """The boundary claim (SET NX per task and boundary) keeps a lock handover from doubling a run."""
    config = install(COUNTING)
    clean(redis_client, config)
    pool = make_pool(concurrency=1)
    one = make_scheduler(pool, lock_key=f"{unique_name}:lock-one")
    two = make_scheduler(pool, lock_key=f"{unique_name}:lock-two")
    start = 10_800 * 1_000_000.0
    for scheduler in (one, two):
        scheduler.keeper.step()
        scheduler.load_schedule()
        scheduler.tick(start)
    assert len(one.tick(start + 60)) + len(two.tick(start + 60)) == 1
    assert one.wait(10) and two.wait(10)
    assert runs(redis_client, config, "minute") == 1


def test_started_scheduler_runs_every_minute_in_real_time(make_pool, make_scheduler, redis_client) -> None:
    """With SCHEDULE_TIME_SCALE = 1/120 a "minute" is half a second: three boundaries give three runs, no hour."""
    config = install(COUNTING)
    clean(redis_client, config)
    scheduler = make_scheduler(make_pool(concurrency=1), time_scale=1 / 120)
    scheduler.start()
    wait_until(lambda: scheduler.keeper.held)
    wait_until(lambda: runs(redis_client, config, "minute") >= 3)
    scheduler.stop()
    assert runs(redis_client, config, "hour") == 0
    assert redis_client.get(f"{scheduler.keeper.lock.key}") is None  # released on stop


def test_when_the_lock_holder_is_killed_another_server_takes_over(start_server, redis_client) -> None:
    """Two `run_plugin_server --mode scheduler`: SIGKILL the one running the tasks; the other runs them within the lock TTL,
    and no boundary ever runs twice."""
    config = install("import time\ndef run_every_minute(meta):\n    meta.cache.lpush('log', str(time.time()))\n")
    key = f"@plugin/{config.plugin_id}/{config.team_id}/log"
    redis_client.delete(key, "plugin-server:locks:schedule")
    env = {"PLUGIN_SERVER_MODE": "scheduler", "SCHEDULE_LOCK_TTL": "2", "SCHEDULE_TIME_SCALE": str(1 / 60)}

    def times() -> list[float]:
        return sorted(float(value) for value in redis_client.lrange(key, 0, -1))

    first = start_server(**env)
    wait_for(lambda: len(times()) >= 2, 60, "the first server's runs", first)
    second = start_server(**env)
    # The second server starts (a few seconds) while the first keeps the lock and runs every boundary.
    wait_for(lambda: len(times()) >= 6, 60, "more runs", second)
    first.kill()
    first.wait(10)
    killed_at = time.time()
    wait_for(lambda: times()[-1] > killed_at, 30, "a run by the second server", second)
    taken_over_after = min(t for t in times() if t > killed_at) - killed_at
    # Lock TTL 2 s, retried every 0.2 s, then the next 1 s boundary.
    assert taken_over_after < 2 + 0.2 + 1 + 1.5
    runs = times()
    assert len({int(t) for t in runs}) == len(runs), "a boundary ran twice"
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0


def test_a_scheduler_server_reloads_its_schedule_with_the_plugins(unique_name) -> None:
    """Server in scheduler mode: a reload published on the channel reloads the pool, then the schedule (spec §9.4)."""
    from django.test import override_settings

    from plugin_server.pubsub import publish_reload
    from plugin_server.server import Server, ServerOptions
    from plugin_server.workers.pool import PoolSettings

    first = install("def run_every_hour(meta):\n    pass\n")
    options = ServerOptions(kafka_enabled=False, disable_web=True, web_hostname="", web_port=0, shutdown_timeout=30,
                            job_queues="", mode="scheduler")
    with override_settings(PLUGINS_RELOAD_PUBSUB_CHANNEL=unique_name):
        server = Server(options, pool_factory=lambda: WorkerPool(PoolSettings.from_config(concurrency=1, task_timeout=2.0)))
        server.start()
        try:
            assert server.consumer is None and server.jobs is None and server.scheduler is not None
            assert server.scheduler.schedule == {"runEveryMinute": [], "runEveryHour": [first.id], "runEveryDay": []}
            second = install("def run_every_day(meta):\n    pass\n")
            publish_reload()
            wait_until(lambda: server.scheduler.schedule["runEveryDay"] == [second.id])
            assert server.ready()
        finally:
            server.shutdown()
