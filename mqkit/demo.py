"""The seed scenario: an order burst absorbed by a queue and drained by three services.

An order service accepts a burst of orders far faster than its downstream services can take
them. Stock, customer-trail and customer-status each consume in their own group at their own
pace (a token bucket stands in for what their database can take). The queue shaves the peak:
the burst is accepted at once, processed later, nothing lost and nothing processed twice.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from mqkit.app import App
from mqkit.client import Broker
from mqkit.message import Message


@dataclass(frozen=True)
class Service:
    name: str
    capacity: float  # orders per second this service's database can take


DEFAULT_SERVICES = (
    Service("stock", 2000.0),
    Service("customer-trail", 1200.0),
    Service("customer-status", 800.0),
)


@dataclass
class ServiceResult:
    name: str
    capacity: float
    seen: dict[int, int] = field(default_factory=dict)
    first: float | None = None
    last: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def processed(self) -> int:
        return len(self.seen)

    @property
    def duplicated(self) -> int:
        return sum(n - 1 for n in self.seen.values())

    @property
    def rate(self) -> float:
        if self.first is None or self.last is None or self.last <= self.first:
            return 0.0
        return self.processed / (self.last - self.first)


@dataclass
class DemoResult:
    url: str
    orders: int
    accepted_seconds: float
    services: list[ServiceResult]
    max_backlog: int

    @property
    def accepted_rate(self) -> float:
        return self.orders / self.accepted_seconds if self.accepted_seconds else 0.0

    def lost(self, service: ServiceResult) -> int:
        return self.orders - service.processed

    @property
    def ok(self) -> bool:
        return all(self.lost(s) == 0 and s.duplicated == 0 for s in self.services)


class _Pacer:
    """Token bucket: lets ``rate`` events per second through, sleeping when ahead."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = time.monotonic()

    def wait(self) -> None:
        now = time.monotonic()
        if self._next > now:
            time.sleep(self._next - now)
        self._next = max(self._next, now - 0.05) + self._interval


Progress = Callable[[str, int], None]


def run_demo(
    broker: Broker,
    *,
    orders: int = 5000,
    services: tuple[Service, ...] = DEFAULT_SERVICES,
    timeout: float = 120.0,
    progress: Progress | None = None,
) -> DemoResult:
    """Play the scenario on ``broker``; ``progress(task, advance)`` reports as it goes."""
    report = progress or (lambda task, n: None)
    run = uuid.uuid4().hex[:8]
    topic = f"demo.orders.{run}"
    results = [ServiceResult(s.name, s.capacity) for s in services]
    app = App(broker=broker)
    for service, result in zip(services, results, strict=True):
        handler = _service_handler(service, result, report)
        app.handler(topic, group=f"demo.{service.name}.{run}")(handler)

    sent = 0
    backlog = 0
    accepted = 0.0

    def order_service() -> None:
        nonlocal accepted, sent
        started = time.perf_counter()
        with broker.producer() as producer:
            for n in range(orders):
                order = {"order": n, "sku": f"sku-{n % 97}", "qty": 1 + n % 3}
                producer.send(topic, order, key=f"customer-{n % 250}")
                sent = n + 1
                if n % 100 == 99:
                    report("orders", 100)
            producer.flush()
        accepted = time.perf_counter() - started
        report("orders", orders % 100)

    def monitor() -> None:
        nonlocal backlog
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [r.processed for r in results]
            backlog = max(backlog, sent - min(done))
            if all(d >= orders for d in done):
                time.sleep(0.5)  # let a duplicate show up, if any, before stopping
                break
            time.sleep(0.02)
        app.stop()

    publisher = threading.Thread(target=order_service, name="demo-orders", daemon=True)
    watcher = threading.Thread(target=monitor, name="demo-monitor", daemon=True)

    def start() -> None:  # the groups exist now: the burst can begin
        publisher.start()
        watcher.start()

    app.run(
        install_signal_handlers=threading.current_thread() is threading.main_thread(),
        on_ready=start,
    )
    publisher.join(timeout)
    watcher.join(timeout)
    return DemoResult(str(broker.url), orders, accepted, results, backlog)


def _service_handler(
    service: Service, result: ServiceResult, report: Progress
) -> Callable[[Message], None]:
    pacer = _Pacer(service.capacity)

    def handle(message: Message) -> None:
        pacer.wait()  # the service's database takes only so many writes per second
        order = message.value["order"]
        now = time.perf_counter()
        with result.lock:
            result.seen[order] = result.seen.get(order, 0) + 1
            result.first = result.first or now
            result.last = now
        report(service.name, 1)

    return handle
