"""The ``mqkit`` command: send, consume, info and the demo, on any configured backend."""

from __future__ import annotations

import base64
import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

try:
    import click
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table
except ModuleNotFoundError as exc:  # the library works without them; the command does not
    if exc.name not in ("click", "rich"):
        raise
    raise SystemExit(
        f"mqkit: the command line needs the 'cli' extra ({exc.name} is missing): "
        "pip install 'mqkit[cli]'"
    ) from None

from mqkit import registry
from mqkit.client import Broker, bounded, connect
from mqkit.config import parse_url, resolve
from mqkit.errors import MqkitError
from mqkit.message import Message

console = Console(stderr=True)
url_option = click.option(
    "--url",
    envvar="MQKIT_URL",
    default=None,
    help="Broker URL (default: $MQKIT_URL, mqkit.toml, [tool.mqkit], then sqlite:///.mqkit/mqkit.db).",
)
format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "text", "bytes"]),
    default="json",
    show_default=True,
    help="How values are encoded on the wire.",
)


def _bench_missing(exc: ModuleNotFoundError) -> click.ClickException:
    """The bench/demo machinery needs the 'bench' extra; the library itself never imports it."""
    if exc.name is None or exc.name.split(".")[0] == "mqkit":
        raise exc
    return click.ClickException(
        f"this command needs the 'bench' extra ({exc.name} is missing): pip install 'mqkit[bench]'"
    )


@contextmanager
def _broker(url: str | None, fmt: str = "json") -> Iterator[Broker]:
    try:
        with connect(url, serializer=fmt) as broker:
            yield broker
    except MqkitError as exc:
        raise click.ClickException(str(exc)) from None


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:>18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@click.group()
@click.version_option(package_name="mqkit")
def main() -> None:
    """mqkit: one producer/consumer interface over many message brokers."""


@main.command()
@url_option
@click.option(
    "--spool",
    "spools",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="A producer's spool file (spool=...): show how many messages wait in it. Repeatable.",
)
def info(url: str | None, spools: tuple[str, ...]) -> None:
    """Show which backend is configured, from where, and what is installed."""
    if spools:
        from mqkit.spool import pending_in

        for path in spools:
            try:
                console.print(f"spool {path}: {pending_in(path)} message(s) waiting")
            except Exception as exc:
                raise click.ClickException(f"cannot read the spool {path!r}: {exc}") from None
    settings = resolve(url)
    parsed = parse_url(settings.url)
    console.print(f"url: [bold]{parsed.redacted()}[/] (from {settings.source})")
    console.print(f"installed backends: {', '.join(registry.installed_schemes())}")
    with _broker(url) as broker:
        console.print(f"features: {broker.features}")


@main.command()
@click.argument("target", required=False, metavar="[URL]")
@url_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for connecting and the answer, together.",
)
def ping(target: str | None, url: str | None, timeout: float) -> None:
    """Check that the broker at URL answers and takes the credentials.

    Exits 0 (one line: the round trip) or 1 (one line: why) within TIMEOUT seconds, whatever
    the client library would wait: for scripts and container health checks."""
    chosen = target or url
    try:
        where = parse_url(resolve(chosen).url).redacted()
    except MqkitError as exc:
        _ping_exit(1, f"mqkit ping: {exc}")
    started = time.monotonic()
    answer: list[float] = []

    def check() -> None:
        broker = connect(chosen)
        try:
            left = max(0.1, timeout - (time.monotonic() - started))
            answer.append(broker.ping(timeout=left))
        finally:
            broker.close()

    try:
        bounded(check, timeout, where)
    except MqkitError as exc:
        _ping_exit(1, f"mqkit ping: {where} is not usable: {exc}")
    _ping_exit(0, f"mqkit ping: {where} ok ({answer[0] * 1000:.1f} ms)")


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\}\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
#: What ``mqkit top`` shows, per (group, topic): column -> Prometheus metric name.
_TOP_COLUMNS = {
    "consumed": "messaging_client_consumed_messages_total",
    "processed": "mqkit_messages_processed_total",
    "failed": "mqkit_messages_failed_total",
    "retried": "mqkit_messages_retried_total",
    "dead-lettered": "mqkit_messages_dead_lettered_total",
    "duplicates": "mqkit_messages_duplicates_total",
    "backlog": "mqkit_queue_depth",
}
#: Columns shown as a rate per second; the others as totals.
_TOP_RATES = ("consumed", "processed")


