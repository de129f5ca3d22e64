"""The header mapping, without a broker: what goes into a SEND frame and what comes back out."""

from __future__ import annotations

from mqkit_activemq import frames
from mqkit_activemq.backend import group_destination, topic_destination

from mqkit.message import OutgoingMessage


def _as_received(sent: dict[str, str]) -> dict[str, str]:
    """What ActiveMQ hands back on MESSAGE for these SEND headers (names unescaped)."""
    unescape = {"\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\c": ":"}
    out = {}
    for name, value in sent.items():
        for k, v in unescape.items():
            name = name.replace(k, v)
        out[name] = value
    out.update({"destination": "/queue/x", "message-id": "ID:1", "priority": "4", "expires": "0",
                "subscription": "s0", "ack": "ID:2", "timestamp": "1", "persistent": "true",
                "content-length": "3"})
    return out


def test_reserved_header_names_are_escaped_and_come_back_exactly() -> None:
    headers = {
        "trace": "abc", "priority": "9", "type": "x", "JMSXGroupID": "g", "mqkit.key": "k",
        "mqkit.h.x": "y", "AMQ_SCHEDULED_DELAY": "5", "Content-Length": "1", "colon:name": "c",
        "nl\nname": "n", "mqkit-dlq-topic": "t.dlq", "empty": "",
    }
    message = OutgoingMessage(topic="t", body=b"abc", key="k1", headers=headers)
    sent = frames.send_headers(message)
    assert sent["trace"] == "abc" and sent["mqkit-dlq-topic"] == "t.dlq"  # plain names stay
    assert sent["mqkit.h.priority"] == "9" and "priority" not in sent
    assert sent["JMSXGroupID"] == "k1" and sent[frames.KEY] == "k1"
    assert "colon\\cname" in sent
    received = _as_received(sent)
    assert frames.user_headers(received) == headers
    assert frames.attempt_of(received) == 1
    assert frames.timestamp_of(received) == message.timestamp


def test_attempt_counts_copies_and_broker_redeliveries() -> None:
    message = OutgoingMessage(topic="t", body=b"")
    copy = frames.send_headers(message, attempt=3, delay_ms=1500)
    assert copy[frames.ATTEMPT] == "3" and copy["AMQ_SCHEDULED_DELAY"] == "1500"
    assert frames.attempt_of(copy) == 3
    assert frames.attempt_of({**copy, "redelivered": "true"}) == 4
    assert frames.attempt_of({}) == 1


def test_foreign_messages_get_the_broker_timestamp() -> None:
    assert frames.timestamp_of({"timestamp": "1700000000123"}) == 1700000000.123


def test_destinations() -> None:
    assert topic_destination("orders.eu") == "/topic/VirtualTopic.orders.eu"
    # A dot would split the group into two name segments and break virtual-topic matching.
    expected = "/queue/Consumer.billing~v2.VirtualTopic.orders"
    assert group_destination("orders", "billing.v2") == expected
