"""``meta.storage``: persistent key/value per plugin config.

Rows of ``posthog_pluginstorage``; values are JSON text. ``get`` of a stored
``null`` returns ``None`` (not the default); a missing key returns the
default. Python has no ``undefined``, so ``set(key, None)`` stores null and
``delete(key)`` removes the row (the later versions' ``storage.del``).
"""

from __future__ import annotations

import json
from typing import Any

from django.db import connection

from plugin_server.exceptions import MetaCallError
from plugin_server.models import PluginStorage
from plugin_server.plugins.meta.context import PluginContext

MAX_KEY_CHARS = 200  # the column's length
MAX_VALUE_BYTES = 1_048_576


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise MetaCallError(f"storage key must be a string, not {type(key).__name__}")
    if not key or len(key) > MAX_KEY_CHARS:
        raise MetaCallError(f"storage key must have 1 to {MAX_KEY_CHARS} characters")
    return key


class PluginStorageAPI:
    """The storage API a plugin sees, served in the main process."""

    def get(self, ctx: PluginContext, key: str, default: Any = None) -> Any:
        row = (
            PluginStorage.objects.filter(plugin_config_id=ctx.plugin_config_id, key=_check_key(key))
            .values_list("value")
            .first()
        )
        if row is None:
            return default
        value = row[0]
        if value is None:
            return None
        try:
            return json.loads(value)
        except ValueError:
            # A row written by something else than JSON: hand the text back.
            return value

    def set(self, ctx: PluginContext, key: str, value: Any) -> None:
        _check_key(key)
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as error:
            raise MetaCallError(f"storage value is not JSON-serialisable: {error}") from error
        if len(text.encode()) > MAX_VALUE_BYTES:
            raise MetaCallError(f"storage value is larger than {MAX_VALUE_BYTES} bytes")
        table = connection.ops.quote_name(PluginStorage._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (plugin_config_id, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (plugin_config_id, key) DO UPDATE SET value = EXCLUDED.value",
                [ctx.plugin_config_id, key, text],
            )

    def delete(self, ctx: PluginContext, key: str) -> None:
        PluginStorage.objects.filter(plugin_config_id=ctx.plugin_config_id, key=_check_key(key)).delete()
