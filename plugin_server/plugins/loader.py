"""Find and read a plugin's code, in the main process.

Three kinds, checked in this order:

1. **local**: ``url`` starts with ``file:``; the folder is the rest of the url,
   resolved against ``BASE_DIR`` (itself, when relative, against the project
   folder: see :func:`base_folder`). ``plugin.json`` is optional; the entry file
   is its ``main`` or ``main.py``.
2. **archive**: the ``archive`` column holds a zip or a gzipped tar. Files may
   sit under one root folder (GitHub and npm downloads) or at the top.
3. **source**: ``plugin_type == "source"`` and the ``source`` column holds the
   code: either the text of ``main.py``, or a JSON object mapping file names
   to their text, e.g. ``{"main.py": "...", "plugin.json": "{...}"}``. The
   JSON form is recognised only when the text parses as such an object and
   names ``main.py`` or ``plugin.json``; anything else is Python source.

Anything else is a remote plugin that was never downloaded, which is an
error. Every failure raises :class:`PluginLoadError` with the original's message
(adapted to Python names); nothing here runs plugin code.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
import zipfile
import zlib
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from plugin_server.config import get_config
from plugin_server.exceptions import PluginLoadError
from plugin_server.plugins.code import PluginCode
from plugin_server.plugins.js.transpile import is_javascript, transpile

if TYPE_CHECKING:
    from plugin_server.models import Plugin

__all__ = ["PluginCode", "base_folder", "load_plugin_code", "plugin_digest"]

DEFAULT_MAIN = "main.py"
# Without plugin.json's "main" nor main.py, a JavaScript plugin's entry file (the original's default first).
JS_MAINS = ("index.js", "index.ts")
# Largest main file or plugin.json we read (bytes).
MAX_FILE_BYTES = 2 * 1024 * 1024
# Largest unpacked tar we look into (bytes): a gzip bomb stops here.
MAX_UNPACKED_ARCHIVE_BYTES = 64 * 1024 * 1024
# Where a relative BASE_DIR starts: the folder holding manage.py and this package.
PROJECT_FOLDER = str(Path(__file__).resolve().parents[2])


def plugin_digest(plugin: Plugin) -> str:
    """``plugin <name> ID <id> (organization ID <org id>[ - global])``, as in the original's messages."""
    suffix = " - global" if plugin.is_global else ""
    return f"plugin {plugin.name} ID {plugin.pk} (organization ID {plugin.organization_id}{suffix})"


# A reader returns a file's bytes, or None when the file is not there.
Reader = Callable[[str], bytes | None]


def _validated_plugin_json(data: bytes) -> dict[str, Any]:
    """Parse plugin.json and check the fields the server relies on; ValueError says what is wrong."""
    parsed = json.loads(data.decode("utf-8-sig"))
    if not isinstance(parsed, dict):
        raise ValueError("plugin.json must hold a JSON object")
    main = parsed.get("main")
    if main is not None:
        if not isinstance(main, str) or not main.strip():
            raise ValueError('"main" must be a non-empty string')
        if os.path.isabs(main) or ".." in main.replace("\\", "/").split("/"):
            raise ValueError('"main" must be a path inside the plugin')
    for key in ("name", "description", "url"):
        if parsed.get(key) is not None and not isinstance(parsed[key], str):
            raise ValueError(f'"{key}" must be a string')
    if parsed.get("config") is not None and not isinstance(parsed["config"], (list, dict)):
        raise ValueError('"config" must be a list or an object')
    return parsed


