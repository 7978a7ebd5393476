"""The Django admin: installing plugins, configuring them through their schema, errors, logs, reloads."""

from __future__ import annotations

import io
import json
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.urls import reverse

from plugin_server.models import DeadLetter, Plugin, PluginAttachment, PluginConfig, PluginLogEntry, Team
from plugin_server.redis_client import reset_redis
from tests.factories import create_organization, create_plugin, create_plugin_config, create_team

pytestmark = [pytest.mark.django_db, pytest.mark.redis]

SCHEMA = [
    {"markdown": "Settings of the **greeter**."},
    {"key": "greeting", "name": "Greeting", "type": "string", "default": "hello", "required": True, "hint": "what to say"},
    {"key": "mode", "name": "Mode", "type": "choice", "choices": ["loud", "quiet"], "required": False},
    {"key": "extra", "name": "Extra", "type": "json", "required": False},
    {"key": "api_key", "name": "API key", "type": "string", "secret": True, "required": True},
    {"key": "data", "name": "Data file", "type": "attachment", "required": False},
]
SOURCE = "def process_event(event, meta):\n    event['properties']['greeting'] = meta.config['greeting']\n    return event\n"


def form_errors(response: Any) -> object:
    """The errors of an admin form page, for assertion messages."""
    context = response.context or {}
    if "adminform" not in context:
        return response.status_code
    return (context["adminform"].form.errors, [(formset.formset.errors, formset.formset.non_form_errors()) for formset in context.get("inline_admin_formsets", [])])


def url(name: str, *args: Any) -> str:
    app = "plugin_server" if name.startswith("deadletter") else "posthog_standin"
    return reverse(f"admin:{app}_{name}", args=args)


@pytest.fixture
def reloads(unique_name: str, redis_client: redis.Redis) -> Iterator[Callable[[], int]]:
    """Listens on a private reload channel; calling it returns how many reloads were published so far."""
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(unique_name)
    received = 0

    def count() -> int:
        nonlocal received
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.05)
            if message is not None:
                received += 1
        return received

    with override_settings(PLUGINS_RELOAD_PUBSUB_CHANNEL=unique_name):
        yield count
    pubsub.close()


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks: Any) -> Any:
    """``with on_commit():`` runs the on_commit callbacks (the reload publishing) as a real commit would."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def plugin_with_schema(**fields: Any) -> Plugin:
    fields.setdefault("config_schema", SCHEMA)
    return create_plugin(source=SOURCE, **fields)


# --- plugins -------------------------------------------------------------------------


def test_installing_a_source_plugin_stores_it_and_publishes_a_reload(admin_client: Client, reloads: Callable[[], int], on_commit: Any) -> None:
    """A plugin added with source text and a schema is stored as a source plugin and running servers are told."""
    organization = create_organization()
    with on_commit():
        response = admin_client.post(
            url("plugin_add"),
            {"organization": organization.pk, "name": "greeter", "source": SOURCE, "config_schema": json.dumps(SCHEMA)},
        )
    assert response.status_code == 302, form_errors(response)
    plugin = Plugin.objects.get(name="greeter")
    assert plugin.plugin_type == "source"
    assert plugin.source == SOURCE
    assert plugin.config_schema == SCHEMA
    assert reloads() == 1
    page = admin_client.get(url("plugin_change", plugin.pk)).content.decode()
    assert "<code>api_key</code>" in page and "Settings of the **greeter**." in page


def test_a_source_plugin_with_a_syntax_error_is_refused(admin_client: Client) -> None:
    """The form names the file and line of the syntax error and nothing is stored."""
    organization = create_organization()
    response = admin_client.post(url("plugin_add"), {"organization": organization.pk, "name": "broken", "source": "def process_event(:\n"})
    assert response.status_code == 200
    assert "main.py, line 1" in response.content.decode()
    assert not Plugin.objects.filter(name="broken").exists()


def test_an_invalid_config_schema_is_refused_with_the_reason(admin_client: Client) -> None:
    """A field of unknown type, a choice without choices and a key-less field are each reported."""
    schema = [{"key": "a", "type": "number"}, {"key": "b", "type": "choice"}, {"name": "no key"}]
    response = admin_client.post(
        url("plugin_add"), {"organization": create_organization().pk, "name": "bad-schema", "source": SOURCE, "config_schema": json.dumps(schema)}
    )
    page = response.content.decode()
    assert 'type &quot;number&quot; is not one of string, json, choice, attachment' in page
    assert "a choice field needs &quot;choices&quot;" in page
    assert "entry 3 has no &quot;key&quot;" in page
    assert not Plugin.objects.filter(name="bad-schema").exists()


def _zip(files: dict[str, str], root: str = "greeter-main/") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(root + name, text)
    return buffer.getvalue()


def test_an_uploaded_archive_is_stored_and_its_plugin_json_fills_the_schema(admin_client: Client, reloads: Callable[[], int], on_commit: Any) -> None:
    """A zip with plugin.json and main.py is stored on the row; name and schema come from plugin.json and are shown."""
    plugin_json = {"name": "zipped greeter", "description": "d", "main": "main.py", "config": SCHEMA}
    archive = _zip({"plugin.json": json.dumps(plugin_json), "main.py": SOURCE})
    with on_commit():
        response = admin_client.post(
            url("plugin_add"),
            {"organization": create_organization().pk, "archive_file": SimpleUploadedFile("greeter.zip", archive, "application/zip")},
        )
    assert response.status_code == 302, form_errors(response)
    plugin = Plugin.objects.get(name="zipped greeter")
    assert (plugin.plugin_type, bytes(plugin.archive), plugin.config_schema) == ("custom", archive, SCHEMA)
    page = admin_client.get(url("plugin_change", plugin.pk)).content.decode()
    assert "&quot;zipped greeter&quot;" in page  # plugin.json shown
    assert f"{len(archive):,} bytes stored" in page
    assert reloads() == 1


def test_an_upload_that_is_not_an_archive_is_refused(admin_client: Client) -> None:
    """The loader's message is shown: the server could not read it either."""
    response = admin_client.post(
        url("plugin_add"),
        {"organization": create_organization().pk, "name": "junk", "archive_file": SimpleUploadedFile("x.zip", b"not a zip")},
    )
    assert "Could not read archive as .zip or .tgz" in response.content.decode()
    assert not Plugin.objects.filter(name="junk").exists()


