"""The consumer on kafka-python: a ``KafkaConsumer`` driven by :mod:`mqkit_kafka._member`.

kafka-python runs rebalances on its IO thread (the async listener below) and answers commits
with futures; everything else is the group member's.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import time
from collections.abc import Callable
from typing import Any

from kafka import (  # type: ignore[import-untyped]
    AsyncConsumerRebalanceListener,
    KafkaConsumer,
    OffsetAndMetadata,
    TopicPartition,
)

from mqkit.adapter import Deadline, Delivery
from mqkit.errors import MqkitError
from mqkit_kafka import wire
from mqkit_kafka._errors import translate
from mqkit_kafka._member import GroupMember, Handle, Records
from mqkit_kafka.settings import honour_auto_create, ms

log = logging.getLogger("mqkit.kafka.consumer")


def _offsets(offsets: dict[TopicPartition, int]) -> dict[TopicPartition, Any]:
    return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}


class _Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Runs on kafka-python's IO thread during a rebalance."""

    def __init__(self, driver: Consumer) -> None:
        self._driver = driver

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._drain(set(revoked))
        offsets = self._driver._revoke(set(revoked))
        if offsets:
            try:
                await self._driver._consumer.commit_async(_offsets(offsets))
                self._driver._note_committed(offsets)
            except Exception as exc:
                self._driver._revoke_commit_failed(offsets, exc)

    async def _drain(self, revoked: set[TopicPartition]) -> None:
        """Wait for the messages in flight on ``revoked`` (see GroupMember._drain) while the IO
        loop goes on: heartbeats keep the membership, and the acks' commits are answered."""
        driver = self._driver
        net = getattr(getattr(driver._consumer, "_coordinator", None), "_net", None)
        if net is None:  # not the kafka-python this was written for: wait on its thread
            driver._drain(revoked)
            return
        deadline = driver._start_draining(revoked)
        while driver._in_flight(revoked) and not deadline.expired:
            await net.sleep(0.005)

    async def on_partitions_lost(self, lost: Any) -> None:
        self._driver._revoke(set(lost), lost=True)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._driver._assigned(set(assigned))


