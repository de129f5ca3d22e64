"""The outbox inside a SQLAlchemy ORM session, on SQLite and PostgreSQL: the message commits
and rolls back with the session's own business rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import mqkit
from mqkit.helpers.outbox import Relay
from tests.outbox.conftest import Database
from tests.outbox.test_outbox import receive_all


class Base(DeclarativeBase):
    pass


def order_model(table: str) -> type[Base]:
    """An ORM class for a fresh ``orders`` table (one per test: PostgreSQL outlives tests)."""
    return type(
        f"Order_{table}",
        (Base,),
        {
            "__tablename__": table,
            "__annotations__": {"id": Mapped[int], "customer": Mapped[str]},
            "id": mapped_column(primary_key=True),
            "customer": mapped_column(String(50)),
        },
    )


@pytest.fixture
def engine(database: Database) -> Iterator[Engine]:
    url = (
        f"sqlite:///{database.target}"
        if database.kind == "sqlite"
        else database.target.replace("postgresql://", "postgresql+psycopg://", 1)
    )
    engine = create_engine(url)
    yield engine
    engine.dispose()


def test_the_message_commits_and_rolls_back_with_the_session(
    database: Database, engine: Engine, tmp_db: str, topic: str, group: str
) -> None:
    orders = order_model(f"orders_{uuid.uuid4().hex[:10]}")
    orders.__table__.create(engine)  # type: ignore[attr-defined]
    try:
        with Session(engine) as session:  # rolled back: neither the order nor its message
            session.add(orders(id=1, customer="c-1"))
            database.outbox.send(session, topic, {"order": 1}, key="c-1")
            session.rollback()
        with Session(engine) as session:  # committed: both
            session.add(orders(id=2, customer="c-2"))
            session.flush()
            mid = database.outbox.send(session, topic, {"order": 2}, key="c-2")
            session.commit()
        with Session(engine) as session:
            ids = session.scalars(select(orders.id)).all()  # type: ignore[attr-defined]
            assert ids == [2]
            assert session.scalar(select(func.count()).select_from(orders)) == 1
        assert database.outbox.pending() == 1
        with mqkit.connect(tmp_db) as broker:
            broker.declare(topic, group=group)
            relay = Relay(database.outbox, broker=broker)
            assert relay.drain() == 1
            relay.close()
            got = receive_all(broker, topic, group)
        assert [(m.id, m.value, m.key) for m in got] == [(mid, {"order": 2}, "c-2")]
    finally:
        orders.__table__.drop(engine)  # type: ignore[attr-defined]
