"""``mqkit dlq list GROUP`` and ``mqkit dlq replay GROUP``; added to the main command by
:func:`register`."""

from __future__ import annotations

import base64
import json
from typing import Any

import click

from mqkit.client import connect
from mqkit.errors import MqkitError
from mqkit.helpers.dlq import list_dead_letters, replay

_url = click.option(
    "--url",
    envvar="MQKIT_URL",
    default=None,
    help="Broker URL (default: $MQKIT_URL, mqkit.toml, [tool.mqkit], then the embedded one).",
)


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


@click.group("dlq")
def dlq() -> None:
    """Dead letters: messages a group gave up on (topic <group>.dlq)."""


@dlq.command("list")
@click.argument("group")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_url
@_wait
def list_command(
    group: str, limit: int, as_json: bool, url: str | None, wait: float, first_wait: float
) -> None:
    """Show GROUP's dead letters without removing them."""
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
@_url
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


def register(main: click.Group) -> None:
    """Add the ``dlq`` command group to the ``mqkit`` command."""
    main.add_command(dlq)