class Consumer(GroupMember):
    """A group member on kafka-python's ``KafkaConsumer``."""

    _offset_of = operator.attrgetter("offset")

    def _open(self) -> None:
        backend, settings, topics = self._backend, self._settings, self._topics
        config: dict[str, Any] = dict(backend.client)
        config.update(
            group_id=self._group,
            enable_auto_commit=False,
            auto_offset_reset=settings.offset_reset,
            session_timeout_ms=ms(settings.session_timeout),
            heartbeat_interval_ms=ms(settings.heartbeat),
            max_poll_interval_ms=ms(settings.rebalance_timeout),
            max_poll_records=min(500, settings.prefetch),
            # How long the broker may hold a fetch of partitions without new records. It also
            # bounds one busy partition next to idle ones: kafka-python leaves the busy one out
            # of the fetch in flight while it hands out its records (docs/kafka.md).
            fetch_max_wait_ms=min(500, int(settings.poll_interval * 1000)),
            allow_auto_create_topics=False,
        )
        try:
            self._consumer = KafkaConsumer(**config)
        except Exception as exc:
            raise translate(exc, f"{self._where}: starting a consumer", self._hosts) from None
        honour_auto_create(getattr(self._consumer, "_cluster", None), False)
        try:
            self._consumer.subscribe(list(topics), listener=_Listener(self))
        except Exception as exc:
            self._consumer.close(autocommit=False)
            raise translate(exc, f"{self._where}: subscribing", self._hosts) from None
        self._load_metadata(topics)

    def _load_metadata(self, topics: tuple[str, ...]) -> None:
        """Have the topics' partitions in kafka-python's metadata before the first JoinGroup.

        kafka-python requests that metadata when subscribing but joins without waiting for it.
        As group leader it then assigns only the partitions it knows: with Apache Kafka, which
        completes the first join of a new group at once (``group.initial.rebalance.delay.ms``
        is 0 in CI), that was nothing, and ``consumer()`` returned owning no partition; the
        partitions came with a second rebalance once the metadata arrived. Runs before the
        poller thread starts, so no join is under way yet. A topic created a moment ago may be
        missing from the first metadata answers (more often on a loaded machine): asked again
        for up to 5 s, as a later rebalance would take partitions from a member while its
        messages are in flight, and they would be delivered again.
        """
        deadline = Deadline(min(self._settings.join_timeout, 5.0))
        for topic in topics:
            try:
                while not self._consumer.partitions_for_topic(topic) and not deadline.expired:
                    time.sleep(0.05)
            except Exception as exc:  # the group join reports a broker that is gone
                log.debug("%s: metadata of %r not loaded: %s", self._where, topic, exc)
                return

    # -- the client primitives ----------------------------------------------------------------

    def _before_poll(self) -> None:
        """Make the next poll complete a join that kafka-python 3.0.12 would leave unfinished.

        A poll whose timeout expires during a rebalance leaves the JoinGroup/SyncGroup task in
        flight, and the next poll awaits it only if the coordinator still wants to rejoin. When
        the rebalance was started by a metadata change (a subscribed topic appearing, partitions
        added), that wish is derived from the metadata snapshot, which the group leader updates
        while assigning: once the poll gave up after the assignment, no later poll awaits the
        task, the assignment is never applied and the member owns nothing while the group
        believes it owns everything (seen on Apache Kafka when a consumer joined before the
        broker's metadata showed a just-created topic). Asking for a rejoin while such a task
        is pending makes the next poll finish the rebalance (with one more JoinGroup round if
        the task had already completed). Runs on the poller thread between polls, when no poll
        is touching the task.
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is None or getattr(coordinator, "_join_task", None) is None:
            return
        if not coordinator.rejoin_needed:
            log.debug("%s: a rebalance is pending; making the next poll finish it", self._where)
            coordinator.request_rejoin()

    def _client_poll(self, timeout: float, max_records: int) -> Records:
        records: Records = self._consumer.poll(
            timeout_ms=int(timeout * 1000), max_records=max_records
        )
        return records

    def _client_seek(self, tp: TopicPartition, offset: int) -> bool:
        # ValueError: revoked meanwhile; the new owner starts from the commit
        with contextlib.suppress(ValueError):
            self._consumer.seek(tp, offset)
        return True

    def _client_paused(self) -> set[TopicPartition]:
        return set(self._consumer.paused())

    def _client_pause(self, tp: TopicPartition) -> None:
        with contextlib.suppress(KeyError):  # revoked meanwhile
            self._consumer.pause(tp)

    def _client_resume(self, tp: TopicPartition) -> None:
        with contextlib.suppress(KeyError):
            self._consumer.resume(tp)

    def _client_position(self, tp: TopicPartition) -> int | None:
        position: int | None = self._consumer.position(
            tp, timeout_ms=ms(self._settings.commit_timeout)
        )
        return position

    def _client_commit(
        self, offsets: dict[TopicPartition, int], finished: Callable[[object], None]
    ) -> None:
        self._consumer.commit_async(_offsets(offsets)).add_both(finished)

    def _client_close(self) -> None:
        self._consumer.close(autocommit=False, timeout_ms=ms(self._settings.commit_timeout))

    def _translate(self, exc: BaseException, where: str) -> MqkitError:
        return translate(exc, where, self._hosts)

    def _decode(self, tp: TopicPartition, record: Any, attempt: int, handle: Handle) -> Delivery:
        return wire.decode(tp.topic, tp.partition, record, attempt, handle)

    # -- introspection (tests) -----------------------------------------------------------

    @property
    def kafka_consumer(self) -> Any:
        """The kafka-python consumer; only the poller thread may call it."""
        return self._consumer
