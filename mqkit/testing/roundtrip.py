"""A user's script: only the public interface, the backend chosen by URL alone.

    python -m mqkit.testing.roundtrip sqlite:///demo.db
    python -m mqkit.testing.roundtrip amqp://guest:guest@127.0.0.1:5672/

The conformance suite runs it on every backend, unchanged but for the URL.

Sends keyed orders with headers, consumes them, nacks one and sees it again with attempt 2,
leaves some unacked when a consumer closes and sees them come back to the group.
"""

from __future__ import annotations

import sys
import uuid

import mqkit


def main(url: str) -> None:
    run = uuid.uuid4().hex[:8]
    topic, group = f"orders-{run}", f"billing-{run}"
    with mqkit.connect(url) as broker:
        consumer = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            for n in range(6):
                producer.send(
                    topic, {"order": n}, key=f"customer-{n % 2}", headers={"source": "shop"}
                )

        got: dict[int, mqkit.Message] = {}
        nacked = False
        while len(got) < 6:
            message = consumer.receive(timeout=30)
            assert message is not None, "a sent message did not arrive"
            assert message.headers["source"] == "shop" and message.key is not None
            if message.value["order"] == 3 and not nacked:
                nacked = True
                message.nack()
                continue
            if message.value["order"] == 3:
                assert message.attempt == 2, message.attempt
            got[message.value["order"]] = message
            message.ack()
        consumer.close()

        # At-least-once: what a consumer did not ack comes back to the group.
        first = broker.consumer(topic, group=group)
        with broker.producer() as producer:
            producer.send(topic, {"order": 99}, key="customer-9")
        held = first.receive(timeout=30)
        assert held is not None and held.value == {"order": 99}
        first.close()  # closed without ack
        second = broker.consumer(topic, group=group)
        again = second.receive(timeout=30)
        assert again is not None and again.id == held.id
        again.ack()
        second.close()
    print(f"OK {url.split('://')[0]}: 7 orders round-tripped, nack and close redelivered")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "memory://")
