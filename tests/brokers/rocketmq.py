"""RocketMQ: ``adapters/rocketmq/ci/broker start`` sets the URL to the RocketMQ 5 *test server*
(``tests/rocketmq/rocketmq_test_server.py``, a gRPC server speaking the proxy's protocol — not a
broker). With Docker and no URL, testcontainers starts Apache RocketMQ 5 (name server, broker,
proxy) from ``compose.yaml`` and creates topics and FIFO consumer groups with ``mqadmin`` as the
tests need them, since a RocketMQ 5 proxy creates no topics for its clients."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

ENV = "MQKIT_TEST_ROCKETMQ_URL"
SERVICES = ["rocketmq-namesrv", "rocketmq-broker", "rocketmq-proxy"]
NAMESRV = "rocketmq-namesrv:9876"


@contextlib.contextmanager
def container() -> Iterator[str]:
    import importlib

    from testcontainers.compose import (  # type: ignore[import-not-found,unused-ignore]
        DockerCompose,
    )

    import mqkit

    mqkit_rocketmq = importlib.import_module("mqkit_rocketmq")

    root = Path(__file__).resolve().parents[2]
    compose = DockerCompose(str(root), compose_file_name="compose.yaml", services=SERVICES)

    def provision(kind: str, name: str) -> None:
        if kind == "topic":
            command = ["updateTopic", "-t", name, "-a", "+message.type=MIXED"]
        else:  # consumer groups are FIFO so that messages of one key stay in order
            command = ["updateSubGroup", "-g", name, "-o", "true"]
        out, err, code = compose.exec_in_container(
            ["sh", "mqadmin", *command, "-n", NAMESRV, "-c", "DefaultCluster"],
            service_name="rocketmq-broker",
        )
        if code != 0:
            raise RuntimeError(f"mqadmin {' '.join(command)} failed ({code}): {err or out}")

    with compose:
        url = "rocketmq://127.0.0.1:8081?visibility_timeout=10"
        deadline = time.monotonic() + 180
        while True:
            try:
                mqkit.connect(url).close()
                break
            except mqkit.MqkitError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        mqkit_rocketmq.set_provisioner(provision)
        try:
            yield url
        finally:
            mqkit_rocketmq.set_provisioner(None)