def _decode_source(data: bytes, main: str, digest: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PluginLoadError(f"Could not load {main} for {digest}: not UTF-8 text ({error})") from None


def _code(plugin: Plugin, digest: str, main: str, source: str, plugin_json: dict[str, Any]) -> PluginCode:
    schema = plugin.config_schema or plugin_json.get("config") or {}
    if is_javascript(main):
        transpiled = transpile(source, main)
        return PluginCode(
            plugin_id=plugin.pk, name=plugin.name or "", digest=digest, main_filename=main, source=source,
            plugin_json=plugin_json, config_schema=schema, language="javascript", script=transpiled.script,
            js_token=transpiled.token,
        )
    return PluginCode(
        plugin_id=plugin.pk,
        name=plugin.name or "",
        digest=digest,
        main_filename=main,
        source=source,
        plugin_json=plugin_json,
        config_schema=schema,
    )


# --- local folders --------------------------------------------------------------


def _read_local(folder: str, name: str) -> bytes | None:
    path = os.path.realpath(os.path.join(folder, name))
    if not path.startswith(os.path.realpath(folder) + os.sep) or not os.path.isfile(path):
        return None
    if os.path.getsize(path) > MAX_FILE_BYTES:
        raise PluginLoadError(f'File "{path}" is larger than {MAX_FILE_BYTES} bytes')
    with open(path, "rb") as file:
        return file.read()


def base_folder(base_dir: str) -> str:
    """``BASE_DIR`` as an absolute folder: a relative one is taken from the project folder.

    The project folder is the one holding ``manage.py`` (and this package), so
    ``file:plugins/demo`` names the same folder whatever the working directory
    of the command that loads it (the original resolved against the working
    directory).
    """
    return os.path.realpath(os.path.join(PROJECT_FOLDER, base_dir))


def _load_local(plugin: Plugin, digest: str, base_dir: str) -> PluginCode:
    url = plugin.url or ""
    base = base_folder(base_dir)
    folder = os.path.realpath(os.path.join(base, url[len("file:") :]))
    if not os.path.isdir(folder):
        raise PluginLoadError(f'Plugin folder "{folder}" not found for {digest} ({url} resolved against BASE_DIR "{base}")')
    config_path = os.path.join(folder, "plugin.json")
    plugin_json: dict[str, Any] = {}
    raw = _read_local(folder, "plugin.json")
    if raw is not None:
        try:
            plugin_json = _validated_plugin_json(raw)
        except ValueError as error:
            raise PluginLoadError(f'Could not load posthog config at "{config_path}" for {digest}: {error}') from None
    main = plugin_json.get("main")
    if main is None:
        main = next((name for name in (DEFAULT_MAIN, *JS_MAINS) if _read_local(folder, name) is not None), DEFAULT_MAIN)
        data = _read_local(folder, main)
        if data is None:
            raise PluginLoadError(f'No "main" config key or "{DEFAULT_MAIN}" file found for {digest} in "{folder}"')
    else:
        data = _read_local(folder, main)
        if data is None:
            raise PluginLoadError(f'Could not load {main} at "{folder}" for {digest}!')
    return _code(plugin, digest, main, _decode_source(data, main, digest), plugin_json)


# --- archives ---------------------------------------------------------------------


def _bounded(data: bytes | None, name: str) -> bytes | None:
    if data is not None and len(data) > MAX_FILE_BYTES:
        raise PluginLoadError(f'File "{name}" in the archive is larger than {MAX_FILE_BYTES} bytes')
    return data


def _zip_reader(archive: bytes) -> tuple[list[str], Reader] | None:
    try:
        zip_file = zipfile.ZipFile(io.BytesIO(archive))
        names = [info.filename for info in zip_file.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError, EOFError):
        return None

    def read(name: str) -> bytes | None:
        try:
            with zip_file.open(name) as member:
                # Read one byte past the limit: the declared size may lie.
                return _bounded(member.read(MAX_FILE_BYTES + 1), name)
        except KeyError:
            return None
        except (zipfile.BadZipFile, OSError, zlib.error, NotImplementedError, RuntimeError) as error:
            raise PluginLoadError(f'Could not read "{name}" in the archive: {error}') from None

    return names, read


def _tgz_reader(archive: bytes) -> tuple[list[str], Reader] | None:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(archive)) as unzipped:
            raw = unzipped.read(MAX_UNPACKED_ARCHIVE_BYTES + 1)
        if len(raw) > MAX_UNPACKED_ARCHIVE_BYTES:
            raise PluginLoadError(f"The archive unpacks to more than {MAX_UNPACKED_ARCHIVE_BYTES} bytes")
        tar = tarfile.open(fileobj=io.BytesIO(raw), mode="r:")
        members = {member.name.removeprefix("./"): member for member in tar.getmembers() if member.isfile()}
    except (OSError, EOFError, tarfile.TarError, zlib.error):
        return None

    def read(name: str) -> bytes | None:
        member = members.get(name)
        if member is None:
            return None
        if member.size > MAX_FILE_BYTES:
            raise PluginLoadError(f'File "{name}" in the archive is larger than {MAX_FILE_BYTES} bytes')
        extracted = tar.extractfile(member)
        return extracted.read() if extracted is not None else None

    return list(members), read


