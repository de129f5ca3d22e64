"""``mqkit chaos``: does a broker keep what it confirmed when a node dies? Measured through
mqkit, the way an application would see it.

A producer sends sequence-numbered messages at a steady rate and flushes every
:data:`CONFIRM_EVERY` seconds: a message is *confirmed* once a flush after it returned. A
consumer of its own group receives, acks, and runs a side effect behind the idempotency helper.
At ``kill_at`` seconds a shell command stops (or kills) a node, at ``restart_at`` another brings
it back; the application code never reconnects by hand, the adapters do. After the load, the
consumer drains until every confirmed message arrived or nothing came for ``settle`` seconds.

The report: confirmed, received, **lost** (confirmed, never received), duplicates (deliveries
beyond the first), duplicate side effects (with the idempotency helper: should be 0), the
longest stretch in which nothing was confirmed and nothing consumed (unavailability), the
errors the application saw, and a per-second timeline.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import mqkit
from mqkit.errors import MqkitError
from mqkit.helpers import MemoryStore, idempotent
from mqkit.message import Message

#: Seconds between the producer's flushes: the resolution of "confirmed".
CONFIRM_EVERY = 0.1


@dataclass
class Second:
    """What happened in one second of the run."""

    t: int
    sent: int = 0
    confirmed: int = 0
    received: int = 0
    errors: int = 0


@dataclass
class ChaosReport:
    url: str
    duration: float
    rate: float
    sent: int = 0
    confirmed: int = 0
    received: int = 0
    #: Confirmed to the producer, never received.
    lost: int = 0
    #: Received but never confirmed (sent while the broker was failing): not a loss either way.
    unconfirmed_received: int = 0
    #: Deliveries beyond the first of a message.
    duplicates: int = 0
    #: Side effects run more than once despite the idempotency helper.
    duplicate_effects: int = 0
    #: The longest stretch (s) with nothing confirmed and nothing consumed.
    unavailable: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)
    timeline: list[Second] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicate_effects == 0

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ok": self.ok}, indent=2)

    def to_markdown(self) -> str:
        lines = [
            f"## mqkit chaos on `{self.url}`",
            "",
            f"{self.duration:.0f} s at {self.rate:.0f} msg/s.",
            "",
            "| sent | confirmed | received | lost | duplicates | duplicate effects | unavailable |",
            "|---|---|---|---|---|---|---|",
            f"| {self.sent} | {self.confirmed} | {self.received} | **{self.lost}** | "
            f"{self.duplicates} | {self.duplicate_effects} | {self.unavailable:.1f} s |",
            "",
        ]
        if self.events:
            lines += ["Events:", ""]
            lines += [f"- t={t:.1f} s: {what}" for t, what in self.events]
            lines.append("")
        if self.errors:
            lines += ["Errors the application saw:", ""]
            lines += [f"- {count} x {name}" for name, count in sorted(self.errors.items())]
            lines.append("")
        lines += ["Timeline (messages per second; K kill, R restart):", "", "```"]
        lines += _chart(self.timeline, self.events)
        lines += ["```", ""]
        return "\n".join(lines)


def _chart(timeline: list[Second], events: list[tuple[float, str]]) -> list[str]:
    """One text row per second: the received rate as a bar, the confirmed rate as a number."""
    peak = max([s.received for s in timeline] + [s.confirmed for s in timeline] + [1])
    marks = {
        int(t): "K" if what.startswith("kill:") else "R"
        for t, what in events
        if what.startswith(("kill:", "restart:"))
    }
    return [
        f"{s.t:4d}s {marks.get(s.t, ' ')} confirmed {s.confirmed:6d}  received {s.received:6d} "
        f"{'#' * round(40 * s.received / peak)}"
        for s in timeline
    ]


class _Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.start


@dataclass
class _State:
    """Shared by the threads of one run; every field under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[int, float] = field(default_factory=dict)
    confirmed: dict[int, float] = field(default_factory=dict)
    received: Counter[int] = field(default_factory=Counter)
    effects: Counter[int] = field(default_factory=Counter)
    activity: list[float] = field(default_factory=list)  # confirm and receive times
    errors: Counter[str] = field(default_factory=Counter)
    error_times: list[float] = field(default_factory=list)
    receive_times: list[float] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)

    def error(self, at: float, exc: BaseException) -> None:
        # One line per kind of error: counts and numbers in the text do not make a new kind.
        text = re.sub(r"\d+(\.\d+)?", "N", str(exc))[:160]
        with self.lock:
            self.errors[f"{type(exc).__name__}: {text}"] += 1
            self.error_times.append(at)


