"""Fixtures of the ingestion tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from plugin_server.ingestion.sources.celery import CelerySource


@pytest.fixture
def source(unique_name: str) -> Iterator[CelerySource]:
    """A started Celery source on this test's own queue (the real Redis), closed at the end."""
    made = CelerySource(queue=unique_name)
    made.start()
    yield made
    made.close()
