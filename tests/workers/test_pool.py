"""The worker pool with real worker processes: routing, order, failures, reload, shutdown."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from plugin_server.metrics import RecordingMetrics, set_metrics
from plugin_server.models import PluginConfig, PluginLogEntry
from plugin_server.pubsub import ReloadListener
from tests.factories import create_team
from tests.workers.helpers import event, install

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

RENAME = "def process_event(event, meta):\n    event['event'] = 'renamed'\n    return event\n"
APPEND_PID = """
import random
def setup_plugin(meta):
    meta.global_['worker'] = random.random()

def process_event(event, meta):
    event['properties']['seen_by'] = meta.global_['worker']
    return event
"""
TEARDOWN_RAISES = (
    "def teardown_plugin(meta):\n    raise RuntimeError('This Happened In The Teardown Palace')\n"
    "def process_event(event, meta):\n    return event\n"
)


def test_process_events_runs_the_team_chain(make_pool):
    """It runs the team's plugin on its events and sets $plugins_succeeded / $plugins_failed."""
    config = install(RENAME)
    pool = make_pool()
    out = pool.process_events([event(config.team_id)])
    assert out[0]["event"] == "renamed"
    assert out[0]["properties"]["$plugins_succeeded"] == [f"{config.plugin.name} ({config.id})"]
    assert out[0]["properties"]["$plugins_failed"] == []


def test_teams_without_plugins_skip_the_workers(make_pool):
    """It hands back events of teams with no plugin in force untouched, as the same objects."""
    install(RENAME)
    other = create_team()
    pool = make_pool()
    untouched = event(other.id)
    out = pool.process_events([untouched])
    assert out == [untouched] and out[0] is untouched and "$plugins_succeeded" not in untouched["properties"]


def test_each_team_has_a_worker_of_its_own_and_order_is_kept(make_pool):
    """It sends all events of a team to that team's worker process, and no other team's; the input order is kept."""
    first = install(APPEND_PID)
    second = install(APPEND_PID)
    pool = make_pool(concurrency=2)
    events = [event(first.team_id if i % 3 else second.team_id, f"person-{i % 7}", i) for i in range(70)]
    out = pool.process_events(events)
    assert [e["properties"]["n"] for e in out] == list(range(70))
    by_team: dict[int, set] = {}
    for e in out:
        by_team.setdefault(e["team_id"], set()).add(e["properties"]["seen_by"])
    assert all(len(workers) == 1 for workers in by_team.values()) and len(by_team) == 2
    assert len({w for ws in by_team.values() for w in ws}) == 2  # one worker (one meta.global_) per team
    pids = {pool.team_worker(first.team_id).pid, pool.team_worker(second.team_id).pid}
    assert len(pids) == 2 and len(pool.workers()) == 2


def test_plugin_order_and_drop(make_pool):
    """It runs plugins in config order; a plugin returning None drops the event for the later ones."""
    team = create_team()
    first = install("def process_event(event, meta):\n    event['properties']['order'] = ['first']\n    return event\n", team, order=2)
    install("def process_event(event, meta):\n    event['properties']['order'] = ['zero']\n    return event\n", team, order=1)
    install(
        "def process_event(event, meta):\n    return None if event['event'] == 'drop me' else event\n", team, order=3
    )
    pool = make_pool()
    out = pool.process_events([event(team.id), {**event(team.id), "event": "drop me"}])
    assert len(out) == 1 and out[0]["properties"]["order"] == ["first"]
    assert first.id in pool.inventory.chains[team.id]


