"""The adapter toolkit: what every backend needs from the core, in one module.

An adapter is the translation to its client library and its tuned hot paths, nothing more. The
rest lives here once:

* :class:`Settings` — options declared once (type, default, doc, where they may be given) with
  :func:`option`; read from the URL query and ``connect(**options)``, overridden per producer or
  consumer, misspelt names refused, and rendered as the options table of the adapter's docs.
* :class:`BackendBase`, :class:`ProducerBase`, :class:`ConsumerBase` — lifecycle: an entry point
  (``Backend.open``), close exactly once, context managers. The façade (:mod:`mqkit.client`)
  checks closed state, names, headers and body sizes before a driver is called, so drivers do not.
* :class:`ReceiveQueue` and :class:`Deadline` — deadline-aware receive for adapters that buffer
  what a client thread fetched, and for those that poll.
* The contract itself (:class:`Features`, :class:`Delivery`, :class:`OutgoingMessage`) and the
  wire names (:mod:`mqkit.envelope`), re-exported so an adapter imports one module.

docs/core.md ("Writing an adapter") walks through an adapter built on this.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import types
import typing
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Self, TypeVar

from mqkit import envelope
from mqkit.config import BrokerURL
from mqkit.errors import ConfigError
from mqkit.message import Delivery, OutgoingMessage
from mqkit.spi import ConsumerDriver, Features, ProducerDriver

__all__ = [
    "CONSUMER",
    "PRODUCER",
    "BackendBase",
    "BrokerURL",
    "ConsumerBase",
    "Deadline",
    "Delivery",
    "Features",
    "OptionSpec",
    "OutgoingMessage",
    "ProducerBase",
    "ReceiveQueue",
    "Settings",
    "envelope",
    "option",
    "options_table",
]

T = TypeVar("T")
S = TypeVar("S", bound="Settings")

#: Where an option may be given besides the URL and ``connect()``.
PRODUCER = "producer"
CONSUMER = "consumer"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_SPEC = "mqkit.option"


# -- options -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option as declared: its name, type, default, doc and where it may be given."""

    name: str
    type: type
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    scopes: frozenset[str] = frozenset()
    optional: bool = False  # ``T | None``: absent means None

    def convert(self, where: str, value: Any) -> Any:
        """``value`` (a URL query string or a Python value) as this option's type, checked."""
        if value is None and self.optional:
            return None
        name = self.name
        kind = self.type
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ConfigError(f"{where}: option {name}={value!r} is not true/false")
        if kind is int or kind is float:
            if isinstance(value, bool):
                raise ConfigError(f"{where}: option {name}={value!r} is not a number")
            try:
                number = kind(value)
            except (TypeError, ValueError):
                what = "an integer" if kind is int else "a number"
                raise ConfigError(f"{where}: option {name}={value!r} is not {what}") from None
            if self.minimum is not None and number < self.minimum:
                raise ConfigError(f"{where}: option {name}={value!r} must be >= {self.minimum}")
            if self.maximum is not None and number > self.maximum:
                raise ConfigError(f"{where}: option {name}={value!r} must be <= {self.maximum}")
            return number
        text = str(value)
        if self.choices:
            text = text.lower()
            if text not in self.choices:
                raise ConfigError(
                    f"{where}: option {name}={value!r} must be one of {', '.join(self.choices)}"
                )
        return text


def option(
    default: Any,
    doc: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: Sequence[str] = (),
    scopes: Iterable[str] = (),
) -> Any:
    """Declare a :class:`Settings` field as an option.

    ``scopes`` names where else it may be given: :data:`PRODUCER` (``broker.producer(**opts)``)
    and/or :data:`CONSUMER` (``broker.consumer(..., **opts)``); every option may be given in the
    URL query and to ``connect()``.
    """
    meta = {_SPEC: (doc, minimum, maximum, tuple(choices), frozenset(scopes))}
    return dataclasses.field(default=default, metadata=meta)


