"""Order: per-key sequence numbers and a check on the consumer side.

:class:`Sequencer` / :class:`SequencedProducer` stamp each message with a per-key sequence
number (the envelope's ``SEQ`` and ``SEQ_SOURCE`` headers) and :class:`SequenceChecker` reports
gaps, late (out-of-order) arrivals and duplicates on the consumer side.

Processing keys concurrently but each key in order is the App's ``workers=N``
(:class:`mqkit.app.OrderedProcessor`, re-exported here): the App runs it, so it lives in the
core.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mqkit.app import KeyFunction, OrderedProcessor, OrderedStats, message_key
from mqkit.client import Producer
from mqkit.envelope import SEQ, SEQ_SOURCE, HeaderValue, header_text
from mqkit.message import Message

log = logging.getLogger(__name__)

__all__ = [
    "SEQ",
    "SEQ_SOURCE",
    "KeyFunction",
    "OrderedProcessor",
    "OrderedStats",
    "SequenceChecker",
    "SequenceEvent",
    "SequencedProducer",
    "Sequencer",
    "message_key",
]


class Sequencer:
    """Numbers messages per (topic, key) for one producer instance; thread-safe."""

    def __init__(self, source: str | None = None) -> None:
        self.source = source or secrets.token_hex(6)
        self._next: dict[tuple[str, str | None], int] = {}
        self._lock = threading.Lock()

    def headers(
        self, topic: str, key: str | None, headers: Mapping[str, HeaderValue] | None = None
    ) -> dict[str, HeaderValue]:
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
        headers: Mapping[str, HeaderValue] | None = None,
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
    #: For a gap: the numbers skipped over (still missing at that moment), at most the last
    #: ``max_missing`` of them.
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
        raw = header_text(message.headers, SEQ) or None
        source = header_text(message.headers, SEQ_SOURCE)
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
                # only the last max_missing: a huge jump (a corrupt or hostile header) must
                # not build a tuple of billions of numbers
                gone = tuple(range(max(expected, seq - self.max_missing), seq))
                for n in gone:
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