def test_raising_plugin_is_recorded_and_the_event_goes_on(make_pool):
    """It records a plugin's exception on its config, logs it, marks it failed, and keeps the event."""
    team = create_team()
    broken = install("def process_event(event, meta):\n    raise ValueError('error thrown in plugin')\n", team, order=1)
    fine = install(RENAME, team, order=2)
    pool = make_pool()
    out = pool.process_events([event(team.id) for _ in range(4)])
    assert len(out) == 4 and all(e["event"] == "renamed" for e in out)
    assert out[0]["properties"]["$plugins_failed"] == [f"{broken.plugin.name} ({broken.id})"]
    assert out[0]["properties"]["$plugins_succeeded"] == [f"{fine.plugin.name} ({fine.id})"]
    broken.refresh_from_db()
    assert broken.error["message"] == "error thrown in plugin" and broken.error["name"] == "ValueError"
    assert PluginLogEntry.objects.filter(plugin_config_id=broken.id, source="PLUGIN", type="ERROR").count() == 4


def test_changing_team_id_drops_the_event_with_an_error(make_pool):
    """It drops an event whose team_id a plugin changed, and records the spec's error."""
    config = install("def process_event(event, meta):\n    event['team_id'] = 400\n    return event\n")
    pool = make_pool()
    assert pool.process_events([event(config.team_id)]) == []
    config.refresh_from_db()
    assert config.error["message"] == "Illegal Operation: Plugin tried to change teamID"


def test_setup_failure_disables_the_config(make_pool):
    """It disables a config whose setup_plugin raises, logs the SYSTEM error, and passes events on."""
    config = install("def setup_plugin(meta):\n    raise RuntimeError('no setup')\ndef process_event(event, meta):\n    return None\n")
    pool = make_pool()
    out = pool.process_events([event(config.team_id)])
    assert len(out) == 1
    config.refresh_from_db()
    assert config.enabled is False and config.error["message"] == "no setup"
    assert PluginLogEntry.objects.filter(
        plugin_config_id=config.id, source="SYSTEM", message__startswith="Plugin failed to load and was disabled"
    ).exists()
    assert config.team_id not in pool.inventory.chains


def test_successful_setup_clears_the_error_and_logs(make_pool):
    """It clears an old error and writes "Plugin loaded" when an instance starts."""
    config = install(RENAME, error={"message": "old"})
    pool = make_pool(concurrency=1)
    pool.process_events([event(config.team_id)])
    config.refresh_from_db()
    assert config.error is None
    assert PluginLogEntry.objects.filter(plugin_config_id=config.id, source="SYSTEM", type="INFO", message__startswith="Plugin loaded").exists()


def test_print_goes_to_the_plugin_log(make_pool):
    """It writes print() lines as CONSOLE/LOG entries of the config."""
    config = install("def process_event(event, meta):\n    print('logged event', 987)\n    return event\n")
    pool = make_pool()
    pool.process_events([event(config.team_id)])
    entry = PluginLogEntry.objects.get(plugin_config_id=config.id, source="CONSOLE")
    assert (entry.type, entry.message) == ("LOG", "logged event 987")


def test_endless_loop_times_out_in_the_worker(make_pool):
    """It stops `while True: pass` after TASK_TIMEOUT with the spec's message; the event goes on."""
    config = install("def process_event(event, meta):\n    while True:\n        pass\n")
    pool = make_pool(task_timeout=1.0)
    out = pool.process_events([event(config.team_id)])
    assert len(out) == 1
    config.refresh_from_db()
    assert config.error["message"].startswith("Script execution timed out after looping for 1 second")


SLOW_ON_E1 = """
import time
def process_event(event, meta):
    if event['event'] == 'e1':
        time.sleep(0.8)
    return event
"""


def _lose_worker_mid_call(pool, config, team_id: int, signal_number: int) -> list:
    """Run 3 events in a thread; when the worker is inside config's call on event 1, send it a signal."""
    worker = pool.team_worker(team_id)
    result: list = []
    thread = threading.Thread(target=lambda: result.extend(pool.process_events([event(team_id, n=i) for i in range(3)])))
    thread.start()
    deadline = time.monotonic() + 10
    while worker.marker.read()[1:] != (config.id, 1):
        assert time.monotonic() < deadline, "the worker never started the slow call"
        time.sleep(0.005)
    os.kill(worker.pid, signal_number)
    thread.join(30)
    assert not thread.is_alive()
    assert pool.team_worker(team_id).pid != worker.pid
    return result


