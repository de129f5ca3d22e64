"""The producer-side scenarios of ``mqkit demo``: consistency (outbox) and a broker outage (spool).

*consistency*: the order service writes each order and its message in one transaction of its
own database (some are declined and roll back); a relay publishes the outbox, crashes once
between publishing a batch and marking it sent, and a second relay takes over (the batch is
published again, same ids); one downstream service fails for a while (its database is down) and
retries. Every service must end with exactly the committed orders: none lost, none of the
rolled-back ones, no effect twice.

*outage*: the order service sends through a producer with a spool while the broker is made
unavailable in the middle of the burst (on ``sqlite://`` another process holds the queue's lock;
elsewhere the given stop/start commands run); every order must reach every service once.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mqkit.app import App
from mqkit.client import Broker, connect
from mqkit.helpers import MemoryStore, RetryPolicy, idempotent, retry
from mqkit.helpers.idempotency import Idempotent
from mqkit.helpers.outbox import PostgresOutbox, Relay, SqliteOutbox, open_outbox
from mqkit.message import Message

SERVICES = ("stock", "customer-trail", "customer-status")
Log = Callable[[str], None]


@dataclass
class ServiceState:
    """What one downstream service did: its effects per order and the copies it dropped."""

    name: str
    effects: dict[int, int] = field(default_factory=dict)
    failures: int = 0
    dedup: Idempotent | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def dropped_copies(self) -> int:
        return self.dedup.stats.skipped if self.dedup is not None else 0


@dataclass
class ScenarioResult:
    scenario: str
    url: str
    committed: set[int]
    rolled_back: set[int]
    services: list[ServiceState]
    timeline: list[tuple[float, str]]
    seconds: float

    def lost(self, s: ServiceState) -> int:
        return len(self.committed - s.effects.keys())

    def phantoms(self, s: ServiceState) -> int:
        """Effects of orders that were rolled back (must be 0)."""
        return len(self.rolled_back & s.effects.keys())

    def duplicated(self, s: ServiceState) -> int:
        return sum(n - 1 for n in s.effects.values())

    @property
    def ok(self) -> bool:
        return all(
            self.lost(s) == 0 and self.phantoms(s) == 0 and self.duplicated(s) == 0
            for s in self.services
        )


class _Timeline:
    def __init__(self, log: Log) -> None:
        self.start = time.monotonic()
        self.events: list[tuple[float, str]] = []
        self._log = log
        self._lock = threading.Lock()

    def __call__(self, text: str) -> None:
        at = time.monotonic() - self.start
        with self._lock:
            self.events.append((at, text))
        self._log(f"t={at:6.2f}s  {text}")


def _services(
    app: App,
    topic: str,
    run: str,
    failing: str | None,
    fail_for: float,
    note: _Timeline,
) -> list[ServiceState]:
    states = []
    for name in SERVICES:
        state = ServiceState(name)
        state.dedup = idempotent(MemoryStore(), namespace=f"{name}.{run}")
        down: list[float] = []

        def handle(
            message: Message,
            state: ServiceState = state,
            flaky: bool = name == failing,
            down: list[float] = down,
        ) -> None:
            if flaky:
                now = time.monotonic()
                if not down:
                    down.append(now + fail_for)
                    note(f"{state.name}: its database goes down for {fail_for:.0f} s; retrying")
                if now < down[0]:
                    with state.lock:
                        state.failures += 1
                    raise RuntimeError(f"{state.name}: database unavailable")
                if len(down) == 1:
                    down.append(now)
                    note(f"{state.name}: database back; catching up")
            order = int(message.value["order"])
            with state.lock:
                state.effects[order] = state.effects.get(order, 0) + 1

        app.handler(
            topic,
            group=f"demo.{name}.{run}",
            middleware=[
                retry(RetryPolicy.fixed(0.25, max_attempts=10_000)),
                state.dedup,
            ],
        )(handle)
        states.append(state)
    return states


def _converge(
    app: App,
    states: list[ServiceState],
    committed: set[int],
    writing: threading.Event,
    timeout: float,
    note: _Timeline,
) -> None:
    deadline = time.monotonic() + timeout
    converged: set[str] = set()
    while time.monotonic() < deadline:
        if not writing.is_set():
            for s in states:
                with s.lock:
                    done = committed <= s.effects.keys()
                if done and s.name not in converged:
                    converged.add(s.name)
                    note(f"{s.name}: has every committed order")
            if len(converged) == len(states):
                time.sleep(0.5)  # a late duplicate would show now
                break
        time.sleep(0.05)
    else:
        note(f"timed out after {timeout:.0f} s")
    app.stop()


# -- consistency ---------------------------------------------------------------------------


@contextlib.contextmanager
def _app_database(db: str | None) -> Iterator[tuple[str, Callable[[], Any]]]:
    """The order service's database: ``db`` (a DSN or a SQLite path) or a temporary file;
    yields it and a maker of connections whose ``with`` block is one transaction."""
    with tempfile.TemporaryDirectory(prefix="mqkit-demo-") as tmp:
        target = db or str(Path(tmp) / "orders.db")
        if target.startswith(("postgresql://", "postgres://")):
            import psycopg

            @contextlib.contextmanager
            def pg() -> Iterator[Any]:
                with psycopg.connect(target) as conn, conn.transaction():
                    yield conn

            yield target, pg
            return

        @contextlib.contextmanager
        def lite() -> Iterator[Any]:
            conn = sqlite3.connect(target.removeprefix("sqlite:///"), timeout=30)
            try:
                with conn:
                    yield conn
            finally:
                conn.close()

        yield target, lite


class _Declined(Exception):
    pass


def run_consistency(
    broker: Broker,
    *,
    db: str | None = None,
    orders: int = 2000,
    fail_for: float = 3.0,
    crash_after: int | None = None,
    timeout: float = 120.0,
    log: Log = print,
) -> ScenarioResult:
    """Orders and their messages committed together through the outbox (see the module)."""
    run = uuid.uuid4().hex[:8]
    topic = f"demo.orders.{run}"
    table = f"demo_outbox_{run}"
    note = _Timeline(log)
    app = App(broker=broker)
    states = _services(app, topic, run, "customer-status", fail_for, note)
    committed: set[int] = set()
    rolled_back: set[int] = set()
    writing = threading.Event()
    writing.set()
    crash_at = crash_after if crash_after is not None else orders // 3

    with _app_database(db) as (target, transaction):
        outbox = open_outbox(target, table=table)
        with transaction() as conn:
            conn.execute(f"CREATE TABLE demo_orders_{run} (id integer PRIMARY KEY, sku text)")

        def order_service() -> None:
            note(
                f"order service: writing {orders} orders, each with its message, "
                f"in one transaction ({outbox.where})"
            )
            for n in range(orders):
                try:
                    with transaction() as conn:
                        conn.execute(
                            f"INSERT INTO demo_orders_{run} (id, sku) VALUES ({n}, 'sku-{n % 97}')"
                        )
                        outbox.send(conn, topic, {"order": n}, key=f"customer-{n % 250}")
                        if n % 10 == 7:
                            raise _Declined  # payment declined: the order and message roll back
                    committed.add(n)
                except _Declined:
                    rolled_back.add(n)
            note(
                f"order service: {len(committed)} committed, {len(rolled_back)} declined "
                "(rolled back with their messages)"
            )
            writing.clear()

        def relays(stop: threading.Event) -> None:
            first = Relay(outbox, broker=broker, batch=50, lease=2.0, poll_interval=0.2)
            while not stop.is_set() and first.stats.published < crash_at:
                if first.run_once() == 0:
                    outbox.wait(0.2, stop)
            rows = outbox.claim(first.token, first.batch, first.lease)
            while not rows and writing.is_set() and not stop.is_set():
                outbox.wait(0.2, stop)  # crash with a batch in hand
                rows = outbox.claim(first.token, first.batch, first.lease)
            if rows:
                first._publish(rows)
                note(
                    f"relay 1: published {len(rows)} rows, then crashed before marking them "
                    f"sent (after {first.stats.published} confirmed)"
                )
            first.close()
            note("relay 2: starts; the crashed relay's lease runs out in 2 s")
            second = Relay(
                open_outbox(target, table=table), broker=broker, lease=2.0, poll_interval=0.2
            )
            second.run(stop)
            note(f"relay 2: stopped after publishing {second.stats.published} rows")

        app.background(relays, "demo-relays")
        writer = threading.Thread(target=order_service, name="demo-orders", daemon=True)

        def start() -> None:
            writer.start()
            threading.Thread(
                target=_converge,
                args=(app, states, committed, writing, timeout, note),
                daemon=True,
            ).start()

        app.run(
            install_signal_handlers=threading.current_thread() is threading.main_thread(),
            on_ready=start,
        )
        writer.join(timeout)
        _drop(outbox, target, table, run)
    return ScenarioResult(
        "consistency",
        broker.url.redacted(),
        committed,
        rolled_back,
        states,
        note.events,
        note.events[-1][0] if note.events else 0.0,
    )


def _drop(outbox: SqliteOutbox | PostgresOutbox, target: str, table: str, run: str) -> None:
    """Remove the demo's tables from a database the user gave."""
    outbox.close()
    if isinstance(outbox, PostgresOutbox):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}, demo_orders_{run}")
            conn.execute(f"DROP FUNCTION IF EXISTS {table}_notify()")
    else:
        with contextlib.closing(sqlite3.connect(outbox.path)) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"DROP TABLE IF EXISTS demo_orders_{run}")


