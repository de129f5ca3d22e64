"""``kafka://host:port[,host:port…]``: the backend object, its features and topic creation."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from kafka import KafkaAdminClient  # type: ignore[import-untyped]
from kafka import errors as kerrors

from mqkit.adapter import BackendBase, BrokerURL, Features
from mqkit.adapter import Settings as BaseSettings
from mqkit.errors import MqkitError
from mqkit_kafka._errors import translate
from mqkit_kafka.consumer import Consumer
from mqkit_kafka.producer import Producer
from mqkit_kafka.settings import Settings, client_config, hosts_of, ms
from mqkit_kafka.settings import check_url as _check_url

log = logging.getLogger("mqkit.kafka")


class Backend(BackendBase[Settings]):
    """One Kafka cluster: an admin client for topic creation, and the producer/consumer factory."""

    settings_type: ClassVar[type[BaseSettings]] = Settings

    def __init__(self, url: BrokerURL, settings: Settings) -> None:
        super().__init__(url, settings)
        settings.check(self.where)
        self.hosts = hosts_of(url)
        #: Connection settings shared by every kafka-python client of this backend.
        self.client = client_config(url, settings)
        self.features = Features(
            # A nack seeks the partition back, so later messages of its key wait for it.
            key_order_on_nack=True,
            # Kafka cannot delay one record; the core's retry helper uses retry topics instead.
            delayed_redelivery=False,
            persistent=True,
            # Topics the adapter creates take max_message_bytes; leave room for headers.
            max_body_size=settings.max_message_bytes - (64 << 10),
        )
        self._lock = threading.Lock()
        self._known_topics: set[str] = set()
        try:
            self._admin = KafkaAdminClient(**self.client)
        except Exception as exc:
            raise translate(exc, f"{self.where}: connecting", self.hosts) from None

    @classmethod
    def check_url(cls, url: BrokerURL) -> None:
        _check_url(url)

    # -- topics ----------------------------------------------------------------------------

    def ensure_topics(self, topics: Sequence[str]) -> None:
        """Create missing topics with the configured partition count (once per process)."""
        if not self.settings.create_topics or all(t in self._known_topics for t in topics):
            return
        with self._lock:
            missing = [t for t in dict.fromkeys(topics) if t not in self._known_topics]
            if not missing:
                return
            spec = {
                name: {
                    "num_partitions": self.settings.partitions,
                    "replication_factor": self.settings.replication_factor,
                    "configs": {"max.message.bytes": str(self.settings.max_message_bytes)},
                }
                for name in missing
            }
            try:
                result = self._admin.create_topics(spec, raise_errors=False)
            except Exception as exc:
                raise translate(
                    exc, f"{self.where}: creating topic(s) {', '.join(missing)}", self.hosts
                ) from None
            for entry in result.get("topics", []):
                code = entry.get("error_code", 0)
                if code and code != kerrors.TopicAlreadyExistsError.errno:
                    error = kerrors.for_code(code)
                    raise MqkitError(
                        f"{self.where}: creating topic {entry.get('name')!r} failed: "
                        f"{error.__name__} {entry.get('error_message') or ''}".rstrip()
                    )
            self._wait_for_metadata(missing)
            self._known_topics.update(missing)

    def _wait_for_metadata(self, topics: list[str]) -> None:
        """Wait until the broker's metadata shows the topics with a leader for every partition.

        Apache Kafka confirms CreateTopics once the controller has committed the topic; the
        brokers learn of it a moment later. A consumer subscribing in between gets no partition
        of it in its first assignment (``consumer()`` would return owning nothing) and the group
        rebalances when the metadata catches up. Not fatal if it takes longer than
        ``connect_timeout``: kafka-python picks the partitions up when they appear.
        """
        try:
            self._admin.wait_for_topics(topics, timeout_ms=ms(self.settings.connect_timeout))
        except kerrors.KafkaTimeoutError as exc:
            log.warning("%s: %s; continuing", self.where, exc)

    @property
    def admin(self) -> Any:
        """The kafka-python admin client (for tests and advanced use)."""
        return self._admin

    # -- producers and consumers -----------------------------------------------------------

    def open_producer(self, settings: Settings) -> Producer:
        settings.check(f"{self.where} producer")
        return Producer(self, settings)

    def open_consumer(self, topics: tuple[str, ...], group: str, settings: Settings) -> Consumer:
        settings.check(f"{self.where} consumer")
        self.ensure_topics(topics)
        return Consumer(self, settings, topics, group)

    def _close(self) -> None:
        try:
            self._admin.close()
        except Exception as exc:  # closing must not fail the caller
            log.debug("closing the admin client failed: %s", exc)


#: The ``mqkit.adapters`` entry point of ``kafka://``.
open_backend = Backend.open
