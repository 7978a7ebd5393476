"""meta.config (defaults from the schema) and meta.attachments."""

from __future__ import annotations

import pytest

from plugin_server.plugins.meta.config import config_with_defaults, load_attachments
from tests.factories import create_attachment, create_plugin_config

SCHEMA_AS_OBJECT = {
    "localhostIP": {"name": "IP", "type": "string", "default": "", "required": False},
    "greeting": {"type": "string", "default": "hello"},
    "mode": {"type": "choice", "choices": ["a", "b"], "default": "a"},
    "maxmindMmdb": {"type": "attachment", "required": True},
    "noDefault": {"type": "string"},
}
SCHEMA_AS_LIST = [{"key": key, **field} for key, field in SCHEMA_AS_OBJECT.items()]


@pytest.mark.parametrize("schema", [SCHEMA_AS_OBJECT, SCHEMA_AS_LIST], ids=["object", "list"])
def test_defaults_fill_missing_and_null_values(schema: object) -> None:
    """It applies a field's default when the value is missing or null, and keeps set values."""
    config = config_with_defaults(schema, {"localhostIP": "94.224.212.175", "mode": None})
    assert config == {"localhostIP": "94.224.212.175", "greeting": "hello", "mode": "a"}


def test_empty_string_counts_as_set() -> None:
    """It keeps an empty string the user saved instead of replacing it by the default."""
    assert config_with_defaults(SCHEMA_AS_OBJECT, {"greeting": ""})["greeting"] == ""


def test_attachment_fields_and_unknown_keys() -> None:
    """It leaves attachment fields out and keeps keys the schema does not know."""
    config = config_with_defaults(SCHEMA_AS_LIST, {"maxmindMmdb": "whatever", "extra": 1})
    assert "maxmindMmdb" not in config
    assert config["extra"] == 1


@pytest.mark.parametrize("schema", [None, "nonsense", [1, {"no": "key"}], {}])
def test_malformed_schema_is_no_schema(schema: object) -> None:
    """It treats a malformed or empty schema as having no fields."""
    assert config_with_defaults(schema, {"a": 1}) == {"a": 1}
    assert config_with_defaults(schema, None) == {}


def test_config_values_are_not_mutated() -> None:
    """It returns a new dict, leaving the stored values alone."""
    values = {"localhostIP": "1.2.3.4"}
    config_with_defaults(SCHEMA_AS_OBJECT, values)
    assert values == {"localhostIP": "1.2.3.4"}


@pytest.mark.django_db
def test_load_attachments_in_one_query(django_assert_num_queries) -> None:  # type: ignore[no-untyped-def]
    """It reads the attachments of many configs with one query, {} for a config without any."""
    first = create_plugin_config()
    second = create_plugin_config()
    bare = create_plugin_config()
    create_attachment(first, "maxmindMmdb", b"test", content_type="application/octet-stream", file_name="test.txt")
    create_attachment(first, "other", b"\x00\x01", file_name="o.bin")
    create_attachment(second, "attachedFile", b'{"name": "plugin"}', content_type="application/json", file_name="plugin.json")
    with django_assert_num_queries(1):
        found = load_attachments([first.id, second.id, bare.id])
    assert found[first.id]["maxmindMmdb"] == {
        "content_type": "application/octet-stream",
        "file_name": "test.txt",
        "contents": b"test",
    }
    assert found[first.id]["other"]["contents"] == b"\x00\x01"
    assert found[second.id] == {
        "attachedFile": {"content_type": "application/json", "file_name": "plugin.json", "contents": b'{"name": "plugin"}'}
    }
    assert found[bare.id] == {}
    assert isinstance(found[first.id]["maxmindMmdb"]["contents"], bytes)


@pytest.mark.django_db
def test_load_attachments_of_nothing(django_assert_num_queries) -> None:  # type: ignore[no-untyped-def]
    """It answers an empty request without a query."""
    with django_assert_num_queries(0):
        assert load_attachments([]) == {}
