"""The examples of docs/plugins.md compile in the sandbox and do what the page says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from plugin_server.exceptions import RetryError
from plugin_server.plugins.sandbox import PluginExports, compile_plugin
from tests.plugins.sandbox_helpers import plugin_code

PAGE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


class Meta:
    """Just the parts of meta the examples use, recording what they do."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.global_: dict[str, Any] = {}


def _compile(source: str) -> PluginExports:
    return compile_plugin(plugin_code(source), {"print": lambda *args: None, "RetryError": RetryError})


def test_the_page_has_examples() -> None:
    """Three examples: tagging, counting with a retried job, GeoIP."""
    assert len(EXAMPLES) == 3


@pytest.mark.parametrize("source", EXAMPLES)
def test_every_example_compiles_in_the_sandbox(source: str) -> None:
    """Each example is allowed as it is printed, and exports process_event."""
    assert _compile(source).process_event is not None


def test_the_first_example_drops_internal_traffic_and_tags_the_rest() -> None:
    """An internal IP is dropped, any other event gets the configured source."""
    exports = _compile(EXAMPLES[0])
    meta = Meta({"internal_ips": "10.0.0.1, 10.0.0.2", "source": "app"})
    assert exports.setup_plugin is not None and exports.process_event is not None
    exports.setup_plugin(meta)
    assert exports.process_event({"ip": "10.0.0.2", "properties": {}}, meta) is None
    kept = exports.process_event({"ip": "8.8.8.8", "properties": {}}, meta)
    assert kept is not None and kept["properties"]["source"] == "app"


def test_the_second_examples_job_asks_for_a_retry_when_the_webhook_fails() -> None:
    """The report job raises RetryError on a non-ok response, and returns quietly on an ok one."""
    exports = _compile(EXAMPLES[1])

    class Response:
        def __init__(self, ok: bool) -> None:
            self.ok, self.status = ok, 200 if ok else 503

    meta = Meta({"webhook_url": "https://example.com/hook"})
    meta.fetch = lambda *args, **kwargs: Response(False)  # type: ignore[attr-defined]
    with pytest.raises(RetryError, match="webhook answered 503"):
        exports.jobs["report"]({"seen": 1}, meta)
    meta.fetch = lambda *args, **kwargs: Response(True)  # type: ignore[attr-defined]
    assert exports.jobs["report"]({"seen": 1}, meta) is None
