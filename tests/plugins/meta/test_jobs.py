"""meta.jobs: enqueueing plugin jobs as django-q2 ONCE schedules (running them: tests/test_jobs.py)."""

from __future__ import annotations

import ast
import json
from datetime import datetime, timedelta, timezone

import pytest
from django_q.models import Schedule

from plugin_server.exceptions import MetaCallError
from plugin_server.jobs import JOB_FUNCTION
from plugin_server.models import PluginLogEntry
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.host import MetaHost
from plugin_server.plugins.meta.jobs import UNIT_SECONDS, parse_due_time, unit_seconds

pytestmark = pytest.mark.django_db


def only_job() -> tuple[Schedule, dict[str, object]]:
    schedule = Schedule.objects.get()
    (text,) = ast.literal_eval(schedule.args)
    return schedule, json.loads(text)


def test_run_now(ctx: PluginContext, host: MetaHost) -> None:
    """It stores a ONCE schedule of execute_job, due now, carrying the original's job object."""
    before = datetime.now(timezone.utc)
    host.call(ctx, "jobs", "run_now", ["logReply", "runNow"], {})
    schedule, job = only_job()
    assert schedule.func == JOB_FUNCTION
    assert schedule.schedule_type == Schedule.ONCE
    assert before - timedelta(seconds=1) <= schedule.next_run <= datetime.now(timezone.utc)
    # The job store may add fields of its own (attempt, ...); these are the original's.
    assert {key: job[key] for key in ("type", "payload", "timestamp", "pluginConfigId", "pluginConfigTeam")} == {
        "type": "logReply",
        "payload": "runNow",
        "timestamp": int(schedule.next_run.timestamp() * 1000),
        "pluginConfigId": ctx.plugin_config_id,
        "pluginConfigTeam": ctx.team_id,
    }


@pytest.mark.parametrize(
    ("args", "kwargs", "seconds"),
    [
        ([1, "second"], {}, 1),
        ([2, "minutes"], {}, 120),
        ([1, "hour"], {}, 3600),
        ([1500, "milliseconds"], {}, 1.5),
        ([1, "month"], {}, 30 * 86_400),
        ([], {"seconds": 30}, 30),
        ([], {"minutes": 1, "seconds": 5}, 65),
        ([], {"hours": 2}, 7200),
    ],
)
def test_run_in(ctx: PluginContext, host: MetaHost, args: list[object], kwargs: dict[str, float], seconds: float) -> None:
    """It schedules the job after the given duration, in the original's (duration, unit) form or with keywords."""
    before = datetime.now(timezone.utc)
    host.call(ctx, "jobs", "run_in", ["job", {"n": 1}, *args], kwargs)
    schedule, job = only_job()
    delay = (schedule.next_run - before).total_seconds()
    assert seconds - 0.01 <= delay <= seconds + 2
    assert job["payload"] == {"n": 1}


def test_run_at(ctx: PluginContext, host: MetaHost) -> None:
    """It schedules the job at the given ISO time, datetime or epoch milliseconds."""
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    for value in ("2030-01-02T03:04:05Z", when, int(when.timestamp() * 1000)):
        Schedule.objects.all().delete()
        host.call(ctx, "jobs", "run_at", ["job", None, value], {})
        schedule, job = only_job()
        assert schedule.next_run == when
        assert job["timestamp"] == int(when.timestamp() * 1000)


def test_units() -> None:
    """It accepts the original's units, singular or plural, and names an unknown one."""
    assert unit_seconds("day") == unit_seconds("days") == 86_400
    assert set(UNIT_SECONDS) == {"milliseconds", "seconds", "minutes", "hours", "days", "weeks", "months", "quarters", "years"}
    with pytest.raises(MetaCallError, match="^Unknown time unit: fortnight$"):
        unit_seconds("fortnight")


def test_naive_times_are_utc() -> None:
    """It reads a time without a zone as UTC."""
    assert parse_due_time("2030-01-02T03:04:05") == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_unserialisable_payload_is_refused_and_logged(ctx: PluginContext, host: MetaHost) -> None:
    """It refuses a payload JSON cannot hold, stores no job, and writes the error to the plugin's log."""
    with pytest.raises(MetaCallError, match="Job logReply: the payload is not JSON-serialisable"):
        host.call(ctx, "jobs", "run_now", ["logReply", {"when": {1, 2}}], {})
    assert not Schedule.objects.exists()
    host.flush()
    entry = PluginLogEntry.objects.get(plugin_config_id=ctx.plugin_config_id)
    assert (entry.source, entry.type) == ("PLUGIN", "ERROR")
    assert entry.message.startswith("Job logReply: the payload is not JSON-serialisable")


@pytest.mark.parametrize(
    ("method", "args", "kwargs", "message"),
    [
        ("run_in", ["job", None, 1, "fortnight"], {}, "Unknown time unit: fortnight"),
        ("run_in", ["job", None, -1, "seconds"], {}, "at least 0"),
        ("run_in", ["job", None, 1, "seconds"], {"minutes": 1}, "not both"),
        ("run_in", ["job", None], {"years": 1}, "unexpected keyword argument 'years'"),
        ("run_in", ["job", None, 10**20, "years"], {}, "out of range"),
        ("run_at", ["job", None, "tomorrow"], {}, "ISO 8601"),
        ("run_at", ["job", None, [2030]], {}, "ISO 8601"),
        ("run_now", ["", None], {}, "job name"),
        ("run_now", [None, None], {}, "job name"),
    ],
)
def test_bad_input_is_refused(ctx: PluginContext, host: MetaHost, method, args, kwargs, message) -> None:  # type: ignore[no-untyped-def]
    """It refuses bad units, durations, times and names with a clear error and stores nothing."""
    with pytest.raises(MetaCallError, match=message):
        host.call(ctx, "jobs", method, args, kwargs)
    assert not Schedule.objects.exists()
