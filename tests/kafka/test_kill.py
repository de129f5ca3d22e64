"""A consumer process killed with SIGKILL mid-stream: its group loses nothing it did not ack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import mqkit
from mqkit.testing.util import assert_quiet, collect
from tests.kafka.conftest import ROOT, committed

CHILD = """
import sys, mqkit
url, topic, group, order = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[5]
acks = int(sys.argv[4])
broker = mqkit.connect(url)
consumer = broker.consumer(topic, group=group)
print("subscribed", flush=True)
taken = []
while len(taken) < acks + 5:
    message = consumer.receive(timeout=30)
    if message is None:
        sys.exit("no message within 30 s")
    taken.append(message)
# 'reverse': ack the first `acks` messages last-first, leaving gaps until the end.
chosen = taken[:acks] if order == "forward" else list(reversed(taken[:acks]))
for message in chosen:
    message.ack()
    print("acked", message.value, flush=True)
print("holding", flush=True)
import time; time.sleep(300)
"""


def run_and_kill(url: str, topic: str, group: str, acks: int, order: str, tmp: Path) -> list[int]:
    script = tmp / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), url, topic, group, str(acks), order],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "subscribed"
        with mqkit.connect(url) as broker, broker.producer() as producer:
            for i in range(40):
                producer.send(topic, i, key=f"k{i % 5}")
        acked = []
        for line in child.stdout:
            if line.startswith("acked"):
                acked.append(int(line.split()[1]))
            if line.startswith("holding"):
                break
        assert len(acked) == acks
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    return acked


def test_killed_consumer_restarted_gets_every_unacked_and_no_acked_message(
    kafka_url: str, admin: Any, topic: str, group: str, tmp_path: Path
) -> None:
    url = kafka_url + ("&" if "?" in kafka_url else "?") + "partitions=3"
    acked = run_and_kill(url, topic, group, 15, "forward", tmp_path)
    assert sum(committed(admin, group).values()) >= len(acked)
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        rest = collect(consumer, 40 - len(acked), deadline=60)
        values = sorted(m.value for m in rest)
        assert values == sorted(set(range(40)) - set(acked))
        assert_quiet(consumer)


def test_out_of_order_acks_then_kill_lose_nothing(
    kafka_url: str, topic: str, group: str, tmp_path: Path
) -> None:
    """Acks given last-first: nothing is committed until the first one closes the gap, then
    the commit catches up; the restarted member gets exactly the unacked messages."""
    url = kafka_url + ("&" if "?" in kafka_url else "?") + "partitions=1"
    acked = run_and_kill(url, topic, group, 10, "reverse", tmp_path)
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        rest = collect(consumer, 30, deadline=60)
        values = [m.value for m in rest]
        assert sorted(values) == sorted(set(range(40)) - set(acked))