@pytest.mark.parametrize(
    ("signal_number", "message"),
    [(signal.SIGSTOP, "Script execution timed out"), (signal.SIGKILL, "The plugin's worker process died")],
    ids=["hung", "died"],
)
def test_lost_worker_costs_only_the_call_it_was_running(make_pool, signal_number, message):
    """It replaces a worker that hangs (no answer by TASK_TIMEOUT + grace: SIGKILL) or dies mid-call,
    records the error on the config whose call was running, with its event, and retries the
    rest of the batch on the new worker with only that call skipped."""
    team = create_team()
    slow = install(SLOW_ON_E1, team)
    pool = make_pool(concurrency=1, task_timeout=1.0, grace=0.5)
    out = _lose_worker_mid_call(pool, slow, team.id, signal_number)
    label = f"{slow.plugin.name} ({slow.id})"
    assert [e["event"] for e in out] == ["e0", "e1", "e2"]
    assert out[1]["properties"]["$plugins_failed"] == [label]
    assert out[2]["properties"]["$plugins_succeeded"] == [label]
    slow.refresh_from_db()
    assert slow.error["message"].startswith(message) and slow.error["event"]["event"] == "e1"


def test_memory_limit_costs_only_its_worker(make_pool):
    """It records a plugin that exceeds WORKER_MEMORY_LIMIT_MB, replaces the worker, and goes on."""
    team = create_team()
    hog = install("def process_event(event, meta):\n    event['big'] = [0] * (200 * 1024 * 1024)\n    return event\n", team, order=1)
    fine = install(RENAME, team, order=2)
    pool = make_pool(concurrency=1, memory_limit_mb=300)
    pid = pool.team_worker(team.id).pid
    out = pool.process_events([event(team.id)])
    assert out[0]["event"] == "renamed" and "big" not in out[0]
    hog.refresh_from_db()
    assert "memory" in hog.error["message"]
    assert pool.team_worker(team.id).pid != pid
    assert pool.process_events([event(team.id)])[0]["event"] == "renamed"
    assert PluginConfig.objects.get(id=fine.id).error is None


def test_reload_keeps_unchanged_instances_and_tears_down_removed(make_pool):
    """It keeps meta.global_ of unchanged configs across a reload and tears down a disabled one."""
    team = create_team()
    keep = install(APPEND_PID, team, order=1)
    gone = install(
        TEARDOWN_RAISES,
        team,
        order=2,
    )
    pool = make_pool(concurrency=1)
    before = pool.process_events([event(team.id)])[0]["properties"]["seen_by"]
    PluginConfig.objects.filter(id=gone.id).update(enabled=False)
    pool.reload()
    out = pool.process_events([event(team.id)])[0]
    assert out["properties"]["seen_by"] == before
    assert out["properties"]["$plugins_succeeded"] == [f"{keep.plugin.name} ({keep.id})"]
    gone.refresh_from_db()
    assert gone.error["message"] == "This Happened In The Teardown Palace"


def test_stop_tears_plugins_down(make_pool):
    """It calls teardown_plugin at shutdown and records its error (spec: Teardown)."""
    config = install(TEARDOWN_RAISES)
    pool = make_pool()
    pool.process_events([event(config.team_id)])
    config.refresh_from_db()
    assert config.error is None
    pool.stop()
    config.refresh_from_db()
    assert config.error["message"] == "This Happened In The Teardown Palace"


