"""``kafka://host:port[,host:port…]``: the backend object, its features and topic creation."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from kafka import KafkaAdminClient, TopicPartition  # type: ignore[import-untyped]
from kafka import errors as kerrors
from kafka.admin import OffsetSpec  # type: ignore[import-untyped]

from mqkit.adapter import BackendBase, BrokerURL, Features, ProducerBase
from mqkit.adapter import Settings as BaseSettings
from mqkit.errors import MqkitError, PermissionDenied
from mqkit_kafka import confluent
from mqkit_kafka._errors import translate
from mqkit_kafka._member import GroupMember
from mqkit_kafka._preflight import preflight
from mqkit_kafka.confluent import ConfluentConsumer, ConfluentProducer
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
        if settings.driver == "confluent":
            confluent.load()  # a missing client is a ConfigError now, not at the first send
        self.hosts = hosts_of(url)
        #: Connection settings shared by every kafka-python client of this backend.
        self.client = client_config(url, settings, self.where)
        self.features = Features(
            # A nack seeks the partition back, so later messages of its key wait for it.
            key_order_on_nack=True,
            # Kafka cannot delay one record; the core's retry helper uses retry topics instead.
            delayed_redelivery=False,
            persistent=True,
            # Topics the adapter creates take max_message_bytes; leave room for headers.
            max_body_size=settings.max_message_bytes - (64 << 10),
            # A reply inbox: one partition, and the group and its topic go away on close.
            throwaway_group_options={"throwaway": True},
            # A topic is a log: a new group starts at its beginning (offset_reset=earliest).
            retains_without_group=settings.offset_reset == "earliest",
        )
        self._lock = threading.Lock()
        self._known_topics: set[str] = set()
        preflight(
            self.hosts, self.client, f"{self.where}: connecting", min(settings.connect_timeout, 4.0)
        )
        try:
            self._admin = KafkaAdminClient(**self.client)
        except Exception as exc:
            raise translate(exc, f"{self.where}: connecting", self.hosts) from None

    @classmethod
    def check_url(cls, url: BrokerURL) -> None:
        _check_url(url)

    # -- topics ----------------------------------------------------------------------------

    def ensure_topic(self, topic: str) -> None:
        """:meth:`ensure_topics` for one topic, with the per-send case (known) first."""
        if topic not in self._known_topics and self.settings.create_topics:
            self.ensure_topics([topic])

    def ensure_topics(self, topics: Sequence[str], *, partitions: int | None = None) -> set[str]:
        """Create the topics that do not exist yet (checked once per process); returns those
        this call created.

        Existing topics are only looked at (a Metadata request), never created again nor
        altered: a topic made by another tool keeps its partitions and configuration, and a
        client allowed to read or write a topic but not to create topics can use it.
        ``partitions`` overrides the configured count for the topics created here.
        """
        if not self.settings.create_topics or all(t in self._known_topics for t in topics):
            return set()
        with self._lock:
            wanted = [t for t in dict.fromkeys(topics) if t not in self._known_topics]
            if not wanted:
                return set()
            missing = self._missing(wanted)
            if missing:
                self._create(missing, partitions or self.settings.partitions)
                self._wait_for_metadata(missing)
            self._known_topics.update(wanted)
            return set(missing)

    def _missing(self, topics: list[str]) -> list[str]:
        """The topics the broker does not know (a Metadata request that creates nothing)."""
        try:
            described = self._admin.describe_topics(topics)
        except Exception as exc:
            raise translate(
                exc, f"{self.where}: looking up topic(s) {', '.join(topics)}", self.hosts
            ) from None
        unknown = kerrors.UnknownTopicOrPartitionError.errno
        known = {entry.get("name"): entry.get("error_code", 0) for entry in described}
        denied = [t for t in topics if known.get(t) == kerrors.TopicAuthorizationFailedError.errno]
        if denied:
            # Not even Describe: a consumer would silently get no partition of it.
            raise PermissionDenied(
                f"{self.where}: not authorized on topic(s) {', '.join(denied)} "
                "(TopicAuthorizationFailedError); the user needs an ACL for them on the broker"
            )
        # A topic missing from the answer, or unknown to the broker, is created; one that
        # exists is left as it is.
        return [t for t in topics if known.get(t, unknown) == unknown]

    def _create(self, missing: list[str], partitions: int) -> None:
        spec = {
            name: {
                "num_partitions": partitions,
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

    def discard(self, group: str, topics: Sequence[str]) -> None:
        """Delete a throw-away consumer's group and the topics it created (best effort: what
        cannot be deleted now stays, like the state of any group that is gone)."""
        with self._lock:
            self._known_topics.difference_update(topics)
        try:
            self._admin.delete_groups([group])
        except Exception as exc:
            log.info("%s: deleting the throw-away group %r failed: %s", self.where, group, exc)
        if topics:
            try:
                self._admin.delete_topics(list(topics), raise_errors=False)
            except Exception as exc:
                log.info("%s: deleting throw-away topic(s) %s failed: %s", self.where, topics, exc)

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

    def ping(self, timeout: float) -> None:
        """A DescribeCluster request through the admin client (its connection's SASL login
        included)."""
        try:
            self._admin.describe_cluster()
        except Exception as exc:
            raise translate(exc, f"{self.where}: ping", self.hosts) from None

    def depth(self, group: str, topics: Sequence[str]) -> int | None:
        """The group's lag: per partition of ``topics``, the end offset minus the offset the
        group committed (the partition's first offset where it committed none). Messages a
        member took and has not committed yet count as not acked."""
        try:
            partitions = [
                TopicPartition(topic["name"], partition["partition_index"])
                for topic in self._admin.describe_topics(list(topics))
                if topic["error_code"] == 0
                for partition in topic["partitions"]
            ]
            if not partitions:
                return 0
            ends = self._admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
            starts = self._admin.list_partition_offsets(
                {tp: OffsetSpec.EARLIEST for tp in partitions}
            )
            committed = self._admin.list_group_offsets({group: partitions}).get(group, {})
        except Exception as exc:
            raise translate(exc, f"{self.where}: depth of group {group!r}", self.hosts) from None
        total = 0
        for tp in partitions:
            done = committed.get(tp)
            offset = done.offset if done is not None and done.offset >= 0 else starts[tp].offset
            total += max(0, ends[tp].offset - offset)
        return total

    # -- producers and consumers -----------------------------------------------------------

    def open_producer(self, settings: Settings) -> ProducerBase:
        settings.check(f"{self.where} producer")
        if settings.driver == "confluent":
            return ConfluentProducer(self, settings)
        return Producer(self, settings)

    def open_consumer(
        self, topics: tuple[str, ...], group: str, settings: Settings
    ) -> GroupMember:
        settings.check(f"{self.where} consumer")
        created = self.ensure_topics(topics, partitions=1 if settings.throwaway else None)
        member = ConfluentConsumer if settings.driver == "confluent" else Consumer
        return member(self, settings, topics, group, created=created)

    def _close(self) -> None:
        try:
            self._admin.close()
        except Exception as exc:  # closing must not fail the caller
            log.debug("closing the admin client failed: %s", exc)


#: The ``mqkit.adapters`` entry point of ``kafka://``.
open_backend = Backend.open