def _scrape(endpoint: str) -> dict[tuple[str, str], dict[str, float]]:
    """mqkit's counters on a Prometheus endpoint, summed per (group, topic) and column."""
    import urllib.request

    with urllib.request.urlopen(endpoint, timeout=5) as answer:
        text = answer.read().decode("utf-8", "replace")
    columns = {metric: column for column, metric in _TOP_COLUMNS.items()}
    out: dict[tuple[str, str], dict[str, float]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) not in columns:
            continue
        labels = dict(_LABEL.findall(match.group(2)))
        where = (
            labels.get("messaging_consumer_group_name", "?"),
            labels.get("messaging_destination_name", "?"),
        )
        row = out.setdefault(where, {})
        column = columns[match.group(1)]
        value = float(match.group(3))
        if column == "backlog":  # every process of a group reports the same backlog
            row[column] = max(row.get(column, 0.0), value)
        else:
            row[column] = row.get(column, 0.0) + value
    return out


def _top_table(
    before: dict[tuple[str, str], dict[str, float]],
    after: dict[tuple[str, str], dict[str, float]],
    seconds: float,
) -> Table:
    table = Table(title="mqkit top", title_justify="left")
    table.add_column("group")
    table.add_column("topic")
    for column in _TOP_COLUMNS:
        table.add_column(f"{column}/s" if column in _TOP_RATES else column, justify="right")
    for where in sorted(after):
        now, then = after[where], before.get(where, {})
        cells = []
        for column in _TOP_COLUMNS:
            value = now.get(column)
            if column in _TOP_RATES:
                cells.append(f"{((value or 0.0) - then.get(column, 0.0)) / seconds:,.1f}")
            else:
                none = "n/a" if column == "backlog" else "0"  # a counter not counted yet: 0
                cells.append(none if value is None else f"{value:,.0f}")
        table.add_row(*where, *cells)
    return table