def test_scheduled_tasks_and_jobs(make_pool):
    """It lists scheduled tasks per config, runs them, and runs jobs; a missing job raises."""
    config = install(
        "def run_every_minute(meta):\n    print('tick')\n"
        "def runEveryDay(meta):\n    return 1\n"
        "def add(payload, meta):\n    print('job', payload['n'])\n    return payload['n'] + 1\n"
        "jobs = {'add': add}\n"
    )
    pool = make_pool()
    assert pool.scheduled_tasks() == {"runEveryMinute": [config.id], "runEveryHour": [], "runEveryDay": [config.id]}
    pool.run_scheduled(config.id, "runEveryMinute")
    assert pool.run_job(config.id, "add", {"n": 41}) == 42
    with pytest.raises(Exception, match='Task "nope" not found'):
        pool.run_job(config.id, "nope", {})
    messages = set(PluginLogEntry.objects.filter(plugin_config_id=config.id, source="CONSOLE").values_list("message", flat=True))
    assert messages == {"tick", "job 41"}


def test_on_events_runs_on_event_and_on_snapshot(make_pool):
    """It calls on_event for events and on_snapshot for $snapshot events."""
    config = install(
        "def on_event(event, meta):\n    print('event', event['event'])\n"
        "def on_snapshot(event, meta):\n    print('snapshot', event['event'])\n"
    )
    pool = make_pool()
    pool.on_events([event(config.team_id), {**event(config.team_id), "event": "$snapshot"}])
    messages = sorted(PluginLogEntry.objects.filter(plugin_config_id=config.id, source="CONSOLE").values_list("message", flat=True))
    assert messages == ["event e0", "snapshot $snapshot"]


def test_reload_message_does_not_lose_in_flight_events(make_pool, unique_name, redis_client):
    """A message on the reload channel during a batch: every event of the batch comes back, in order,
    and the changed plugin runs on the next batches."""
    config = install("import time\ndef process_event(event, meta):\n    time.sleep(0.02)\n    event['event'] = 'v1'\n    return event\n")
    pool = make_pool(concurrency=1)
    listener = ReloadListener(pool.reload, channel=unique_name)
    listener.start()
    try:
        assert listener.wait_subscribed(10)
        result: list = []
        thread = threading.Thread(target=lambda: result.extend(pool.process_events([event(config.team_id, n=i) for i in range(50)])))
        thread.start()
        config.plugin.source = "def process_event(event, meta):\n    event['event'] = 'v2'\n    return event\n"
        config.plugin.save()
        redis_client.publish(unique_name, "reload!")
        thread.join(30)
        assert [e["properties"]["n"] for e in result] == list(range(50))
        assert {e["event"] for e in result} <= {"v1", "v2"}
        deadline = time.monotonic() + 10
        while pool.process_events([event(config.team_id)])[0]["event"] != "v2":
            assert time.monotonic() < deadline, "the reload never took effect"
    finally:
        listener.stop()


def test_worker_is_recycled_after_max_tasks(make_pool):
    """WORKER_MAX_TASKS: a worker is torn down and replaced after that many tasks; work goes on."""
    config = install(TEARDOWN_RAISES)
    pool = make_pool(concurrency=1, max_tasks=2)
    pids = set()
    for _ in range(4):
        assert len(pool.process_events([event(config.team_id)])) == 1
        pids.add(pool.workers()[0].pid if pool.workers() else None)
    assert len(pids - {None}) >= 1 and None in pids
    # Retiring tears the plugin down first.
    config.refresh_from_db()
    assert config.error["message"] == "This Happened In The Teardown Palace"


def test_teams_whose_plugins_have_no_process_event_skip_the_workers(make_pool):
    """Once a worker reported a config's methods, a team with only on_event plugins skips process_events."""
    config = install("def on_event(event, meta):\n    pass\n")
    pool = make_pool(concurrency=1)
    pool.process_events([event(config.team_id)])  # sets it up: its methods become known
    untouched = event(config.team_id)
    assert pool.process_events([untouched])[0] is untouched


