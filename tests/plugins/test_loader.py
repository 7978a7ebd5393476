"""Loading plugin code from a local folder, an archive (zip / tgz) and the source column (plugins.md §1.2)."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from plugin_server.exceptions import PluginLoadError
from plugin_server.models import Plugin
from plugin_server.plugins.loader import MAX_FILE_BYTES, base_folder, load_plugin_code, plugin_digest
from tests.factories import create_organization, create_plugin

pytestmark = pytest.mark.django_db

MAIN = "def process_event(event, meta):\n    return event\n"


def make_zip(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def make_tgz(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def archive_plugin(archive: bytes, **fields: object) -> Plugin:
    fields.setdefault("plugin_type", "custom")
    fields.setdefault("url", "https://github.com/PostHog/example-plugin")
    return create_plugin(archive=archive, **fields)


def write_folder(base: Path, folder: str, files: dict[str, str]) -> None:
    (base / folder).mkdir(parents=True)
    for name, content in files.items():
        (base / folder / name).write_text(content)


# --- digest -------------------------------------------------------------------


def test_digest_names_plugin_id_and_organization() -> None:
    """The digest is `plugin <name> ID <id> (organization ID <org>)`, with ` - global` for global plugins."""
    organization = create_organization()
    plugin = create_plugin(organization=organization, name="test-maxmind-plugin", source=MAIN)
    assert plugin_digest(plugin) == f"plugin test-maxmind-plugin ID {plugin.pk} (organization ID {organization.pk})"
    plugin.is_global = True
    assert plugin_digest(plugin).endswith(f"(organization ID {organization.pk} - global)")


# --- local folders --------------------------------------------------------------


def test_local_plugin_with_plugin_json(tmp_path: Path) -> None:
    """A `file:` plugin is read from BASE_DIR/<path>, with `main` and the config schema from plugin.json."""
    plugin_json = {"name": "local", "main": "entry.py", "config": [{"key": "x", "type": "string"}]}
    write_folder(tmp_path, "plugins/local", {"plugin.json": json.dumps(plugin_json), "entry.py": MAIN})
    plugin = create_plugin(url="file:plugins/local", plugin_type="local", config_schema={})

    code = load_plugin_code(plugin, str(tmp_path))

    assert code.source == MAIN
    assert code.main_filename == "entry.py"
    assert code.plugin_json == plugin_json
    assert code.config_schema == plugin_json["config"]
    assert code.plugin_id == plugin.pk and code.digest == plugin_digest(plugin)


def test_local_plugin_without_plugin_json_uses_main_py(tmp_path: Path) -> None:
    """Without plugin.json the entry file is main.py."""
    write_folder(tmp_path, "p", {"main.py": MAIN})
    code = load_plugin_code(create_plugin(url="file:p", plugin_type="local"), str(tmp_path))
    assert (code.main_filename, code.source, code.plugin_json) == ("main.py", MAIN, {})


def test_local_plugin_resolved_against_base_dir_setting(tmp_path: Path, settings: object) -> None:
    """Without an explicit base_dir the BASE_DIR setting is used."""
    write_folder(tmp_path, "p", {"main.py": MAIN})
    settings.BASE_DIR = str(tmp_path)  # type: ignore[attr-defined]
    assert load_plugin_code(create_plugin(url="file:p", plugin_type="local")).source == MAIN


def test_local_plugin_with_broken_plugin_json(tmp_path: Path) -> None:
    """Bad JSON in plugin.json: `Could not load posthog config at "<path>" for <digest>`."""
    write_folder(tmp_path, "p", {"plugin.json": "{not json", "main.py": MAIN})
    plugin = create_plugin(url="file:p", plugin_type="local")
    with pytest.raises(PluginLoadError) as caught:
        load_plugin_code(plugin, str(tmp_path))
    assert f'Could not load posthog config at "{tmp_path / "p" / "plugin.json"}" for {plugin_digest(plugin)}' in str(
        caught.value
    )


def test_local_plugin_json_must_be_an_object_with_a_string_main(tmp_path: Path) -> None:
    """plugin.json is validated: an object, `main` a relative path inside the plugin."""
    for index, bad in enumerate(["[1, 2]", '{"main": 3}', '{"main": "../../etc/passwd"}', '{"config": "x"}']):
        write_folder(tmp_path, f"p{index}", {"plugin.json": bad, "main.py": MAIN})
        with pytest.raises(PluginLoadError, match="Could not load posthog config at"):
            load_plugin_code(create_plugin(url=f"file:p{index}", plugin_type="local"), str(tmp_path))


def test_local_plugin_without_main(tmp_path: Path) -> None:
    """No `main` key and no main.py: `No "main" config key or "main.py" file found for <digest> in "<folder>"`."""
    write_folder(tmp_path, "p", {"plugin.json": "{}", "other.py": MAIN})
    plugin = create_plugin(url="file:p", plugin_type="local")
    with pytest.raises(PluginLoadError) as caught:
        load_plugin_code(plugin, str(tmp_path))
    folder = (tmp_path / "p").resolve()
    assert str(caught.value) == f'No "main" config key or "main.py" file found for {plugin_digest(plugin)} in "{folder}"'


def test_a_missing_local_folder_names_the_path_tried(tmp_path: Path) -> None:
    """A `file:` url whose folder is not there says which folder was tried and from which BASE_DIR."""
    plugin = create_plugin(url="file:plugins/gone", plugin_type="local")
    with pytest.raises(PluginLoadError) as caught:
        load_plugin_code(plugin, str(tmp_path))
    base = tmp_path.resolve()
    assert str(caught.value) == (
        f'Plugin folder "{base / "plugins" / "gone"}" not found for {plugin_digest(plugin)}'
        f' (file:plugins/gone resolved against BASE_DIR "{base}")'
    )


def test_a_relative_base_dir_starts_at_the_project_folder_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BASE_DIR "." means the folder of manage.py, whatever the working directory: the demo plugin loads from /tmp."""
    monkeypatch.chdir(tmp_path)
    code = load_plugin_code(create_plugin(url="file:plugins/demo", plugin_type="local"), ".")
    assert code.plugin_json["name"] == "Demo greeter"
    assert base_folder(".") == str(Path(__file__).resolve().parents[2])


