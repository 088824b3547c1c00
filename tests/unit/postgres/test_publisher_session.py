"""The replication session of port 5433 without sockets: bytes in, replies and actions out.

Each test feeds frontend bytes (built like libpq builds them) to a
:class:`PublisherSession`, answers its questions from a small in-memory world, and checks
the bytes it asks to send and the actions it asks for (docs/protocols.md §2)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
from scramp import ScramClient

from electric.changes import Column, Table
from electric.postgres import publisher_session as ps
from electric.postgres import replies, wire
from electric.postgres.lsn import Lsn
from electric.postgres.publisher_session import PublisherSession
from electric.postgres.scram import ScramVerifier
from tests.support.pgwire import error_fields, pg_message, sasl_initial_response, startup_packet

PASSWORD = "s3cret"
VERIFIER = ScramVerifier.from_password(PASSWORD, iterations=4096)
ITEMS = Table("public", "items", 16400,
              (Column("id", "text", part_of_identity=True), Column("odd name", "int4", 23)),
              ("id",), "d")
SUBSCRIBER = {"user": "electric", "database": "app", "replication": "database",
              "application_name": "postgres_1", "client_encoding": "UTF8"}


@dataclass
class World:
    """What the shell would answer from the registry and the offset store."""

    ready: set[str] = field(default_factory=lambda: {"postgres_1"})
    publications: dict[str, list[Table]] = field(default_factory=lambda: {"all_tables": [ITEMS]})
    asked: list[Any] = field(default_factory=list)

    def answer(self, action: ps.Action) -> Any:
        if isinstance(action, ps.IsReady):
            return action.name in self.ready
        if isinstance(action, ps.PublicationTables):
            return self.publications.get(action.name)
        if isinstance(action, ps.TableByName):
            return ITEMS if (action.schema, action.table) == ITEMS.relation else None
        if isinstance(action, ps.TableById):
            return ITEMS if action.relid == ITEMS.oid else None
        if isinstance(action, ps.XLogPos):
            return Lsn(0x1E)
        return None


def drive(session: PublisherSession, data: bytes, world: World | None = None) -> list[ps.Action]:
    """Every action the bytes call for, questions answered by ``world``."""
    world = world or World()
    out: list[ps.Action] = []
    actions = session.receive_data(data)
    answer = None
    while True:
        try:
            action = actions.send(answer)
        except StopIteration:
            return out
        out.append(action)
        answer = world.answer(action)


def sent(actions: list[ps.Action]) -> bytes:
    """The bytes the session asks to write, FATAL of a Close included, in order."""
    return b"".join(a.data if isinstance(a, ps.Send) else a.message
                    for a in actions if isinstance(a, ps.Send | ps.Close))


def backend_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    while data:
        (length,) = struct.unpack_from(">I", data, 1)
        out.append((data[:1], data[5 : 1 + length]))
        data = data[1 + length :]
    return out


def tags(actions: list[ps.Action]) -> bytes:
    return b"".join(tag for tag, _ in backend_messages(sent(actions)))


def query(text: str) -> bytes:
    return pg_message(b"Q", text.encode() + b"\0")


def new_session(**kwargs: Any) -> PublisherSession:
    return PublisherSession(verifier=VERIFIER, peer="10.0.0.1:5555", sysid="1234567890123456789",
                            pid=7, secret=9, **kwargs)


def login(session: PublisherSession, world: World | None = None, password: str = PASSWORD,
          params: dict[str, str] | None = None) -> list[ps.Action]:
    """Startup + the whole SCRAM exchange; the actions after the client-final message."""
    offer = sent(drive(session, startup_packet(params or SUBSCRIBER), world))
    assert offer == replies.authentication_sasl(["SCRAM-SHA-256"])
    client = ScramClient(["SCRAM-SHA-256"], "", password)
    challenge = sent(drive(session, sasl_initial_response(
        "SCRAM-SHA-256", client.get_client_first().encode()), world))
    client.set_server_first(challenge[9:].decode())
    return drive(session, pg_message(b"p", client.get_client_final().encode()), world)


def ready_session(world: World | None = None) -> PublisherSession:
    session = new_session()
    login(session, world)
    assert session.phase is wire.Phase.QUERY
    return session


# -- startup and authentication ---------------------------------------------------------


def test_startup_and_scram_then_startup_response():
    session = new_session()
    actions = login(session)
    [(tag, body), *rest] = backend_messages(sent(actions))
    assert tag == b"R" and body[:4] == struct.pack(">i", 12)  # SASL final
    expected = replies.startup_response(
        replies.server_parameters(SUBSCRIBER), pid=7, secret=9)
    assert b"".join(t + struct.pack(">I", len(b) + 4) + b for t, b in rest) == expected
    assert ps.IsReady("postgres_1") in actions


def test_wrong_password_is_one_fatal_28p01_and_close():
    session = new_session()
    actions = login(session, password="wrong")
    [close] = [a for a in actions if isinstance(a, ps.Close)]
    assert close.cause == "auth" and actions[-1] is close
    [(tag, body)] = backend_messages(close.message)
    assert tag == b"E"
    assert error_fields(body) | {"C": "28P01", "S": "FATAL"} == error_fields(body)
    assert error_fields(body)["M"] == 'password authentication failed for user "electric"'
    assert session.closed and list(drive(session, query("SELECT 1"))) == []


def test_query_before_authentication_is_refused_without_reading_it():
    session = new_session()
    drive(session, startup_packet(SUBSCRIBER))
    [close] = drive(session, query("IDENTIFY_SYSTEM"))
    assert isinstance(close, ps.Close) and close.cause == "protocol"
    assert error_fields(backend_messages(close.message)[0][1])["C"] == "28P01"


@pytest.mark.parametrize(
    ("params", "world", "message"),
    [
        ({**SUBSCRIBER, "replication": "false"}, World(),
         "Electric only accepts logical replication connections (replication=database)"),
        (SUBSCRIBER, World(ready=set()),
         "Electric replication is not ready, missing schema for postgres_1"),
    ],
)
def test_admission_refusals_are_fatal_08004(params, world, message):
    session = new_session()
    actions = login(session, world, params=params)
    close = actions[-1]
    assert isinstance(close, ps.Close) and close.cause == "refused"
    fields = error_fields(backend_messages(close.message)[0][1])
    assert (fields["S"], fields["C"], fields["M"]) == ("FATAL", "08004", message)


def test_ssl_request_declined_without_tls_and_accepted_with_it():
    plain = new_session()
    assert drive(plain, wire_ssl_request()) == [ps.Send(b"N")]
    tls = new_session(tls_offered=True)
    assert drive(tls, wire_ssl_request()) == [ps.Send(b"S"), ps.StartTls()]
    tls.tls_established()
    assert sent(drive(tls, startup_packet(SUBSCRIBER))) == replies.authentication_sasl(
        ["SCRAM-SHA-256"])


def wire_ssl_request() -> bytes:
    return struct.pack(">II", 8, 80877103)


# -- simple queries ---------------------------------------------------------------------


def test_identify_system_reports_sysid_position_and_database():
    session = ready_session()
    actions = drive(session, query("IDENTIFY_SYSTEM"))
    assert ps.XLogPos("postgres_1") in actions
    assert sent(actions) == replies.text_result(
        [("systemid", "text"), ("timeline", "int4"), ("xlogpos", "text"), ("dbname", "text")],
        [["1234567890123456789", 1, "0/1E", "app"]], tag="IDENTIFY_SYSTEM",
    ) + replies.ready_for_query("I")


def test_list_publication_tables_pg15_form_with_attnames():
    session = ready_session()
    text = ("SELECT DISTINCT t.schemaname, t.tablename, t.attnames FROM "
            "pg_catalog.pg_publication_tables t WHERE t.pubname IN ('all_tables')")
    actions = drive(session, query(text))
    assert ps.PublicationTables("all_tables", wait=True) in actions
    assert sent(actions) == replies.text_result(
        [("schemaname", "name"), ("tablename", "name"), ("attnames", "_name")],
        [["public", "items", '{id,"odd name"}']],
    ) + replies.ready_for_query("I")


def test_unknown_publication_is_an_error_and_the_connection_stays():
    session = ready_session()
    text = ("SELECT DISTINCT t.schemaname, t.tablename FROM "
            "pg_catalog.pg_publication_tables t WHERE t.pubname IN ('nope')")
    actions = drive(session, query(text))
    [(e, body), (z, status)] = backend_messages(sent(actions))
    assert (e, z, status) == (b"E", b"Z", b"I")
    assert error_fields(body)["C"] == "42704" and not session.closed


def test_relation_columns_mark_the_key():
    session = ready_session()
    actions = drive(session, query(
        "SELECT a.attname, a.atttypid, a.attnum = ANY(i.indkey) FROM pg_catalog.pg_attribute a "
        "LEFT JOIN pg_catalog.pg_index i ON (i.indexrelid = pg_get_replica_identity_index(16400))"
        " WHERE a.attnum > 0::pg_catalog.int2 AND NOT a.attisdropped AND a.attrelid = 16400 "
        "ORDER BY a.attnum"))
    assert ps.TableById(16400) in actions
    assert sent(actions) == replies.text_result(
        [("attname", "name"), ("atttypid", "oid"), ("?column?", "bool")],
        [["id", 25, True], ["odd name", 23, False]],
    ) + replies.ready_for_query("I")


def test_begin_and_unsupported_queries():
    session = ready_session()
    assert sent(drive(session, query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ"))) == (
        replies.command_complete("BEGIN") + replies.ready_for_query("T"))
    actions = drive(session, query("TIMELINE_HISTORY 1"))
    assert tags(actions) == b"EZ" and not session.closed
    assert any(isinstance(a, ps.Log) and a.level == "info" for a in actions)


def test_create_replication_slot_is_refused_with_a_hint():
    session = ready_session()
    actions = drive(session, query('CREATE_REPLICATION_SLOT "s" LOGICAL pgoutput NOEXPORT_SNAPSHOT'))
    [(_, body), _] = backend_messages(sent(actions))
    assert error_fields(body)["C"] == "0A000" and "copy_data = false" in error_fields(body)["M"]


# -- extended query protocol: one ERROR, skip to Sync ----------------------------------


def test_extended_query_gets_one_error_then_ready_at_sync():
    session = ready_session()
    parse = pg_message(b"P", b"\0SELECT 1\0\0\0")
    bind = pg_message(b"B", b"\0\0\0\0\0\0\0\0")
    execute = pg_message(b"E", b"\0\0\0\0\0")
    sync = pg_message(b"S", b"")
    actions = drive(session, parse + bind + execute)
    assert tags(actions) == b"E" and session.skip_until_sync
    assert error_fields(backend_messages(sent(actions))[0][1])["C"] == "0A000"
    assert sent(drive(session, sync)) == replies.ready_for_query("I")
    assert not session.skip_until_sync
    # usable again: a simple query after recovery gets its normal answer
    assert tags(drive(session, query("SHOW server_version"))) == b"TDCZ"


def test_function_call_is_an_error_and_ready():
    session = ready_session()
    assert tags(drive(session, pg_message(b"F", b"\0\0\0\0"))) == b"EZ"


# -- streaming --------------------------------------------------------------------------


START = 'START_REPLICATION SLOT "postgres_1" LOGICAL 0/1E (proto_version \'1\', publication_names \'"all_tables"\')'


def streaming_session() -> tuple[PublisherSession, list[ps.Action]]:
    session = ready_session()
    actions = drive(session, query(START))
    return session, actions


def test_start_replication_starts_streaming_from_the_lsn():
    session, actions = streaming_session()
    assert actions[-1] == ps.StartStreaming("postgres_1", 0x1E, wire.copy_both_response())
    assert ps.IsReady("postgres_1") in actions
    assert session.phase is wire.Phase.COPY_BOTH


def test_start_replication_of_an_unknown_slot_is_an_error():
    session = ready_session()
    actions = drive(session, query(START.replace("postgres_1", "other")))
    [(_, body), _] = backend_messages(sent(actions))
    assert error_fields(body)["C"] == "42704"
    assert session.phase is wire.Phase.QUERY
    assert not any(isinstance(a, ps.StartStreaming) for a in actions)


def test_status_update_is_passed_on():
    session, _ = streaming_session()
    update = pg_message(b"d", b"r" + struct.pack(">QQQqB", 0x20, 0x1F, 0x1F, 0, 1))
    assert drive(session, update) == [
        ps.StatusUpdate(wire.StandbyStatusUpdate(0x20, 0x1F, 0x1F, 0, True))]


def test_copy_done_ends_streaming_and_answers_like_a_walsender():
    session, _ = streaming_session()
    actions = drive(session, pg_message(b"c", b""))
    assert actions[0] == ps.EndStreaming("it ended the stream")
    assert tags(actions) == b"cCCZ"
    assert session.phase is wire.Phase.QUERY


def test_copy_fail_ends_streaming_with_an_error():
    session, _ = streaming_session()
    actions = drive(session, pg_message(b"f", b"bye\0"))
    assert actions[0] == ps.EndStreaming(None)
    [(_, body), _] = backend_messages(sent(actions))
    assert error_fields(body)["C"] == "57014"


def test_query_while_streaming_is_fatal():
    session, _ = streaming_session()
    [close] = drive(session, query("IDENTIFY_SYSTEM"))
    assert isinstance(close, ps.Close) and close.cause == "protocol"
    assert error_fields(backend_messages(close.message)[0][1])["C"] == "08P01"


def test_terminate_closes_without_a_reply():
    session = ready_session()
    assert drive(session, pg_message(b"X", b"")) == [ps.Close(b"", "terminate")]


# -- bad input: one documented FATAL, then nothing ----------------------------------------


@pytest.mark.parametrize(
    ("data", "sqlstate"),
    [
        (b"\x00\x00\x00\x03junk", "08P01"),  # startup length below the minimum
        (struct.pack(">II", 8, 2 << 16), "0A000"),  # protocol 2.0
    ],
)
def test_bad_startup_bytes_are_one_fatal(data, sqlstate):
    session = new_session()
    [close] = drive(session, data)
    assert isinstance(close, ps.Close) and close.cause == "protocol"
    [(tag, body)] = backend_messages(close.message)
    assert tag == b"E" and error_fields(body)["S"] == "FATAL"
    assert error_fields(body)["C"] == sqlstate
    assert "closing connection from 10.0.0.1:5555" in close.log
    assert drive(session, query("SELECT 1")) == []


def test_garbage_after_login_is_one_fatal_08p01():
    session = ready_session()
    [close] = drive(session, b"\xff\x00\x00\x00\x04")
    assert isinstance(close, ps.Close)
    assert error_fields(backend_messages(close.message)[0][1])["C"] == "08P01"


def test_actions_after_close_are_not_produced():
    """A pipelined query behind a Terminate is never answered."""
    session = ready_session()
    actions = drive(session, pg_message(b"X", b"") + query("IDENTIFY_SYSTEM"))
    assert actions == [ps.Close(b"", "terminate")]
