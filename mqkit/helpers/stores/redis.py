"""A Redis idempotency store: one key per identity, expiring by itself.

The value is ``c:<token>`` while claimed and ``d`` once done; the key's TTL is the lease or the
dedup window. Each operation is one Lua script, so it is atomic across every process sharing the
server. :class:`AsyncRedisStore` runs the same scripts on ``redis.asyncio``. Needs
``pip install 'mqkit[redis]'``.
"""

from __future__ import annotations

import importlib
from typing import Any

from mqkit.errors import ConfigError
from mqkit.helpers.stores.base import Claim

_CLAIM = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'c:' .. ARGV[1], 'PX', ARGV[2])
  return {1, 0}
end
if v == 'd' then return {2, 0} end
return {3, redis.call('PTTL', KEYS[1])}
"""

_COMPLETE = """
local v = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], 'd', 'PX', ARGV[2])
if v == 'c:' .. ARGV[1] then return 1 end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == 'c:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _claim_result(status: int, pttl: int) -> Claim:
    """What the claim script's answer means."""
    if status == 1:
        return Claim("claimed")
    if status == 2:
        return Claim("done")
    return Claim("busy", max(0.0, int(pttl) / 1000))


def _client_module(name: str = "redis") -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError("RedisStore needs the redis client: pip install 'mqkit[redis]'") from None


class _Scripts:
    """The client, the key prefix and the three scripts, for the sync and the async store."""

    def __init__(self, module: str, url: str | None, client: Any, prefix: str) -> None:
        if client is None:
            if url is None:
                raise ConfigError(
                    f"{type(self).__name__} needs a url (redis://host:6379/0) or a client"
                )
            client = _client_module(module).Redis.from_url(url)
        self._redis = client
        self._prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)


class RedisStore(_Scripts):
    """Identities in Redis, shared by every consumer that reaches the server.

    ``RedisStore("redis://127.0.0.1:6379/0")`` or ``RedisStore(client=redis.Redis(...))``.
    Keys are ``<prefix><identity>``. Durability is the server's: with persistence off (as in a
    cache), a restart forgets the records and duplicates of older messages run again.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        prefix: str = "mqkit:idem:",
    ) -> None:
        super().__init__("redis", url, client, prefix)

    def claim(self, key: str, token: str, lease: float) -> Claim:
        return _claim_result(*self._claim(keys=[self._prefix + key], args=[token, _ms(lease)]))

    def complete(self, key: str, token: str, ttl: float) -> bool:
        held = self._complete(keys=[self._prefix + key], args=[token, _ms(ttl)])
        return bool(held)

    def release(self, key: str, token: str) -> None:
        self._release(keys=[self._prefix + key], args=[token])

    def close(self) -> None:
        self._redis.close()


class AsyncRedisStore(_Scripts):
    """:class:`RedisStore` for ``mqkit.aio`` (``redis.asyncio``): the same scripts and keys,
    so sync and async consumers of one group share their records.

    ``AsyncRedisStore("redis://127.0.0.1:6379/0")`` or ``AsyncRedisStore(client=...)`` (a
    ``redis.asyncio.Redis``). Use it on one event loop.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        prefix: str = "mqkit:idem:",
    ) -> None:
        super().__init__("redis.asyncio", url, client, prefix)

    async def claim(self, key: str, token: str, lease: float) -> Claim:
        return _claim_result(
            *await self._claim(keys=[self._prefix + key], args=[token, _ms(lease)])
        )

    async def complete(self, key: str, token: str, ttl: float) -> bool:
        return bool(await self._complete(keys=[self._prefix + key], args=[token, _ms(ttl)]))

    async def release(self, key: str, token: str) -> None:
        await self._release(keys=[self._prefix + key], args=[token])

    async def close(self) -> None:
        await self._redis.aclose()