def test_local_plugin_main_named_but_missing(tmp_path: Path) -> None:
    """A `main` that does not exist is an error naming it."""
    write_folder(tmp_path, "p", {"plugin.json": '{"main": "gone.py"}'})
    with pytest.raises(PluginLoadError, match="Could not load gone.py"):
        load_plugin_code(create_plugin(url="file:p", plugin_type="local"), str(tmp_path))


def test_local_plugin_main_may_not_leave_the_folder_through_a_symlink(tmp_path: Path) -> None:
    """A main.py that is a symlink to a file outside the plugin folder is not read."""
    (tmp_path / "secret.txt").write_text("SECRET = 1\n")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "main.py").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(PluginLoadError, match='No "main" config key'):
        load_plugin_code(create_plugin(url="file:p", plugin_type="local"), str(tmp_path))


def test_local_plugin_not_utf8(tmp_path: Path) -> None:
    """A main file that is not UTF-8 is a clear error."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "main.py").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(PluginLoadError, match="not UTF-8"):
        load_plugin_code(create_plugin(url="file:p", plugin_type="local"), str(tmp_path))


# --- archives ---------------------------------------------------------------------


@pytest.mark.parametrize("make", [make_zip, make_tgz], ids=["zip", "tgz"])
@pytest.mark.parametrize("root", ["example-plugin-main/", ""], ids=["root-folder", "top-level"])
def test_archive_plugin(make: object, root: str) -> None:
    """Zip and tgz archives load, with files under one root folder or at the top."""
    archive = make({f"{root}plugin.json": json.dumps({"name": "x", "main": "src.py"}), f"{root}src.py": MAIN})  # type: ignore[operator]
    code = load_plugin_code(archive_plugin(archive))
    assert (code.main_filename, code.source) == ("src.py", MAIN)
    assert code.plugin_json["main"] == "src.py"


def test_archive_without_plugin_json_uses_main_py() -> None:
    """plugin.json is optional in an archive."""
    code = load_plugin_code(archive_plugin(make_zip({"repo-abc/main.py": MAIN, "repo-abc/README.md": "hi"})))
    assert code.source == MAIN


def test_archive_that_is_not_an_archive() -> None:
    """Bytes that are neither zip nor tgz: `Could not read archive as .zip or .tgz`."""
    with pytest.raises(PluginLoadError) as caught:
        load_plugin_code(archive_plugin(b"this is not a zip"))
    assert str(caught.value) == "Could not read archive as .zip or .tgz"


def test_archive_with_broken_plugin_json() -> None:
    """`Can not load plugin.json for <digest>`."""
    plugin = archive_plugin(make_zip({"r/plugin.json": "{nope", "r/main.py": MAIN}))
    with pytest.raises(PluginLoadError) as caught:
        load_plugin_code(plugin)
    assert str(caught.value).startswith(f"Can not load plugin.json for {plugin_digest(plugin)}: ")


def test_archive_without_main() -> None:
    """`Could not load main.py for <digest>!`."""
    plugin = archive_plugin(make_tgz({"r/plugin.json": "{}", "r/other.py": MAIN}))
    with pytest.raises(PluginLoadError) as caught:
        load_plugin_code(plugin)
    assert str(caught.value) == f"Could not load main.py for {plugin_digest(plugin)}!"


def test_archive_member_too_large() -> None:
    """A main file larger than MAX_FILE_BYTES is refused, not read into memory whole."""
    plugin = archive_plugin(make_zip({"main.py": b"#" * (MAX_FILE_BYTES + 10)}))
    with pytest.raises(PluginLoadError, match="larger than"):
        load_plugin_code(plugin)


# --- source -----------------------------------------------------------------------


def test_source_plugin() -> None:
    """A source plugin's `source` column is the text of main.py."""
    code = load_plugin_code(create_plugin(source=MAIN))
    assert (code.main_filename, code.source, code.plugin_json) == ("main.py", MAIN, {})


