"""Plugin jobs (spec: plugins.md §4.4, §6.4, §11; acceptance "Job queue"): real workers, Postgres, Redis, real time."""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from collections.abc import Callable, Iterator

import pytest
import redis
from django.db import connection
from django_q.models import Schedule

from plugin_server.job_consumer import JobConsumer, JobSettings
from plugin_server.jobs import claim_due_jobs, enqueue_job, pending_jobs
from plugin_server.locks import JOB_QUEUE_LOCK_KEY, LockKeeper, RedisLock
from plugin_server.models import PluginConfig, PluginLogEntry
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.workers.pool import WorkerPool
from tests.e2e.test_server_e2e import start_server, wait_for  # noqa: F401  (fixture)
from tests.workers.conftest import make_pool  # noqa: F401  (fixture)
from tests.workers.helpers import event, install

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.redis]

# The acceptance suite's plugin: process_event enqueues logReply as the event's type says.
REPLY_PLUGIN = """
import json
import time
from datetime import datetime, timezone

def log(meta, *entry):
    meta.cache.lpush('log', json.dumps(list(entry)))

def log_reply(text, meta):
    log(meta, 'reply', text, time.time())

jobs = {'logReply': log_reply}

def process_event(event, meta):
    log(meta, 'processEvent', time.time())
    kind = event['properties'].get('type')
    if kind == 'runIn':
        meta.jobs.logReply('runIn').runIn(1, 'second')
    elif kind == 'runAt':
        meta.jobs.logReply('runAt').runAt(datetime.now(timezone.utc))
    elif kind == 'runNow':
        meta.jobs.logReply('runNow').runNow()
    elif kind == 'unknown':
        meta.jobs.nope('x').run_now()
    elif kind == 'bad':
        meta.jobs.logReply({1, 2}).run_now()
    return event
"""

# A job that raises RetryError until its run number reaches the payload.
RETRY_PLUGIN = """
import json
import time

def flaky(payload, meta):
    run = meta.cache.incr('runs')
    meta.cache.lpush('log', json.dumps(['run', run, time.time()]))
    if run < payload:
        raise RetryError('not yet, run ' + str(run))

jobs = {'flaky': flaky}

def process_event(event, meta):
    meta.jobs.flaky(event['properties']['succeed_on']).run_now()
    return event
"""


def plugin_log(client: redis.Redis, config: PluginConfig) -> list[list[object]]:
    return [json.loads(item) for item in reversed(client.lrange(f"@plugin/{config.plugin_id}/{config.team_id}/log", 0, -1))]


def clean(client: redis.Redis, config: PluginConfig) -> None:
    client.delete(*(f"@plugin/{config.plugin_id}/{config.team_id}/{key}" for key in ("log", "runs")))


def wait_until(predicate: Callable[[], bool], step: Callable[[], object], seconds: float = 15.0) -> None:
    """Drive ``step`` (a bounded run-once call) until ``predicate`` holds."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        step()
        time.sleep(0.02)


@pytest.fixture
def make_consumer(redis_client: redis.Redis, unique_name: str) -> Iterator[Callable[..., JobConsumer]]:
    """Consumers on this test's lock, already holding it unless told; stopped at the end."""
    made: list[JobConsumer] = []

    def make(pool: WorkerPool, lock_key: str = f"{unique_name}:lock", take_lock: bool = True, **options: object) -> JobConsumer:
        values: dict[str, object] = {"max_attempts": 3, "retry_base": 0.2, "poll_interval": 0.05, "concurrency": 2, "lease": 30.0}
        values.update(options)
        consumer = JobConsumer(pool, LockKeeper(RedisLock(lock_key, 5, redis_client)), JobSettings(**values))  # type: ignore[arg-type]
        if take_lock:
            consumer.keeper.step()
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.stop()


@pytest.fixture
def scenario(make_pool, make_consumer, redis_client) -> Callable[..., tuple[PluginConfig, WorkerPool, JobConsumer]]:  # type: ignore[no-untyped-def]
    """Install ``source``, start a pool and a consumer, and send one event per ``properties``."""

    def start(source: str, *properties: dict[str, object], **options: object) -> tuple[PluginConfig, WorkerPool, JobConsumer]:
        config = install(source)
        clean(redis_client, config)
        pool = make_pool(concurrency=1)
        consumer = make_consumer(pool, **options)
        pool.process_events([event(config.team_id, properties=dict(props)) for props in properties])
        return config, pool, consumer

    return start


