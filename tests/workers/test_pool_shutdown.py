"""What a pool leaves behind when it stops: nothing buffered is lost."""

from __future__ import annotations

import pytest

from plugin_server.models import PluginLogEntry
from tests.workers.helpers import event, install

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

PRINTS_ON_TEARDOWN = (
    "def process_event(event, meta):\n    return event\n"
    "def teardown_plugin(meta):\n    print('goodbye from teardown')\n"
)


def test_stop_writes_the_log_lines_of_teardown(make_pool):
    """A line printed in teardown_plugin at shutdown is in posthog_pluginlogentry once stop() returns."""
    config = install(PRINTS_ON_TEARDOWN)
    pool = make_pool(concurrency=1)
    pool.process_events([event(config.team_id)])  # sets the plugin up in the worker
    pool.stop()
    messages = list(PluginLogEntry.objects.filter(plugin_config_id=config.id).values_list("message", flat=True))
    assert any("goodbye from teardown" in message for message in messages), messages