def test_source_plugin_as_file_map() -> None:
    """The source column may hold {"main.py": ..., "plugin.json": ...}; main from plugin.json is honoured."""
    files = {"plugin.json": json.dumps({"main": "app.py", "config": []}), "app.py": MAIN}
    code = load_plugin_code(create_plugin(source=json.dumps(files)))
    assert (code.main_filename, code.source, code.plugin_json["main"]) == ("app.py", MAIN, "app.py")


def test_source_starting_with_a_brace_is_still_python() -> None:
    """Text that is not a JSON file map is Python source, even if it starts with "{"."""
    source = "{'a': 1}\n" + MAIN
    assert load_plugin_code(create_plugin(source=source)).source == source


def test_source_file_map_without_its_main() -> None:
    """A file map whose main file is missing is an error."""
    with pytest.raises(PluginLoadError, match="Could not load main.py"):
        load_plugin_code(create_plugin(source=json.dumps({"plugin.json": "{}"})))


def test_config_schema_comes_from_the_row_first() -> None:
    """The row's config_schema (set by the PostHog app) wins over plugin.json's `config`."""
    schema = {"localhostIP": {"type": "string", "default": ""}}
    files = {"plugin.json": json.dumps({"config": [{"key": "other"}]}), "main.py": MAIN}
    code = load_plugin_code(create_plugin(source=json.dumps(files), config_schema=schema))
    assert code.config_schema == schema


# --- undownloaded -------------------------------------------------------------------


