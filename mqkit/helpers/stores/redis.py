"""A Redis idempotency store: one key per identity, expiring by itself.

The value is ``c:<token>`` while claimed and ``d`` once done; the key's TTL is the lease or the
dedup window. Each operation is one Lua script, so it is atomic across every process sharing the
server. Needs ``pip install 'mqkit[redis]'``.
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


def _client_module() -> Any:
    try:
        return importlib.import_module("redis")
    except ImportError:
        raise ConfigError("RedisStore needs the redis client: pip install 'mqkit[redis]'") from None


class RedisStore:
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
        if client is None:
            if url is None:
                raise ConfigError("RedisStore needs a url (redis://host:6379/0) or a client")
            client = _client_module().Redis.from_url(url)
        self._redis = client
        self._prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, int(seconds * 1000))

    def claim(self, key: str, token: str, lease: float) -> Claim:
        status, pttl = self._claim(keys=[self._prefix + key], args=[token, self._ms(lease)])
        if status == 1:
            return Claim("claimed")
        if status == 2:
            return Claim("done")
        return Claim("busy", max(0.0, int(pttl) / 1000))

    def complete(self, key: str, token: str, ttl: float) -> bool:
        held = self._complete(keys=[self._prefix + key], args=[token, self._ms(ttl)])
        return bool(held)

    def release(self, key: str, token: str) -> None:
        self._release(keys=[self._prefix + key], args=[token])

    def close(self) -> None:
        self._redis.close()
