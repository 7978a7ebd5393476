"""Fixtures for tests that run real plugin worker processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from plugin_server.workers.pool import PoolSettings, WorkerPool


@pytest.fixture
def make_pool() -> Iterator[Callable[..., WorkerPool]]:
    """Start a WorkerPool with small test settings; stopped at the end of the test."""
    pools: list[WorkerPool] = []

    def make(**overrides: Any) -> WorkerPool:
        values: dict[str, Any] = {"concurrency": 2, "task_timeout": 2.0, "memory_limit_mb": 512, "grace": 1.0}
        values.update(overrides)
        pool = WorkerPool(PoolSettings.from_config(**values))
        pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.stop()
