"""``meta.config`` and ``meta.attachments``: what a plugin config is set up with.

The original handed plugins ``posthog_pluginconfig.config`` exactly as stored. The Python port applies
the schema's defaults (docs/plugins.md), so a plugin never has to repeat them. Fields of type
``attachment`` never appear in ``meta.config``: their files arrive in
``meta.attachments`` under the attachment's key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from plugin_server.models import PluginAttachment


class Attachment(TypedDict):
    """One file of ``meta.attachments``."""

    content_type: str
    file_name: str
    contents: bytes


def schema_fields(schema: object) -> list[dict[str, Any]]:
    """The fields of a config schema, in either stored form.

    ``config_schema`` is a list of field objects with a ``key``, or an object
    keyed by field key. Anything else has no fields.
    """
    if isinstance(schema, Mapping):
        return [{**field, "key": key} for key, field in schema.items() if isinstance(field, Mapping)]
    if isinstance(schema, list):
        return [dict(field) for field in schema if isinstance(field, Mapping) and isinstance(field.get("key"), str)]
    return []


def config_with_defaults(schema: object, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config a plugin sees: stored ``values`` plus the schema's defaults.

    A field takes its ``default`` when its key is missing or its value is
    ``None``; an empty string counts as set (the author may mean it). Keys the
    schema does not know are kept, as the original kept the stored object.
    Attachment fields are left out.
    """
    config: dict[str, Any] = dict(values or {})
    for field in schema_fields(schema):
        key = field["key"]
        if field.get("type") == "attachment":
            config.pop(key, None)
        elif config.get(key) is None and "default" in field:
            config[key] = field["default"]
    return config


def load_attachments(plugin_config_ids: Iterable[int]) -> dict[int, dict[str, Attachment]]:
    """The attachments of each plugin config, read with one query.

    Every requested id is in the answer, with ``{}`` when it has none.
    """
    ids = sorted(set(plugin_config_ids))
    found: dict[int, dict[str, Attachment]] = {config_id: {} for config_id in ids}
    if not ids:
        return found
    rows = (
        PluginAttachment.objects.filter(plugin_config_id__in=ids)
        .order_by("id")
        .values_list("plugin_config_id", "key", "content_type", "file_name", "contents")
    )
    for config_id, key, content_type, file_name, contents in rows:
        found[config_id][key] = Attachment(
            content_type=content_type, file_name=file_name, contents=bytes(contents) if contents is not None else b""
        )
    return found