def test_a_local_plugin_is_read_from_its_folder(admin_client: Client, tmp_path: Path) -> None:
    """A file: url is resolved against BASE_DIR; its plugin.json gives the schema."""
    folder = tmp_path / "greeter"
    folder.mkdir()
    (folder / "plugin.json").write_text(json.dumps({"name": "local greeter", "config": SCHEMA}))
    (folder / "main.py").write_text(SOURCE)
    with override_settings(BASE_DIR=str(tmp_path)):
        response = admin_client.post(url("plugin_add"), {"organization": create_organization().pk, "url": "file:greeter"})
        assert response.status_code == 302, form_errors(response)
        plugin = Plugin.objects.get(url="file:greeter")
        assert (plugin.plugin_type, plugin.name, plugin.config_schema) == ("local", "local greeter", SCHEMA)
        missing = admin_client.post(url("plugin_add"), {"organization": create_organization().pk, "url": "file:nowhere"})
    assert f'Plugin folder &quot;{tmp_path.resolve() / "nowhere"}&quot; not found' in missing.content.decode()


# --- plugin configs: the schema form --------------------------------------------------


def test_the_add_form_shows_the_schema_fields_of_the_chosen_plugin(admin_client: Client) -> None:
    """?plugin=<id> gives one form field per schema key, defaults filled, secret as a password input, notes as text."""
    plugin = plugin_with_schema()
    page = admin_client.get(url("pluginconfig_add") + f"?plugin={plugin.pk}").content.decode()
    for key in ("greeting", "mode", "extra", "api_key", "data"):
        assert f'name="config__{key}"' in page
    assert 'value="hello"' in page  # the default
    assert 'type="password" name="config__api_key"' in page
    assert 'type="file" name="config__data"' in page
    assert "Settings of the **greeter**." in page
    assert 'name="config"' not in page  # no raw JSON editor when there is a schema


