"""Fixtures shared by the whole suite. Every service used is the real one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from django.conf import settings

from plugin_server.metrics import RecordingMetrics, set_metrics


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """A client on the real Redis at REDIS_URL."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.ping()
    yield client
    client.close()


@pytest.fixture
def unique_name() -> str:
    """A name no other test uses: for queues, topics, groups and key prefixes."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def recording_metrics() -> Iterator[RecordingMetrics]:
    """Installs a RecordingMetrics backend for the test, then puts the default back."""
    backend = RecordingMetrics()
    set_metrics(backend)
    yield backend
    set_metrics(None)