# -- outage --------------------------------------------------------------------------------


@contextlib.contextmanager
def _sqlite_lock(path: str, seconds: float) -> Iterator[None]:
    """Another process holds the queue's exclusive lock: every write is refused."""
    locker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n",
            path,
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout is not None
    locker.stdout.readline()
    try:
        yield
    finally:
        locker.wait()
        locker.stdout.close()


def run_outage(
    broker: Broker,
    *,
    orders: int = 3000,
    outage: float = 10.0,
    stop_command: str | None = None,
    start_command: str | None = None,
    rate: float = 300.0,
    timeout: float = 180.0,
    log: Log = print,
) -> ScenarioResult:
    """A burst sent through a spooling producer while the broker is down (see the module).

    On ``sqlite://`` the outage is another process holding the queue's lock for ``outage``
    seconds (the order service's connection gives up on a lock after 0.2 s, the services wait
    for it); on other URLs ``stop_command`` and ``start_command`` (shell) stop and start the
    broker ``outage`` seconds apart."""
    sqlite = broker.url.scheme == "sqlite"
    if not sqlite and not (stop_command and start_command):
        raise ValueError(
            f"on {broker.url.scheme}:// give --stop-command and --start-command: how to stop "
            "and start that broker (the sqlite:// queue is made unavailable by the demo itself)"
        )
    run = uuid.uuid4().hex[:8]
    topic = f"demo.orders.{run}"
    note = _Timeline(log)
    app = App(broker=broker)
    states = _services(app, topic, run, None, 0.0, note)
    committed: set[int] = set()
    writing = threading.Event()
    writing.set()
    outage_at = orders // 3
    reached = threading.Event()

    def outage_thread() -> None:
        reached.wait()
        note(f"broker: unavailable for {outage:.0f} s")
        if sqlite:
            with _sqlite_lock(broker.url.path[1:], outage):
                pass  # the locking process holds the lock for `outage` seconds
        else:
            with _commanded(stop_command or "", start_command or "", outage):
                pass
        note("broker: available again")

    def order_service() -> None:
        sender = connect(broker.url.raw, busy_timeout=0.2) if sqlite else broker
        with tempfile.TemporaryDirectory(prefix="mqkit-spool-") as tmp:
            producer = sender.producer(spool=Path(tmp) / "orders.spool")
            interval = 1.0 / rate
            note(f"order service: {orders} orders at {rate:.0f}/s through a producer with a spool")
            for n in range(orders):
                if n == outage_at:
                    reached.set()
                producer.send(topic, {"order": n}, key=f"customer-{n % 250}")
                committed.add(n)
                if n % 500 == 499:
                    status = producer.spool
                    note(
                        f"order service: {n + 1} accepted; the spool holds "
                        f"{status.pending if status else '?'}"
                        + (" (broker unreachable)" if status and status.down_since else "")
                    )
                time.sleep(interval)
            note(f"order service: all {orders} accepted, none refused")
            while producer.spool is not None and producer.spool.pending:
                time.sleep(0.05)
            status = producer.spool
            producer.close()
            note(
                f"spool: empty, everything forwarded (failed forwarding attempts during the "
                f"outage: {status.failures if status else '?'})"
            )
        if sender is not broker:
            sender.close()
        writing.clear()

    writer = threading.Thread(target=order_service, name="demo-orders", daemon=True)
    breaker = threading.Thread(target=outage_thread, name="demo-outage", daemon=True)

    def start() -> None:
        writer.start()
        breaker.start()
        threading.Thread(
            target=_converge, args=(app, states, committed, writing, timeout, note), daemon=True
        ).start()

    app.run(
        install_signal_handlers=threading.current_thread() is threading.main_thread(),
        on_ready=start,
    )
    writer.join(timeout)
    breaker.join(timeout)
    return ScenarioResult(
        "outage",
        broker.url.redacted(),
        committed,
        set(),
        states,
        note.events,
        note.events[-1][0] if note.events else 0.0,
    )


@contextlib.contextmanager
def _commanded(stop: str, start: str, seconds: float) -> Iterator[None]:
    subprocess.run(stop, shell=True, check=True)
    until = time.monotonic() + seconds
    try:
        yield
    finally:
        time.sleep(max(0.0, until - time.monotonic()))
        subprocess.run(start, shell=True, check=True)