def drain(consumer: JobConsumer) -> None:
    """Poll until every stored job is done."""
    wait_until(lambda: pending_jobs() == 0 and consumer.in_flight() == 0, consumer.poll_once)


def entries(config: PluginConfig, source: str | None = None) -> list[tuple[str, str, str]]:
    """The plugin's log lines about jobs (its set-up lines left out)."""
    rows = PluginLogEntry.objects.filter(plugin_config_id=config.id, message__contains="Job ").order_by("timestamp")
    if source:
        rows = rows.filter(source=source)
    return [(row.source, row.type, row.message) for row in rows]


@pytest.mark.parametrize("kind", ["runNow", "runAt", "runIn"])
def test_jobs_enqueued_by_a_plugin_run_in_the_sandbox(scenario, redis_client, kind: str) -> None:
    """processEvent enqueues logReply; the consumer runs it: [["processEvent"], ["reply", <kind>]] (acceptance)."""
    config, pool, consumer = scenario(REPLY_PLUGIN, {"type": kind})
    assert pending_jobs() == 1
    wait_until(lambda: len(plugin_log(redis_client, config)) == 2 and consumer.in_flight() == 0, consumer.poll_once)
    log = plugin_log(redis_client, config)
    assert [entry[:2] for entry in log] == [["processEvent", log[0][1]], ["reply", kind]]
    if kind == "runIn":
        assert log[1][2] - log[0][1] >= 1.0  # at, not before, its due time
    assert pending_jobs() == 0


def test_a_job_is_not_run_before_it_is_due(scenario, redis_client) -> None:
    """runIn(1 second): polls before the due time claim nothing."""
    config, pool, consumer = scenario(REPLY_PLUGIN, {"type": "runIn"})
    assert consumer.poll_once() == 0
    assert pending_jobs() == 1


def test_retry_error_retries_with_exponential_backoff_then_succeeds(scenario, redis_client) -> None:
    """A job raising RetryError twice runs a third time, 0.2 s then 0.4 s later; each retry is in the plugin's log."""
    config, pool, consumer = scenario(RETRY_PLUGIN, {"succeed_on": 3})
    drain(consumer)
    runs = plugin_log(redis_client, config)
    assert [run[1] for run in runs] == [1, 2, 3]
    assert runs[1][2] - runs[0][2] >= 0.2
    assert runs[2][2] - runs[1][2] >= 0.4
    assert entries(config, "SYSTEM") == [
        ("SYSTEM", "WARN", "Job flaky failed on attempt 1 of 3: not yet, run 1; retrying in 0.2 s"),
        ("SYSTEM", "WARN", "Job flaky failed on attempt 2 of 3: not yet, run 2; retrying in 0.4 s"),
    ]
    config.refresh_from_db()
    assert config.error is None


def test_a_job_out_of_attempts_fails_for_good_and_says_so(scenario, redis_client) -> None:
    """JOB_MAX_ATTEMPTS = 2: two runs, one retry line, then the final failure on the config and in its log."""
    config, pool, consumer = scenario(RETRY_PLUGIN, {"succeed_on": 99}, max_attempts=2)
    drain(consumer)
    assert [run[1] for run in plugin_log(redis_client, config)] == [1, 2]
    config.refresh_from_db()
    assert config.error["message"] == "Job flaky failed after 2 attempts: not yet, run 2"
    assert entries(config) == [
        ("SYSTEM", "WARN", "Job flaky failed on attempt 1 of 2: not yet, run 1; retrying in 0.2 s"),
        ("PLUGIN", "ERROR", "Job flaky failed after 2 attempts: not yet, run 2"),
    ]


def test_an_ordinary_error_in_a_job_is_recorded_and_not_retried(scenario) -> None:
    """Spec §4.4: an error other than RetryError is recorded on the config and the job is done."""
    boom = ("def boom(payload, meta):\n    raise ValueError('lol ' + payload)\njobs = {'boom': boom}\n"
            "def process_event(event, meta):\n    meta.jobs.boom('x').run_now()\n    return event\n")
    config, _pool, consumer = scenario(boom, {})
    drain(consumer)
    config.refresh_from_db()
    assert (config.error["name"], config.error["message"]) == ("ValueError", "lol x")


