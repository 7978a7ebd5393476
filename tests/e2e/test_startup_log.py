"""What the server's log says at start: where events come from and go to, and which plugins run for whom."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from django.db import connection

from plugin_server.plugins.inventory import Inventory, describe_inventory
from plugin_server.plugins.meta.context import PluginContext
from tests.factories import create_plugin, create_plugin_config, create_team
from tests.manage_process import MANAGE, manage_environment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis, pytest.mark.slow]


def test_the_first_lines_name_the_queue_redis_database_masked_and_the_plugins_per_team(unique_name: str) -> None:
    """At start: the Celery queue, Redis and database (password masked), then the plugin configs in force per team."""
    team = create_team()
    config = create_plugin_config(team=team, plugin=create_plugin(organization=team.organization, name="Greeter",
                                                                  source="def process_event(event, meta):\n    return event\n"))
    db = connection.settings_dict
    # Trust authentication ignores the password: it is there to be masked.
    database_url = f"postgres://{db['USER'] or 'postgres'}:s3cret-pw@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    environment = manage_environment(
        DATABASE_URL=database_url, PLUGINS_CELERY_QUEUE=unique_name, PLUGINS_RELOAD_PUBSUB_CHANNEL=f"{unique_name}-reload",
        WORKER_CONCURRENCY="1", LOG_LEVEL="info", DISABLE_MMDB="true", DISABLE_WEB="true",
    )
    server = subprocess.Popen([sys.executable, str(MANAGE), "run_plugin_server"], env=environment, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    messages: list[str] = []
    try:
        assert server.stdout is not None
        deadline = time.monotonic() + 120
        for line in server.stdout:
            if line.startswith("{"):
                messages.append(json.loads(line)["msg"])
            if "All systems go" in line or time.monotonic() > deadline:
                break
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.communicate(timeout=60)
    output = "\n".join(messages)
    assert "s3cret-pw" not in output
    starting = next(message for message in messages if message.startswith("Starting the plugin server"))
    assert starting == (
        f"Starting the plugin server (mode all): events from Celery queue {unique_name}; "
        f"Redis {environment['REDIS_URL']}; database {database_url.replace('s3cret-pw', '********')}; 1 plugin worker"
    )
    assert f"team {team.id}: Greeter (config {config.id})" in output


def test_the_inventory_line_names_each_team_once_and_bounds_the_list() -> None:
    """Configs are named per team in plugin order; past the bound the rest are counted, not listed."""
    contexts = {
        config_id: PluginContext(plugin_config_id=config_id, plugin_id=1, team_id=config_id // 10, plugin_name=f"p{config_id}")
        for config_id in (11, 12, 21, 31)
    }
    inventory = Inventory(specs={}, contexts=contexts, chains={1: (12, 11), 2: (21,), 3: (31,)})
    assert describe_inventory(inventory) == (
        "Plugins in force: 4 configs for 3 teams; team 1: p12 (config 12), p11 (config 11); team 2: p21 (config 21); "
        "team 3: p31 (config 31)"
    )
    assert describe_inventory(inventory, most_teams=1).endswith("team 1: p12 (config 12), p11 (config 11); and 2 more teams")
    assert describe_inventory(Inventory()) == "Plugins in force: none"
