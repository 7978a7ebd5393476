"""The plugin code a worker receives: read by the loader (main process), compiled by the sandbox (worker).

Kept apart from :mod:`plugin_server.plugins.loader` so that a worker can
import it without Django.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class PluginCode:
    """A plugin's code as read from its row: what a worker needs to compile it."""

    plugin_id: int
    name: str
    digest: str
    main_filename: str
    source: str
    plugin_json: dict[str, Any]
    config_schema: dict[str, Any] | list[Any]
    # "javascript" for a JS/TS main: ``script`` is then its transpiled text and
    # ``js_token`` the name of its loop guard (plugin_server/plugins/js/).
    language: str = "python"
    script: str = ""
    js_token: str = ""
