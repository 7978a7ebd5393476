"""Recording plugin errors on the config and in the log (spec: plugins.md §5.1, §2.2)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from django.db import DEFAULT_DB_ALIAS, connections
from django.test.utils import CaptureQueriesContext

from plugin_server.models import PluginConfig, PluginLogEntry
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.errors import (
    PluginErrorRecord,
    clear_plugin_errors,
    disable_plugin_config,
    iso_time,
    record_plugin_error,
    record_plugin_errors,
)
from tests.factories import create_plugin_config
from tests.plugins.meta.conftest import context_of

pytestmark = pytest.mark.django_db


def test_error_object_is_recorded(ctx: PluginContext) -> None:
    """It stores {message, time, name, stack, event} on the config and writes a PLUGIN/ERROR entry at that time."""
    event = {"event": "$pageview", "properties": {"crash": "throw"}}
    record_plugin_error(ctx, "ValueError", "error thrown in plugin", "Traceback ...", event)
    error = PluginConfig.objects.get(id=ctx.plugin_config_id).error
    assert error["message"] == "error thrown in plugin"
    assert error["name"] == "ValueError"
    assert error["stack"] == "Traceback ..."
    assert error["event"] == event
    moment = datetime.strptime(error["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - moment).total_seconds()) < 60
    entry = PluginLogEntry.objects.get(plugin_config_id=ctx.plugin_config_id)
    # The log entry shows the plugin's traceback when there is one (it ends with the message).
    assert (entry.source, entry.type, entry.message) == ("PLUGIN", "ERROR", "Traceback ...")
    assert (entry.team_id, entry.plugin_id) == (ctx.team_id, ctx.plugin_id)
    assert iso_time(entry.timestamp) == error["time"]


def test_plain_message_has_only_message_and_time(ctx: PluginContext) -> None:
    """It stores a plain string error as {message, time}."""
    record_plugin_error(ctx, None, "just words")
    assert set(PluginConfig.objects.get(id=ctx.plugin_config_id).error) == {"message", "time"}


def test_only_latest_error_kept_and_updated_at_untouched(ctx: PluginContext) -> None:
    """It keeps only the latest error, logs each one, and leaves updated_at alone (reloads key on it)."""
    before = PluginConfig.objects.get(id=ctx.plugin_config_id).updated_at
    record_plugin_error(ctx, "Error", "first")
    record_plugin_error(ctx, "Error", "second")
    config = PluginConfig.objects.get(id=ctx.plugin_config_id)
    assert config.error["message"] == "second"
    assert config.updated_at == before
    assert PluginLogEntry.objects.filter(plugin_config_id=ctx.plugin_config_id).count() == 2


def test_event_that_json_cannot_hold(ctx: PluginContext) -> None:
    """It records an event holding a value JSON cannot encode, as text."""
    record_plugin_error(ctx, "Error", "boom", None, {"when": datetime(2021, 5, 17, tzinfo=timezone.utc)})
    assert PluginConfig.objects.get(id=ctx.plugin_config_id).error["event"] == {"when": "2021-05-17 00:00:00+00:00"}


def test_many_errors_cost_two_statements(ctx: PluginContext, plugin_config: object) -> None:
    """It writes 100 errors of two configs with one UPDATE and one INSERT, keeping each config's latest."""
    other = context_of(create_plugin_config())
    records = [PluginErrorRecord(ctx=ctx if n % 2 else other, message=f"error {n}", name="Error") for n in range(100)]
    with CaptureQueriesContext(connections[DEFAULT_DB_ALIAS]) as captured:
        record_plugin_errors(records)
    statements = [q["sql"].split()[0] for q in captured.captured_queries if q["sql"].split()[0] in ("UPDATE", "INSERT")]
    assert sorted(statements) == ["INSERT", "UPDATE"]
    assert PluginConfig.objects.get(id=ctx.plugin_config_id).error["message"] == "error 99"
    assert PluginConfig.objects.get(id=other.plugin_config_id).error["message"] == "error 98"
    assert PluginLogEntry.objects.filter(plugin_config_id__in=[ctx.plugin_config_id, other.plugin_config_id]).count() == 100


def test_clear_errors(ctx: PluginContext) -> None:
    """It clears a recorded error and reports how many configs it changed."""
    record_plugin_error(ctx, "Error", "boom")
    assert clear_plugin_errors([ctx.plugin_config_id]) == 1
    assert PluginConfig.objects.get(id=ctx.plugin_config_id).error is None
    assert clear_plugin_errors([ctx.plugin_config_id]) == 0


def test_disable_all_configs_of_plugin_in_team(ctx: PluginContext, plugin_config: object) -> None:
    """It disables every enabled config of the plugin in that team, and no other."""
    sibling = create_plugin_config(team=plugin_config.team, plugin=plugin_config.plugin)  # type: ignore[attr-defined]
    other_team = create_plugin_config(plugin=plugin_config.plugin)  # type: ignore[attr-defined]
    other_plugin = create_plugin_config(team=plugin_config.team)  # type: ignore[attr-defined]
    assert disable_plugin_config(ctx) == 2
    enabled = dict(PluginConfig.objects.values_list("id", "enabled"))
    assert enabled[ctx.plugin_config_id] is False
    assert enabled[sibling.id] is False
    assert enabled[other_team.id] is True
    assert enabled[other_plugin.id] is True


def test_a_refused_log_write_keeps_the_error_record(ctx: PluginContext) -> None:
    """The table refuses the log entry (a real Postgres error, from a trigger): the config's error stays recorded."""
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse_log_entry() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql;"
            " CREATE TRIGGER refuse_log_entry BEFORE INSERT ON posthog_pluginlogentry FOR EACH ROW EXECUTE FUNCTION refuse_log_entry()"
        )
    record_plugin_error(ctx, "ValueError", "kept although its log line is refused")
    assert PluginConfig.objects.get(id=ctx.plugin_config_id).error["message"] == "kept although its log line is refused"
    assert not PluginLogEntry.objects.filter(plugin_config_id=ctx.plugin_config_id).exists()


def test_a_config_without_a_team_logs_with_team_null(ctx: PluginContext) -> None:
    """A global config's entry is written with team_id NULL where the column allows it (never a made-up team 0)."""
    record_plugin_error(context_of_no_team(ctx), None, "global plugin failed")
    assert PluginLogEntry.objects.get(plugin_config_id=ctx.plugin_config_id).team_id is None


def context_of_no_team(ctx: PluginContext) -> PluginContext:
    return PluginContext(plugin_config_id=ctx.plugin_config_id, plugin_id=ctx.plugin_id, team_id=None, plugin_name=ctx.plugin_name)