class Settings:
    """Base of an adapter's options: subclass as a frozen dataclass of :func:`option` fields.

    ::

        @dataclass(frozen=True)
        class Settings(adapter.Settings):
            prefetch: int = option(100, "Messages fetched ahead.", minimum=1, scopes=[CONSUMER])
    """

    _specs: ClassVar[dict[str, OptionSpec]]

    @classmethod
    def specs(cls) -> dict[str, OptionSpec]:
        """The declared options by name, in declaration order."""
        found = cls.__dict__.get("_specs")
        if found is None:
            found = _read_specs(cls)
            cls._specs = found
        return found

    @classmethod
    def read(cls, where: str, values: Mapping[str, Any]) -> Self:
        """Settings from ``values`` (URL query and ``connect()`` options); unknown names fail.

        ``where`` names the URL (without password) for error messages.
        """
        specs = cls.specs()
        _refuse_unknown(where, values, specs)
        kwargs = {name: specs[name].convert(where, value) for name, value in values.items()}
        return cls(**kwargs)

    def override(self, where: str, values: Mapping[str, Any], scope: str) -> Self:
        """These settings with ``values`` given to one producer or consumer (``scope``)."""
        if not values:
            return self
        specs = self.specs()
        allowed = {name: spec for name, spec in specs.items() if scope in spec.scopes}
        for name in values:
            if name in specs and name not in allowed:
                elsewhere = "".join(f" or to {other}()" for other in sorted(specs[name].scopes))
                raise ConfigError(
                    f"{where}: option {name} is not set per {scope}; give it in the URL or to "
                    f"connect(){elsewhere}"
                )
        _refuse_unknown(where, values, allowed)
        changes = {name: allowed[name].convert(where, value) for name, value in values.items()}
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _read_specs(cls: type) -> dict[str, OptionSpec]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass to declare options")
    hints = typing.get_type_hints(cls)
    specs: dict[str, OptionSpec] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_SPEC)
        if meta is None:
            continue
        doc, minimum, maximum, choices, scopes = meta
        kind, optional = _base_type(hints[f.name], f.name)
        specs[f.name] = OptionSpec(
            f.name, kind, f.default, doc, minimum, maximum, choices, scopes, optional
        )
    return specs


def _base_type(hint: Any, name: str) -> tuple[type, bool]:
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else None
    if hint not in (bool, int, float, str):
        raise TypeError(f"option {name}: type must be bool, int, float or str (or that | None)")
    return hint, optional


