"""The transactional outbox: messages written in the application's own database transaction,
published afterwards by a relay, at least once, in per-key order, under ids fixed at write time.

Consistency is the producer side's first cost of a queue: commit the order, then ``send()`` —
and a crash or a refused send in between leaves the database and the other services
disagreeing for ever. With the outbox the message is a row of the same transaction::

    from mqkit.helpers.outbox import PostgresOutbox, Relay

    outbox = PostgresOutbox(dsn)                      # creates mqkit_outbox if missing
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("INSERT INTO orders ...", (...))
        outbox.send(conn, "orders.created", {"order": 42}, key="customer-7")

    Relay(outbox, "amqp://...").run()                 # or .attach(app), or `mqkit outbox relay`

A rolled-back transaction publishes nothing; a committed one is published until the broker
confirmed it, every time under the same message id, so consumers using
:func:`mqkit.helpers.idempotent` see one effect. :class:`SqliteOutbox` does the same in a SQLite
file with the stdlib ``sqlite3``. docs/reliability.md says what is guaranteed and which test
shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mqkit.helpers.outbox.base import DEFAULT_TABLE, OutboxRow, OutboxTable
from mqkit.helpers.outbox.relay import Relay, RelayStats
from mqkit.helpers.outbox.sqlite import SqliteOutbox

if TYPE_CHECKING:
    from mqkit.helpers.outbox.postgres import PostgresOutbox

__all__ = [
    "DEFAULT_TABLE",
    "OutboxRow",
    "OutboxTable",
    "PostgresOutbox",
    "Relay",
    "RelayStats",
    "SqliteOutbox",
    "open_outbox",
]


def open_outbox(target: str | Path, **options: Any) -> SqliteOutbox | PostgresOutbox:
    """The outbox of a database named by ``target``: a ``postgresql://`` (or ``postgres://``)
    DSN, a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL, or a SQLite file
    path. ``options`` go to the class."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        from mqkit.helpers.outbox.postgres import PostgresOutbox

        return PostgresOutbox(text, **options)
    if text.startswith("sqlite:///"):  # as mqkit's sqlite:// URLs: sqlite:////abs/path.db
        text = text.removeprefix("sqlite:///")
    return SqliteOutbox(text, **options)


def __getattr__(name: str) -> Any:
    if name == "PostgresOutbox":  # imported on use: psycopg is an optional dependency
        from mqkit.helpers.outbox.postgres import PostgresOutbox

        return PostgresOutbox
    raise AttributeError(name)