def test_an_unknown_job_name_fails_when_it_runs(scenario, redis_client) -> None:
    """meta.jobs.nope: enqueued, then recorded as the config's error when run (spec §6.4); the row goes."""
    config, pool, consumer = scenario(REPLY_PLUGIN, {"type": "unknown"})
    assert pending_jobs() == 1
    drain(consumer)
    config.refresh_from_db()
    assert 'Task "nope" not found' in config.error["message"]


@pytest.mark.parametrize("change", ["disabled", "deleted"])
def test_a_job_of_a_disabled_or_deleted_config_is_dropped_with_a_log_line(scenario, redis_client, change, caplog) -> None:
    """The job never runs; its row goes; the server log (and the plugin's log if the config exists) says why."""
    config, pool, consumer = scenario(REPLY_PLUGIN, {"type": "runNow"})
    if change == "disabled":
        PluginConfig.objects.filter(id=config.id).update(enabled=False)
    else:
        PluginLogEntry.objects.filter(plugin_config_id=config.id).delete()
        PluginConfig.objects.filter(id=config.id).delete()
    with caplog.at_level("WARNING", logger="plugin_server.job_consumer"):
        drain(consumer)
    assert [entry[0] for entry in plugin_log(redis_client, config)] == ["processEvent"]
    assert f"its plugin config {config.id} was {change}" in caplog.text
    expected = [("SYSTEM", "WARN", "Job logReply dropped: the plugin config is disabled")] if change == "disabled" else []
    assert entries(config, "SYSTEM") == expected


def test_a_payload_json_cannot_hold_is_refused_at_enqueue_time(make_pool, redis_client) -> None:
    """meta.jobs.logReply({1, 2}).run_now(): nothing stored, a clear error in the plugin's log, the event goes on."""
    config = install(REPLY_PLUGIN)
    clean(redis_client, config)
    pool = make_pool(concurrency=1)
    out = pool.process_events([event(config.team_id, properties={"type": "bad"})])
    assert out[0]["properties"]["type"] == "bad"
    assert pending_jobs() == 0
    (error,) = PluginLogEntry.objects.filter(plugin_config_id=config.id, source="PLUGIN", type="ERROR").values_list("message", flat=True)
    assert "JSON" in error and "run_now" in error


def test_a_refused_payload_is_logged_even_when_the_plugin_catches_the_error(make_pool) -> None:
    """The enqueue error reaches the plugin (which may catch it) and an ERROR line is in its log regardless."""
    config = install("def process_event(event, meta):\n    try:\n        meta.jobs.later({1, 2}).run_in(seconds=5)\n"
                     "    except Exception as error:\n        event['properties']['error'] = str(error)\n    return event\n")
    out = make_pool(concurrency=1).process_events([event(config.team_id)])
    assert "must be JSON values" in out[0]["properties"]["error"]
    assert pending_jobs() == 0
    (line,) = PluginLogEntry.objects.filter(plugin_config_id=config.id, type="ERROR").values_list("message", flat=True)
    assert line.startswith("meta.jobs.run_in(): arguments must be JSON values")


def test_without_the_lock_no_job_is_taken(make_pool, make_consumer, redis_client, unique_name) -> None:
    """Only the holder of the job-queue lock polls: another consumer leaves due jobs alone."""
    config = install(REPLY_PLUGIN)
    redis_client.set(f"{unique_name}:lock", "another server", px=10_000)
    pool = make_pool(concurrency=1)
    consumer = make_consumer(pool)
    assert not consumer.keeper.held
    pool.process_events([event(config.team_id, properties={"type": "runNow"})])
    assert consumer.poll_once() == 0
    assert pending_jobs() == 1


