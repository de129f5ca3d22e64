"""The envelope on STOMP, without a broker: what goes into a SEND frame and what comes back out."""

from __future__ import annotations

from pathlib import Path

from mqkit_activemq import wire
from mqkit_activemq.settings import Settings

from mqkit import envelope
from mqkit.adapter import OutgoingMessage, options_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "activemq.md"


def _as_received(sent: dict[str, str]) -> dict[str, str]:
    """What ActiveMQ hands back on MESSAGE for these SEND headers (names unescaped)."""
    unescape = {"\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\c": ":"}
    out = {}
    for name, value in sent.items():
        for k, v in unescape.items():
            name = name.replace(k, v)
        out[name] = value
    out.update(
        {
            "destination": "/queue/x",
            "message-id": "ID:1",
            "priority": "4",
            "expires": "0",
            "subscription": "s0",
            "ack": "ID:2",
            "persistent": "true",
            "content-length": "3",
            "original-destination": "/topic/VirtualTopic.t",
        }
    )
    return out


def test_reserved_header_names_are_escaped_and_come_back_exactly() -> None:
    headers = {
        "trace": "abc",
        "priority": "9",
        "type": "x",
        "JMSXGroupID": "g",
        "mqkit.key": "k",
        "mqkit.h.x": "y",
        "AMQ_SCHEDULED_DELAY": "5",
        "Content-Length": "1",
        "colon:name": "c",
        "nl\nname": "n",
        envelope.DLQ_TOPIC: "t.dlq",
        "activemq.prefetchSize": "1",
        "timestamp": "now",
        "empty": "",
    }
    message = OutgoingMessage(topic="t", body=b"abc", key="k1", headers=headers)
    sent = wire.encode(message)
    # Plain names, and the helpers' envelope fields, travel as they are.
    assert sent["trace"] == "abc" and sent[envelope.DLQ_TOPIC] == "t.dlq"
    assert sent["mqkit.key"] == "k" and sent["mqkit.h.x"] == "y"
    assert sent[wire.ESCAPED + "priority"] == "9" and "priority" not in sent
    assert sent[wire.ESCAPED + "timestamp"] == "now"
    assert sent["JMSXGroupID"] == "k1" and sent[envelope.KEY] == "k1"
    assert sent[envelope.ID] == message.id
    assert "colon\\cname" in sent
    received = _as_received(sent)
    assert wire.user_headers(received) == headers
    delivery = wire.decode("t", b"abc", received, handle=None)
    assert (delivery.id, delivery.key, delivery.attempt) == (message.id, "k1", 1)
    assert delivery.headers == headers
    assert abs(delivery.timestamp - message.timestamp) < 0.001  # milliseconds on the wire


def test_the_send_time_is_the_native_jms_timestamp() -> None:
    message = OutgoingMessage(topic="t", body=b"", timestamp=1700000000.123)
    sent = wire.encode(message)
    assert sent["timestamp"] == "1700000000123"
    assert envelope.TIMESTAMP not in sent
    assert wire.timestamp_of(sent) == 1700000000.123


def test_attempt_counts_copies_and_broker_redeliveries() -> None:
    message = OutgoingMessage(topic="t", body=b"")
    copy = wire.encode(message, attempt=3, delay_ms=1500)
    assert copy[envelope.ATTEMPT] == "3" and copy["AMQ_SCHEDULED_DELAY"] == "1500"
    assert wire.attempt_of(copy) == 3
    assert wire.attempt_of({**copy, "redelivered": "true"}) == 4
    assert wire.attempt_of({}) == 1
    assert envelope.ATTEMPT not in wire.encode(message)


