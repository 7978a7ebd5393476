"""Plugin instances in real workers: lazy set-up, load failures, reuse on reload (spec: plugins.md §1.2, §2)."""

from __future__ import annotations

import pytest

from plugin_server.models import Plugin, PluginConfig, PluginLogEntry
from tests.factories import create_plugin, create_plugin_config, create_team
from tests.workers.conftest import make_pool  # noqa: F401  (fixture)
from tests.workers.helpers import event, install

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def _loaded(config: PluginConfig) -> int:
    return PluginLogEntry.objects.filter(plugin_config_id=config.id, source="SYSTEM", message__startswith="Plugin loaded").count()


def test_setup_is_lazy_and_once_per_worker(make_pool):
    """It sets a plugin up on first use only, once in its team's worker; another team's plugin is not set up."""
    config = install("def process_event(event, meta):\n    return event\n")
    other = install("def process_event(event, meta):\n    return event\n")
    pool = make_pool(concurrency=2)
    assert _loaded(config) == 0
    pool.process_events([event(config.team_id, "same-person", n) for n in range(5)])
    assert _loaded(config) == 1
    pool.process_events([event(config.team_id, f"person-{n}", n) for n in range(20)])
    assert _loaded(config) == 1 and _loaded(other) == 0


def test_syntax_error_disables_and_passes_events_on(make_pool):
    """A plugin with a syntax error is recorded and disabled; its team's events go on unchanged; no tasks."""
    config = install("def process_event(event, meta)\n    return None\n")
    pool = make_pool()
    original = event(config.team_id)
    assert pool.process_events([dict(original)]) == [original]
    config.refresh_from_db()
    assert config.enabled is False and config.error["name"] in ("PluginLoadError", "SyntaxError")
    assert pool.scheduled_tasks() == {"runEveryMinute": [], "runEveryHour": [], "runEveryDay": []}


def test_unreadable_archive_is_recorded_but_not_disabled(make_pool):
    """A plugin whose archive cannot be read is recorded on its config, left enabled, and skipped."""
    team = create_team()
    plugin = create_plugin(organization=team.organization, plugin_type=Plugin.PluginType.CUSTOM, archive=b"this is not a zip")
    config = create_plugin_config(team=team, plugin=plugin)
    pool = make_pool()
    assert team.id not in pool.inventory.chains
    config.refresh_from_db()
    assert config.enabled is True and config.error["message"] == "Could not read archive as .zip or .tgz"
    assert pool.process_events([event(team.id)]) == [event(team.id)]


def test_changed_plugin_is_set_up_again_on_reload(make_pool):
    """It tears down and sets up again a config whose plugin changed; the new code runs."""
    config = install("def process_event(event, meta):\n    event['event'] = 'v1'\n    return event\n")
    pool = make_pool(concurrency=1)
    assert pool.process_events([event(config.team_id)])[0]["event"] == "v1"
    plugin = config.plugin
    plugin.source = "def process_event(event, meta):\n    event['event'] = 'v2'\n    return event\n"
    plugin.save()
    pool.reload()
    assert pool.process_events([event(config.team_id)])[0]["event"] == "v2"
    assert PluginLogEntry.objects.filter(plugin_config_id=config.id, message__startswith="Plugin unloaded").count() == 1


def test_new_config_is_picked_up_on_reload(make_pool):
    """A config enabled after start runs after a reload, without touching other teams' instances."""
    team = create_team()
    pool = make_pool()
    assert pool.process_events([event(team.id)]) == [event(team.id)]
    install("def process_event(event, meta):\n    event['event'] = 'now'\n    return event\n", team)
    pool.reload()
    assert pool.process_events([event(team.id)])[0]["event"] == "now"
