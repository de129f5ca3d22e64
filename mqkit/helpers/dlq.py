"""Reading and replaying a group's dead letters (``mqkit dlq list`` / ``mqkit dlq replay``).

Both read the group ``<group>.dlq`` (:func:`mqkit.deadletter.dead_letter_group`), which the
App subscribes to the dead-letter topic before it can dead-letter anything.

* :func:`list_dead_letters` receives up to ``limit`` dead letters and gives them back to the
  group (it never acks), so listing changes nothing but their delivery count.
* :func:`replay` re-publishes dead letters and acks them once the copies are confirmed. By
  default a replay goes to ``<group>.replay``, which the route's retry relay consumes: only the
  group that gave up on the message gets it again, with a fresh attempt count. ``to="topic"``
  publishes to the original topic instead, which **every** group of that topic receives
  (useful when the route has no retry middleware, or all groups must see it).

Replayed messages carry ``mqkit-origin-id`` (the original id), so the idempotency helper
treats them as the same message: one that did succeed in the meantime is not run twice.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from mqkit.client import Broker
from mqkit.deadletter import DeadLetter, dead_letter_group, dead_letter_topic
from mqkit.helpers.idempotency import ORIGIN_ID
from mqkit.helpers.retry import ATTEMPTS, DUE, TOPIC, replay_topic
from mqkit.message import Message


@dataclass(frozen=True)
class Listed:
    """One dead letter: the message as kept (raw body) and what its headers say."""

    message: Message
    info: DeadLetter


def _matches(message: Message, info: DeadLetter, ids: Collection[str] | None) -> bool:
    return not ids or info.original_id in ids or message.id in ids


def list_dead_letters(
    broker: Broker,
    group: str,
    *,
    limit: int = 100,
    wait: float = 1.0,
    first_wait: float = 10.0,
) -> list[Listed]:
    """Up to ``limit`` of ``group``'s dead letters, oldest first; all stay in the queue.

    Waits up to ``first_wait`` seconds for the first one (a broker may take seconds to assign
    a new consumer), then stops once none came for ``wait`` seconds.
    """
    out: list[Listed] = []
    consumer = broker.consumer(
        dead_letter_topic(group), group=dead_letter_group(group), serializer="bytes"
    )
    try:
        while len(out) < limit:
            message = consumer.receive(timeout=wait if out else max(wait, first_wait))
            if message is None:
                break
            out.append(Listed(message, DeadLetter.of(message)))
    finally:
        consumer.close()  # nothing acked: everything goes back to the group
    return out


@dataclass(frozen=True)
class Replayed:
    original_id: str
    topic: str
    to: str
    new_id: str


def replay(
    broker: Broker,
    group: str,
    *,
    to: Literal["group", "topic"] = "group",
    ids: Collection[str] | None = None,
    limit: int | None = None,
    wait: float = 1.0,
    first_wait: float = 10.0,
    batch: int = 100,
) -> list[Replayed]:
    """Re-publish ``group``'s dead letters (those in ``ids``, or all) and ack them.

    Each batch is flushed before its dead letters are acked: a crash in between replays a
    message twice, never zero times. ``wait`` and ``first_wait`` as for
    :func:`list_dead_letters`.
    """
    done: list[Replayed] = []
    consumer = broker.consumer(
        dead_letter_topic(group), group=dead_letter_group(group), serializer="bytes"
    )
    producer = broker.producer(serializer="bytes")
    pending: list[Message] = []
    seen = 0
    try:
        while limit is None or len(done) < limit:
            message = consumer.receive(timeout=wait if seen else max(wait, first_wait))
            seen += 1
            if message is None:
                break
            info = DeadLetter.of(message)
            if not _matches(message, info, ids):
                continue  # left unacked: given back when the consumer closes
            headers = dict(info.headers)
            headers[ORIGIN_ID] = info.original_id
            if to == "group":
                target = replay_topic(group)
                headers.update({TOPIC: info.topic, ATTEMPTS: "0", DUE: f"{time.time():.3f}"})
            else:
                target = info.topic
            new_id = producer.send(target, message.body, key=message.key, headers=headers)
            done.append(Replayed(info.original_id, info.topic, target, new_id))
            pending.append(message)
            if len(pending) >= batch:
                producer.flush()
                for m in pending:
                    m.ack()
                pending.clear()
        producer.flush()
        for m in pending:
            m.ack()
    finally:
        producer.close()
        consumer.close()
    return done
