"""Retries with backoff, then dead letters — without blocking other messages while waiting.

``app.handler("orders", group="billing", middleware=[retry(RetryPolicy.exponential(1.0))])``

When the handler raises:

* an exception the policy does not retry (``dead_letter_on``, or not in ``retry_on``; an
  undecodable body always), or a failure of the last attempt, publishes the message to the
  group's dead-letter topic (:mod:`mqkit.deadletter`: error, traceback summary, attempt count
  and original topic in the envelope's ``DLQ_*`` headers) and acks it;
* otherwise the message is tried again after the policy's delay, in one of two ways:

  - **broker delay** (``features.delayed_redelivery``): ``message.nack(delay=…)``. The broker
    holds the message; nobody waits for it. On backends that keep key order on nack, the later
    messages of the same key wait behind it (the key stays in order), other keys go on.
  - **retry topics** (every other backend, or ``via="topics"``): the message is copied to
    ``<group>.retry.<n>`` (``n`` = the attempt that failed) with the time it is due in
    :data:`~mqkit.envelope.RETRY_DUE`, and acked. One consumer per retry topic (group
    ``<group>.retry.<n>``) runs beside the route and hands each copy to the same handler chain
    once it is due. Every copy in one retry topic waits about the same delay, so they fall due
    in the order they arrive: the relay only ever waits for the message at the head, which
    nothing behind it could overtake — no consumer sleeps while holding messages that are due.
    (A relay holds a message at most ``max_hold`` seconds, then gives it back and looks again,
    so broker leases and poll deadlines are never exceeded.) The key's later messages are *not* held
    back: retry topics trade key order for not blocking the key.

A :class:`~mqkit.errors.RetryLater` (e.g. the idempotency helper's ``ClaimBusy``) is not a
failure: the message comes back after its ``retry_after`` the same way, without counting an
attempt, and is never dead-lettered.

The handler always sees the original message: its topic, its id, and ``attempt`` counting
every try (1, 2, 3…), whichever way it came back.

Replays: the same relay also consumes ``<group>.replay`` (group ``<group>.replay``), where
``mqkit dlq replay GROUP`` (:func:`mqkit.deadletter.replay`) puts dead letters back. A replay
thus reaches only the group that dead-lettered the message, not every group of the original
topic, with a fresh attempt count.

Put ``retry`` first in the middleware list (outermost): middleware listed before it does not
run for messages that come back through a retry topic. ``App.run`` calls :meth:`Retry.prepare`
before any consumer of the route starts, so every retry group exists before a copy is sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mqkit.client import Consumer
from mqkit.deadletter import ensure_dead_letter_group, replay_topic, send_dead_letter
from mqkit.envelope import ORIGIN_ID, RETRY_ATTEMPTS, RETRY_DUE, RETRY_PREFIX, RETRY_TOPIC
from mqkit.errors import ClosedError, ConfigError, DecodeError, MqkitError, RetryLater
from mqkit.message import Message

if TYPE_CHECKING:
    from mqkit.app import Handler, Route

log = logging.getLogger(__name__)

__all__ = [
    "Retry",
    "RetryPolicy",
    "RetryStats",
    "original_view",
    "replay_topic",
    "retry",
    "retry_topic",
]


def retry_topic(group: str, n: int) -> str:
    """Where copies wait after attempt ``n`` of ``group`` failed (also its relay's group)."""
    return f"{group}.retry.{n}"


ExceptionTypes = tuple[type[BaseException], ...]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry.

    The delay before attempt ``n + 1`` is ``min(max_delay, delay * multiplier ** (n - 1))``,
    moved by up to ``± jitter`` of itself at random (``jitter=0.2``: ±20 %). An exception is
    retried if it is an instance of ``retry_on`` and not of ``dead_letter_on``.
    """

    max_attempts: int = 5
    delay: float = 1.0
    multiplier: float = 1.0
    max_delay: float = 300.0
    jitter: float = 0.0
    retry_on: ExceptionTypes = (Exception,)
    dead_letter_on: ExceptionTypes = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.delay < 0 or self.max_delay < 0 or self.multiplier < 1:
            raise ValueError("delay and max_delay must be >= 0 and multiplier >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    @classmethod
    def fixed(
        cls,
        delay: float,
        *,
        max_attempts: int = 5,
        jitter: float = 0.0,
        retry_on: ExceptionTypes = (Exception,),
        dead_letter_on: ExceptionTypes = (),
    ) -> RetryPolicy:
        """The same ``delay`` before every retry."""
        return cls(max_attempts, delay, 1.0, delay, jitter, retry_on, dead_letter_on)

    @classmethod
    def exponential(
        cls,
        base: float = 1.0,
        *,
        multiplier: float = 2.0,
        max_delay: float = 300.0,
        max_attempts: int = 5,
        jitter: float = 0.2,
        retry_on: ExceptionTypes = (Exception,),
        dead_letter_on: ExceptionTypes = (),
    ) -> RetryPolicy:
        """``base``, ``base * multiplier``, … capped at ``max_delay``, with jitter."""
        return cls(max_attempts, base, multiplier, max_delay, jitter, retry_on, dead_letter_on)

    def nominal_delay(self, attempt: int) -> float:
        """The delay after attempt ``attempt`` failed, before jitter."""
        exponent = max(0, attempt - 1)
        try:
            raw = self.delay * self.multiplier**exponent
        except OverflowError:
            raw = self.max_delay
        return min(self.max_delay, raw)

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        nominal = self.nominal_delay(attempt)
        return max(0.0, nominal * (1 + self.jitter * (2 * rand() - 1)))

    def retries(self, error: BaseException) -> bool:
        if isinstance(error, DecodeError):
            return False
        if isinstance(error, RetryLater):
            return True
        return isinstance(error, self.retry_on) and not isinstance(error, self.dead_letter_on)


@dataclass
class RetryStats:
    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    #: Copies (retries and replays) a relay handed to the handler.
    relayed: int = 0
    #: Times a relay gave a not-yet-due copy back after holding it ``max_hold`` seconds.
    held_back: int = 0


Via = Literal["auto", "broker", "topics"]


def original_view(message: Message) -> Message:
    """The message as first published: original topic and id, attempt counting every try.

    A plain message is returned as is; a retry or replay copy is wrapped, and settling the
    wrapper settles the copy.
    """
    headers = message.headers
    if RETRY_ATTEMPTS not in headers and RETRY_TOPIC not in headers:
        return message
    try:
        before = int(headers.get(RETRY_ATTEMPTS, "0"))
    except ValueError:
        before = 0
    delivery = dataclasses.replace(
        message.delivery,
        topic=headers.get(RETRY_TOPIC, message.topic),
        id=headers.get(ORIGIN_ID, message.id),
        headers={k: v for k, v in headers.items() if not k.startswith(RETRY_PREFIX)},
        attempt=before + message.attempt,
    )

    def settle(_view: Message, ack: bool, requeue: bool, delay: float) -> None:
        if ack:
            message.ack()
        else:
            message.nack(requeue, delay=delay)

    value = None if message.error is not None else message.value
    return Message(delivery, value, message.error, settle)


class Retry:
    """The middleware made by :func:`retry`."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        via: Via = "auto",
        max_hold: float = 2.0,
        replays: bool = True,
    ) -> None:
        if via not in ("auto", "broker", "topics"):
            raise ValueError("via must be 'auto', 'broker' or 'topics'")
        self.policy = policy
        self.via = via
        self.max_hold = max_hold
        self.replays = replays
        self.stats = RetryStats()
        self._lock = threading.Lock()
        # Relays subscribed by prepare(), keyed by route, until __call__ starts them.
        self._relays: dict[int, list[tuple[Consumer, str]]] = {}

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + n)

    def _plan(self, route: Route) -> tuple[bool, int]:
        """Whether ``route`` retries through topics, and how many retry topics it has."""
        features = route.broker.features
        if self.via == "broker" and not features.delayed_redelivery:
            raise ConfigError(
                f"retry(via='broker'): {route.broker.url} has no delayed redelivery; "
                "use via='auto' or 'topics'"
            )
        use_topics = self.via == "topics" or not features.delayed_redelivery
        return use_topics, max(1, self.policy.max_attempts - 1) if use_topics else 0

    def prepare(self, route: Route) -> None:
        """Subscribe the route's dead-letter group and relays before the route starts, so no
        copy or dead letter is published to a topic that no group reads yet."""
        _, tiers = self._plan(route)
        ensure_dead_letter_group(route.broker, route.group)
        names = [retry_topic(route.group, n) for n in range(1, tiers + 1)]
        if self.replays:
            names.append(replay_topic(route.group))
        relays = [
            (route.broker.consumer(name, group=name, serializer=route.serializer), name)
            for name in names
        ]
        with self._lock:
            self._relays[id(route)] = relays

    def __call__(self, handler: Handler, route: Route | None = None) -> Handler:
        if route is None:
            raise TypeError(
                "retry() needs the route (broker, group, producer): use it as App middleware "
                "or call it with a mqkit.Route"
            )
        use_topics, tiers = self._plan(route)
        with self._lock:
            relays = self._relays.pop(id(route), None)
        if relays is None:  # used outside App.run, which calls prepare() first
            self.prepare(route)
            with self._lock:
                relays = self._relays.pop(id(route))
        route_run = _RouteRetry(self, handler, route, use_topics, tiers)
        for consumer, name in relays:
            route.start_thread(functools.partial(route_run.relay, consumer), f"retry-relay-{name}")
        return route_run.handle


