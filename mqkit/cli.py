"""The ``mqkit`` command: send, consume, info and the demo, on any configured backend."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

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
from mqkit.client import Broker, connect
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
def info(url: str | None) -> None:
    """Show which backend is configured, from where, and what is installed."""
    settings = resolve(url)
    parsed = parse_url(settings.url)
    console.print(f"url: [bold]{parsed.redacted()}[/] (from {settings.source})")
    console.print(f"installed backends: {', '.join(registry.installed_schemes())}")
    with _broker(url) as broker:
        console.print(f"features: {broker.features}")


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
        except json.JSONDecodeError:
            return text  # a bare word is sent as a JSON string
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
    """Send VALUES (or each line of stdin) to TOPIC; prints the message ids."""
    header_map = _parse_headers(headers)
    lines: Iterator[str] = iter(values) if values else (line.rstrip("\n") for line in sys.stdin)
    with _broker(url, fmt) as broker, broker.producer() as producer:
        count = 0
        for line in lines:
            try:
                message_id = producer.send(
                    topic, _decode_arg(line, fmt), key=key, headers=header_map
                )
            except (TypeError, ValueError, MqkitError) as exc:
                raise click.ClickException(str(exc)) from None
            click.echo(message_id)
            count += 1
        producer.flush()
    console.print(f"sent {count} message(s) to {topic}")


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
        "headers": dict(message.headers),
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
    console.print(f"received {received} message(s)")


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
def demo(url: str | None, orders: int, capacities: tuple[str, ...], timeout: float) -> None:
    """Play the order-burst scenario: the queue absorbs a peak that three services drain."""
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
@click.option("--no-raw", is_flag=True, help="Skip the raw-client baseline.")
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
    no_raw: bool,
    as_json: bool,
    report_dir: Path | None,
) -> None:
    """Measure throughput, latency, topic-count effect and mqkit's overhead per backend."""
    try:
        import matplotlib  # noqa: F401  (the report's chart: fail before measuring, not after)

        from mqkit.benchmark import report
        from mqkit.benchmark.clients import MqkitClient, raw_factory
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
        repeat=repeat,
        confirm_each=confirm_each,
    )
    targets = list(urls) or [resolve(None).url, *os.environ.get("MQKIT_BENCH_URLS", "").split()]
    results: list[Measurement] = []
    with _progress() as bars:
        for url in targets:
            name = parse_url(url).redacted()
            benches = [BackendBench(name, "mqkit", partial(MqkitClient, url), work)]
            try:
                raw = None if no_raw else raw_factory(url)
            except MqkitError as exc:
                raise click.ClickException(str(exc)) from None
            if raw is not None:
                benches.insert(0, BackendBench(name, "raw", raw, work))
            elif not no_raw:
                console.print(f"[yellow]{name}: no raw-client baseline registered[/]")
            total = len(benches[0].plan()) * repeat
            tasks = {
                id(b): bars.add_task(f"{name} {b.client}", total=total)
                for b in benches
            }
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
    except (ValueError, UnicodeDecodeError):
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


if __name__ == "__main__":  # pragma: no cover
    main()