def test_a_message_from_another_client_decodes() -> None:
    """No mqkit fields: the broker's message-id and JMS timestamp, every plain header kept."""
    frame = {
        "destination": "/queue/x",
        "message-id": "ID:host-1:2:-1:1:7",
        "ack": "ID:9",
        "subscription": "s0",
        "timestamp": "1700000000123",
        "priority": "4",
        "expires": "0",
        "redelivered": "false",
        "JMSXUserID": "app",
        "order": "17",
    }
    delivery = wire.decode("orders", b"{}", frame, handle=None)
    assert delivery.id == "ID:host-1:2:-1:1:7"
    assert delivery.timestamp == 1700000000.123
    assert (delivery.key, delivery.attempt) == (None, 1)
    assert delivery.headers == {"order": "17"}


def test_destinations() -> None:
    assert wire.topic_destination("orders.eu") == "/topic/VirtualTopic.orders.eu"
    # A dot would split the group into two name segments and break virtual-topic matching.
    expected = "/queue/Consumer.billing~v2.VirtualTopic.orders"
    assert wire.group_destination("orders", "billing.v2") == expected


def test_the_docs_show_the_declared_options() -> None:
    assert options_table(Settings) in DOC.read_text(encoding="utf-8")


def test_standard_fields_use_the_headers_activemq_maps_onto_jms() -> None:
    message = OutgoingMessage(
        topic="t",
        body=b'{"a": 1}',
        content_type="application/json",
        content_encoding="identity",
        correlation_id="c-1",
        reply_to="replies.x",
    )
    sent = wire.encode(message)
    assert sent["content-type"] == "application/json"
    assert sent["content-encoding"] == "identity"
    assert sent["correlation-id"] == "c-1"
    assert sent["reply-to"] == "/topic/VirtualTopic.replies.x"
    delivery = wire.decode("t", message.body, _as_received(sent), handle=None)
    assert (delivery.content_type, delivery.content_encoding) == ("application/json", "identity")
    assert (delivery.correlation_id, delivery.reply_to) == ("c-1", "replies.x")
    assert delivery.headers == {}
    assert delivery.metadata["message-id"] == "ID:1"
    assert delivery.metadata["destination"] == "/queue/x"


def test_a_reply_to_that_is_not_mqkits_stays_a_usable_destination() -> None:
    for foreign in ("/queue/replies", "/remote-temp-queue/ID:host-1:1:1", "/topic/news"):
        assert wire.reply_to_topic(foreign) == foreign
        assert wire.topic_destination(foreign) == foreign  # a reply to it goes there
    assert wire.reply_to_topic("/topic/VirtualTopic.a.b") == "a.b"


def test_typed_headers_follow_the_text_rule_and_come_back_typed() -> None:
    headers: dict[str, envelope.HeaderValue] = {
        "n": 7,
        "ratio": 0.25,
        "flag": False,
        "raw": b"\xff\x00",
        "priority": 3,
        "text": "7",
    }
    sent = wire.encode(OutgoingMessage(topic="t", body=b"", headers=headers))
    assert (sent["n"], sent["ratio"], sent["flag"], sent["raw"]) == ("7", "0.25", "false", "/wA=")
    assert sent[wire.ESCAPED + "priority"] == "3"
    delivery = wire.decode("t", b"", _as_received(sent), handle=None)
    assert delivery.headers == headers
    assert type(delivery.headers["priority"]) is int and delivery.headers["text"] == "7"


def test_only_utf8_text_goes_as_a_jms_text_message() -> None:
    def length_sent(body: bytes, content_type: str | None, encoding: str | None = None) -> bool:
        message = OutgoingMessage(
            topic="t", body=body, content_type=content_type, content_encoding=encoding
        )
        return "content-length" in wire.encode(message)

    assert not length_sent(b'{"a": "\xc3\xa9"}', "application/json")
    assert not length_sent(b"hi", "text/plain; charset=utf-8")
    assert length_sent(b"hi", "application/octet-stream")
    assert length_sent(b"hi", None)
    assert length_sent(b"a\x00b", "text/plain")  # a NUL would end a frame without a length
    assert length_sent(b"\xe9", "text/plain; charset=latin-1")
    assert length_sent(b"\xff", "text/plain")  # not UTF-8
    assert length_sent(b"{}", "application/json", "gzip")
