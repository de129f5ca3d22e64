"""Ask a Kafka-protocol broker for its metadata, using only the standard library.

    python3 probe.py HOST PORT [TIMEOUT]

Exits 0 once a Metadata (v1) request is answered with at least one broker, 1 otherwise. The
broker script uses it to wait until the broker really serves Kafka requests, not merely until
its port accepts connections.
"""

from __future__ import annotations

import socket
import struct
import sys
import time


def metadata_brokers(host: str, port: int, timeout: float = 2.0) -> int:
    """Send Metadata v1 (all topics) and return how many brokers the answer lists."""
    client_id = b"mqkit-probe"
    correlation = 7
    # request header v1: api_key=3 (Metadata), api_version=1, correlation id, client id;
    # body v1: topics = null array (-1) -> all topics.
    body = struct.pack(">hhih", 3, 1, correlation, len(client_id)) + client_id
    body += struct.pack(">i", -1)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _read(sock, 4))[0]
        payload = _read(sock, size)
    got_correlation, brokers = struct.unpack(">ii", payload[:8])
    if got_correlation != correlation:
        raise OSError(f"answer has correlation id {got_correlation}, expected {correlation}")
    return int(brokers)


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise OSError("connection closed by the broker")
        data += chunk
    return data


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    deadline = time.monotonic() + (float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
    while True:
        try:
            if metadata_brokers(host, port) > 0:
                return 0
            error = "no broker listed in the metadata answer"
        except (OSError, struct.error) as exc:
            error = str(exc) or type(exc).__name__
        if time.monotonic() >= deadline:
            print(
                f"probe: {host}:{port} does not answer Kafka metadata requests: {error}",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
