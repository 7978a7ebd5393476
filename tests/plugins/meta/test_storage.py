"""meta.storage against the real Postgres (spec: plugins.md §6.3)."""

from __future__ import annotations

import pytest

from plugin_server.exceptions import MetaCallError
from plugin_server.models import PluginStorage
from plugin_server.plugins.meta.context import PluginContext
from plugin_server.plugins.meta.storage import PluginStorageAPI
from tests.factories import create_plugin_config
from tests.plugins.meta.conftest import context_of

pytestmark = pytest.mark.django_db


@pytest.fixture
def storage() -> PluginStorageAPI:
    return PluginStorageAPI()


def test_set_then_get(ctx: PluginContext, storage: PluginStorageAPI) -> None:
    """It stores values as JSON text in posthog_pluginstorage and reads them back."""
    storage.set(ctx, "state", {"cursor": 5, "names": ["a"]})
    row = PluginStorage.objects.get(plugin_config_id=ctx.plugin_config_id, key="state")
    assert row.value == '{"cursor":5,"names":["a"]}'
    assert storage.get(ctx, "state") == {"cursor": 5, "names": ["a"]}


def test_upsert_keeps_one_row(ctx: PluginContext, storage: PluginStorageAPI, django_assert_num_queries) -> None:  # type: ignore[no-untyped-def]
    """It overwrites an existing key with one upsert statement, leaving one row."""
    storage.set(ctx, "k", 1)
    with django_assert_num_queries(1):
        storage.set(ctx, "k", 2)
    assert PluginStorage.objects.filter(plugin_config_id=ctx.plugin_config_id, key="k").count() == 1
    assert storage.get(ctx, "k") == 2


def test_missing_and_null(ctx: PluginContext, storage: PluginStorageAPI) -> None:
    """It returns the default for a missing key, but None for a stored null."""
    assert storage.get(ctx, "missing", "dflt") == "dflt"
    storage.set(ctx, "nothing", None)
    assert storage.get(ctx, "nothing", "dflt") is None


def test_delete(ctx: PluginContext, storage: PluginStorageAPI) -> None:
    """It deletes a key (the row goes), and deleting a missing key is fine."""
    storage.set(ctx, "k", 1)
    storage.delete(ctx, "k")
    storage.delete(ctx, "k")
    assert not PluginStorage.objects.filter(plugin_config_id=ctx.plugin_config_id).exists()
    assert storage.get(ctx, "k", "gone") == "gone"


def test_storage_is_per_config(ctx: PluginContext, storage: PluginStorageAPI, plugin_config: object) -> None:
    """It keeps each plugin config's storage apart, even for the same plugin and team."""
    sibling = context_of(create_plugin_config(team=plugin_config.team, plugin=plugin_config.plugin))  # type: ignore[attr-defined]
    storage.set(ctx, "k", "mine")
    assert storage.get(sibling, "k", "not yours") == "not yours"


def test_text_not_written_by_us(ctx: PluginContext, storage: PluginStorageAPI) -> None:
    """It hands back text that is not JSON (a row written by something else) as is."""
    PluginStorage.objects.create(plugin_config_id=ctx.plugin_config_id, key="legacy", value="plain text")
    assert storage.get(ctx, "legacy") == "plain text"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("k", {1, 2}, "not JSON-serialisable"),
        ("k" * 201, 1, "1 to 200 characters"),
        ("", 1, "1 to 200 characters"),
        (3, 1, "must be a string"),
        ("k", "x" * 1_048_577, "larger than"),
    ],
)
def test_bad_input_is_refused(ctx: PluginContext, storage: PluginStorageAPI, key, value, message) -> None:  # type: ignore[no-untyped-def]
    """It refuses bad keys and values with a clear error and writes nothing."""
    with pytest.raises(MetaCallError, match=message):
        storage.set(ctx, key, value)
    assert not PluginStorage.objects.filter(plugin_config_id=ctx.plugin_config_id).exists()
