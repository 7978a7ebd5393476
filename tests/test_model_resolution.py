"""Each model is taken from the module that defines it, never from the package's __init__ alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin_server import models
from plugin_server.models import MODEL_MODULES, resolve_model
from posthog_standin import models as standins


def _package(root: Path, name: str, files: dict[str, str]) -> str:
    """A throw-away models package on sys.path: {relative path: source}."""
    for relative, source in files.items():
        path = root / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return name


def test_on_its_own_every_model_is_a_stand_in() -> None:
    assert models.missing_models() == frozenset()
    for name in MODEL_MODULES:
        assert getattr(models, name) is getattr(standins, name)


def test_a_model_is_found_in_its_module_not_in_the_package_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostHog's layout: PluginStorage only in .plugin, Team only in .team.team (the package's __init__s export neither)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    package = _package(
        tmp_path,
        "layout_today",
        {
            "__init__.py": "",
            "plugin.py": "from posthog_standin.models import PluginStorage as PluginStorage\n",
            "team/__init__.py": "",
            "team/team.py": "from posthog_standin.models import Team as Team\n",
        },
    )
    assert resolve_model(package, "PluginStorage") is standins.PluginStorage
    assert resolve_model(package, "Team") is standins.Team
    assert resolve_model(package, "SessionRecordingEvent") is None  # no such module, not in the package


def test_a_name_that_is_no_django_model_counts_as_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Today's PostHog: PluginLogEntry is a dataclass over ClickHouse."""
    monkeypatch.syspath_prepend(str(tmp_path))
    package = _package(
        tmp_path,
        "layout_dataclass",
        {"__init__.py": "", "plugin.py": "from dataclasses import dataclass\n\n@dataclass\nclass PluginLogEntry:\n    message: str\n"},
    )
    assert resolve_model(package, "PluginLogEntry") is None


def test_an_import_error_inside_a_models_module_is_not_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module that exists but fails to import is an error, not a missing model."""
    monkeypatch.syspath_prepend(str(tmp_path))
    package = _package(tmp_path, "layout_broken", {"__init__.py": "", "plugin.py": "import a_module_that_is_not_installed\n"})
    with pytest.raises(ModuleNotFoundError, match="a_module_that_is_not_installed"):
        resolve_model(package, "Plugin")
