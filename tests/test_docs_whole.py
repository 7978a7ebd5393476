"""The repository stands on its own: its docs, scaffold and code never send a reader to a spec they do not have."""

from __future__ import annotations

import io
import re
from pathlib import Path

from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent
# A link into ../shared, a "spec §N" or any "§" section sign, a reference to spec/<file>.md.
CITATION = re.compile(r"shared/spec|§|\bspec/\w+\.md|\bspec:\s*\w+\.md|python-plugins\.md")
# What a reader of the repository reads: README, docs, the demo plugin, scripts, benchmarks,
# the code with its docstrings and comments (settings, the app, the stand-ins), and the
# acceptance indexes the README links.
READ = ["README.md", "docs", "plugins", "bin", "benchmarks", "plugin_server", "settings", "posthog_standin", "manage.py",
        "tests/acceptance_index.md", "tests/acceptance_index_plugins.md"]


def _files(*roots: str) -> list[Path]:
    found: list[Path] = []
    for root in roots:
        path = ROOT / root
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        found += [candidate for candidate in candidates if candidate.is_file() and "__pycache__" not in candidate.parts]
    return found


def _citations(paths: list[Path]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in paths
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if CITATION.search(line)
    ]


def test_readme_docs_code_and_scripts_cite_no_spec() -> None:
    """No ../shared link and no "spec §" in what a user of the repository reads, code comments included."""
    assert _citations(_files(*READ)) == []


def test_the_new_plugin_scaffold_cites_no_spec(tmp_path: Path) -> None:
    """A plugin made with new_plugin points to docs/plugins.md, never to a spec file."""
    call_command("new_plugin", "fresh", directory=str(tmp_path), stdout=io.StringIO())
    written = _files(str(tmp_path / "fresh"))
    assert _citations(written) == []
    assert "docs/plugins.md" in (tmp_path / "fresh" / "main.py").read_text()


def test_the_plugin_contract_is_documented_in_the_repository() -> None:
    """docs/plugins.md covers hooks, meta, the allowed modules, limits and errors, and the README links it."""
    page = (ROOT / "docs" / "plugins.md").read_text()
    for topic in ("process_event", "setup_plugin", "run_every_minute", "meta.cache", "meta.fetch", "urllib.parse",
                  "TASK_TIMEOUT", "WORKER_MEMORY_LIMIT_MB", "Traceback (most recent call last)", "RetryError"):
        assert topic in page, topic
    assert "(docs/plugins.md)" in (ROOT / "README.md").read_text()
