"""RocketMQ: ``adapters/rocketmq/ci/broker start`` starts Apache RocketMQ 5 (name server, and
broker with the gRPC proxy in one JVM) from Maven Central and sets the URL. With Docker and no
URL, testcontainers starts the same release from ``compose.yaml``. Either way the URL asks for
``auto_create``: the adapter creates the tests' topics (MIXED) and FIFO consumer groups through
the name server, since a RocketMQ 5 proxy creates no topics for its clients."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

ENV = "MQKIT_TEST_ROCKETMQ_URL"
SERVICES = ["rocketmq-namesrv", "rocketmq-broker", "rocketmq-proxy"]


@contextlib.contextmanager
def container() -> Iterator[str]:
    from testcontainers.compose import (  # type: ignore[import-not-found,unused-ignore]
        DockerCompose,
    )

    import mqkit

    root = Path(__file__).resolve().parents[2]
    compose = DockerCompose(str(root), compose_file_name="compose.yaml", services=SERVICES)
    with compose:
        url = "rocketmq://127.0.0.1:8081?visibility_timeout=10&auto_create=true&namesrv=127.0.0.1:9876"
        deadline = time.monotonic() + 180
        while True:
            try:
                mqkit.connect(url).close()
                break
            except mqkit.MqkitError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        yield url