def run_chaos(
    url: str,
    *,
    duration: float = 30.0,
    rate: float = 200.0,
    kill_at: float | None = None,
    restart_at: float | None = None,
    kill_cmd: str | None = None,
    restart_cmd: str | None = None,
    keys: int = 8,
    settle: float = 30.0,
    progress: Callable[[float, ChaosReport], None] | None = None,
) -> ChaosReport:
    """Run the load against ``url`` for ``duration`` seconds with the fault commands, then
    drain and report (see the module docstring)."""
    topic, group = f"chaos-{uuid.uuid4().hex[:10]}", "chaos"
    clock, state = _Clock(), _State()
    stop, drained = threading.Event(), threading.Event()
    broker = mqkit.connect(url)
    try:
        consumer = broker.consumer(topic, group=group)  # the group exists before any send
        effect = idempotent(MemoryStore())(lambda message: _effect(state, message))
        faults = [(kill_at, kill_cmd, "kill"), (restart_at, restart_cmd, "restart")]
        threads = [
            threading.Thread(target=_produce, args=(broker, topic, rate, keys, clock, state, stop)),
            threading.Thread(target=_consume, args=(consumer, effect, clock, state, drained)),
            threading.Thread(target=_faults, args=(clock, state, stop, faults)),
        ]
        for thread in threads:
            thread.daemon = True
            thread.start()
        while clock.now() < duration:
            time.sleep(0.5)
            if progress is not None:
                progress(clock.now(), _report(broker, duration, rate, clock, state))
        stop.set()
        threads[0].join()  # the producer's last flush
        threads[2].join()
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:  # drain: until all confirmed arrived, or quiet
            with state.lock:
                missing = [seq for seq in state.confirmed if seq not in state.received]
                last = max(state.receive_times, default=0.0)
            if not missing or clock.now() - max(last, duration) > settle:
                break
            time.sleep(0.2)
        drained.set()
        threads[1].join(timeout=10)
        with contextlib.suppress(MqkitError):
            consumer.close()
        return _report(broker, duration, rate, clock, state)
    finally:
        with contextlib.suppress(MqkitError):
            broker.close()


def _effect(state: _State, message: Message) -> None:
    seq = int(message.value["seq"])
    with state.lock:
        state.effects[seq] += 1


