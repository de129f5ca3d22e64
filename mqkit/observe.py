"""Where observability plugs into the core: one slot, empty by default, and the outcome of
each message an App dispatches.

The core imports no tracing or metrics library. Producers, consumers and the App read
:data:`active` once per send or message; while it is ``None`` (nothing instrumented) that read
is all they pay. :class:`mqkit.telemetry.MqkitInstrumentor` fills the slot with an object
implementing :class:`Hooks`; anything else may too (a test, another telemetry system).

The outcome: the App counts what happened to each message it dispatches in the route's
:class:`RouteStats`, and the helpers that decide a message's fate inside the handler chain
(retry, dead letter, idempotency) :func:`report` it to the message being dispatched, so that
``App.stats`` and the exported metrics count the same events, once each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeVar

if TYPE_CHECKING:
    from mqkit.message import Message, OutgoingMessage
    from mqkit.spool import SpoolStatus

K = TypeVar("K")
V = TypeVar("V")

Event = Literal["processed", "failed", "retried", "dead_lettered", "duplicates", "deferred"]
"""What happened to a dispatched message (the fields of :class:`RouteStats`)."""


class SendScope(Protocol):
    """One send as the hooks see it; ended once the driver took the message (or raised)."""

    def end(self, error: BaseException | None) -> None: ...


class ProcessScope(Protocol):
    """One message's processing as the hooks see it."""

    def event(self, name: Event, error: BaseException | None) -> None: ...

    def end(self) -> None: ...


class Hooks(Protocol):
    """What an instrumentation implements. Every call happens on the thread (or task) doing the
    work, so an implementation may keep per-call state in context variables."""

    def sending(self, system: str, message: OutgoingMessage) -> SendScope:
        """Called before the driver gets ``message``; may add headers to ``message.headers``
        (a new dict: the trace context)."""
        ...

    def processing(self, system: str, group: str, message: Message) -> ProcessScope:
        """Called before an App hands ``message`` to its handler chain."""
        ...

    def settled(self, system: str, group: str, message: Message, ack: bool) -> None:
        """Called when a consumer acks (``ack``) or nacks a message."""
        ...


#: The installed hooks, or ``None``: nothing is instrumented.
active: Hooks | None = None


class Watched(Generic[K, V]):
    """Readers that gauges call when metrics are collected, registered by what is running
    (an App's routes, a producer's spool) and removed when it stops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[K, V] = {}

    def add(self, key: K, reader: V) -> Callable[[], None]:
        """Register ``reader`` under ``key``; returns the function that removes it."""
        with self._lock:
            self._items[key] = reader

        def remove() -> None:
            with self._lock:
                if self._items.get(key) is reader:
                    del self._items[key]

        return remove

    def items(self) -> list[tuple[K, V]]:
        with self._lock:
            return list(self._items.items())


#: The routes of the Apps running in this process: ``(system, group, topics) -> depth``
#: (the backlog, or ``None`` where the backend cannot tell).
routes: Watched[tuple[str, str, tuple[str, ...]], Callable[[], int | None]] = Watched()

#: The spools of this process's producers (``producer(spool=...)``): ``(system, path) ->
#: status`` (a :class:`mqkit.spool.SpoolStatus`).
spools: Watched[tuple[str, str], Callable[[], SpoolStatus]] = Watched()


def watch(
    system: str, group: str, topics: tuple[str, ...], depth: Callable[[], int | None]
) -> Callable[[], None]:
    """Register a running route's backlog reader; returns the function that removes it."""
    return routes.add((system, group, topics), depth)


def install(hooks: Hooks | None) -> None:
    """Fill (or with ``None`` empty) the slot; what runs from now on sees the new hooks."""
    global active
    active = hooks


#: What :func:`mqkit.config.parse_url` schemes are called in OpenTelemetry's
#: ``messaging.system`` (its well-known values where there is one).
SYSTEMS = {
    "kafka": "kafka",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "stomp": "activemq",
    "stomp+ssl": "activemq",
    "rocketmq": "rocketmq",
    "rocketmq+remoting": "rocketmq",
}


def system_of(scheme: str) -> str:
    """The ``messaging.system`` of a URL scheme (the scheme itself for ``memory``/``sqlite``)."""
    return SYSTEMS.get(scheme, scheme)


@dataclass
class RouteStats:
    """What a route's messages came to, counted once each (``App.stats(group)``).

    Each dispatched message is exactly one of ``processed`` (the handler returned),
    ``failed`` (it raised), ``duplicates`` (the idempotency helper skipped it as done) or
    ``deferred`` (given back for later without running, e.g. its identity was busy), or it was
    dead-lettered without running (undecodable). ``retried`` counts failed messages scheduled
    for another attempt and ``dead_lettered`` the messages published to the dead-letter topic.
    Retry copies a relay hands to the handler count like any delivery.
    """

    processed: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    deferred: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, name: Event) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, int]:
        """The counts, read together."""
        with self.lock:
            return {
                "processed": self.processed,
                "failed": self.failed,
                "retried": self.retried,
                "dead_lettered": self.dead_lettered,
                "duplicates": self.duplicates,
                "deferred": self.deferred,
            }


class Outcome:
    """The fate of one message being dispatched: counted in its route's stats and told to the
    hooks' process scope (a span, metrics). Made by :func:`dispatching`."""

    __slots__ = ("_token", "decided", "failed", "scope", "stats")

    def __init__(self, stats: RouteStats, scope: ProcessScope | None) -> None:
        self.stats = stats
        self.scope = scope
        #: The message's one outcome (processed, failed, duplicates, deferred) is counted.
        self.decided = False
        self.failed = False
        self._token: object = None

    def add(self, name: Event, error: BaseException | None = None) -> None:
        if name in ("processed", "failed", "duplicates", "deferred"):
            if self.decided:
                return
            self.decided = True
            self.failed = name == "failed"
        self.stats.add(name)
        if self.scope is not None:
            self.scope.event(name, error)

    def finish(self) -> None:
        """Count ``processed`` unless something else was counted; end the scope."""
        if not self.decided:
            self.add("processed")
        if self._token is not None:
            _current.reset(self._token)  # type: ignore[arg-type]
            self._token = None
        if self.scope is not None:
            self.scope.end()


_current: ContextVar[Outcome | None] = ContextVar("mqkit_outcome", default=None)


def dispatching(system: str, group: str, stats: RouteStats, message: Message) -> Outcome:
    """Start dispatching ``message``; call :meth:`Outcome.finish` when it is settled. Until
    then :func:`report` (from this thread or task, or one it starts) reaches this outcome."""
    hooks = active
    scope = None if hooks is None else hooks.processing(system, group, message)
    outcome = Outcome(stats, scope)
    outcome._token = _current.set(outcome)
    return outcome


def report(name: Event, error: BaseException | None = None) -> None:
    """Tell the message being dispatched what a helper did with it (retry: ``failed`` then
    ``retried`` or ``dead_lettered``; idempotency: ``duplicates`` or ``deferred``). Outside an
    App dispatch it does nothing (a helper used on its own keeps its own stats)."""
    outcome = _current.get()
    if outcome is not None:
        outcome.add(name, error)
