"""The adapter contract: what a backend implements so the core can drive it.

An adapter package exposes, in the ``mqkit.adapters`` entry-point group, one entry per URL
scheme whose value is a :data:`BackendFactory`. The core adds serialization, validation,
handlers and helpers on top; adapters only translate to their client library.

Rules every backend follows (the conformance suite checks them):

* ``ProducerDriver.send`` may buffer; ``flush`` returns only when every message sent before it
  is durable/confirmed, or raises :class:`~mqkit.errors.DeliveryTimeout`.
* ``ConsumerDriver.consumer(...)`` returns only once the group's subscription exists, so a
  message sent afterwards reaches the group even if nobody is receiving yet.
* ``receive(timeout)`` blocks up to ``timeout`` seconds (``None``: until a message or close) and
  returns ``None`` on timeout. It must return promptly after ``close()`` from another thread.
* Delivery is at-least-once: what is not acked when the consumer closes or dies is delivered
  again to the group, with ``attempt`` incremented.
* Errors from the client library are raised as :mod:`mqkit.errors` types naming host and cause.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from mqkit.config import BrokerURL
from mqkit.message import Delivery, OutgoingMessage


@dataclass(frozen=True, slots=True)
class Features:
    """What a backend guarantees beyond the common contract; tests and helpers read it."""

    #: A nacked keyed message is redelivered before later messages of the same key.
    key_order_on_nack: bool = True
    #: ``nack(delay=...)`` is honoured by the backend itself (no sleeping in the consumer).
    delayed_redelivery: bool = False
    #: Messages survive a restart of the broker (or of the process, for embedded backends).
    persistent: bool = True
    #: Largest body the backend accepts with its default settings, in bytes.
    max_body_size: int = 1 << 20
    #: Messages of different keys are handed out regardless of each other's acks. False: the
    #: backend keeps order per partition, which many keys (and the messages without a key)
    #: share, and hands out a partition's next message only once the one before it was
    #: settled; a consumer then holds at most one unsettled message per partition, and a
    #: message waits for an unsettled one of another key on its partition (RocketMQ's
    #: orderly consumer, a partition being a message queue).
    independent_keys: bool = True
    #: Seconds by which a consumer that died without closing can delay the redelivery of its
    #: unsettled messages to the rest of the group, beyond the backend's usual redelivery
    #: (RocketMQ's orderly consumer: the broker keeps the dead consumer's queue locks until
    #: they expire, 60 s after their last renewal).
    crash_hold: float = 0.0
    #: A group created later still receives what was sent to the topic before it existed
    #: (Kafka's and RocketMQ's topics are logs). False: messages reach the groups that exist
    #: when they are sent; create groups first (``Broker.declare``, ``mqkit declare``).
    retains_without_group: bool = False
    #: Consumer options for the helpers' own groups (retry relays, dead-letter keepers), which
    #: need no per-key parallelism: e.g. one partition queue on RabbitMQ instead of several.
    #: Every consumer of such a group uses them, so its members always agree.
    helper_group_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    #: Consumer options for a group that lives only as long as its consumer (a request's
    #: reply topic): e.g. RabbitMQ's ``queue_expires`` and a single partition.
    throwaway_group_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)


class ProducerDriver(Protocol):
    def send(self, message: OutgoingMessage) -> None: ...

    def flush(self, timeout: float | None) -> None: ...

    def close(self) -> None: ...


class ConsumerDriver(Protocol):
    def receive(self, timeout: float | None) -> Delivery | None: ...

    def ack(self, delivery: Delivery) -> None: ...

    def nack(self, delivery: Delivery, *, requeue: bool, delay: float) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class NowaitConsumer(Protocol):
    """Optional for a :class:`ConsumerDriver`: calls that never wait, so an event loop can
    make them inline (``mqkit.aio`` does) instead of handing them to a thread.

    Neither may block: no waiting for the network, for a lock that I/O holds, or for a
    database lock another process holds.
    """

    def receive_nowait(self) -> Delivery | None:
        """A delivery already buffered in memory, or ``None`` (then ``receive`` is used)."""
        ...

    def ack_nowait(self, delivery: Delivery) -> bool:
        """Ack ``delivery`` now if that needs no waiting; ``False``: nothing was done, call
        ``ack`` instead."""
        ...


@runtime_checkable
class BatchAckConsumer(Protocol):
    """Optional for a :class:`ConsumerDriver`: ack many deliveries with one round trip (one
    offset commit, one transaction, one socket write) instead of one each."""

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """``ack`` each of ``deliveries`` (in this order), returning once all are as settled
        as ``ack`` leaves one."""
        ...


@runtime_checkable
class NowaitProducer(Protocol):
    """Optional for a :class:`ProducerDriver`: a ``send`` that never waits."""

    def send_nowait(self, message: OutgoingMessage) -> bool:
        """Accept ``message`` as ``send`` would (buffer it) if there is room; ``False``: it
        was not taken, call ``send`` instead. Raises what ``send`` raises (closed, failed)."""
        ...


@runtime_checkable
class Backend(Protocol):
    """One connection (or connection factory) to one broker."""

    features: Features

    def producer(self, options: Mapping[str, Any]) -> ProducerDriver: ...

    def consumer(
        self, topics: Sequence[str], group: str, options: Mapping[str, Any]
    ) -> ConsumerDriver: ...

    def close(self) -> None: ...


BackendFactory = Callable[[BrokerURL, Mapping[str, Any]], Backend]
"""``factory(url, options) -> Backend``; options: the URL query plus ``connect(**options)``."""
