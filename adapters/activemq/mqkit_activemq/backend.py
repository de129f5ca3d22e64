"""mqkit's ActiveMQ Classic backend over STOMP (stomp.py): the entry point and its features.

Mapping (ActiveMQ's default virtual topics, no broker configuration needed; :mod:`.wire`):

* topic ``T``  → messages are sent to ``/topic/VirtualTopic.T``;
* group ``G``  → the consumer subscribes to the queue ``/queue/Consumer.G.VirtualTopic.T``, which
  ActiveMQ creates on first subscription and from then on fills with a copy of every message sent
  to the virtual topic: each group gets every message, members of a group compete for them;
* ``destination=/queue/X`` or ``/topic/X`` → an existing queue, or a durable subscription to an
  existing topic; ``durable=false`` → a plain subscription to the topic (:mod:`.consumer`);
* key          → ``JMSXGroupID`` (message groups: one member of a group holds a key at a time, so
  per-key order holds with several consumers);
* send         → persistent SEND with a receipt; ``flush`` waits for every receipt
  (:mod:`.producer`);
* ack          → ``ack: client-individual`` subscriptions with ``activemq.prefetchSize``; an ACK
  carries a receipt and ``ack()`` returns once the broker confirmed it (``confirm_acks``);
* nack(requeue) → a copy with the attempt + 1 (and ``AMQ_SCHEDULED_DELAY`` for a delay, when the
  broker's scheduler is enabled) is sent to the group's queue with a receipt, then the original
  is acked. A STOMP NACK is ActiveMQ's "poison ack": it dead-letters at once, so it is only used
  for ``nack(requeue=False)`` with the ``dlq`` option (:mod:`.consumer`).

Each producer and consumer owns one self-repairing connection (:mod:`.link`).
"""

from __future__ import annotations

from typing import ClassVar

from mqkit import adapter
from mqkit.adapter import BackendBase, BrokerURL, Features
from mqkit_activemq import settings as _settings
from mqkit_activemq.consumer import Consumer
from mqkit_activemq.link import Link
from mqkit_activemq.producer import Producer
from mqkit_activemq.settings import Settings


class Backend(BackendBase[Settings]):
    """``stomp://[user:password@]host[:port][,host:port…][?option=…]`` and ``stomp+ssl://…``."""

    settings_type: ClassVar[type[adapter.Settings]] = Settings

    def __init__(self, url: BrokerURL, settings: Settings) -> None:
        super().__init__(url, settings)
        self.endpoint = _settings.endpoint(url, settings)
        self.features = Features(
            key_order_on_nack=False,  # a nacked message's copy goes to the back of the queue
            delayed_redelivery=settings.scheduler,
            persistent=True,
            # The CI broker's frame limit (64 MiB; a stock ActiveMQ's: 100 MB) counts the
            # headers too: leave them 1 MiB, or the broker drops the connection on a full body.
            max_body_size=(64 << 20) - (1 << 20),
            # A request's reply inbox: a plain subscription to the virtual topic, so nothing
            # (no queue, no durable subscription) stays on the broker once it is closed.
            throwaway_group_options={"durable": False},
        )
        # Fail now, with a clear error, if the broker is unreachable or refuses the login.
        probe = Link(self.endpoint, "connection check")
        try:
            probe.start()
        finally:
            probe.close(timeout=1.0)

    @classmethod
    def check_url(cls, url: BrokerURL) -> None:
        _settings.check_url(url)

    def ping(self, timeout: float) -> None:
        """A STOMP CONNECT (login included) answered by CONNECTED, then DISCONNECT."""
        probe = Link(self.endpoint, "ping")
        try:
            probe.start()
        finally:
            probe.close(timeout=min(1.0, timeout))

    def open_producer(self, settings: Settings) -> Producer:
        return Producer(
            self.endpoint, max_in_flight=settings.max_in_flight, send_timeout=settings.send_timeout
        )

    def open_consumer(self, topics: tuple[str, ...], group: str, settings: Settings) -> Consumer:
        return Consumer(self.endpoint, topics, group, settings)


#: The ``mqkit.adapters`` entry point of ``stomp://`` and ``stomp+ssl://``.
open_backend = Backend.open