def test_remote_plugin_without_archive() -> None:
    """An http url with no archive: `Tried using undownloaded remote <digest>, which is not supported!`."""
    organization = create_organization()
    plugin = create_plugin(
        organization=organization, name="test-maxmind-plugin", url="https://x.test/p", is_global=True, plugin_type="custom"
    )
    with pytest.raises(PluginLoadError) as caught:
        load_plugin_code(plugin)
    assert str(caught.value) == (
        f"Tried using undownloaded remote plugin test-maxmind-plugin ID {plugin.pk} "
        f"(organization ID {organization.pk} - global), which is not supported!"
    )


# --- through the real worker pool -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "kind",
    ["broken archive", "broken plugin.json", "missing main", "syntax error", "import outside the allow-list"],
)
def test_load_failures_are_recorded_and_ingestion_goes_on(kind: str, tmp_path: Path) -> None:
    """Each load failure ends as the config's error plus a PLUGIN/ERROR log entry; the event goes on unchanged.
    Errors found while reading the code leave the config enabled; errors starting it (syntax, imports) disable it
    (plugins.md §1.2, §2.2)."""
    from plugin_server.models import PluginConfig, PluginLogEntry
    from plugin_server.workers.pool import PoolSettings, WorkerPool
    from tests.factories import create_plugin_config, create_team

    team = create_team()
    plugin_fields: dict[str, object] = {"organization": team.organization}
    if kind == "broken archive":
        plugin = archive_plugin(b"this is not a zip", **plugin_fields)
        expected, disabled = "Could not read archive as .zip or .tgz", False
    elif kind == "broken plugin.json":
        write_folder(tmp_path, "p", {"plugin.json": "{oops", "main.py": MAIN})
        plugin = create_plugin(url="file:p", plugin_type="local", **plugin_fields)
        expected, disabled = "Could not load posthog config at", False
    elif kind == "missing main":
        plugin = archive_plugin(make_zip({"r/plugin.json": "{}"}), **plugin_fields)
        expected, disabled = "Could not load main.py for", False
    elif kind == "syntax error":
        plugin = create_plugin(source="def process_event(event, meta)\n    return event\n", **plugin_fields)
        expected, disabled = "SyntaxError", True
    else:
        plugin = create_plugin(source="import kea\ndef process_event(event, meta):\n    return None\n", **plugin_fields)
        expected, disabled = "Cannot import 'kea'! This package is not provided by PostHog in plugins.", True
    config = create_plugin_config(team=team, plugin=plugin)

    pool = WorkerPool(PoolSettings.from_config(concurrency=1, task_timeout=2.0, memory_limit_mb=512, base_dir=str(tmp_path)))
    pool.start()
    try:
        out = pool.process_events([{"event": "e0", "distinct_id": "a", "team_id": team.id, "properties": {}}])
    finally:
        pool.stop()

    assert [event["event"] for event in out] == ["e0"]
    config = PluginConfig.objects.get(pk=config.pk)
    assert expected in config.error["message"]
    assert config.enabled is not disabled
    assert PluginLogEntry.objects.filter(plugin_config_id=config.id, source="PLUGIN", type="ERROR").exists()


def test_source_plugin_without_source_names_where_its_files_are() -> None:
    """Today's PostHog keeps a source plugin's files in posthog_pluginsourcefile: the error says so."""
    plugin = create_plugin(organization=create_organization(), name="from-the-editor", plugin_type="source", source=None)
    with pytest.raises(PluginLoadError, match="source plugin with an empty source column.*posthog_pluginsourcefile"):
        load_plugin_code(plugin)


def test_inline_plugin_is_refused_with_its_reason() -> None:
    """Today's PostHog's inline plugins live in its Node.js server: refused, saying so."""
    plugin = create_plugin(organization=create_organization(), name="semver", plugin_type="inline", url="inline:semver-flattener")
    with pytest.raises(PluginLoadError, match="is an inline plugin"):
        load_plugin_code(plugin)