class _RouteRetry:
    """The retry logic of one route: its handler, producer and relays."""

    def __init__(
        self, owner: Retry, handler: Handler, route: Route, use_topics: bool, tiers: int
    ) -> None:
        self.owner = owner
        self.policy = owner.policy
        self.handler = handler
        self.route = route
        self.use_topics = use_topics
        self.tiers = tiers

    # -- the wrapped handler ---------------------------------------------------------------

    def handle(self, message: Message) -> Any:
        """Run the handler on the original view; settle the message on failure."""
        self.owner._count("handled")
        view = original_view(message)
        if message.error is not None:
            self._dead_letter(message, view, message.error)
            return None
        try:
            return self.handler(view)
        except Exception as exc:
            self._failed(message, view, exc)
            return None

    def _failed(self, message: Message, view: Message, exc: Exception) -> None:
        if message.settled is not None:
            log.warning("handler raised after settling %r: %s", view, exc)
            return
        attempt = view.attempt
        if isinstance(exc, RetryLater):  # not a failure: no attempt counted, never dead
            self._schedule(message, view, max(exc.retry_after, 0.05), attempt - 1)
            return
        if not self.policy.retries(exc) or attempt >= self.policy.max_attempts:
            log.error(
                "dead-lettering %r after attempt %d/%d: %s: %s",
                view,
                attempt,
                self.policy.max_attempts,
                type(exc).__name__,
                exc,
            )
            self._dead_letter(message, view, exc)
            return
        delay = self.policy.backoff(attempt)
        log.warning(
            "attempt %d/%d of %r failed (%s: %s); retrying in %.2f s",
            attempt,
            self.policy.max_attempts,
            view,
            type(exc).__name__,
            exc,
            delay,
        )
        self.owner._count("retried")
        self._schedule(message, view, delay, attempt)

    def _schedule(self, message: Message, view: Message, delay: float, done: int) -> None:
        """Bring the message back after ``delay`` s, ``done`` attempts counted so far."""
        if not self.use_topics:
            message.nack(delay=delay)
            return
        tier = self._tier_for(delay)
        headers = dict(view.headers)
        headers.update(
            {
                ORIGIN_ID: view.id,
                RETRY_TOPIC: view.topic,
                RETRY_ATTEMPTS: str(max(0, done)),
                RETRY_DUE: f"{time.time() + delay:.3f}",
            }
        )
        producer = self.route.producer
        producer.send(
            retry_topic(self.route.group, tier), message.body, key=message.key, headers=headers
        )
        producer.flush()
        message.ack()

    def _tier_for(self, delay: float) -> int:
        """The first retry topic whose nominal delay covers ``delay`` (else the last)."""
        for n in range(1, self.tiers + 1):
            if self.policy.nominal_delay(n) * (1 + self.policy.jitter) >= delay:
                return n
        return self.tiers

    def _dead_letter(self, message: Message, view: Message, error: BaseException) -> None:
        send_dead_letter(
            self.route.producer,
            message,
            self.route.group,
            error,
            topic=view.topic,
            original_id=view.id,
            attempt=view.attempt,
            headers=view.headers,
        )
        self.route.producer.flush()
        message.ack()
        self.owner._count("dead_lettered")

    # -- relays ----------------------------------------------------------------------------

    def relay(self, consumer: Consumer) -> None:
        """Hand the copies of one retry (or replay) topic to the handler once they are due."""
        stopping = self.route.stopping
        try:
            while not stopping.is_set():
                try:
                    message = consumer.receive(timeout=0.2)
                except ClosedError:
                    return
                if message is None:
                    continue
                try:
                    due = float(message.headers.get(RETRY_DUE, "0"))
                except ValueError:
                    due = 0.0
                wait = due - time.time()
                if wait > 0:
                    if stopping.wait(min(wait, self.owner.max_hold)):
                        return  # unsettled: closing the consumer gives it back
                    if due - time.time() > 0.001:
                        self.owner._count("held_back")
                        message.nack()  # held long enough: give it back and look again
                        continue
                self.owner._count("relayed")
                try:
                    self.handle(message)
                except MqkitError as exc:  # e.g. the retry topic could not be written
                    log.error("retry relay could not handle %r: %s", message, exc)
                    if message.settled is None:
                        message.nack()
                    continue
                if message.settled is None:
                    message.ack()
        except MqkitError as exc:
            if not (stopping.is_set() or consumer.closed):
                log.exception("retry relay on %s stopped: %s", consumer.topics, exc)
        finally:
            with contextlib.suppress(MqkitError):
                consumer.close()


def retry(
    policy: RetryPolicy | None = None,
    *,
    via: Via = "auto",
    max_hold: float = 2.0,
    replays: bool = True,
) -> Retry:
    """Retry failed messages per ``policy``, then dead-letter them (see the module docs).

    ``via``: ``"auto"`` (broker delay where the backend has it, else retry topics),
    ``"broker"`` or ``"topics"``. ``replays``: also consume ``<group>.replay`` for
    ``mqkit dlq replay``.
    """
    return Retry(policy or RetryPolicy(), via=via, max_hold=max_hold, replays=replays)