def test_configuring_a_plugin_for_a_team_stores_typed_values_and_the_attachment(
    admin_client: Client, reloads: Callable[[], int], on_commit: Any
) -> None:
    """Posting the generated form stores config values, the uploaded file as an attachment, and publishes a reload."""
    plugin = plugin_with_schema()
    team = create_team(organization=plugin.organization)
    form = {
        "team": team.pk,
        "plugin": plugin.pk,
        "enabled": "on",
        "order": "3",
        "config__greeting": "hi there",
        "config__mode": "loud",
        "config__extra": '{"a": 1}',
        "config__api_key": "s3cret",
        "config__data": SimpleUploadedFile("data.csv", b"a,b\n1,2\n", "text/csv"),
        **_empty_inline(),
    }
    with on_commit():
        response = admin_client.post(url("pluginconfig_add") + f"?plugin={plugin.pk}", form)
    assert response.status_code == 302, form_errors(response)
    config = PluginConfig.objects.get(team=team, plugin=plugin)
    assert (config.enabled, config.order) == (True, 3)
    assert config.config == {"greeting": "hi there", "mode": "loud", "extra": '{"a": 1}', "api_key": "s3cret"}
    attachment = PluginAttachment.objects.get(plugin_config=config)
    assert (attachment.key, attachment.file_name, attachment.content_type, attachment.file_size) == ("data", "data.csv", "text/csv", 8)
    assert bytes(attachment.contents) == b"a,b\n1,2\n"
    assert attachment.team_id == team.pk
    assert reloads() == 1


def _empty_inline() -> dict[str, str]:
    # The management form of the attachments inline.
    prefix = "pluginattachment_set-"
    return {f"{prefix}TOTAL_FORMS": "0", f"{prefix}INITIAL_FORMS": "0", f"{prefix}MIN_NUM_FORMS": "0", f"{prefix}MAX_NUM_FORMS": "1000"}


