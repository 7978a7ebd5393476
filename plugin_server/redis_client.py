"""The Redis connection of this process, built from REDIS_URL or POSTHOG_REDIS_*."""

from __future__ import annotations

import functools

import redis
from django.conf import settings


def redis_url() -> str:
    """REDIS_URL, unless POSTHOG_REDIS_HOST is set."""
    if settings.POSTHOG_REDIS_HOST:
        password = f":{settings.POSTHOG_REDIS_PASSWORD}@" if settings.POSTHOG_REDIS_PASSWORD else ""
        return f"redis://{password}{settings.POSTHOG_REDIS_HOST}:{settings.POSTHOG_REDIS_PORT}"
    return str(settings.REDIS_URL)


@functools.cache
def get_redis() -> redis.Redis:
    """A pooled client; safe to share between threads of one process.

    Call :func:`reset_redis` in a child process after fork."""
    return redis.Redis.from_url(redis_url(), max_connections=max(settings.REDIS_POOL_MAX_SIZE, 8), health_check_interval=30)


def reset_redis() -> None:
    get_redis.cache_clear()
