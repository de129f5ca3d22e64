#!/usr/bin/env python3
"""Throughput of mqkit on rocketmq:// against the raw official client, same server, same run.

    python adapters/rocketmq/bench.py [URL] [--messages N] [--size BYTES]

URL defaults to $MQKIT_TEST_ROCKETMQ_URL (``adapters/rocketmq/ci/broker start`` prints it).
With the CI setup that URL is the RocketMQ 5 *test server* (tests/rocketmq/), a single Python
process: the numbers then measure the test server and the clients, not RocketMQ. Both sides
are measured with one message per receive (mqkit's default ``prefetch=1``) and with batches of
16, the raw client acking each message like mqkit does. Prints msgs/s and mqkit/raw ratios;
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

from mqkit.benchmark.clients import MqkitClient, raw_factory
from mqkit.benchmark.runner import BackendBench, Measurement, Workload


def with_param(url: str, name: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{name}={value}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", default=os.environ.get("MQKIT_TEST_ROCKETMQ_URL"))
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    if not args.url:
        parser.error("give a rocketmq:// URL or set MQKIT_TEST_ROCKETMQ_URL")
    work = Workload(messages=args.messages, size=args.size, topic_counts=(1,))
    rows: list[tuple[str, Measurement, Measurement]] = []
    for prefetch in ("1", "16"):
        url = with_param(args.url, "prefetch", prefetch)
        raw = raw_factory(url)
        if raw is None:
            sys.exit("no raw-client baseline registered for rocketmq:// (install mqkit-rocketmq)")
        results = {}
        for client, factory in (("raw", raw), ("mqkit", partial(MqkitClient, url))):
            produced, consumed = BackendBench("rocketmq", client, factory, work).throughput(1)
            assert produced.lost == 0 and consumed.duplicated == 0, (produced, consumed)
            results[client] = (produced, consumed)
        for i, test in enumerate(("produce", "consume")):
            rows.append((f"{test} (prefetch={prefetch})", results["raw"][i], results["mqkit"][i]))
    print(f"{args.messages} messages of {args.size} bytes, {args.url.split('?')[0]}")
    print(f"{'test':<26}{'raw msg/s':>12}{'mqkit msg/s':>14}{'mqkit/raw':>11}")
    for name, raw_m, mq_m in rows:
        ratio = mq_m.rate / raw_m.rate if raw_m.rate else float("nan")
        print(f"{name:<26}{raw_m.rate:>12,.0f}{mq_m.rate:>14,.0f}{ratio:>11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