def test_required_keys_choices_and_json_are_validated(admin_client: Client) -> None:
    """A missing required value, a choice outside the list and broken JSON are field errors; nothing is stored."""
    plugin = plugin_with_schema()
    team = create_team(organization=plugin.organization)
    response = admin_client.post(
        url("pluginconfig_add"),
        {"team": team.pk, "plugin": plugin.pk, "config__greeting": "", "config__mode": "whisper", "config__extra": "{oops", **_empty_inline()},
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["config__greeting"] == ["This field is required."]
    assert "Select a valid choice" in errors["config__mode"][0]
    assert errors["config__extra"][0].startswith("Enter valid JSON")
    assert errors["config__api_key"] == ["This field is required."]
    assert not PluginConfig.objects.filter(team=team).exists()


def test_a_secret_is_never_rendered_and_blank_keeps_it(admin_client: Client) -> None:
    """The change page says the secret is set without showing it; saving it blank keeps it; a new value replaces it."""
    plugin = plugin_with_schema()
    config = create_plugin_config(plugin=plugin, team=create_team(organization=plugin.organization), config={"greeting": "hi", "api_key": "top-secret-value"})
    page = admin_client.get(url("pluginconfig_change", config.pk)).content.decode()
    assert "top-secret-value" not in page
    assert "Secret: set" in page
    form = {"enabled": "on", "order": "0", "config__greeting": "hello again", "config__api_key": "", **_empty_inline()}
    response = admin_client.post(url("pluginconfig_change", config.pk), form)
    assert response.status_code == 302, form_errors(response)
    config.refresh_from_db()
    assert config.config == {"greeting": "hello again", "api_key": "top-secret-value"}
    admin_client.post(url("pluginconfig_change", config.pk), {**form, "config__api_key": "rotated"})
    config.refresh_from_db()
    assert config.config["api_key"] == "rotated"


def test_a_plugin_without_schema_gets_the_raw_json_editor(admin_client: Client) -> None:
    """With no schema the config is edited as a JSON object; anything but an object is refused."""
    plugin = create_plugin(source=SOURCE)
    team = create_team(organization=plugin.organization)
    bad = admin_client.post(url("pluginconfig_add"), {"team": team.pk, "plugin": plugin.pk, "config": "[1, 2]", **_empty_inline()})
    assert "The config must be a JSON object." in bad.content.decode()
    good = admin_client.post(url("pluginconfig_add"), {"team": team.pk, "plugin": plugin.pk, "config": '{"x": 1}', **_empty_inline()})
    assert good.status_code == 302
    assert PluginConfig.objects.get(team=team).config == {"x": 1}


# --- errors and logs ---------------------------------------------------------------------


def test_the_last_error_is_shown_prominently(admin_client: Client) -> None:
    """The config page opens with the error's name, message, time, stack and event; the list shows the message."""
    error = {
        "message": "Cannot read property 'x' of undefined",
        "time": "2021-05-17T10:00:00.000Z",
        "name": "TypeError",
        "stack": "Traceback: main.py line 3 in process_event",
        "event": {"event": "$pageview", "distinct_id": "d1"},
    }
    config = create_plugin_config(error=error)
    page = admin_client.get(url("pluginconfig_change", config.pk)).content.decode()
    assert page.index("errornote") < page.index('name="enabled"')
    for text in ("TypeError", "Cannot read property &#x27;x&#x27; of undefined", "2021-05-17T10:00:00.000Z", "main.py line 3 in process_event", "$pageview"):
        assert text in page
    listing = admin_client.get(url("pluginconfig_changelist")).content.decode()
    assert "Cannot read property &#x27;x&#x27; of undefined" in listing


def _log(config: PluginConfig, message: str, type_: str = "INFO", source: str = "CONSOLE", seconds: int = 0) -> PluginLogEntry:
    from datetime import datetime, timedelta, timezone

    return PluginLogEntry.objects.create(
        team_id=config.team_id,
        plugin_id=config.plugin_id,
        plugin_config_id=config.pk,
        timestamp=datetime(2021, 5, 17, tzinfo=timezone.utc) + timedelta(seconds=seconds),
        source=source,
        type=type_,
        message=message,
        instance_id=uuid.uuid4(),
    )


def test_the_latest_log_entries_are_on_the_config_page(admin_client: Client) -> None:
    """The newest entries of this config (and not of others) are listed inline, newest first, up to 50."""
    config, other = create_plugin_config(), create_plugin_config()
    for second in range(60):
        _log(config, f"line {second}", seconds=second)
    _log(other, "someone else's line")
    page = admin_client.get(url("pluginconfig_change", config.pk)).content.decode()
    assert page.index("line 59") < page.index("line 58")
    assert "line 10<" in page and "line 9<" not in page
    assert "someone else&#x27;s line" not in page


def test_the_log_list_filters_by_config_and_type_and_is_read_only(admin_client: Client) -> None:
    """?plugin_config_id= and the type filter narrow the list; entries cannot be added, changed or deleted."""
    config, other = create_plugin_config(), create_plugin_config()
    _log(config, "an error here", type_="ERROR", source="PLUGIN")
    _log(config, "just info")
    _log(other, "other config")
    by_config = admin_client.get(url("pluginlogentry_changelist") + f"?plugin_config_id={config.pk}").content.decode()
    assert "an error here" in by_config and "just info" in by_config and "other config" not in by_config
    errors_only = admin_client.get(url("pluginlogentry_changelist") + f"?plugin_config_id={config.pk}&type__exact=ERROR").content.decode()
    assert "an error here" in errors_only and "just info" not in errors_only
    assert admin_client.get(url("pluginlogentry_add")).status_code == 403
    entry = PluginLogEntry.objects.get(message="just info")
    assert admin_client.post(url("pluginlogentry_delete", entry.pk), {"post": "yes"}).status_code == 403
    assert PluginLogEntry.objects.filter(pk=entry.pk).exists()


def test_dead_letters_are_listed_read_only_with_their_payload(admin_client: Client) -> None:
    """A dead letter's page shows its reason, error and raw payload; it cannot be changed or deleted here."""
    letter = DeadLetter.objects.create(source="celery", queue="posthog-plugins", reason="invalid_json", error="Expecting value", payload=b'{"broken')
    assert "invalid_json" in admin_client.get(url("deadletter_changelist")).content.decode()
    page = admin_client.get(url("deadletter_change", letter.pk)).content.decode()
    assert "Expecting value" in page and "{&quot;broken" in page
    assert admin_client.post(url("deadletter_delete", letter.pk), {"post": "yes"}).status_code == 403


# --- actions ---------------------------------------------------------------------------------


def _action(client: Client, action: str, configs: list[PluginConfig]) -> Any:
    return client.post(url("pluginconfig_changelist"), {"action": action, "_selected_action": [config.pk for config in configs]})


def test_enable_disable_and_reload_actions_reach_running_servers(admin_client: Client, reloads: Callable[[], int], on_commit: Any) -> None:
    """Enable and disable change the flag and updated_at of the selected configs; each action publishes one reload."""
    first, second = create_plugin_config(enabled=True), create_plugin_config(enabled=True)
    before = PluginConfig.objects.get(pk=first.pk).updated_at
    with on_commit():
        _action(admin_client, "disable", [first, second])
    assert list(PluginConfig.objects.filter(pk__in=[first.pk, second.pk]).values_list("enabled", flat=True)) == [False, False]
    assert PluginConfig.objects.get(pk=first.pk).updated_at > before
    assert reloads() == 1
    with on_commit():
        _action(admin_client, "enable", [second])
    assert PluginConfig.objects.get(pk=second.pk).enabled and not PluginConfig.objects.get(pk=first.pk).enabled
    with on_commit():
        _action(admin_client, "reload_plugins", [first])
    assert reloads() == 3


def test_clear_error_action(admin_client: Client) -> None:
    """The clear-error action empties the error column of the selected configs only."""
    failing, other = create_plugin_config(error={"message": "boom"}), create_plugin_config(error={"message": "kept"})
    _action(admin_client, "clear_error", [failing])
    assert PluginConfig.objects.get(pk=failing.pk).error is None
    assert PluginConfig.objects.get(pk=other.pk).error == {"message": "kept"}


@pytest.mark.django_db(transaction=True)
def test_a_save_while_redis_is_away_is_kept_and_says_so(admin_client: Client) -> None:
    """With Redis unreachable the change is stored and the page warns that servers were not told.

    (A real transaction: the reload is published on commit, inside the request.)"""
    config = create_plugin_config(enabled=True)
    reset_redis()
    try:
        with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
            response = _action(admin_client, "disable", [config])
            follow = admin_client.get(response["Location"]).content.decode()
    finally:
        reset_redis()
    assert not PluginConfig.objects.get(pk=config.pk).enabled
    assert "running servers were not told to reload" in follow


# --- organizations and teams ---------------------------------------------------------------------


def test_a_team_added_without_token_gets_one(admin_client: Client) -> None:
    """Teams are managed here; a new team without api token gets a random one."""
    organization = create_organization()
    response = admin_client.post(url("team_add"), {"organization": organization.pk, "name": "Web", "timezone": "UTC", "app_urls": ""})
    assert response.status_code == 302, form_errors(response)
    team = Team.objects.get(name="Web")
    assert team.api_token and len(team.api_token) >= 32
    assert "Web" in admin_client.get(url("team_changelist")).content.decode()
    assert organization.name in admin_client.get(url("organization_changelist")).content.decode()


# --- list pages stay cheap -------------------------------------------------------------------------


@pytest.fixture
def many_configs() -> int:
    """10,000 plugin configs over 1,000 teams and 10 plugins, each with an error, plus 10,000 log entries."""
    organization = create_organization()
    teams = Team.objects.bulk_create(Team(organization=organization, name=f"t{i}", api_token=f"bulk-{uuid.uuid4().hex}") for i in range(1000))
    plugins = [create_plugin(organization=organization, source=SOURCE, config_schema=SCHEMA) for _ in range(10)]
    configs = PluginConfig.objects.bulk_create(
        PluginConfig(team=teams[i % 1000], plugin=plugins[i % 10], enabled=i % 2 == 0, order=i, config={"greeting": "x"}, error={"message": f"e{i}"})
        for i in range(10_000)
    )
    PluginLogEntry.objects.bulk_create(
        PluginLogEntry(team_id=c.team_id, plugin_id=c.plugin_id, plugin_config_id=c.pk, source="CONSOLE", type="LOG", message="m", instance_id=uuid.uuid4())
        for c in configs
    )
    return len(configs)


LIST_PAGES = ("pluginconfig_changelist", "plugin_changelist", "team_changelist", "organization_changelist", "pluginlogentry_changelist", "deadletter_changelist")


def test_list_pages_make_a_bounded_number_of_queries(admin_client: Client, many_configs: int, django_assert_max_num_queries: Any) -> None:
    """With 10,000 plugin configs each list page (100 rows, sorted either way, or filtered) costs at most 8 queries."""
    assert many_configs == 10_000
    admin_client.get(url("pluginconfig_changelist"))  # the session is loaded once
    for page in LIST_PAGES:
        for query in ("", "?o=-1", "?q=1"):
            with django_assert_max_num_queries(8):
                response = admin_client.get(url(page) + query)
            assert response.status_code == 200, (page, query)
    with django_assert_max_num_queries(8):
        assert admin_client.get(url("pluginconfig_changelist") + "?has_error=yes&enabled__exact=1").status_code == 200


def test_a_config_page_with_many_logs_makes_a_bounded_number_of_queries(admin_client: Client, many_configs: int, django_assert_max_num_queries: Any) -> None:
    """A config's change page reads its logs with one limited query, whatever the table holds."""
    config = PluginConfig.objects.order_by("id").first()
    assert config is not None
    admin_client.get(url("pluginconfig_change", config.pk))
    with django_assert_max_num_queries(12):
        assert admin_client.get(url("pluginconfig_change", config.pk)).status_code == 200


def test_team_and_plugin_are_chosen_through_autocomplete(admin_client: Client) -> None:
    """The config form never lists every team or plugin: both are searched through the admin's autocomplete."""
    team = create_team(name="Searchable team")
    plugin = create_plugin(organization=team.organization, name="findable plugin", source=SOURCE)
    for field, term, expected in (("team", "Searchable", str(team)), ("plugin", "findable", str(plugin))):
        response = admin_client.get(
            reverse("admin:autocomplete"), {"app_label": "posthog_standin", "model_name": "pluginconfig", "field_name": field, "term": term}
        )
        assert [result["text"] for result in response.json()["results"]] == [expected]


def test_the_add_page_stays_cheap_with_many_teams(admin_client: Client, many_configs: int, django_assert_max_num_queries: Any) -> None:
    """With 1,000 teams and 10,000 configs the add page renders no team list: a handful of queries."""
    plugin = Plugin.objects.order_by("id").first()
    assert plugin is not None
    admin_client.get(url("pluginconfig_changelist"))
    with django_assert_max_num_queries(6):
        page = admin_client.get(url("pluginconfig_add") + f"?plugin={plugin.pk}")
    assert page.status_code == 200 and 'name="config__greeting"' in page.content.decode()


def test_a_large_unfiltered_log_list_is_counted_from_table_statistics(many_configs: int, django_assert_num_queries: Any) -> None:
    """Above the threshold an unfiltered list takes pg_class.reltuples (no COUNT(*)); a filtered list is counted exactly."""
    from django.db import connection

    from plugin_server.admin.records import EstimatedCountPaginator

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE posthog_pluginlogentry")
    everything = PluginLogEntry.objects.order_by("-timestamp")
    with django_assert_num_queries(1) as captured:
        assert EstimatedCountPaginator(everything, 100, estimate_above=1000).count == 10_000
    assert "COUNT" not in captured.captured_queries[0]["sql"].upper()
    assert EstimatedCountPaginator(everything, 100).count == 10_000  # under the default threshold: exact
    first = PluginConfig.objects.order_by("id").first()
    assert first is not None
    with django_assert_num_queries(1) as captured:
        assert EstimatedCountPaginator(everything.filter(plugin_config_id=first.pk), 100, estimate_above=1000).count == 1
    assert "COUNT" in captured.captured_queries[0]["sql"].upper()


# --- the admin's own pages ---------------------------------------------------------------


def test_the_index_names_log_entries_right_and_shows_only_the_projects_sections(admin_client: Client) -> None:
    """"Plugin log entries" (not "entrys"), no "View site" link to a page that does not exist, no django-q2 sections."""
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert "Plugin log entries" in page and "entrys" not in page
    assert "View site" not in page
    assert "/admin/django_q/" not in page and "Failed tasks" not in page and "Scheduled tasks" not in page
    assert admin_client.get("/admin/django_q/schedule/").status_code == 404


def test_the_help_of_a_schema_field_shows_its_default_as_it_would_be_typed(admin_client: Client) -> None:
    """Text defaults as they are, JSON defaults as JSON (true, {"a": 1}), never Python's repr (True, {'a': 1})."""
    schema = [
        {"key": "greeting", "type": "string", "default": "hi there", "hint": "what to say"},
        {"key": "extra", "type": "json", "default": {"a": 1, "on": True}},
        {"key": "verbose", "type": "choice", "choices": ["true", "false"], "default": "false"},
    ]
    plugin = create_plugin(source=SOURCE, config_schema=schema)
    form = admin_client.get(url("pluginconfig_add") + f"?plugin={plugin.pk}").context["adminform"].form
    assert form.fields["config__greeting"].help_text == "what to say — Default: hi there"
    assert form.fields["config__extra"].help_text == 'Default: {"a": 1, "on": true}'
    assert form.fields["config__verbose"].help_text == "Default: false"


def test_a_blank_field_shows_the_default_it_stands_for(admin_client: Client) -> None:
    """On a config whose value is missing, the empty text box shows the default greyed, the blank choice names it."""
    schema = [
        {"key": "property", "type": "string", "default": "greeting"},
        {"key": "style", "type": "choice", "choices": ["plain", "shout"], "default": "plain"},
        {"key": "note", "type": "string"},
    ]
    config = create_plugin_config(plugin=create_plugin(source=SOURCE, config_schema=schema), config={})
    page = admin_client.get(url("pluginconfig_change", config.pk)).content.decode()
    assert 'name="config__property" placeholder="greeting"' in page
    assert '<option value="" selected>(default: plain)</option>' in page
    assert 'name="config__note" id=' in page  # no default: no placeholder
