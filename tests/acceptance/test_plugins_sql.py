"""acceptance.md "SQL" (sql.test.ts) — the reads and writes the plugin side makes on the spec's rows — and the
loop guards of "Code preparation" (transforms.test.ts) at the module level, where the spec's line 1:0 is."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from plugin_server.exceptions import PluginTimeout
from plugin_server.models import PluginConfig, Team
from plugin_server.plugins.inventory import context_of, in_force_configs
from plugin_server.plugins.meta.config import load_attachments
from plugin_server.plugins.meta.errors import clear_plugin_errors, disable_plugin_config, record_plugin_error
from plugin_server.plugins.sandbox import compile_plugin
from tests.acceptance.plugin_fixtures import CONFIG_SCHEMA, ORGANIZATION_ID, PLUGIN_NAME, PASS_THROUGH as PASS, install_spec
from tests.plugins.sandbox_helpers import plugin_code

pytestmark = pytest.mark.django_db


def _opt_out_every_team() -> None:
    Team.objects.update(plugins_opt_in=False)


def test_plugin_attachment_rows() -> None:
    """The attachments read for config 39 are exactly attachment 42666 (key maxmindMmdb, octet-stream, test.txt,
    b"test"); the same after every team's plugins_opt_in is set false."""
    install_spec("")
    expected = {39: {"maxmindMmdb": {"content_type": "application/octet-stream", "file_name": "test.txt", "contents": b"test"}}}

    def read() -> dict[int, dict[str, object]]:
        return dict(load_attachments([39]))

    assert read() == expected
    _opt_out_every_team()
    assert read() == expected


def test_plugin_config_and_plugin_rows() -> None:
    """The in-force configs are exactly config 39 (config, enabled, error null, order 0, plugin 60, team 2) with
    plugin 60's columns (archive, schema, not global, not preinstalled, organization, tag 0.0.2, type custom, url, no
    source, no latest tag, no error, from_json/from_web false); the same after plugins_opt_in is set false."""

    def read() -> list[dict[str, object]]:
        return [
            {
                "id": config.id,
                "config": config.config,
                "enabled": config.enabled,
                "error": config.error,
                "order": config.order,
                "plugin_id": config.plugin_id,
                "team_id": config.team_id,
                "timestamps": bool(config.created_at and config.updated_at),
                "plugin": {
                    field: getattr(config.plugin, field)
                    for field in (
                        "id", "name", "plugin_type", "is_global", "is_preinstalled", "url", "tag", "config_schema", "source",
                        "latest_tag", "latest_tag_checked_at", "error", "from_json", "from_web", "description",
                    )
                }
                | {"organization_id": str(config.plugin.organization_id), "archive": bytes(config.plugin.archive)},
            }
            for config in in_force_configs()
        ]

    install_spec(PASS)
    expected = [
        {
            "id": 39,
            "config": {"localhostIP": "94.224.212.175"},
            "enabled": True,
            "error": None,
            "order": 0,
            "plugin_id": 60,
            "team_id": 2,
            "timestamps": True,
            "plugin": {
                "id": 60,
                "name": PLUGIN_NAME,
                "plugin_type": "custom",
                "is_global": False,
                "is_preinstalled": False,
                "url": "https://www.npmjs.com/package/posthog-maxmind-plugin",
                "tag": "0.0.2",
                "config_schema": CONFIG_SCHEMA,
                "source": None,
                "latest_tag": None,
                "latest_tag_checked_at": None,
                "error": None,
                "from_json": False,
                "from_web": False,
                "description": None,
                "organization_id": ORGANIZATION_ID,
            },
        }
    ]
    rows = read()
    # A zip carries file times, so the bytes are compared with the row's own: read back whole, a zip.
    # A zip carries file times: check what the archive holds rather than its bytes.
    with zipfile.ZipFile(io.BytesIO(rows[0]["plugin"].pop("archive"))) as archive:  # type: ignore[union-attr]
        assert archive.read("testplugin/main.py").decode() == PASS
        assert json.loads(archive.read("testplugin/plugin.json"))["name"] == PLUGIN_NAME
    assert rows == expected
    _opt_out_every_team()
    rows = read()
    rows[0]["plugin"].pop("archive")  # type: ignore[union-attr]
    assert rows == expected


def test_set_error() -> None:
    """Clearing config 39's error is one UPDATE setting error NULL for id 39; setting {message: "error happened"}
    stores that message with its time as config 39's error JSON."""
    config = install_spec("", error={"message": "old", "time": "2020-01-01T00:00:00.000Z"})
    with CaptureQueriesContext(connection) as queries:
        assert clear_plugin_errors([39]) == 1
    (update,) = [q["sql"] for q in queries.captured_queries]
    assert update.startswith('UPDATE "posthog_pluginconfig" SET "error" = NULL') and "39" in update
    assert PluginConfig.objects.get(id=39).error is None
    record_plugin_error(context_of(config), None, "error happened")
    error = PluginConfig.objects.get(id=39).error
    assert set(error) == {"message", "time"} and error["message"] == "error happened"
    assert json.loads(json.dumps(error)) == error


def test_disable_plugin_query() -> None:
    """Disabling team 2 / plugin 60 is one UPDATE setting enabled false where team 2, plugin 60 and enabled."""
    config = install_spec("")
    with CaptureQueriesContext(connection) as queries:
        assert disable_plugin_config(context_of(config)) == 1
    (update,) = [q["sql"] for q in queries.captured_queries]
    assert update.startswith('UPDATE "posthog_pluginconfig" SET "enabled" = false')
    for condition in ('"plugin_id" = 60', '"enabled"', '"team_id" = 2'):
        assert condition in update
    assert PluginConfig.objects.get(id=39).enabled is False


# --- Code preparation: loops at line 1, column 0 ----------------------------------------------


@pytest.mark.parametrize(
    "source",
    ["import itertools\nfor i in itertools.count():\n    x = i\n", "import itertools\nfor i in itertools.count(): x = i\n"],
    ids=["block for loops get a time check", "inline for loops"],
)
def test_for_loops_get_a_time_check(source: str) -> None:
    """A for loop (block or one-line body) is stopped once the limit passed since it started:
    `Script execution timed out after looping for 2 seconds on line 2:0` (the loop is on line 2, column 0, after
    the import; the spec's 30 s limit on line 1 in the original's wording)."""
    with pytest.raises(PluginTimeout) as caught:
        compile_plugin(plugin_code(source), {}, seconds=2)
    assert str(caught.value) == "Script execution timed out after looping for 2 seconds on line 2:0"
