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
  - **a retry topic** (every other backend, or ``via="topics"``): the message is copied to the
    group's one retry topic ``<group>.retry`` with the time it is due in
    :data:`~mqkit.envelope.RETRY_DUE`, and acked. One consumer of it (group ``<group>.retry``)
    runs beside the route: the *relay*. It holds up to ``max_held`` copies at once, ordered by
    due time, and hands each to the same handler chain once it is due, so a short backoff is
    not stuck behind a long one. (A copy is held at most ``max_hold`` seconds, then given back
    and looked at again, so broker leases and poll deadlines are never exceeded.) One topic per
    group, whatever the number of attempts: an app's topics and queues grow with its groups,
    not with groups times attempts. The key's later messages are *not* held back: the retry topic
    trades key order for not blocking the key.

A :class:`~mqkit.errors.RetryLater` (e.g. the idempotency helper's ``ClaimBusy``) is not a
failure: the message comes back after its ``retry_after`` the same way, without counting an
attempt, and is never dead-lettered.

The handler always sees the original message: its topic, its id, and ``attempt`` counting
every try (1, 2, 3…), whichever way it came back.

Replays: ``mqkit dlq replay GROUP`` (:func:`mqkit.deadletter.replay`) puts dead letters back
into the same ``<group>.retry`` topic, due at once. A replay thus reaches only the group that
dead-lettered the message, not every group of the original topic, with a fresh attempt count.

On ``mqkit.aio.App`` the same ``retry(...)`` works for ``async def`` handlers
(:meth:`Retry.wrap_async`): the rules and the relays are these; only the handler is awaited.

Put ``retry`` first in the middleware list (outermost): middleware listed before it does not
run for messages that come back through a retry topic. ``App.run`` calls :meth:`Retry.prepare`
before any consumer of the route starts, so every retry group exists before a copy is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import heapq
import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mqkit.client import Consumer
from mqkit.deadletter import ensure_dead_letter_group, replay_topic, send_dead_letter
from mqkit.envelope import (
    ORIGIN_ID,
    RETRY_ATTEMPTS,
    RETRY_DUE,
    RETRY_PREFIX,
    RETRY_TOPIC,
    HeaderValue,
    copyable_headers,
    header_text,
)
from mqkit.errors import ClosedError, ConfigError, DecodeError, MqkitError, RetryLater
from mqkit.message import Message
from mqkit.observe import dispatching, report

if TYPE_CHECKING:
    from mqkit.aio import AsyncHandler, AsyncMessage
    from mqkit.aio.app import AsyncRoute
    from mqkit.app import Handler, Route

log = logging.getLogger(__name__)

__all__ = [
    "Retry",
    "RetryPolicy",
    "RetryStats",
    "original_view",
    "replay_topic",
    "retry",
    "retry_due",
    "retry_topic",
]


def retry_topic(group: str) -> str:
    """Where ``group``'s retry copies and replays wait (also its relay's group)."""
    return replay_topic(group)


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
    try:  # another producer's garbage counts as no tries before, never as fewer than none
        before = max(0, int(header_text(headers, RETRY_ATTEMPTS, "0")))
    except ValueError:
        before = 0
    delivery = dataclasses.replace(
        message.delivery,
        topic=header_text(headers, RETRY_TOPIC, message.topic),
        id=header_text(headers, ORIGIN_ID, message.id),
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


def retry_due(headers: Mapping[str, HeaderValue]) -> float:
    """When a retry copy may run (:data:`~mqkit.envelope.RETRY_DUE`), or 0.0 (now) if the
    header is absent or not a finite number: a NaN or infinite time would hold the copy in the
    relay forever."""
    try:
        due = float(header_text(headers, RETRY_DUE, "0"))
    except ValueError:
        return 0.0
    return due if math.isfinite(due) else 0.0


class Retry:
    """The middleware made by :func:`retry`."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        via: Via = "auto",
        max_hold: float = 2.0,
        max_held: int = 100,
        replays: bool = True,
    ) -> None:
        if via not in ("auto", "broker", "topics"):
            raise ValueError("via must be 'auto', 'broker' or 'topics'")
        self.policy = policy
        self.via = via
        self.max_hold = max_hold
        self.max_held = max_held
        self.replays = replays
        self.stats = RetryStats()
        self._lock = threading.Lock()
        # Relays subscribed by prepare(), keyed by route, until __call__ starts them.
        self._relays: dict[int, list[tuple[Consumer, str]]] = {}

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + n)

    def _plan(self, route: Route) -> bool:
        """Whether ``route`` retries through its retry topic (else through the broker)."""
        features = route.broker.features
        if self.via == "broker" and not features.delayed_redelivery:
            raise ConfigError(
                f"retry(via='broker'): {route.broker.url} has no delayed redelivery; "
                "use via='auto' or 'topics'"
            )
        return self.via == "topics" or not features.delayed_redelivery

    def prepare(self, route: Route) -> None:
        """Subscribe the route's dead-letter group and relays before the route starts, so no
        copy or dead letter is published to a topic that no group reads yet."""
        use_topics = self._plan(route)
        ensure_dead_letter_group(route.broker, route.group)
        names = [retry_topic(route.group)] if use_topics or self.replays else []
        relays = [
            (
                route.broker.consumer(
                    name,
                    group=name,
                    serializer=route.serializer,
                    **route.broker.features.helper_group_options,
                ),
                name,
            )
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
        use_topics = self._plan(route)
        with self._lock:
            relays = self._relays.pop(id(route), None)
        if relays is None:  # used outside App.run, which calls prepare() first
            self.prepare(route)
            with self._lock:
                relays = self._relays.pop(id(route))
        route_run = _RouteRetry(self, handler, route, use_topics)
        for consumer, name in relays:
            route.start_thread(functools.partial(route_run.relay, consumer), f"retry-relay-{name}")
        return route_run.handle

    def wrap_async(self, handler: AsyncHandler, route: AsyncRoute) -> AsyncHandler:
        """The same middleware for ``async def`` handlers (``mqkit.aio.App``): failures are
        retried through the broker or the retry topic by the same rules; the relays are the
        sync ones, in threads, handing due copies to the async handler on the loop."""
        sync_route = route.sync
        use_topics = self._plan(sync_route)
        with self._lock:
            relays = self._relays.pop(id(sync_route), None)
        if relays is None:
            raise TypeError("retry() on async handlers works as mqkit.aio.App middleware only")
        loop = route.loop

        def on_loop(view: Message) -> Any:  # a relay thread hands a due copy to the loop
            from mqkit.aio.app import SettledInThread

            call = handler(SettledInThread(view))
            return asyncio.run_coroutine_threadsafe(call, loop).result()  # type: ignore[arg-type]

        core = _RouteRetry(self, on_loop, sync_route, use_topics)
        for consumer, name in relays:
            sync_route.start_thread(functools.partial(core.relay, consumer), f"retry-relay-{name}")

        async def handle(message: AsyncMessage) -> Any:
            from mqkit.aio.app import SettledInThread

            self._count("handled")
            view = original_view(message.sync)
            if message.error is not None:
                await asyncio.to_thread(core._send_dead_letter, message.sync, view, message.error)
                await message.ack()
                return None
            try:
                seen = message if view is message.sync else SettledInThread(view, message)
                return await handler(seen)
            except Exception as exc:
                action = core._decide(message.settled, view, exc)
                if action is None:
                    return None
                dead, delay, done = action
                if dead:
                    await asyncio.to_thread(core._send_dead_letter, message.sync, view, exc)
                    await message.ack()
                elif use_topics:
                    await asyncio.to_thread(
                        core._copy_to_retry_topic, message.sync, view, delay, done
                    )
                    await message.ack()
                else:
                    await message.nack(delay=delay)
                return None

        return handle


class _RouteRetry:
    """The retry logic of one route: its handler, producer and relays."""

    def __init__(self, owner: Retry, handler: Handler, route: Route, use_topics: bool) -> None:
        self.owner = owner
        self.policy = owner.policy
        self.handler = handler
        self.route = route
        self.use_topics = use_topics

    # -- the wrapped handler ---------------------------------------------------------------

    def handle(self, message: Message) -> Any:
        """Run the handler on the original view; settle the message on failure."""
        self.owner._count("handled")
        view = original_view(message)
        if message.error is not None:
            report("failed", message.error)
            self._dead_letter(message, view, message.error)
            return None
        try:
            return self.handler(view)
        except Exception as exc:
            self._failed(message, view, exc)
            return None

    def _failed(self, message: Message, view: Message, exc: Exception) -> None:
        action = self._decide(message.settled, view, exc)
        if action is None:
            return
        dead, delay, done = action
        if dead:
            self._dead_letter(message, view, exc)
        else:
            self._schedule(message, view, delay, done)

    def _decide(
        self, settled: str | None, view: Message, exc: Exception
    ) -> tuple[bool, float, int] | None:
        """What to do with a failed message: ``(dead-letter?, delay, attempts counted)``, or
        ``None`` if the handler had settled it (shared by the sync and async middleware)."""
        if settled is not None:
            log.warning("handler raised after settling %r: %s", view, exc)
            report("failed", exc)
            return None
        attempt = view.attempt
        if isinstance(exc, RetryLater):  # not a failure: no attempt counted, never dead
            report("deferred", exc)
            return False, max(exc.retry_after, 0.05), attempt - 1
        report("failed", exc)
        if not self.policy.retries(exc) or attempt >= self.policy.max_attempts:
            log.error(
                "dead-lettering %r after attempt %d/%d: %s: %s",
                view,
                attempt,
                self.policy.max_attempts,
                type(exc).__name__,
                exc,
            )
            return True, 0.0, attempt
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
        report("retried")
        return False, delay, attempt

    def _schedule(self, message: Message, view: Message, delay: float, done: int) -> None:
        """Bring the message back after ``delay`` s, ``done`` attempts counted so far."""
        if not self.use_topics:
            message.nack(delay=delay)
            return
        self._copy_to_retry_topic(message, view, delay, done)
        message.ack()

    def _copy_to_retry_topic(
        self, message: Message, view: Message, delay: float, done: int
    ) -> None:
        headers = copyable_headers(view.headers)
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
            retry_topic(self.route.group),
            message.body,
            key=message.key,
            headers=headers,
            **message.copy_fields(),
        )
        producer.flush()

    def _dead_letter(self, message: Message, view: Message, error: BaseException) -> None:
        self._send_dead_letter(message, view, error)
        message.ack()

    def _send_dead_letter(self, message: Message, view: Message, error: BaseException) -> None:
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
        self.owner._count("dead_lettered")
        report("dead_lettered", error)

    # -- relays ----------------------------------------------------------------------------

    def relay(self, consumer: Consumer) -> None:
        """Hand the copies of the retry topic to the handler once they are due, earliest
        first; hold at most ``max_held`` at a time, each at most ``max_hold`` seconds."""
        stopping = self.route.stopping
        owner = self.owner
        held: list[tuple[float, int, float, Message]] = []  # (due, n, given back at, copy)
        numbers = itertools.count()
        try:
            while not stopping.is_set():
                now = time.time()
                while held and held[0][0] <= now:
                    self._relay_one(heapq.heappop(held)[3])
                    now = time.time()
                self._give_back_overdue(held)
                wait = 0.2 if not held else min(0.2, max(0.0, held[0][0] - now))
                if len(held) >= owner.max_held:
                    stopping.wait(wait)
                    continue
                try:
                    message = consumer.receive(timeout=wait)
                except ClosedError:
                    return
                if message is None:
                    continue
                due = retry_due(message.headers)
                if due <= time.time():
                    self._relay_one(message)
                else:
                    until = time.monotonic() + owner.max_hold
                    heapq.heappush(held, (due, next(numbers), until, message))
        except MqkitError as exc:
            if not (stopping.is_set() or consumer.closed):
                log.exception("retry relay on %s stopped: %s", consumer.topics, exc)
        finally:
            with contextlib.suppress(MqkitError):
                consumer.close()  # held copies go back to the group

    def _give_back_overdue(self, held: list[tuple[float, int, float, Message]]) -> None:
        """Give back copies held longer than ``max_hold`` (they come again and are looked at
        anew), so no lease or poll deadline of the broker runs out while one waits."""
        now = time.monotonic()
        if not any(until <= now for _, _, until, _ in held):
            return
        keep = []
        for entry in held:
            if entry[2] <= now:
                self.owner._count("held_back")
                entry[3].nack()
            else:
                keep.append(entry)
        held[:] = keep
        heapq.heapify(held)

    def _relay_one(self, message: Message) -> None:
        """Dispatch a due copy as the App dispatches a message (its stats, its span)."""
        self.owner._count("relayed")
        route = self.route
        outcome = dispatching(route.system, route.group, route.stats, message)
        try:
            try:
                result = self.handle(message)
                if message.settled is None:
                    route.reply(original_view(message), result)
            except MqkitError as exc:  # e.g. the retry topic could not be written
                log.error("retry relay could not handle %r: %s", message, exc)
                outcome.add("failed", exc)
                if message.settled is None:
                    message.nack()
                return
            if message.settled is None:
                message.ack()
        finally:
            outcome.finish()


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
