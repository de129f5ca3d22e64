"""ActiveMQ Classic over STOMP (adapter ``mqkit-activemq``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

ENV = "MQKIT_TEST_ACTIVEMQ_URL"


@contextlib.contextmanager
def container() -> Iterator[str]:
    """ActiveMQ Classic from its official image, with STOMP published (needs Docker)."""
    from testcontainers.core.container import DockerContainer  # type: ignore[import-not-found,unused-ignore]
    from testcontainers.core.waiting_utils import wait_for_logs  # type: ignore[import-not-found,unused-ignore]

    image = (
        DockerContainer("apache/activemq-classic:5.18.6")
        .with_exposed_ports(61613)
        .with_env("ACTIVEMQ_CONNECTION_USER", "mqkit")
        .with_env("ACTIVEMQ_CONNECTION_PASSWORD", "mqkit")
    )
    with image as amq:
        wait_for_logs(amq, r"Apache ActiveMQ .* started", timeout=120)
        host = amq.get_container_host_ip()
        port = amq.get_exposed_port(61613)
        yield f"stomp://mqkit:mqkit@{host}:{port}"