def test_event_with_unusual_properties_is_not_rewritten(make_pool):
    """Bad input: an event whose properties are not an object goes through without losing them."""
    config = install(RENAME)
    pool = make_pool()
    out = pool.process_events([{**event(config.team_id), "properties": ["not", "a", "dict"]}])
    assert out[0]["properties"] == ["not", "a", "dict"] and out[0]["event"] == "renamed"


def test_snapshot_events_skip_process_event(make_pool):
    """$snapshot events are not handed to process_event (ingestion.md §2); they come back untouched."""
    config = install("def process_event(event, meta):\n    return None\n")
    pool = make_pool()
    snapshot = {**event(config.team_id), "event": "$snapshot"}
    assert pool.process_events([snapshot, event(config.team_id)]) == [snapshot]


def test_plugin_metrics_are_the_originals(make_pool):
    """Per batch: plugin.process_event (tags plugin, teamId), plugin.<name>.process_event.ERROR with the
    count of failed calls, and plugin.task.<type>.<task>.<config id> for tasks."""
    config = install(
        "def process_event(event, meta):\n    if event['properties']['n'] % 2:\n        raise ValueError('odd')\n    return event\n"
        "def run_every_minute(meta):\n    pass\n"
    )
    recording = RecordingMetrics()
    set_metrics(recording)
    try:
        pool = make_pool(concurrency=1)
        pool.process_events([event(config.team_id, n=i) for i in range(5)])
        pool.run_scheduled(config.id, "runEveryMinute")
    finally:
        set_metrics(None)
    name = config.plugin.name
    timings = [(metric, tags) for kind, metric, _value, tags in recording.calls if kind == "timing"]
    assert ("plugin.process_event", {"plugin": name, "teamId": config.team_id}) in timings
    assert (f"plugin.task.schedule.run_every_minute.{config.id}", {}) in timings
    assert recording.total(f"plugin.{name}.process_event.ERROR") == 2


def test_the_least_recently_used_team_worker_is_retired_to_make_room(make_pool):
    """TEAM_WORKERS_MAX: a third team's worker retires the least recently used one (its plugin torn down), and
    that team, coming back, gets a fresh worker that sets its plugin up again."""
    configs = [install(TEARDOWN_RAISES) for _ in range(3)]
    pool = make_pool(concurrency=1, team_workers_max=2)
    for config in configs[:2]:
        pool.process_events([event(config.team_id)])
    first = pool.team_worker(configs[0].team_id)
    pool.process_events([event(configs[1].team_id)])  # team 0 is now the least recently used
    pool.process_events([event(configs[2].team_id)])
    deadline = time.monotonic() + 20
    # Retired in the background: its teardown_plugin ran (and raised, as this plugin's does).
    while (PluginConfig.objects.get(pk=configs[0].pk).error or {}).get("message") != "This Happened In The Teardown Palace":
        assert time.monotonic() < deadline, "the least recently used worker was not retired"
        time.sleep(0.05)
    live = {worker.pid for worker in pool.workers()}
    assert len(live) == 2 and first.pid not in live
    assert pool.process_events([event(configs[0].team_id)])[0]["event"] == "e0"
    loads = PluginLogEntry.objects.filter(plugin_config_id=configs[0].id, source="SYSTEM", message__startswith="Plugin loaded")
    assert loads.count() == 2


def test_a_dead_zygote_is_replaced_and_its_workers_deaths_blame_no_plugin(make_pool):
    """The zygote killed (its team workers die with it): the next events get a new zygote and fresh workers; no
    plugin config is blamed for it."""
    config = install(RENAME)
    pool = make_pool(concurrency=1)
    assert pool.process_events([event(config.team_id)])[0]["event"] == "renamed"
    old_zygote = pool.zygote()
    old_zygote.process.kill()
    old_zygote.process.wait()
    assert pool.process_events([event(config.team_id)])[0]["event"] == "renamed"
    assert pool.zygote() is not old_zygote and pool.zygote().alive()
    assert PluginConfig.objects.get(pk=config.pk).error is None