def _produce(
    broker: mqkit.Broker,
    topic: str,
    rate: float,
    keys: int,
    clock: _Clock,
    state: _State,
    stop: threading.Event,
) -> None:
    producer: mqkit.Producer | None = None
    unconfirmed: list[int] = []
    seq = 0
    next_flush = clock.now() + CONFIRM_EVERY
    while True:
        stopping = stop.is_set()
        try:
            if producer is None:
                producer = broker.producer()
            if not stopping:
                producer.send(topic, {"seq": seq}, key=f"k{seq % keys}")
                with state.lock:
                    state.sent[seq] = clock.now()
                unconfirmed.append(seq)
                seq += 1
            if stopping or clock.now() >= next_flush:
                # Short while loaded: a broker that does not confirm must not slow the load.
                next_flush = clock.now() + CONFIRM_EVERY
                producer.flush(timeout=60.0 if stopping else CONFIRM_EVERY)
                now = clock.now()
                with state.lock:
                    for done in unconfirmed:
                        state.confirmed[done] = now
                    if unconfirmed:
                        state.activity.append(now)
                unconfirmed = []
            if stopping:
                break
        except mqkit.DeliveryTimeout as exc:
            # Not confirmed within the short wait: the next flush may; only the last one,
            # which waits long, is an error the application would see.
            if stopping:
                state.error(clock.now(), exc)
                break
        except MqkitError as exc:
            state.error(clock.now(), exc)
            if stopping:
                break
            # A failed send or flush may stand for any message sent since the last good flush
            # (an adapter reports a refused background send at the next call): none of them
            # counts as confirmed, even if a later flush succeeds. They may still arrive.
            unconfirmed = []
            if isinstance(exc, mqkit.ClosedError | mqkit.BrokerUnavailable):
                # The producer gave up (the adapter's reconnect window passed): a new one.
                if producer is not None:
                    with contextlib.suppress(Exception):
                        producer.close()
                producer = None
            time.sleep(0.2)
            continue
        delay = seq / rate - clock.now()
        if delay > 0:
            stop.wait(delay)
    if producer is not None:
        with contextlib.suppress(Exception):
            producer.close()


def _consume(
    consumer: mqkit.Consumer,
    effect: Callable[[Message], Any],
    clock: _Clock,
    state: _State,
    drained: threading.Event,
) -> None:
    while not drained.is_set():
        try:
            message = consumer.receive(timeout=0.5)
            if message is None:
                continue
            seq = int(message.value["seq"])
            now = clock.now()
            with state.lock:
                state.received[seq] += 1
                state.receive_times.append(now)
                state.activity.append(now)
            effect(message)
            message.ack()
        except MqkitError as exc:
            state.error(clock.now(), exc)
            time.sleep(0.2)


def _faults(
    clock: _Clock,
    state: _State,
    stop: threading.Event,
    faults: list[tuple[float | None, str | None, str]],
) -> None:
    for at, command, name in faults:
        if at is None or command is None:
            continue
        if stop.wait(max(0.0, at - clock.now())):
            return
        with state.lock:
            state.events.append((clock.now(), f"{name}: {command}"))
        done = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
        with state.lock:
            state.events.append((clock.now(), f"{name} command returned {done.returncode}"))


def _report(
    broker: mqkit.Broker,
    duration: float,
    rate: float,
    clock: _Clock,
    state: _State,
) -> ChaosReport:
    with state.lock:
        confirmed = dict(state.confirmed)
        received = Counter(state.received)
        effects = Counter(state.effects)
        activity = sorted(state.activity)
        sent = dict(state.sent)
        errors = dict(state.errors)
        error_times = list(state.error_times)
        receive_times = list(state.receive_times)
        events = list(state.events)
    end = min(clock.now(), duration)
    points = [0.0, *[t for t in activity if t <= end], end]
    gaps = [b - a for a, b in itertools.pairwise(points)]
    seconds = [Second(t) for t in range(int(end) + 1)]
    for name, times in (
        ("sent", sent.values()),
        ("confirmed", confirmed.values()),
        ("received", receive_times),
        ("errors", error_times),
    ):
        for t in times:
            if int(t) < len(seconds):
                second = seconds[int(t)]
                setattr(second, name, getattr(second, name) + 1)
    return ChaosReport(
        url=broker.url.redacted(),
        duration=duration,
        rate=rate,
        sent=len(sent),
        confirmed=len(confirmed),
        received=len(received),
        lost=sum(1 for seq in confirmed if seq not in received),
        unconfirmed_received=sum(1 for seq in received if seq not in confirmed),
        duplicates=sum(count - 1 for count in received.values() if count > 1),
        duplicate_effects=sum(count - 1 for count in effects.values() if count > 1),
        unavailable=round(max(gaps, default=0.0), 2),
        errors=errors,
        events=[(round(t, 2), what) for t, what in events],
        timeline=seconds,
    )
