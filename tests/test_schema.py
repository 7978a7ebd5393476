"""The migrations create PostHog's tables with the columns and constraints ingestion relies on."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from plugin_server.models import ElementGroup, EventDefinition, PersonDistinctId, Person, PluginStorage, PropertyDefinition
from tests.factories import create_plugin_config, create_team

pytestmark = pytest.mark.django_db

EXPECTED_COLUMNS = {
    "posthog_team": {"id": "integer", "uuid": "uuid", "organization_id": "uuid", "api_token": "character varying", "app_urls": "ARRAY", "anonymize_ips": "boolean", "ingested_event": "boolean", "slack_incoming_webhook": "character varying", "session_recording_opt_in": "boolean"},
    "posthog_organization": {"id": "uuid", "plugins_access_level": "smallint"},
    "posthog_person": {"id": "integer", "created_at": "timestamp with time zone", "team_id": "integer", "properties": "jsonb", "is_user_id": "integer", "is_identified": "boolean", "uuid": "uuid"},
    "posthog_persondistinctid": {"id": "integer", "team_id": "integer", "person_id": "integer", "distinct_id": "character varying"},
    "posthog_cohortpeople": {"id": "bigint", "cohort_id": "integer", "person_id": "integer"},
    "posthog_event": {"id": "integer", "created_at": "timestamp with time zone", "event": "character varying", "distinct_id": "character varying", "properties": "jsonb", "timestamp": "timestamp with time zone", "team_id": "integer", "elements": "jsonb", "elements_hash": "character varying", "site_url": "character varying"},
    "posthog_elementgroup": {"id": "integer", "team_id": "integer", "hash": "character varying"},
    "posthog_element": {"id": "integer", "text": "character varying", "tag_name": "character varying", "href": "character varying", "attr_id": "character varying", "attr_class": "ARRAY", "nth_child": "integer", "nth_of_type": "integer", "attributes": "jsonb", "order": "integer", "event_id": "integer", "group_id": "integer"},
    "posthog_sessionrecordingevent": {"id": "integer", "created_at": "timestamp with time zone", "timestamp": "timestamp with time zone", "team_id": "integer", "distinct_id": "character varying", "session_id": "character varying", "snapshot_data": "jsonb"},
    "posthog_eventdefinition": {"id": "uuid", "team_id": "integer", "name": "character varying", "volume_30_day": "integer", "query_usage_30_day": "integer"},
    "posthog_propertydefinition": {"id": "uuid", "team_id": "integer", "name": "character varying", "is_numerical": "boolean"},
    "posthog_plugin": {"id": "integer", "organization_id": "uuid", "plugin_type": "character varying", "is_global": "boolean", "url": "character varying", "config_schema": "jsonb", "archive": "bytea", "source": "text", "error": "jsonb", "updated_at": "timestamp with time zone"},
    "posthog_pluginconfig": {"id": "integer", "team_id": "integer", "plugin_id": "integer", "enabled": "boolean", "order": "integer", "config": "jsonb", "error": "jsonb", "updated_at": "timestamp with time zone"},
    "posthog_pluginattachment": {"id": "integer", "team_id": "integer", "plugin_config_id": "integer", "key": "character varying", "content_type": "character varying", "file_name": "character varying", "file_size": "integer", "contents": "bytea"},
    "posthog_pluginstorage": {"id": "integer", "plugin_config_id": "integer", "key": "character varying", "value": "text"},
    "posthog_pluginlogentry": {"id": "uuid", "team_id": "integer", "plugin_id": "integer", "plugin_config_id": "integer", "timestamp": "timestamp with time zone", "source": "character varying", "type": "character varying", "message": "text", "instance_id": "uuid"},
    "posthog_user": {"id": "integer", "distinct_id": "character varying"},
    "posthog_organizationmembership": {"organization_id": "uuid", "user_id": "integer"},
}


@pytest.mark.parametrize("table", sorted(EXPECTED_COLUMNS))
def test_table_has_the_spec_columns(table: str) -> None:
    """Each PostHog table exists with the column types of the spec (ingestion.md §9)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s", [table]
        )
        columns = dict(cursor.fetchall())
    for column, data_type in EXPECTED_COLUMNS[table].items():
        assert columns.get(column) == data_type, (table, column, columns.get(column))


def _assert_unique(make_twice) -> None:  # type: ignore[no-untyped-def]
    make_twice()
    with pytest.raises(IntegrityError), transaction.atomic():
        make_twice()


def test_unique_team_distinct_id() -> None:
    """posthog_persondistinctid is unique on (team_id, distinct_id)."""
    team = create_team()
    person = Person.objects.create(team=team)
    _assert_unique(lambda: PersonDistinctId.objects.create(team=team, person=person, distinct_id="a"))


def test_unique_element_group_hash() -> None:
    team = create_team()
    _assert_unique(lambda: ElementGroup.objects.create(team=team, hash="h"))


def test_unique_definitions_per_team() -> None:
    team = create_team()
    _assert_unique(lambda: EventDefinition.objects.create(team=team, name="$pageview"))
    _assert_unique(lambda: PropertyDefinition.objects.create(team=team, name="$browser"))


def test_unique_plugin_storage_key() -> None:
    config = create_plugin_config()
    _assert_unique(lambda: PluginStorage.objects.create(plugin_config=config, key="k", value="1"))
