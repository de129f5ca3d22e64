"""The raw-client baseline for ``mqkit bench`` on ``rocketmq://``: Apache's official
``rocketmq-python-client`` used directly, doing the same work as mqkit's defaults: asynchronous
sends, at most ``max_in_flight`` (1024) unconfirmed, all confirmed before ``produce`` returns; a
SimpleConsumer polling batches of ``prefetch`` (16) with the same invisible duration
(``visibility_timeout``, 30 s) and long poll (``long_polling_timeout``, 5 s), acking each
message synchronously before the next. The URL's options apply to both sides. (mqkit's polls
start at one message and double up to ``prefetch``; see docs/rocketmq.md.) With
``auto_create=true&namesrv=…`` in the URL, subscribing creates the topics and the group and
positions the group at the topics' end first, as mqkit does (setup, not measured). Registered
in the ``mqkit.bench`` entry-point group.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, wait
from typing import Any

from mqkit.config import BrokerURL
from mqkit_rocketmq import _grpc, admin
from mqkit_rocketmq.backend import tls_credentials
from mqkit_rocketmq.settings import Settings, endpoints


class RawRocketMQClient:
    def __init__(self, url: BrokerURL) -> None:
        settings = Settings.read(url.redacted(), url.params)
        self._config = _grpc.client.ClientConfiguration(
            ";".join(endpoints(url)),
            _grpc.client.Credentials(url.username or "", url.password or ""),
        )
        self._batch = settings.prefetch
        self._invisible = settings.visibility_timeout
        self._polling = settings.long_polling_timeout
        self._in_flight = settings.max_in_flight
        self._namesrv = settings.namesrv if settings.auto_create else None
        # The same security as mqkit's side: signed admin requests, TLS channels to the proxy.
        self._credentials = (url.username, url.password or "") if url.username else None
        if settings.tls:
            channel = tls_credentials(settings, url.redacted())
            for target in {self._config.rpc_endpoints.facade, *endpoints(url)}:
                _grpc.use_tls(target, channel)
        self._producer: Any = None
        self._consumer: Any = None

    def subscribe(self, topics: Sequence[str], group: str) -> None:
        names = [t.replace(".", "_") for t in topics]
        group = group.replace(".", "_")
        if self._namesrv is not None:
            for name in names:
                admin.ensure_topic(self._namesrv, name, credentials=self._credentials)
            admin.ensure_group(self._namesrv, group, credentials=self._credentials)
        filters = {name: _grpc.model.FilterExpression() for name in names}
        self._consumer = _grpc.simple.SimpleConsumer(
            self._config, group, filters, await_duration=self._polling
        )
        self._consumer.startup()
        self._consumer._init_settings_event.wait(10)
        if self._namesrv is not None:
            for name in names:
                admin.start_group_at_end(
                    self._namesrv, group, name, credentials=self._credentials
                )

    def produce(self, topic: str, bodies: Iterable[bytes]) -> None:
        if self._producer is None:
            self._producer = _grpc.producer.Producer(self._config)
            self._producer.startup()
        name = topic.replace(".", "_")
        futures: list[Future[Any]] = []
        for body in bodies:
            message = _grpc.model.Message()
            message.topic = name
            message.body = body
            futures.append(self._producer.send_async(message))
            if len(futures) >= self._in_flight:
                wait(futures)
                for f in futures:
                    f.result()
                futures = []
        wait(futures)
        for f in futures:
            f.result()

    def consume(
        self, on_body: Callable[[bytes], None], until: Callable[[], bool], deadline: float
    ) -> None:
        assert self._consumer is not None, "subscribe first"
        while not until() and time.monotonic() < deadline:
            for message in self._consumer.receive(self._batch, self._invisible):
                on_body(message.body)
                self._consumer.ack(message)

    def close(self) -> None:
        for client in (self._producer, self._consumer):
            if client is not None:
                client.shutdown()