def _root_prefix(names: list[str]) -> str:
    """Files at the top (``plugin.json`` or ``main.py`` there), else under the first entry's folder."""
    if "plugin.json" in names or DEFAULT_MAIN in names or any(name in names for name in JS_MAINS) or not names:
        return ""
    first = names[0]
    return first.split("/", 1)[0] + "/" if "/" in first else ""


def _load_archive(plugin: Plugin, digest: str) -> PluginCode:
    # Called only when the archive column is set (load_plugin_code).
    archive = bytes(cast(bytes | memoryview, plugin.archive))
    opened = _zip_reader(archive) or _tgz_reader(archive)
    if opened is None:
        raise PluginLoadError("Could not read archive as .zip or .tgz")
    names, read = opened
    prefix = _root_prefix(names)
    plugin_json: dict[str, Any] = {}
    raw = read(prefix + "plugin.json")
    if raw is not None:
        try:
            plugin_json = _validated_plugin_json(raw)
        except ValueError as error:
            raise PluginLoadError(f"Can not load plugin.json for {digest}: {error}") from None
    main = plugin_json.get("main") or next(
        (name for name in (DEFAULT_MAIN, *JS_MAINS) if prefix + name in names), DEFAULT_MAIN
    )
    data = read(prefix + main)
    if data is None:
        raise PluginLoadError(f"Could not load {main} for {digest}!")
    return _code(plugin, digest, main, _decode_source(data, main, digest), plugin_json)


# --- source text ------------------------------------------------------------------


def _file_map(source: str) -> dict[str, str] | None:
    if not source.lstrip().startswith("{"):
        return None
    try:
        parsed = json.loads(source)
    except ValueError:
        return None
    if (
        isinstance(parsed, dict)
        and all(isinstance(key, str) and isinstance(value, str) for key, value in parsed.items())
        and any(name in parsed for name in (DEFAULT_MAIN, "plugin.json", *JS_MAINS))
    ):
        return parsed
    return None


def _load_source(plugin: Plugin, digest: str) -> PluginCode:
    source: str = plugin.source or ""
    files = _file_map(source)
    if files is None:
        return _code(plugin, digest, DEFAULT_MAIN, source, {})
    plugin_json: dict[str, Any] = {}
    if "plugin.json" in files:
        try:
            plugin_json = _validated_plugin_json(files["plugin.json"].encode())
        except ValueError as error:
            raise PluginLoadError(f"Can not load plugin.json for {digest}: {error}") from None
    main = plugin_json.get("main") or next((name for name in (DEFAULT_MAIN, *JS_MAINS) if name in files), DEFAULT_MAIN)
    if main not in files:
        raise PluginLoadError(f"Could not load {main} for {digest}!")
    return _code(plugin, digest, main, files[main], plugin_json)


def load_plugin_code(plugin: Plugin, base_dir: str | None = None) -> PluginCode:
    """Read ``plugin``'s code from its folder, archive or source column.

    ``base_dir`` (default: the ``BASE_DIR`` setting) is where ``file:`` urls
    are resolved. Raises :class:`PluginLoadError` with the original's message.
    """
    digest = plugin_digest(plugin)
    if plugin.plugin_type == "inline" or (plugin.url or "").startswith("inline:"):
        # Today's PostHog: code built into its Node.js plugin server, not stored anywhere this server can read.
        raise PluginLoadError(
            f"{digest} is an inline plugin (code built into PostHog's Node.js plugin server): it cannot run in this server"
        )
    if (plugin.url or "").startswith("file:"):
        return _load_local(plugin, digest, get_config().base_dir if base_dir is None else base_dir)
    if plugin.archive:
        return _load_archive(plugin, digest)
    if plugin.plugin_type == "source" and plugin.source:
        return _load_source(plugin, digest)
    if plugin.plugin_type == "source":
        # Today's PostHog keeps a source plugin's files in posthog_pluginsourcefile, not in this column.
        raise PluginLoadError(
            f"{digest} is a source plugin with an empty source column: its files (posthog_pluginsourcefile) are not read by this server"
        )
    raise PluginLoadError(f"Tried using undownloaded remote {digest}, which is not supported!")
