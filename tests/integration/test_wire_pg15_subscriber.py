"""A stock Postgres subscriber against a minimal publisher built only from the codecs of
``electric.postgres`` (``wire``, ``copyboth``, ``replies``).

Checks the wire layer against the real thing (docs/protocols.md §2.2): every query the
subscriber sends while creating, running, disabling and dropping a subscription is parsed
into a known command (none is ``Unsupported``), the replies are accepted, and a streamed
transaction is applied. The publisher's real logic (slots, offsets, Vaxine) is not involved.
"""

from __future__ import annotations

import socket
import threading
from datetime import UTC, datetime

import psycopg2
import pytest

from electric.postgres import copyboth, pgoutput, pgoutput_encode, replies
from electric.postgres.commands import (
    DropReplicationSlot,
    EmptyQuery,
    IdentifySystem,
    ListPublications,
    ListPublicationTables,
    SetConfig,
    StartReplication,
    TransactionControl,
    Unsupported,
    parse_command,
)
from electric.postgres.lsn import Lsn
from electric.postgres.wire import (
    BackendConnection,
    CopyDone,
    GSSENCRequest,
    ProtocolError,
    Query,
    SSLRequest,
    StandbyStatusUpdate,
    StartupMessage,
    Terminate,
    UnsupportedMessage,
)
from tests.support.waiting import wait_until as wait_for

REL_OID = 20000
TABLE = ("public", "wire_items")


