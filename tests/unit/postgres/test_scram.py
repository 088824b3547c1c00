"""The SCRAM-SHA-256 exchange of the replication port, against scramp's client (libpq-like:
empty SCRAM user name) and against the wire codec's authentication phase."""

from __future__ import annotations

import struct

import pytest
from scramp import ScramClient

from electric.postgres import replies, wire
from electric.postgres.scram import AuthenticationFailed, ScramVerifier
from electric.postgres.wire import (
    BackendConnection,
    Phase,
    ProtocolError,
)

VERIFIER = ScramVerifier.from_password("s3cret", iterations=4096)


def startup(**params: str) -> bytes:
    body = struct.pack(">I", 196608) + b"".join(
        k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack(">I", len(body) + 4) + body


def message(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack(">I", len(body) + 4) + body


def initial(data: bytes, mechanism: bytes = b"SCRAM-SHA-256") -> bytes:
    return message(b"p", mechanism + b"\0" + struct.pack(">i", len(data)) + data)


def run(password: str) -> tuple[BackendConnection, bytes]:
    """One whole exchange through codec + exchange; returns the final server message."""
    conn = BackendConnection(auth_required=True)
    (start,) = conn.receive_data(startup(user="postgres", replication="database"))
    assert isinstance(start, wire.StartupMessage) and conn.phase is Phase.AUTHENTICATION
    exchange = VERIFIER.exchange()
    offer = exchange.start()
    assert offer == message(b"R", struct.pack(">i", 10) + b"SCRAM-SHA-256\0\0")
    client = ScramClient(["SCRAM-SHA-256"], "", password)
    (first,) = conn.receive_data(initial(client.get_client_first().encode()))
    challenge = exchange.on_initial_response(first)
    assert challenge[:9] == b"R" + struct.pack(">I", len(challenge) - 1) + struct.pack(">i", 11)[:4]
    client.set_server_first(challenge[9:].decode())
    (final,) = conn.receive_data(message(b"p", client.get_client_final().encode()))
    outcome = exchange.on_response(final)
    client.set_server_final(outcome[9:].decode())  # the client checks the server's signature
    return conn, outcome


def test_right_password_completes_and_queries_follow():
    conn, outcome = run("s3cret")
    assert outcome[5:9] == struct.pack(">i", 12)
    conn.authenticated()
    assert conn.phase is Phase.QUERY
    assert conn.receive_data(message(b"Q", b"IDENTIFY_SYSTEM\0")) == [wire.Query("IDENTIFY_SYSTEM")]


def test_wrong_password_fails():
    with pytest.raises(AuthenticationFailed):
        run("guess")


@pytest.mark.parametrize("mechanism, data", [
    (b"SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc"),
    (b"MD5", b"x"),
    (b"SCRAM-SHA-256", b"garbage"),
    (b"SCRAM-SHA-256", b"\xff\xfe"),
])
def test_other_mechanisms_and_garbled_messages_fail(mechanism, data):
    conn = BackendConnection(auth_required=True)
    conn.receive_data(startup(user="u"))
    exchange = VERIFIER.exchange()
    exchange.start()
    (event,) = conn.receive_data(initial(data, mechanism))
    with pytest.raises(AuthenticationFailed):
        exchange.on_initial_response(event)


def test_steps_out_of_order_fail():
    exchange = VERIFIER.exchange()
    with pytest.raises(AuthenticationFailed):
        exchange.on_response(wire.SASLResponse(b"c=biws,r=x,p=y"))


def test_anything_but_a_password_message_is_28P01_never_a_query():
    conn = BackendConnection(auth_required=True)
    with pytest.raises(ProtocolError) as exc:
        # pipelined behind the startup packet: must not come out as a Query event
        conn.receive_data(startup(user="mallory") + message(b"Q", b"IDENTIFY_SYSTEM\0"))
    assert exc.value.sqlstate == "28P01"
    assert exc.value.message == 'password authentication failed for user "mallory"'


def test_truncated_initial_response_is_28P01_and_bad_length_is_a_protocol_error():
    conn = BackendConnection(auth_required=True)
    conn.receive_data(startup(user="u"))
    with pytest.raises(ProtocolError) as exc:
        conn.receive_data(message(b"p", b"password\0"))
    assert exc.value.sqlstate == "28P01"
    conn = BackendConnection(auth_required=True)
    conn.receive_data(startup(user="u"))
    with pytest.raises(ProtocolError) as exc:
        conn.receive_data(message(b"p", b"SCRAM-SHA-256\0" + struct.pack(">i", 99) + b"n,,"))
    assert exc.value.sqlstate == "08P01"


def test_empty_password_is_refused_at_start():
    with pytest.raises(ValueError):
        ScramVerifier.from_password("")


def test_tls_offered_refuses_plaintext_after_ssl_request_and_plaintext_startup():
    ssl_request = struct.pack(">II", 8, 80877103)
    conn = BackendConnection(auth_required=True, tls_offered=True)
    with pytest.raises(ProtocolError, match="unencrypted data after SSL request"):
        conn.receive_data(ssl_request + startup(user="u"))
    conn = BackendConnection(auth_required=True, tls_offered=True)
    with pytest.raises(ProtocolError) as exc:
        conn.receive_data(startup(user="u"))
    assert exc.value.sqlstate == "28000"
    conn = BackendConnection(auth_required=True, tls_offered=True)
    assert conn.receive_data(ssl_request) == [wire.SSLRequest()]
    conn.tls_established()
    (event,) = conn.receive_data(startup(user="u"))
    assert isinstance(event, wire.StartupMessage) and conn.encrypted
    assert replies.encryption_accepted() == b"S"


def test_unauthenticated_peers_cannot_make_the_server_buffer():
    conn = BackendConnection(auth_required=True)
    conn.receive_data(startup(user="u"))
    with pytest.raises(ProtocolError) as exc:  # the header alone of a 1 MiB Query
        conn.receive_data(b"Q" + struct.pack(">I", 1 << 20))
    assert exc.value.sqlstate == "28P01"
    conn = BackendConnection(auth_required=True)
    conn.receive_data(startup(user="u"))
    with pytest.raises(ProtocolError, match="too long"):
        conn.receive_data(b"p" + struct.pack(">I", 1 << 20))
