"""Fixtures of the capture tests: a team with a token, a queue of the test's own, a fresh token cache."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from django.test import override_settings

from plugin_server.capture.views import team_cache
from plugin_server.config import get_config
from plugin_server.events import Delivery, PluginEvent
from plugin_server.ingestion.decode import decode
from plugin_server.models import Team
from tests.factories import create_team


@pytest.fixture(autouse=True)
def _fresh_team_cache() -> Iterator[None]:
    # Tokens repeat across tests (each test's rows are rolled back): forget them.
    team_cache().clear()
    yield
    team_cache().clear()


@pytest.fixture
def team() -> Team:
    return create_team(api_token="phc_capture_test_token")


@pytest.fixture
def queue(unique_name: str) -> Iterator[str]:
    """PLUGINS_CELERY_QUEUE for this test only."""
    with override_settings(PLUGINS_CELERY_QUEUE=unique_name, KAFKA_ENABLED=False):
        yield unique_name


def queued_events(client: redis.Redis, queue: str) -> list[PluginEvent]:
    """Every event on the queue, oldest first, decoded by the ingestion consumer's own decoder."""
    raw = client.lrange(queue, 0, -1)
    return [decode(Delivery(payload, None, queue), get_config().ingestion_max_message_bytes) for payload in reversed(raw)]