@main.command()
@click.argument("endpoint", metavar="METRICS_URL")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
@click.option("--once", is_flag=True, help="Print one table (rates over one interval), exit.")
def top(endpoint: str, interval: float, once: bool) -> None:
    """Per-group rates and error counts of running Apps, live in the terminal.

    Reads mqkit's metrics from a Prometheus endpoint (OpenTelemetry's Prometheus exporter,
    see examples/prometheus_metrics.py): messages consumed and processed per second, the
    totals failed, retried, dead-lettered and skipped as duplicates, and the group's backlog
    (messages not acked yet; n/a where the backend cannot tell), per group and topic."""
    from rich.live import Live

    try:
        before, at = _scrape(endpoint), time.monotonic()
        if once:
            time.sleep(interval)
            wide = Console(width=max(Console().width, 120))
            wide.print(_top_table(before, _scrape(endpoint), time.monotonic() - at))
            return
        with Live(_top_table(before, before, 1.0), console=Console(), auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                after, now = _scrape(endpoint), time.monotonic()
                live.update(_top_table(before, after, now - at), refresh=True)
                before, at = after, now
    except OSError as exc:
        raise click.ClickException(f"cannot read {endpoint}: {exc}") from None
    except KeyboardInterrupt:
        pass


def _ping_exit(code: int, line: str) -> NoReturn:
    """Print ``line`` and leave at once: a client library's threads or exit handlers, still
    waiting for a silent host, must not hold the process past its timeout."""
    click.echo(line)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _parse_headers(values: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--header")
        headers[name] = value
    return headers


def _decode_arg(text: str, fmt: str) -> Any:
    if fmt == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(
                f"{text!r} is not JSON ({exc.msg} at character {exc.pos}); quote a string "
                """as '"text"', or send it as text with --format text""",
                param_hint="VALUES",
            ) from None
    if fmt == "bytes":
        return text.encode()
    return text


@main.command()
@click.argument("topic")
@click.argument("values", nargs=-1)
@click.option("--key", default=None, help="Ordering key: messages with one key stay in order.")
@click.option("--header", "headers", multiple=True, help="NAME=VALUE, repeatable.")
@url_option
@format_option
def send(
    topic: str,
    values: tuple[str, ...],
    key: str | None,
    headers: tuple[str, ...],
    url: str | None,
    fmt: str,
) -> None:
    """Send VALUES (or each line of stdin) to TOPIC; prints the message ids.

    With --format json (the default) each value must be JSON: a mistyped one is an error, not a
    string. Messages reach the groups that exist when they are sent (``mqkit declare``).
    """
    header_map = _parse_headers(headers)
    outgoing: Iterator[Any]
    if values:  # every argument is checked before anything is sent
        outgoing = iter([_decode_arg(text, fmt) for text in values])
    else:
        outgoing = (_decode_arg(line.rstrip("\n"), fmt) for line in sys.stdin)
    with _broker(url, fmt) as broker, broker.producer() as producer:
        count = 0
        for value in outgoing:
            try:
                message_id = producer.send(topic, value, key=key, headers=header_map)
            except (TypeError, ValueError, MqkitError) as exc:
                raise click.ClickException(str(exc)) from None
            click.echo(message_id)
            count += 1
        producer.flush()
        retains = broker.features.retains_without_group
    console.print(f"sent {count} message(s) to {topic}")
    if not retains:
        console.print(
            f"note: on this backend only groups that already exist receive them; a group "
            f"created later does not see these (create it first: mqkit declare {topic} "
            "--group GROUP)"
        )


@main.command()
@click.argument("topics", nargs=-1, required=True)
@click.option("--group", "groups", multiple=True, required=True, help="Group; repeatable.")
@url_option
def declare(topics: tuple[str, ...], groups: tuple[str, ...], url: str | None) -> None:
    """Create GROUPs of TOPICS ahead of time, so messages sent from now on are kept for them."""
    with _broker(url) as broker:
        for group in groups:
            broker.declare(topics, group=group)
            console.print(f"group {group} of {', '.join(topics)} exists")


def _render(message: Message, fmt: str) -> dict[str, Any]:
    value: Any
    if message.error is not None:
        value = None
    elif fmt == "bytes":
        value = base64.b64encode(message.body).decode()
    else:
        value = message.value
    out: dict[str, Any] = {
        "topic": message.topic,
        "id": message.id,
        "key": message.key,
        "headers": {
            name: base64.b64encode(v).decode() if isinstance(v, bytes) else v
            for name, v in message.headers.items()
        },
        "content_type": message.content_type,
        "correlation_id": message.correlation_id,
        "reply_to": message.reply_to,
        "attempt": message.attempt,
        "timestamp": message.timestamp,
        "value": value,
    }
    if message.error is not None:
        out["error"] = str(message.error)
        out["body_base64"] = base64.b64encode(message.body).decode()
    return out


@main.command()
@click.argument("topics", nargs=-1, required=True)
@click.option("--group", required=True, help="Consumer group; each group gets every message.")
@click.option("--count", type=int, default=None, help="Stop after this many messages.")
@click.option("--timeout", type=float, default=None, help="Stop after this many idle seconds.")
@click.option("--no-ack", is_flag=True, help="Give messages back instead of acking them.")
@url_option
@format_option
def consume(
    topics: tuple[str, ...],
    group: str,
    count: int | None,
    timeout: float | None,
    no_ack: bool,
    url: str | None,
    fmt: str,
) -> None:
    """Print messages of TOPICS as JSON lines, acking each after it is printed."""
    received = 0
    with _broker(url, fmt) as broker, broker.consumer(topics, group=group) as consumer:
        try:
            while count is None or received < count:
                message = consumer.receive(timeout=timeout)
                if message is None:
                    break
                click.echo(json.dumps(_render(message, fmt), ensure_ascii=False))
                if no_ack:
                    message.nack()
                else:
                    message.ack()
                received += 1
        except KeyboardInterrupt:
            pass
        retains = broker.features.retains_without_group
    console.print(f"received {received} message(s)")
    if received == 0 and not retains:
        console.print(
            f"note: a group receives only what was sent after it existed; if {group!r} is "
            f"new, send again now, or create groups ahead with mqkit declare TOPIC --group "
            f"{group}"
        )


@main.command()
@url_option
@click.option("--orders", type=int, default=5000, show_default=True, help="Orders in the burst.")
@click.option(
    "--capacity",
    "capacities",
    multiple=True,
    help="SERVICE=RATE orders/s a service can process (stock, customer-trail, customer-status).",
)
@click.option("--timeout", type=float, default=300.0, show_default=True)
@click.option(
    "--scenario",
    type=click.Choice(["burst", "consistency", "outage"]),
    default="burst",
    show_default=True,
    help="burst: a peak absorbed by the queue; consistency: orders and their messages "
    "committed together through the outbox, a relay crash and a failing service; outage: the "
    "broker down in the middle of the burst, the producer's spool keeps accepting.",
)
@click.option(
    "--db",
    default=None,
    help="consistency: the order service's database (postgresql:// DSN or SQLite path; "
    "default a temporary SQLite file).",
)
@click.option(
    "--fail-for",
    type=float,
    default=3.0,
    show_default=True,
    help="consistency: seconds customer-status's database is down.",
)
@click.option("--outage", type=float, default=10.0, show_default=True, help="outage: seconds down.")
@click.option("--stop-command", default=None, help="outage: shell command stopping the broker.")
@click.option("--start-command", default=None, help="outage: shell command starting it again.")
def demo(
    url: str | None,
    orders: int,
    capacities: tuple[str, ...],
    timeout: float,
    scenario: str,
    db: str | None,
    fail_for: float,
    outage: float,
    stop_command: str | None,
    start_command: str | None,
) -> None:
    """Play a scenario (the order burst by default) and print how the services converge."""
    if scenario != "burst":
        _producer_demo(
            url, scenario, orders, timeout, db, fail_for, outage, stop_command, start_command
        )
        return
    try:
        from mqkit.demo import DEFAULT_SERVICES, Service, run_demo
    except ModuleNotFoundError as exc:
        raise _bench_missing(exc) from None

    rates = {s.name: s.capacity for s in DEFAULT_SERVICES}
    for item in capacities:
        name, _, rate = item.partition("=")
        if name not in rates:
            raise click.BadParameter(f"unknown service {name!r}", param_hint="--capacity")
        rates[name] = float(rate)
    services = tuple(Service(name, rate) for name, rate in rates.items())
    with _broker(url) as broker:
        console.print(
            f"[bold]order service[/] publishes {orders} orders in one burst to [bold]"
            f"{broker.url.redacted()}[/]; stock, customer-trail and customer-status "
            "drain them at their own pace"
        )
        with _progress() as bars:
            tasks = {"orders": bars.add_task("orders accepted", total=orders)}
            for service in services:
                tasks[service.name] = bars.add_task(service.name, total=orders)
            result = run_demo(
                broker,
                orders=orders,
                services=services,
                timeout=timeout,
                progress=lambda task, n: bars.advance(tasks[task], n),
            )
    table = Table(title=f"demo on {result.url}")
    for column in ("stage", "capacity/s", "rate/s", "processed", "lost", "duplicated"):
        table.add_column(column, justify="right" if column != "stage" else "left")
    table.add_row(
        "orders accepted", "-", f"{result.accepted_rate:,.0f}", str(result.orders), "-", "-"
    )
    for s in result.services:
        table.add_row(
            s.name,
            f"{s.capacity:,.0f}",
            f"{s.rate:,.0f}",
            str(s.processed),
            str(result.lost(s)),
            str(s.duplicated),
        )
    Console().print(table)
    lost = sum(result.lost(done) for done in result.services)
    dups = sum(done.duplicated for done in result.services)
    console.print(
        f"peak backlog {result.max_backlog} orders; accepted {result.accepted_rate:,.0f}/s vs "
        f"slowest service {min(done.rate for done in result.services):,.0f}/s; "
        f"{lost} lost, {dups} duplicated"
    )
    if not result.ok:
        sys.exit(1)


def _producer_demo(
    url: str | None,
    scenario: str,
    orders: int,
    timeout: float,
    db: str | None,
    fail_for: float,
    outage: float,
    stop_command: str | None,
    start_command: str | None,
) -> None:
    """The consistency and outage scenarios (:mod:`mqkit.demo_producer`)."""
    import logging

    from mqkit.demo_producer import run_consistency, run_outage

    logging.getLogger("mqkit").setLevel(logging.ERROR)  # the timeline tells the story
    with _broker(url) as broker:
        console.print(f"[bold]{scenario}[/] scenario on [bold]{broker.url.redacted()}[/]")
        try:
            if scenario == "consistency":
                result = run_consistency(
                    broker,
                    db=db,
                    orders=orders,
                    fail_for=fail_for,
                    timeout=timeout,
                    log=console.print,
                )
            else:
                result = run_outage(
                    broker,
                    orders=orders,
                    outage=outage,
                    stop_command=stop_command,
                    start_command=start_command,
                    timeout=timeout,
                    log=console.print,
                )
        except (ValueError, MqkitError) as exc:
            raise click.ClickException(str(exc)) from None
    table = Table(title=f"{scenario} on {result.url}: {len(result.committed)} orders committed")
    for column in (
        "service",
        "processed",
        "lost",
        "rolled back but seen",
        "duplicated effects",
        "copies dropped",
        "failed attempts",
    ):
        table.add_column(column, justify="right" if column != "service" else "left")
    for s in result.services:
        table.add_row(
            s.name,
            str(len(s.effects)),
            str(result.lost(s)),
            str(result.phantoms(s)),
            str(result.duplicated(s)),
            str(s.dropped_copies),
            str(s.failures),
        )
    Console().print(table)
    console.print(
        "every service converged: 0 lost, 0 duplicated"
        if result.ok
        else "[red]the services did not converge[/]"
    )
    if not result.ok:
        sys.exit(1)


def _instrument_with_sdk() -> None:
    """``bench --otel``: spans and metrics recorded as in production, then dropped."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from mqkit.telemetry import MqkitInstrumentor
    except ModuleNotFoundError as exc:
        raise click.ClickException(
            f"--otel needs opentelemetry-sdk ({exc.name} is missing): "
            "pip install 'mqkit[otel]' opentelemetry-sdk"
        ) from None

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    MqkitInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)


def _advance(bars: Progress, tasks: dict[int, TaskID], bench: object) -> None:
    bars.advance(tasks[id(bench)], 1)


@main.command()
@click.option("--url", "urls", multiple=True, help="Backend URL; repeat to compare backends.")
@click.option("--messages", type=int, default=10_000, show_default=True)
@click.option("--size", type=int, default=1024, show_default=True, help="Body size in bytes.")
@click.option("--topics", default="1,10,100", show_default=True, help="Topic counts to compare.")
@click.option("--producers", type=int, default=1, show_default=True)
@click.option("--consumers", type=int, default=1, show_default=True)
@click.option(
    "--rate",
    type=float,
    default=500.0,
    show_default=True,
    help="Offered rate (msg/s) for the latency test.",
)
@click.option("--latency-seconds", type=float, default=3.0, show_default=True)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Runs per workload, raw and mqkit taking turns; the median is shown.",
)
@click.option(
    "--confirm-each",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also send this many messages one at a time, each confirmed before the next "
    "(the 'produce-each' rows); 0: off.",
)
@click.option(
    "--timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds a run may take to receive what it sent; a client still stuck 30 s later "
    "fails the run.",
)
@click.option("--no-raw", is_flag=True, help="Skip the raw-client baseline.")
@click.option(
    "--api",
    type=click.Choice(["sync", "async"]),
    default="sync",
    show_default=True,
    help="async: also run every workload through mqkit.aio, side by side with the sync API "
    "(the 'mqkit-async' rows).",
)
@click.option(
    "--otel",
    is_flag=True,
    help="Instrument mqkit with the OpenTelemetry SDK first (spans through a batch processor "
    "to an exporter that drops them, metrics kept in memory): run with and without to see "
    "what tracing costs. Needs opentelemetry-sdk.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Write report.md, report.json and throughput.png into this directory.",
)
def bench(
    urls: tuple[str, ...],
    messages: int,
    size: int,
    topics: str,
    producers: int,
    consumers: int,
    rate: float,
    latency_seconds: float,
    repeat: int,
    confirm_each: int,
    timeout: float,
    no_raw: bool,
    api: str,
    otel: bool,
    as_json: bool,
    report_dir: Path | None,
) -> None:
    """Measure throughput, latency, topic-count effect and mqkit's overhead per backend."""
    if otel:
        _instrument_with_sdk()
    try:
        import matplotlib  # noqa: F401  (the report's chart: fail before measuring, not after)

        from mqkit.benchmark import report
        from mqkit.benchmark.clients import AsyncMqkitClient, MqkitClient, raw_factory
        from mqkit.benchmark.runner import BackendBench, Measurement, Workload, compare
    except ModuleNotFoundError as exc:
        raise _bench_missing(exc) from None

    if size < 16:
        raise click.BadParameter("at least 16 bytes", param_hint="--size")
    try:
        counts = tuple(sorted({int(k) for k in topics.split(",") if k.strip()}))
    except ValueError:
        raise click.BadParameter(
            f"{topics!r} is not a list of numbers", param_hint="--topics"
        ) from None
    work = Workload(
        messages,
        size,
        producers,
        consumers,
        counts,
        rate,
        latency_seconds,
        timeout=timeout,
        repeat=repeat,
        confirm_each=confirm_each,
    )
    targets = list(urls) or [resolve(None).url, *os.environ.get("MQKIT_BENCH_URLS", "").split()]
    results: list[Measurement] = []
    with _progress() as bars:
        for url in targets:
            name = parse_url(url).redacted()
            benches = [BackendBench(name, "mqkit", partial(MqkitClient, url), work)]
            if api == "async":
                benches.append(
                    BackendBench(name, "mqkit-async", partial(AsyncMqkitClient, url), work)
                )
            try:
                raw = None if no_raw else raw_factory(url)
            except MqkitError as exc:
                raise click.ClickException(str(exc)) from None
            if raw is not None:
                benches.insert(0, BackendBench(name, "raw", raw, work))
            elif not no_raw:
                console.print(f"[yellow]{name}: no raw-client baseline registered[/]")
            total = len(benches[0].plan()) * repeat
            tasks = {id(b): bars.add_task(f"{name} {b.client}", total=total) for b in benches}
            try:
                results += compare(benches, partial(_advance, bars, tasks))
            except MqkitError as exc:
                raise click.ClickException(f"{name}: {exc}") from None
    if not as_json:  # wide enough for every column, also when piped
        out = Console()
        Console(width=max(out.width, 150)).print(report.table(results))
    for r in report.ratios(results):
        console.print(
            f"{r['backend']} {r['test']} k={r['topics']}: mqkit {r['mqkit_rate']:,.0f}/s vs raw "
            f"{r['raw_rate']:,.0f}/s = {r['ratio']:.2f}",
            soft_wrap=True,
        )
    for r in report.async_ratios(results):
        what = f"{r['backend']} {r['test']} k={r['topics']}: async"
        if r["test"] == "latency":
            line = f"{what} p99 {r['async_p99_ms']:.1f} ms vs sync {r['sync_p99_ms']:.1f} ms"
        else:
            line = (
                f"{what} {r['async_rate']:,.0f}/s vs sync {r['sync_rate']:,.0f}/s "
                f"= {r['ratio']:.2f}"
            )
        console.print(line, soft_wrap=True)
    if as_json:
        click.echo(json.dumps(report.document(work, results), indent=2))
    if report_dir is not None:
        report.write_report(work, results, report_dir)
        console.print(f"report written to {report_dir}")
    if any(m.lost or m.duplicated for m in results):
        console.print("[red]some runs lost or duplicated messages: see the integrity column[/]")
        sys.exit(1)


# -- mqkit dlq list / replay ------------------------------------------------------------------


def _wait(fn: Any) -> Any:
    fn = click.option(
        "--first-wait",
        type=float,
        default=10.0,
        show_default=True,
        help="How long to wait for the first dead letter.",
    )(fn)
    return click.option(
        "--wait",
        type=float,
        default=1.0,
        show_default=True,
        help="Stop once no further dead letter came for this many seconds.",
    )(fn)


def _body(body: bytes) -> dict[str, Any]:
    try:
        return {"value": json.loads(body)}
    except (ValueError, RecursionError):  # not JSON (often why it is a dead letter)
        return {"body_base64": base64.b64encode(body).decode()}


@main.group("dlq")
def dlq() -> None:
    """Dead letters: messages a group gave up on (topic <group>.dlq)."""


@dlq.command("list")
@click.argument("group")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@url_option
@_wait
def list_command(
    group: str, limit: int, as_json: bool, url: str | None, wait: float, first_wait: float
) -> None:
    """Show GROUP's dead letters without removing them."""
    from mqkit.deadletter import list_dead_letters

    try:
        with connect(url) as broker:
            items = list_dead_letters(broker, group, limit=limit, wait=wait, first_wait=first_wait)
    except MqkitError as exc:
        raise click.ClickException(str(exc)) from None
    for item in items:
        info = item.info
        if as_json:
            record = {
                "id": info.original_id,
                "topic": info.topic,
                "group": info.group,
                "attempt": info.attempt,
                "error_type": info.error_type,
                "error": info.error,
                "time": info.time,
                "key": item.message.key,
                "headers": info.headers,
                "traceback": info.traceback,
                **_body(item.message.body),
            }
            click.echo(json.dumps(record, ensure_ascii=False))
        else:
            click.echo(
                f"{info.original_id}  topic={info.topic}  attempt={info.attempt}  "
                f"key={item.message.key}  {info.error_type}: {info.error}"
            )
    click.echo(f"{len(items)} dead letter(s) in {group}.dlq", err=True)


@dlq.command("replay")
@click.argument("group")
@click.option("--id", "ids", multiple=True, help="Replay only this original id (repeatable).")
@click.option("--limit", type=int, default=None, help="Replay at most this many.")
@click.option(
    "--to-topic",
    is_flag=True,
    help="Publish to the original topic (every group of it receives it) instead of to "
    "GROUP's replay topic (only GROUP receives it; needs the retry middleware on the route).",
)
@url_option
@_wait
def replay_command(
    group: str,
    ids: tuple[str, ...],
    limit: int | None,
    to_topic: bool,
    url: str | None,
    wait: float,
    first_wait: float,
) -> None:
    """Send GROUP's dead letters back to be processed again, then remove them."""
    from mqkit.deadletter import replay

    try:
        with connect(url) as broker:
            done = replay(
                broker,
                group,
                to="topic" if to_topic else "group",
                ids=set(ids) or None,
                limit=limit,
                wait=wait,
                first_wait=first_wait,
            )
    except MqkitError as exc:
        raise click.ClickException(str(exc)) from None
    for item in done:
        click.echo(f"{item.original_id} -> {item.to} ({item.new_id})")
    click.echo(f"replayed {len(done)} dead letter(s) of {group}", err=True)


@main.group("outbox")
def outbox_group() -> None:
    """The transactional outbox: publish what applications wrote into their outbox table."""


@outbox_group.command("relay")
@click.option(
    "--db",
    required=True,
    envvar="MQKIT_OUTBOX_DB",
    help="The application's database: a postgresql:// DSN, sqlite:///file.db or a file path "
    "(default: $MQKIT_OUTBOX_DB).",
)
@url_option
@click.option("--table", default="mqkit_outbox", show_default=True, help="The outbox table.")
@click.option("--batch", type=int, default=100, show_default=True, help="Rows per round.")
@click.option(
    "--lease",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds a round's rows stay leased: longer than publishing a batch takes.",
)
@click.option(
    "--poll-interval",
    type=float,
    default=5.0,
    show_default=True,
    help="Most seconds between looks at an idle table (commits wake the relay sooner).",
)
@click.option(
    "--retention",
    type=float,
    default=0.0,
    show_default=True,
    help="Keep sent rows this many seconds (0: delete them once confirmed).",
)
@click.option("--drain", is_flag=True, help="Publish what is there, then exit.")
def outbox_relay(
    db: str,
    url: str | None,
    table: str,
    batch: int,
    lease: float,
    poll_interval: float,
    retention: float,
    drain: bool,
) -> None:
    """Publish the outbox table's rows to the broker at --url until SIGINT/SIGTERM.

    Several relays on one table are safe: each key's rows are published by one relay at a
    time, in order. Each row is deleted only after the broker confirmed it; a relay killed in
    between publishes it again, under the same message id.
    """
    import signal
    import threading

    from mqkit.helpers.outbox import Relay, open_outbox

    try:
        outbox = open_outbox(db, table=table)
        relay = Relay(
            outbox,
            url,
            batch=batch,
            lease=lease,
            poll_interval=poll_interval,
            retention=retention,
        )
    except (MqkitError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        if drain:
            try:
                count = relay.drain(timeout=max(60.0, lease * 2))
            except (MqkitError, TimeoutError) as exc:
                raise click.ClickException(str(exc)) from None
            finally:
                relay.close()
            console.print(f"published {count} message(s) from {outbox.where}")
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: stop.set())
        console.print(f"relaying {outbox.where} to {relay_url(url)}; Ctrl-C stops")
        relay.run(stop)
        stats = relay.stats
        console.print(
            f"published {stats.published} message(s) in {stats.batches} batch(es), "
            f"{stats.failures} failed round(s)"
        )
    finally:
        outbox.close()


def relay_url(url: str | None) -> str:
    return parse_url(resolve(url).url).redacted()


if __name__ == "__main__":  # pragma: no cover
    main()


@main.command()
@click.option("--url", "urls", multiple=True, help="Broker URL; repeat to run against several.")
@click.option("--duration", type=float, default=60.0, show_default=True, help="Seconds of load.")
@click.option("--rate", type=float, default=200.0, show_default=True, help="Messages per second.")
@click.option("--kill-at", type=float, default=None, help="Seconds into the run: run --kill-cmd.")
@click.option("--kill-cmd", default=None, help="Shell command that stops or kills a node.")
@click.option(
    "--restart-at", type=float, default=None, help="Seconds into the run: run --restart-cmd."
)
@click.option("--restart-cmd", default=None, help="Shell command that brings the node back.")
@click.option("--keys", type=int, default=8, show_default=True, help="Distinct message keys.")
@click.option(
    "--settle",
    type=float,
    default=60.0,
    show_default=True,
    help="After the load, wait this long at most for confirmed messages still missing.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON on stdout.")
@click.option("--report", type=click.Path(), default=None, help="Write a Markdown report here.")
def chaos(
    urls: tuple[str, ...],
    duration: float,
    rate: float,
    kill_at: float | None,
    kill_cmd: str | None,
    restart_at: float | None,
    restart_cmd: str | None,
    keys: int,
    settle: float,
    as_json: bool,
    report: str | None,
) -> None:
    """Steady sequence-numbered load through mqkit while a node is killed and restarted:
    reports confirmed, received, lost (confirmed but never received), duplicates, duplicate
    side effects behind the idempotency helper, the longest unavailability and the errors the
    application saw. Exits 1 if a confirmed message was lost."""
    from mqkit.chaos import ChaosReport, run_chaos

    if (kill_at is None) != (kill_cmd is None) or (restart_at is None) != (restart_cmd is None):
        raise click.UsageError(
            "give --kill-at with --kill-cmd, and --restart-at with --restart-cmd"
        )
    if rate <= 0 or duration <= 0 or keys < 1:
        raise click.UsageError("--rate and --duration must be > 0, --keys >= 1")
    reports: list[ChaosReport] = []
    for url in urls or (None,):
        target = resolve(url).url

        def show(at: float, partial: ChaosReport) -> None:
            if int(at * 2) % 4 == 0:  # every 2 s
                console.print(
                    f"t={at:5.1f}s  confirmed {partial.confirmed}  received {partial.received}  "
                    f"not received yet {partial.lost}  errors {sum(partial.errors.values())}",
                    highlight=False,
                )

        try:
            result = run_chaos(
                target,
                duration=duration,
                rate=rate,
                kill_at=kill_at,
                restart_at=restart_at,
                kill_cmd=kill_cmd,
                restart_cmd=restart_cmd,
                keys=keys,
                settle=settle,
                progress=show,
            )
        except MqkitError as exc:
            raise click.ClickException(str(exc)) from None
        reports.append(result)
        click.echo(result.to_markdown(), err=True)
    if report is not None:
        Path(report).write_text("\n".join(r.to_markdown() for r in reports), encoding="utf-8")
    if as_json:
        click.echo("[" + ",\n".join(r.to_json() for r in reports) + "]")
    if not all(r.ok for r in reports):
        sys.exit(1)
