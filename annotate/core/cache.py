"""Django's Redis cache, degraded rather than failing while Redis is unreachable.

What the app keeps in the cache (failed-login counts, dashboard statistics) is an optimisation or a
brake, never data: with Redis down a read is a miss, a write is dropped and an increment counts from
nothing, each logged, so logging in and the dashboard keep working instead of answering 500.
"""
from __future__ import annotations

import logging

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)


class TolerantRedisCache(RedisCache):
    def get(self, key, default=None, version=None):
        try:
            return super().get(key, default, version)
        except RedisError as exc:
            _unavailable("get", exc)
            return default

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        try:
            super().set(key, value, timeout, version)
        except RedisError as exc:
            _unavailable("set", exc)

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        try:
            return super().add(key, value, timeout, version)
        except RedisError as exc:
            _unavailable("add", exc)
            return False

    def incr(self, key, delta=1, version=None):
        try:
            return super().incr(key, delta, version)
        except RedisError as exc:
            _unavailable("incr", exc)
            return delta


def _unavailable(operation: str, exc: RedisError) -> None:
    logger.warning("cache %s skipped, Redis unavailable: %s", operation, exc)