class FakePublisher:
    """Thread per connection; streams one INSERT transaction on the first START_REPLICATION."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.seen: list[object] = []
        self.sent_tx = False
        self.end_lsn = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _record(self, item: object) -> None:
        with self.lock:
            self.seen.append(item)

    def _serve(self, s: socket.socket) -> None:
        conn = BackendConnection()
        with s:
            try:
                while True:
                    data = s.recv(65536)
                    if not data:
                        return
                    for ev in conn.receive_data(data):
                        self._record(ev)
                        out = self._reply(conn, ev)
                        if out:
                            s.sendall(out)
                        if isinstance(ev, Terminate):
                            return
            except (OSError, ProtocolError) as exc:
                self._record(exc)

    def _transaction(self, start: int) -> bytes:
        ts = datetime(2022, 11, 23, 10, 0, 0, tzinfo=UTC)
        first = Lsn(start) + 10
        final = first  # one change
        end = final + 10
        cols = (
            pgoutput.RelationColumn("id", 23, -1, 1),
            pgoutput.RelationColumn("title", 25, -1, 0),
        )
        msgs = [
            (first, pgoutput.Begin(final, ts, 0)),
            (0, pgoutput.Relation(REL_OID, TABLE[0], TABLE[1], "d", cols)),
            (first, pgoutput.Insert(REL_OID, (b"1", b"hello from the wire"))),
            (end, pgoutput.Commit(final, end, ts)),
        ]
        self.end_lsn = int(end)
        return b"".join(copyboth.xlog_data(lsn, lsn, pgoutput_encode.encode(m)) for lsn, m in msgs)

    def _reply(self, conn: BackendConnection, ev: object) -> bytes:
        rfq = replies.ready_for_query()
        if isinstance(ev, SSLRequest | GSSENCRequest):
            return replies.encryption_denied()
        if isinstance(ev, StartupMessage):
            return replies.startup_response(replies.server_parameters(ev.parameters), pid=4242)
        if isinstance(ev, CopyDone):
            return (
                copyboth.copy_done()
                + replies.command_complete("COPY 0")
                + replies.command_complete("START_REPLICATION")
                + rfq
            )
        if isinstance(ev, StandbyStatusUpdate) and ev.reply_requested:
            return copyboth.primary_keepalive(self.end_lsn)
        if not isinstance(ev, Query):
            return b""
        cmd = parse_command(ev.text)
        self._record(cmd)
        if isinstance(cmd, EmptyQuery):
            return replies.empty_query_response() + rfq
        if isinstance(cmd, SetConfig):
            return replies.text_result([("set_config", "text")], [[cmd.value]]) + rfq
        if isinstance(cmd, ListPublications):
            return replies.text_result([("pubname", "name")], [[p] for p in cmd.publications]) + rfq
        if isinstance(cmd, ListPublicationTables):
            return replies.text_result([("schemaname", "name"), ("tablename", "name")], [TABLE]) + rfq
        if isinstance(cmd, IdentifySystem):
            cols = [
                ("systemid", "text"),
                ("timeline", "int4"),
                ("xlogpos", "text"),
                ("dbname", "text"),
            ]
            row = ["7000000000000000001", 1, "0/1", conn.parameters.get("database")]
            return replies.text_result(cols, [row], tag="IDENTIFY_SYSTEM") + rfq
        if isinstance(cmd, StartReplication):
            out = conn.start_copy_both() + copyboth.primary_keepalive(cmd.lsn)
            with self.lock:
                if not self.sent_tx:
                    self.sent_tx = True
                    out += self._transaction(cmd.lsn)
            return out
        if isinstance(cmd, DropReplicationSlot):
            return replies.command_complete("DROP_REPLICATION_SLOT") + rfq
        if isinstance(cmd, TransactionControl):
            return replies.command_complete(cmd.kind) + rfq
        if isinstance(cmd, Unsupported):
            return replies.unsupported_response(cmd)
        return replies.error_response("ERROR", "0A000", f"fake publisher: {cmd}") + rfq

    def of(self, kind: type) -> list:
        with self.lock:
            return [e for e in self.seen if isinstance(e, kind)]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def subscriber_db(pg_factory):
    pg = pg_factory("pg")
    name = "wire_sub"
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    pg.psql(f"CREATE DATABASE {name}")
    conn = psycopg2.connect(pg.dsn(database=name))
    conn.autocommit = True
    yield conn
    with conn.cursor() as cur:
        cur.execute("SELECT subname FROM pg_subscription WHERE subname = 'wire_sub'")
        if cur.fetchone():
            cur.execute("ALTER SUBSCRIPTION wire_sub DISABLE")
            cur.execute("ALTER SUBSCRIPTION wire_sub SET (slot_name = NONE)")
            cur.execute("DROP SUBSCRIPTION wire_sub")
    conn.close()
    pg.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_stock_subscriber_conversation(subscriber_db):
    pub = FakePublisher()
    try:
        cur = subscriber_db.cursor()
        cur.execute("CREATE TABLE public.wire_items (id int PRIMARY KEY, title text)")
        cur.execute(
            f"CREATE SUBSCRIPTION wire_sub CONNECTION 'host=127.0.0.1 port={pub.port} "
            "dbname=test user=x connect_timeout=5' PUBLICATION all_tables "
            "WITH (create_slot = false, copy_data = false)"
        )
        # CREATE (connect = true) asked for the publication and its tables.
        assert pub.of(ListPublications) == [ListPublications(["all_tables"])]
        assert pub.of(ListPublicationTables) == [ListPublicationTables(["all_tables"], False)]

        def applied():
            cur.execute("SELECT id, title FROM public.wire_items")
            return cur.fetchall()

        assert wait_for(applied, what="the streamed row") == [(1, "hello from the wire")]
        start = pub.of(StartReplication)[0]
        assert start.slot == "wire_sub"
        assert start.proto_version == 1  # non-numeric server_version pins protocol 1
        assert start.publication_names == ["all_tables"]
        # The subscriber reports the Commit's end_lsn as flushed.
        wait_for(
            lambda: any(u.flushed >= pub.end_lsn for u in pub.of(StandbyStatusUpdate)),
            what="status update with the commit end_lsn",
        )

        n_term = len(pub.of(Terminate))
        cur.execute("ALTER SUBSCRIPTION wire_sub DISABLE")
        wait_for(lambda: len(pub.of(Terminate)) > n_term, what="Terminate on DISABLE")

        cur.execute("DROP SUBSCRIPTION wire_sub")
        assert pub.of(DropReplicationSlot) == [DropReplicationSlot("wire_sub", True)]

        assert pub.of(Unsupported) == []
        assert pub.of(UnsupportedMessage) == []
        assert [e for e in pub.seen if isinstance(e, Exception)] == []
    finally:
        pub.close()
