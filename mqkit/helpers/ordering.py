"""Per-key ordered processing with concurrency across keys, and a sequence check.

:class:`OrderedProcessor` reads one consumer and runs the handler on ``workers`` threads:

* messages of one key are handled one at a time, in the order they were received;
* messages of different keys (and messages without a key) run concurrently;
* a message is acked when its handler returns and nacked when it raises (unless the handler
  settled it itself), so delivery stays at-least-once;
* when a message is nacked (by the processor or by the handler, e.g. a retry with a delay), the
  messages of the same key that were already received behind it are nacked too, in order, so
  that a broker with ``features.key_order_on_nack`` hands them out again after it;
* at most ``max_in_flight`` messages are received but not yet settled: memory stays bounded and
  a slow key slows reception instead of filling the process.

Acks of different keys happen in completion order, not reception order; every mqkit backend
acks messages individually (see ``test_acks_out_of_receive_order_are_kept`` in the conformance
suite).

:class:`Sequencer` / :class:`SequencedProducer` stamp each message with a per-key sequence
number and :class:`SequenceChecker` reports gaps, late (out-of-order) arrivals and duplicates on
the consumer side.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mqkit.client import Consumer, Producer
from mqkit.message import Message

log = logging.getLogger(__name__)

KeyFunction = Callable[[Message], str | None]


def message_key(message: Message) -> str | None:
    return message.key


@dataclass
class OrderedStats:
    """What an :class:`OrderedProcessor` did; read it after (or during) :meth:`run`."""

    received: int = 0
    processed: int = 0
    failed: int = 0
    #: Messages given back because a message of the same key ahead of them was nacked.
    requeued_behind_nack: int = 0
    #: Handler calls per worker thread.
    per_worker: list[int] = field(default_factory=list)
    #: Most handlers running at once.
    max_busy: int = 0
    #: Most messages received and not yet settled at once.
    max_in_flight: int = 0


class OrderedProcessor:
    """Run ``handler`` for the messages of ``consumer`` on a per-key worker pool.

    ``key`` picks the ordering key (the message key by default; ``None`` means unordered).
    :meth:`run` blocks until :meth:`stop` (or the ``stop`` event) or ``duration`` seconds, then
    waits for running handlers and returns; messages received but not started are left
    unsettled, so closing the consumer gives them back to the group in order.
    """

    def __init__(
        self,
        consumer: Consumer,
        handler: Callable[[Message], Any],
        *,
        workers: int = 8,
        max_in_flight: int | None = None,
        key: KeyFunction = message_key,
        stop: threading.Event | None = None,
        receive_timeout: float = 0.2,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.consumer = consumer
        self.handler = handler
        self.workers = workers
        self.max_in_flight = max_in_flight if max_in_flight is not None else max(64, 32 * workers)
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._key = key
        self._stop = stop if stop is not None else threading.Event()
        self._receive_timeout = receive_timeout
        self._cv = threading.Condition()
        # key -> messages received and not started; a key is in _ready when it has messages
        # and none of its messages is running.
        self._queues: dict[object, deque[Message]] = {}
        self._ready: deque[object] = deque()
        self._in_flight = 0
        self._busy = 0
        self._receiving = False
        # Keys nacked while the receiver was inside receive(): what that call returns for such a
        # key may have been handed out before the nack, ahead of the nacked message.
        self._nacked_during_receive: set[object] = set()
        self._unkeyed = itertools.count()
        self.stats = OrderedStats(per_worker=[0] * workers)

    # -- public ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()

    def run(self, duration: float | None = None) -> OrderedStats:
        threads = [
            threading.Thread(target=self._work, args=(n,), name=f"mqkit-ordered-{n}", daemon=True)
            for n in range(self.workers)
        ]
        for thread in threads:
            thread.start()
        deadline = None if duration is None else time.monotonic() + duration
        try:
            self._receive_loop(deadline)
        finally:
            with self._cv:
                self._stop.set()
                # Not started: left unsettled, the consumer's close gives them back in order.
                dropped = sum(len(q) for q in self._queues.values())
                self._in_flight -= dropped
                self._queues.clear()
                self._ready.clear()
                self._cv.notify_all()
            for thread in threads:
                thread.join()
        return self.stats

    # -- receiving -------------------------------------------------------------------------

    def _receive_loop(self, deadline: float | None) -> None:
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return
            with self._cv:
                while self._in_flight >= self.max_in_flight and not self._stop.is_set():
                    self._cv.wait(0.1)
                if self._stop.is_set():
                    return
                self._nacked_during_receive.clear()
                self._receiving = True
            try:
                message = self.consumer.receive(timeout=self._receive_timeout)
            except Exception:
                with self._cv:
                    self._receiving = False
                if self.consumer.closed:
                    return
                raise
            if message is None:
                with self._cv:
                    self._receiving = False
                continue
            k = self._key(message)
            slot: object = k if k is not None else ("unkeyed", next(self._unkeyed))
            with self._cv:
                # Same critical section as the check: a nack after this point happened after
                # the message was received, and puts it back itself if it is queued.
                self._receiving = False
                self.stats.received += 1
                if k is not None and slot in self._nacked_during_receive:
                    self._give_back(message)
                    self.stats.requeued_behind_nack += 1
                    continue
                queue = self._queues.get(slot)
                if queue is None:
                    queue = self._queues[slot] = deque()
                    self._ready.append(slot)
                    self._cv.notify()
                queue.append(message)
                self._in_flight += 1
                self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)

    # -- working ---------------------------------------------------------------------------

    def _work(self, n: int) -> None:
        while True:
            with self._cv:
                while not self._ready and not self._stop.is_set():
                    self._cv.wait()
                if not self._ready:
                    return
                slot = self._ready.popleft()
                message = self._queues[slot].popleft()
                self._busy += 1
                self.stats.max_busy = max(self.stats.max_busy, self._busy)
            ok = self._handle(message)
            with self._cv:
                self._busy -= 1
                self._in_flight -= 1
                self.stats.per_worker[n] += 1
                if ok:
                    self.stats.processed += 1
                else:
                    self.stats.failed += 1
                queue = self._queues.get(slot)
                if message.settled == "nack" and queue is not None:
                    # Everything of this key behind it goes back too, in order.
                    while queue:
                        self._give_back(queue.popleft())
                        self._in_flight -= 1
                        self.stats.requeued_behind_nack += 1
                    if self._receiving:
                        self._nacked_during_receive.add(slot)
                if queue is not None:
                    if queue:
                        self._ready.append(slot)
                    else:
                        del self._queues[slot]
                self._cv.notify_all()

    def _handle(self, message: Message) -> bool:
        try:
            self.handler(message)
        except Exception:
            log.exception("handler failed on %r", message)
            if message.settled is None:
                self._settle(message, ack=False)
            return False
        if message.settled is None:
            self._settle(message, ack=True)
        return True

    def _settle(self, message: Message, *, ack: bool) -> None:
        try:
            if ack:
                message.ack()
            else:
                message.nack()
        except Exception as exc:  # consumer closed: the message goes back to the group anyway
            log.warning("could not settle %r: %s", message, exc)

    def _give_back(self, message: Message) -> None:
        try:
            message.nack()
        except Exception as exc:
            log.warning("could not give back %r: %s", message, exc)


# -- sequence numbers -------------------------------------------------------------------------

#: Per-key sequence number, 1, 2, 3… per (source, topic, key).
SEQ = "mqkit-seq"
#: Which producer instance numbered the message (numbers restart with a new source).
SEQ_SOURCE = "mqkit-seq-source"


class Sequencer:
    """Numbers messages per (topic, key) for one producer instance; thread-safe."""

    def __init__(self, source: str | None = None) -> None:
        self.source = source or secrets.token_hex(6)
        self._next: dict[tuple[str, str | None], int] = {}
        self._lock = threading.Lock()

    def headers(
        self, topic: str, key: str | None, headers: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        with self._lock:
            n = self._next.get((topic, key), 1)
            self._next[(topic, key)] = n + 1
        out = dict(headers or {})
        out[SEQ] = str(n)
        out[SEQ_SOURCE] = self.source
        return out


class SequencedProducer:
    """A producer wrapper adding :data:`SEQ` / :data:`SEQ_SOURCE` headers to every message.

    Numbers are taken in ``send`` order, so send one key's messages from one thread (or
    serialize them yourself) for the numbers to mean the order they were sent in.
    """

    def __init__(self, producer: Producer, sequencer: Sequencer | None = None) -> None:
        self.producer = producer
        self.sequencer = sequencer or Sequencer()
        self._lock = threading.Lock()

    def send(
        self,
        topic: str,
        value: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        with self._lock:  # number and hand over atomically, so numbers follow sends
            numbered = self.sequencer.headers(topic, key, headers)
            return self.producer.send(topic, value, key=key, headers=numbered)

    def flush(self, timeout: float | None = None) -> None:
        self.producer.flush(timeout)

    def close(self) -> None:
        self.producer.close()


Verdict = Literal["ok", "gap", "late", "duplicate", "unsequenced"]


@dataclass(frozen=True)
class SequenceEvent:
    """What :meth:`SequenceChecker.observe` saw for one message."""

    verdict: Verdict
    topic: str
    key: str | None
    source: str
    seq: int
    #: The number that was expected next (before this message).
    expected: int
    #: For a gap: the numbers skipped over (still missing at that moment).
    missing: tuple[int, ...] = ()


class SequenceChecker:
    """Detects gaps, late (out-of-order) arrivals and duplicates in sequenced messages.

    * ``ok``: the next number of its stream;
    * ``gap``: a number beyond the next; the skipped ones are remembered as missing;
    * ``late``: a missing number arriving after a later one (reordered);
    * ``duplicate``: a number already seen (a redelivery, or the producer sent it twice);
    * ``unsequenced``: no sequence header.

    ``max_missing`` bounds the numbers remembered per stream (the oldest are forgotten).
    Streams are (source, topic, key); use it from one thread or several, it locks.
    """

    def __init__(
        self,
        on_anomaly: Callable[[SequenceEvent], object] | None = None,
        *,
        max_missing: int = 1000,
    ) -> None:
        self.on_anomaly = on_anomaly
        self.max_missing = max_missing
        self.counts: dict[Verdict, int] = {
            "ok": 0,
            "gap": 0,
            "late": 0,
            "duplicate": 0,
            "unsequenced": 0,
        }
        self._last: dict[tuple[str, str, str | None], int] = {}
        self._missing: dict[tuple[str, str, str | None], dict[int, None]] = {}
        self._lock = threading.Lock()

    def observe(self, message: Message) -> SequenceEvent:
        raw = message.headers.get(SEQ)
        source = message.headers.get(SEQ_SOURCE, "")
        try:
            seq = int(raw) if raw is not None else -1
        except ValueError:
            seq = -1
        if seq < 0:
            event = SequenceEvent("unsequenced", message.topic, message.key, source, -1, -1)
            with self._lock:
                self.counts["unsequenced"] += 1
            return event
        stream = (source, message.topic, message.key)
        with self._lock:
            last = self._last.get(stream, 0)
            missing = self._missing.setdefault(stream, {})
            expected = last + 1
            gone: tuple[int, ...] = ()
            if seq == expected:
                verdict: Verdict = "ok"
                self._last[stream] = seq
            elif seq > expected:
                verdict = "gap"
                gone = tuple(range(expected, seq))
                for n in gone[-self.max_missing :]:
                    missing[n] = None
                while len(missing) > self.max_missing:
                    del missing[next(iter(missing))]
                self._last[stream] = seq
            elif seq in missing:
                verdict = "late"
                del missing[seq]
            else:
                verdict = "duplicate"
            if not missing:
                del self._missing[stream]
            self.counts[verdict] += 1
        event = SequenceEvent(verdict, message.topic, message.key, source, seq, expected, gone)
        if verdict != "ok":
            log.warning(
                "sequence %s on %s key %r: got %d, expected %d",
                verdict,
                message.topic,
                message.key,
                seq,
                expected,
            )
            if self.on_anomaly is not None:
                self.on_anomaly(event)
        return event

    def missing(self) -> dict[tuple[str, str, str | None], tuple[int, ...]]:
        """Numbers skipped and not (yet) arrived, per stream."""
        with self._lock:
            return {s: tuple(m) for s, m in self._missing.items() if m}

    def middleware(
        self, handler: Callable[[Message], Any], route: object = None
    ) -> Callable[[Message], Any]:
        """Use as App middleware (``middleware=[checker.middleware]``) or as a wrapper."""

        def checked(message: Message) -> Any:
            self.observe(message)
            return handler(message)

        return checked
