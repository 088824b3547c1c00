"""The sans-I/O websocket codec (electric/satellite/websocket.py) on byte vectors: the
examples of RFC 6455 §1.3 and §5.7, masking, fragmentation, control frames, and every way a
client can break the protocol or a limit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electric.limits import ByteBudget
from electric.satellite import websocket as ws
from electric.satellite.websocket import (
    CloseReceived,
    Failure,
    FrameReader,
    Message,
    Ping,
    Pong,
)

MASK = bytes.fromhex("37fa213d")
UPGRADE = {"upgrade": "websocket", "connection": "Upgrade", "host": "x",
           "sec-websocket-version": "13", "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="}


def read(*chunks: bytes, max_message: int = 1 << 20, budget=None) -> list:
    reader = FrameReader(max_message, budget)
    out = []
    for chunk in chunks:
        reader.receive_data(chunk)
        out += list(reader.events())
    return out


def client(opcode: int, payload: bytes = b"", **kw) -> bytes:
    return ws.frame(opcode, payload, mask=MASK, **kw)


# -- handshake (RFC 6455 §1.3, §4.2) ----------------------------------------------------------


def test_rfc_handshake_example():
    reply = ws.handshake("GET", "/ws", "HTTP/1.1", UPGRADE)
    assert reply.accepted and reply.status == "101 Switching Protocols"
    assert ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in reply.headers
    assert ("Upgrade", "websocket") in reply.headers


def test_offered_subprotocols_and_extensions_are_not_echoed():
    reply = ws.handshake("GET", "/ws", "HTTP/1.1", {
        **UPGRADE, "sec-websocket-protocol": "satellite",
        "sec-websocket-extensions": "permessage-deflate"})
    assert reply.accepted
    assert not any(name.lower().startswith("sec-websocket-p") or "extensions" in name.lower()
                   for name, _ in reply.headers)


@pytest.mark.parametrize("method, path, version, headers, status", [
    ("GET", "/", "HTTP/1.1", UPGRADE, "404"),
    ("GET", "/wsx", "HTTP/1.1", UPGRADE, "404"),
    ("GET", "/ws", "HTTP/1.1", {"host": "x"}, "426"),
    ("POST", "/ws", "HTTP/1.1", UPGRADE, "426"),
    ("GET", "/ws", "HTTP/1.1", {**UPGRADE, "connection": "keep-alive"}, "426"),
    ("GET", "/ws", "HTTP/1.0", UPGRADE, "400"),
    ("GET", "/ws", "HTTP/1.1", {**UPGRADE, "sec-websocket-version": ""}, "426"),
    ("GET", "/ws", "HTTP/1.1", {**UPGRADE, "sec-websocket-version": "99"}, "400"),
    ("GET", "/ws", "HTTP/1.1", {**UPGRADE, "sec-websocket-key": "!!"}, "400"),
    ("GET", "/ws", "HTTP/1.1", {**UPGRADE, "sec-websocket-key": "c2hvcnQ="}, "400"),
])
def test_refused_handshakes(method, path, version, headers, status):
    reply = ws.handshake(method, path, version, headers)
    assert not reply.accepted and reply.status.startswith(status)
    assert reply.body.endswith(b"\n")
    if status == "426" and "upgrade" not in headers:
        assert ("Upgrade", "websocket") in reply.headers


# -- frames (RFC 6455 §5.7 examples) ----------------------------------------------------------


def test_rfc_examples_server_frames():
    assert ws.frame(ws.TEXT, b"Hello") == bytes.fromhex("810548656c6c6f")
    assert ws.frame(ws.TEXT, b"Hel", fin=False) + ws.frame(ws.CONTINUATION, b"lo") == \
        bytes.fromhex("010348656c80026c6f")
    assert ws.frame(ws.PING, b"Hello") == bytes.fromhex("890548656c6c6f")
    assert ws.binary_frame(b"\0" * 256)[:4] == bytes.fromhex("827e0100")
    assert ws.binary_frame(b"\0" * 65536)[:10] == bytes.fromhex("827f0000000000010000")


def test_rfc_examples_masked_client_frames():
    assert read(bytes.fromhex("818537fa213d7f9f4d5158")) == [Message(b"Hello", text=True)]
    assert read(bytes.fromhex("8a8537fa213d7f9f4d5158")) == [Pong(b"Hello")]
    assert client(ws.TEXT, b"Hello") == bytes.fromhex("818537fa213d7f9f4d5158")


def test_lengths_7_16_and_64_bit():
    for n in (0, 125, 126, 65535, 65536, 70000):
        payload = bytes(range(256)) * (n // 256) + bytes(n % 256)
        assert read(client(ws.BINARY, payload)) == [Message(payload)]


def test_fragmented_message_with_a_ping_in_between():
    events = read(client(ws.BINARY, b"ab", fin=False), client(ws.PING, b"p"),
                  client(ws.CONTINUATION, b"cd", fin=False), client(ws.CONTINUATION, b"e"))
    assert events == [Ping(b"p"), Message(b"abcde")]


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=5), st.integers(1, 17))
@settings(max_examples=60, deadline=None)
def test_any_split_of_the_stream_gives_the_same_events(payloads, step):
    stream = b"".join(client(ws.BINARY, p) for p in payloads) + client(ws.CLOSE, b"\x03\xe8")
    chunks = [stream[i:i + step] for i in range(0, len(stream), step)]
    expected = [Message(p) for p in payloads] + [CloseReceived(1000, "", ws.close_frame(1000))]
    assert read(*chunks) == expected


def test_wanted_asks_for_header_then_payload():
    reader = FrameReader(1 << 20)
    assert reader.wanted() == 2
    data = client(ws.BINARY, b"x" * 300)  # 2 + 2 length + 4 mask + 300
    reader.receive_data(data[:2])
    assert list(reader.events()) == [] and reader.wanted() == 6
    reader.receive_data(data[2:8])
    assert list(reader.events()) == [] and reader.wanted() == 300
    reader.receive_data(data[8:100])
    assert list(reader.events()) == [] and reader.wanted() == 208
    reader.receive_data(data[100:])
    assert list(reader.events()) == [Message(b"x" * 300)] and reader.wanted() == 2


def test_text_is_delivered_unvalidated_for_the_session_to_refuse():
    assert read(client(ws.TEXT, b"\xff\xfe")) == [Message(b"\xff\xfe", text=True)]


# -- close ------------------------------------------------------------------------------------


def test_close_frames_and_replies():
    assert read(client(ws.CLOSE)) == [CloseReceived(None, "", b"\x88\x00")]
    (close,) = read(client(ws.CLOSE, b"\x03\xe9bye"))
    assert close == CloseReceived(1001, "bye", bytes.fromhex("880203e9"))  # echoed
    assert ws.close_frame(None) == b"\x88\x00"
    assert ws.close_frame(1013, "slow") == b"\x88\x06\x03\xf5slow"
    assert len(ws.close_frame(1000, "é" * 100)) <= 2 + 125


def test_nothing_after_close():
    assert read(client(ws.CLOSE), client(ws.BINARY, b"late")) == \
        [CloseReceived(None, "", ws.close_frame(None))]


def test_after_our_close_only_the_peers_close_counts_and_needs_no_answer():
    reader = FrameReader(1 << 20)
    reader.receive_data(client(ws.BINARY, b"before"))
    assert list(reader.events()) == [Message(b"before")]
    reader.sent_close()
    reader.receive_data(client(ws.BINARY, b"late") + client(ws.PING, b"p")
                        + client(ws.CLOSE, b"\x03\xe8"))
    assert list(reader.events()) == [CloseReceived(1000, "", b"")]


# -- broken protocol and limits -----------------------------------------------------------------


@pytest.mark.parametrize("data, code", [
    (client(ws.BINARY, b"x", rsv=4), 1002),  # reserved bits
    (client(ws.BINARY, b"x", rsv=1), 1002),
    (ws.frame(ws.BINARY, b"x"), 1002),  # unmasked
    (client(3, b"x"), 1002),  # unknown data opcode
    (client(11, b"x"), 1002),  # unknown control opcode
    (client(ws.PING, b"x", fin=False), 1002),  # fragmented control frame
    (client(ws.PING, b"x" * 126), 1002),  # control frame too long
    (client(ws.CONTINUATION, b"x"), 1002),  # continuation without a message
    (client(ws.BINARY, b"a", fin=False) + client(ws.TEXT, b"b"), 1002),  # message in message
    (client(ws.CLOSE, b"\x03"), 1002),  # 1-byte close payload
    (client(ws.CLOSE, b"\x03\xed"), 1002),  # 1005 may not be sent
    (client(ws.CLOSE, b"\x07\xd0"), 1002),  # 2000: unassigned
    (client(ws.CLOSE, b"\x03\xe8\xff\xfe"), 1007),  # reason not UTF-8
    (bytes.fromhex("82ff8000000000000000"), 1002),  # 64-bit length with the high bit set
])
def test_protocol_errors_close_with_their_code(data, code):
    events = read(data + client(ws.BINARY, b"after"))
    assert len(events) == 1 and isinstance(events[0], Failure), events
    assert events[0].code == code and events[0].reason


def test_too_big_is_refused_on_the_header_before_any_payload():
    header = bytes([0x82, 0x80 | 127]) + (2**40).to_bytes(8, "big") + MASK
    (failure,) = read(header, max_message=1024)
    assert failure == Failure(1009, "message larger than 1024 bytes")
    # fragments count together
    events = read(client(ws.BINARY, b"a" * 600, fin=False), client(ws.CONTINUATION, b"b" * 600),
                  max_message=1024)
    assert [type(e) for e in events] == [Failure] and events[0].code == 1009


def test_budget_reserved_on_the_header_and_released_with_the_message():
    budget = ByteBudget(1000)
    reader = FrameReader(1 << 20, budget)
    data = client(ws.BINARY, b"x" * 600)
    reader.receive_data(data[:8])
    assert list(reader.events()) == [] and budget.used == 600  # before the payload
    other = FrameReader(1 << 20, budget)
    other.receive_data(client(ws.BINARY, b"y" * 600)[:8])
    (failure,) = list(other.events())
    assert failure.code == 1013 and budget.used == 600
    reader.receive_data(data[8:])
    assert list(reader.events()) == [Message(b"x" * 600)] and budget.used == 0


def test_release_returns_what_an_unfinished_message_reserved():
    budget = ByteBudget(1000)
    reader = FrameReader(1 << 20, budget)
    reader.receive_data(client(ws.BINARY, b"x" * 500)[:20])
    assert list(reader.events()) == [] and budget.used == 500
    reader.release()
    assert budget.used == 0