def _refuse_unknown(where: str, values: Mapping[str, Any], known: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise ConfigError(
            f"{where}: unknown option(s) {', '.join(unknown)}; known options: {listed}"
        )


def options_table(settings: type[Settings]) -> str:
    """The Markdown table of ``settings``' options, as the adapter's docs show it."""
    rows = [
        "| option | type | default | also per | what it does |",
        "|---|---|---|---|---|",
    ]
    for spec in settings.specs().values():
        kind = " / ".join(spec.choices) if spec.choices else spec.type.__name__
        if spec.default is None or spec.default == "":
            default = "—"
        elif isinstance(spec.default, bool):
            default = f"`{str(spec.default).lower()}`"
        else:
            default = f"`{spec.default}`"
        scopes = ", ".join(sorted(spec.scopes)) or "—"
        doc = " ".join(spec.doc.split()).replace("|", "\\|")
        rows.append(f"| `{spec.name}` | {kind} | {default} | {scopes} | {doc} |")
    return "\n".join(rows) + "\n"


# -- lifecycle -----------------------------------------------------------------------------------


class _ClosesOnce:
    """``close()`` runs the adapter's ``_close()`` exactly once, whoever calls it and when."""

    _closed: bool
    _close_lock: threading.Lock

    def _init_lifecycle(self) -> None:
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._close()

    def _close(self) -> None:
        """Release the client's resources (called once)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProducerBase(_ClosesOnce, ABC):
    """A producer driver: ``send`` may buffer, ``flush`` waits for the broker's confirmation,
    ``_close`` flushes and releases (see :class:`mqkit.spi.ProducerDriver`)."""

    def __init__(self) -> None:
        self._init_lifecycle()

    @abstractmethod
    def send(self, message: OutgoingMessage) -> None: ...

    @abstractmethod
    def flush(self, timeout: float | None) -> None: ...


class ConsumerBase(_ClosesOnce, ABC):
    """A consumer driver: one member of one group (see :class:`mqkit.spi.ConsumerDriver`).

    ``_close`` gives back what was received but not acked, so the group gets it again.
    """

    def __init__(self) -> None:
        self._init_lifecycle()

    @abstractmethod
    def receive(self, timeout: float | None) -> Delivery | None: ...

    @abstractmethod
    def ack(self, delivery: Delivery) -> None: ...

    @abstractmethod
    def nack(self, delivery: Delivery, *, requeue: bool, delay: float) -> None: ...


class BackendBase(_ClosesOnce, ABC, Generic[S]):
    """One connection to one broker; the adapter's entry point is ``Backend.open``.

    Subclasses set ``settings_type`` and ``features`` and implement :meth:`open_producer`,
    :meth:`open_consumer` and, if they hold a connection, ``_close``. Their ``__init__`` takes
    ``(url, settings)``: the URL checked by :meth:`check_url`, the options already read.
    """

    settings_type: ClassVar[type[Settings]]
    features: Features

    def __init__(self, url: BrokerURL, settings: S) -> None:
        self._init_lifecycle()
        self.url = url
        self.settings = settings
        self.where = url.redacted()

    @classmethod
    def check_url(cls, url: BrokerURL) -> None:
        """Raise :class:`ConfigError` for a URL this backend cannot use (override)."""

    @classmethod
    def open(cls, url: BrokerURL, options: Mapping[str, Any]) -> Self:
        """The ``mqkit.adapters`` entry point: check the URL, read the options, connect."""
        cls.check_url(url)
        settings = cls.settings_type.read(url.redacted(), options)
        return cls(url, settings)  # type: ignore[arg-type]

    def producer(self, options: Mapping[str, Any]) -> ProducerDriver:
        settings = self.settings.override(f"{self.where} producer", options, PRODUCER)
        return self.open_producer(settings)

    def consumer(
        self, topics: Sequence[str], group: str, options: Mapping[str, Any]
    ) -> ConsumerDriver:
        settings = self.settings.override(f"{self.where} consumer", options, CONSUMER)
        return self.open_consumer(tuple(topics), group, settings)

    def ping(self, timeout: float) -> None:
        """Raise unless the broker answers and takes the credentials, within about ``timeout``
        seconds (:meth:`mqkit.Broker.ping` bounds the wait either way).

        The default opens and closes a producer with the backend's settings; an adapter
        overrides it with its cheapest real round trip (a producer may connect lazily)."""
        self.open_producer(self.settings).close()

    def depth(self, group: str, topics: Sequence[str]) -> int | None:
        """Messages of ``topics`` that ``group`` has not acked yet (waiting or in flight), or
        ``None`` when the backend cannot tell cheaply (the default)."""
        return None

    @abstractmethod
    def open_producer(self, settings: S) -> ProducerDriver:
        """A producer with ``settings`` (the backend's, with the producer's overrides)."""

    @abstractmethod
    def open_consumer(self, topics: tuple[str, ...], group: str, settings: S) -> ConsumerDriver:
        """A member of ``group`` reading ``topics``; the subscription exists when it returns."""


# -- receiving with a deadline -------------------------------------------------------------------


class Deadline:
    """A point in time ``timeout`` seconds from now (``None``: never)."""

    __slots__ = ("at",)

    def __init__(self, timeout: float | None) -> None:
        self.at = None if timeout is None else time.monotonic() + timeout

    def remaining(self, cap: float | None = None) -> float | None:
        """Seconds left (at least 0), at most ``cap``; ``None`` if unbounded and no cap."""
        if self.at is None:
            return cap
        left = max(0.0, self.at - time.monotonic())
        return left if cap is None else min(left, cap)

    @property
    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at


class ReceiveQueue(Generic[T]):
    """What a client thread fetched, handed out by ``receive`` with a deadline.

    ``get`` returns a buffered item even with ``timeout=0``, ``None`` on timeout, and ``None`` at
    once after :meth:`close` (from any thread). ``take_all`` and ``take_where`` remove items,
    e.g. to give them back to the broker on close or behind a nacked message of the same key.
    """

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._cv = threading.Condition()
        self._closed = False

    def put(self, item: T) -> None:
        with self._cv:
            self._items.append(item)
            self._cv.notify()

    def put_many(self, items: Iterable[T]) -> None:
        with self._cv:
            self._items.extend(items)
            self._cv.notify_all()

    def get(self, timeout: float | None) -> T | None:
        with self._cv:
            if self._closed:
                return None
            if self._items:
                return self._items.popleft()
            deadline = Deadline(timeout)
            while not self._items and not self._closed:
                left = deadline.remaining()
                if left is not None and left <= 0:
                    return None
                self._cv.wait(left)
            return None if self._closed else self._items.popleft()

    def take_all(self) -> list[T]:
        with self._cv:
            items = list(self._items)
            self._items.clear()
            return items

    def take_where(self, pick: Callable[[T], bool]) -> list[T]:
        with self._cv:
            taken = [item for item in self._items if pick(item)]
            if taken:
                self._items = deque(item for item in self._items if not pick(item))
            return taken

    def close(self) -> None:
        """Wake every waiter; from now on ``get`` returns ``None`` (take what is left with
        :meth:`take_all` to give it back)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)