def test_two_consumers_polling_at_once_run_each_job_once(make_pool, make_consumer, redis_client, unique_name) -> None:
    """Even two consumers that both poll (SKIP LOCKED claims) run each of 20 jobs exactly once."""
    config = install(REPLY_PLUGIN)
    clean(redis_client, config)
    pool = make_pool(concurrency=2)
    one = make_consumer(pool, lock_key=f"{unique_name}:one", concurrency=4)
    two = make_consumer(pool, lock_key=f"{unique_name}:two", concurrency=4)
    pool.process_events([event(config.team_id, distinct_id=str(n), properties={"type": "runNow"}) for n in range(20)])
    assert pending_jobs() == 20

    def both() -> None:
        def poll(consumer: JobConsumer) -> None:
            try:
                consumer.poll_once()
            finally:
                connection.close()

        threads = [threading.Thread(target=poll, args=(consumer,)) for consumer in (one, two)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    wait_until(lambda: pending_jobs() == 0 and one.in_flight() == two.in_flight() == 0, both, seconds=30)
    replies = [entry for entry in plugin_log(redis_client, config) if entry[0] == "reply"]
    assert len(replies) == 20


def test_a_job_leased_by_a_server_that_died_runs_again_after_the_lease(scenario, redis_client) -> None:
    """A claim is a lease: a job claimed by a server that then died is run by another once the lease is over."""
    config, pool, consumer = scenario(REPLY_PLUGIN, {"type": "runNow"})
    assert len(claim_due_jobs(10, lease=0.5)) == 1  # the "dead" server's claim
    assert consumer.poll_once() == 0
    wait_until(lambda: len(plugin_log(redis_client, config)) == 2 and consumer.in_flight() == 0, consumer.poll_once)
    assert pending_jobs() == 0


def test_a_broken_job_row_is_deleted_with_an_error(make_consumer, make_pool, caplog) -> None:
    """A row whose args are not a job cannot run: it is deleted and logged, other jobs go on."""
    from plugin_server.jobs import JOB_FUNCTION, JOBS_CLUSTER

    Schedule.objects.create(func=JOB_FUNCTION, cluster=JOBS_CLUSTER, args="('not json',)", schedule_type=Schedule.ONCE)
    with caplog.at_level("ERROR", logger="plugin_server.jobs"):
        assert claim_due_jobs(10, lease=10) == []
    assert pending_jobs() == 0
    assert "cannot be read" in caplog.text


def test_a_job_enqueued_before_a_restart_runs_after_it_once(start_server, redis_client, unique_name) -> None:
    """`run_plugin_server --mode jobs` SIGKILLed before the job is due; the next server runs it, at its time, once,
    and (jobs role) leaves the ingestion queue alone."""
    config = install(REPLY_PLUGIN)
    clean(redis_client, config)
    redis_client.delete(JOB_QUEUE_LOCK_KEY)
    due = datetime.now(timezone.utc) + timedelta(seconds=6)
    enqueue_job(PluginContext(config.id, config.plugin_id, config.team_id, "reply"), "logReply", "after restart", due)
    redis_client.rpush(unique_name, b"an ingestion task the jobs role must not take")
    env = {"PLUGIN_SERVER_MODE": "jobs", "SCHEDULE_LOCK_TTL": "2", "JOB_POLL_INTERVAL": "0.1"}
    first = start_server(**env)
    wait_for(lambda: redis_client.get(JOB_QUEUE_LOCK_KEY) is not None, 30, "the job-queue lock", first)
    first.kill()
    first.wait(10)
    assert plugin_log(redis_client, config) == [] and pending_jobs() == 1
    second = start_server(**env)
    wait_for(lambda: len(plugin_log(redis_client, config)) == 1 and pending_jobs() == 0, 30, "the job", second)
    ((kind, payload, ran_at),) = plugin_log(redis_client, config)
    assert (kind, payload) == ("reply", "after restart")
    assert ran_at >= due.timestamp()
    assert redis_client.llen(unique_name) == 1
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0
    assert len(plugin_log(redis_client, config)) == 1
    redis_client.delete(unique_name)


@pytest.mark.parametrize(
    ("mode", "parts"),
    [("all", {"ingestion", "scheduler", "jobs"}), ("ingestion", {"ingestion"}), ("scheduler", {"scheduler"}), ("jobs", {"jobs"})],
)
def test_process_roles_pick_the_parts_a_server_runs(mode: str, parts: set[str]) -> None:
    """`run_plugin_server --mode` (or PLUGIN_SERVER_MODE) chooses the parts; anything else is refused."""
    from django.core.management.base import CommandError

    from plugin_server.management.commands.run_plugin_server import Command
    from plugin_server.server import ServerOptions

    parser = Command().create_parser("manage.py", "run_plugin_server")
    assert parser.parse_args(["--mode", mode]).mode == mode
    options = ServerOptions(kafka_enabled=False, disable_web=True, web_hostname="", web_port=0, shutdown_timeout=1, job_queues="", mode=mode)
    assert {part for part in ("ingestion", "scheduler", "jobs") if options.runs(part)} == parts
    with pytest.raises(CommandError):
        parser.parse_args(["--mode", "everything"])
