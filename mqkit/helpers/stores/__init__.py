"""Idempotency stores that need a client library, imported only when used:

* :class:`mqkit.helpers.stores.redis.RedisStore` — ``pip install 'mqkit[redis]'``
* :class:`mqkit.helpers.stores.postgres.PostgresStore` — ``pip install 'mqkit[postgres]'``

The in-process and SQLite stores live in :mod:`mqkit.helpers.idempotency`.
"""
