"""A stock PostgreSQL 15 subscriber against Electric's publisher (in process, fake log)."""

from __future__ import annotations

import uuid

import gevent

from electric.changes import DeletedRecord, UpdatedRecord
from electric.postgres import upsert
from tests.support.pgwire import RawClient, error_fields

from .conftest import FULL_ITEMS, ITEMS, PASSWORD, wait_for

IDS = [str(uuid.UUID(int=i + 1)) for i in range(50)]


def up(table, i, title, qty=None):
    return UpdatedRecord(
        table.relation, {"id": IDS[i], "title": title, "qty": None if qty is None else str(qty)}
    )


def delete(table, i, title="x"):
    return DeletedRecord(table.relation, {"id": IDS[i], "title": title, "qty": None})


def rows(setup, table="items"):
    return setup.sql(f"SELECT id::text, title, qty FROM public.{table} ORDER BY id")


def audit(setup):
    return setup.sql("SELECT id::text, title, op FROM public.audit ORDER BY n")


def test_history_then_live_changes_arrive(setup):
    # written before the subscription exists: a new subscriber gets the whole log once
    setup.log.append(up(ITEMS, 0, "before"), up(FULL_ITEMS, 0, "before full"))
    assert setup.subscribe() is True
    assert upsert.installed_tables(setup.conn) >= {ITEMS.relation, FULL_ITEMS.relation}
    wait_for(lambda: rows(setup) == [(IDS[0], "before", None)], what="history")
    wait_for(lambda: rows(setup, "full_items") == [(IDS[0], "before full", None)])
    assert setup.log.opens == [None]

    # upsert of an existing row (an UPDATE on the source) and of a new one
    setup.log.append(up(ITEMS, 0, "changed", 5), up(ITEMS, 1, "second"))
    setup.log.append(up(FULL_ITEMS, 0, "changed full", 7))
    wait_for(lambda: rows(setup) == [(IDS[0], "changed", 5), (IDS[1], "second", None)])
    wait_for(lambda: rows(setup, "full_items") == [(IDS[0], "changed full", 7)])

    # deletes by key, both identities
    setup.log.append(delete(ITEMS, 0), delete(FULL_ITEMS, 0, "changed full"))
    wait_for(lambda: rows(setup) == [(IDS[1], "second", None)])
    wait_for(lambda: rows(setup, "full_items") == [])

    status = setup.publisher.status()[setup.name]
    assert status["streaming"] and not status["held"]
    wait_for(
        lambda: setup.publisher.status()[setup.name]["pending_transactions"] == 0,
        what="subscriber confirms everything",
    )
    assert setup.publisher.status()[setup.name]["flushed_lsn"] == status["sent_lsn"]
    # every upsert applied exactly once (the existing-key insert became one UPDATE)
    assert [op for _, _, op in audit(setup)] == ["INSERT", "UPDATE", "INSERT", "DELETE"]


def test_conflicts_converge_to_the_log(setup):
    setup.subscribe()
    # insert conflict: the subscriber has its own row for the key; the log's merged row wins
    setup.sql("INSERT INTO public.items VALUES (%s, 'local', 1)", (IDS[3],))
    setup.log.append(up(ITEMS, 3, "merged", 2))
    wait_for(lambda: rows(setup) == [(IDS[3], "merged", 2)], what="upsert over local row")
    # update wins over delete: deleted locally, the log still has (a newer) row
    setup.sql("DELETE FROM public.items WHERE id = %s", (IDS[3],))
    setup.log.append(up(ITEMS, 3, "State2", 2))
    wait_for(lambda: rows(setup) == [(IDS[3], "State2", 2)], what="resurrected row")
    # a delete of a row the subscriber does not have is a no-op, and the stream goes on
    setup.log.append(delete(ITEMS, 9))
    setup.log.append(up(ITEMS, 4, "after"))
    wait_for(lambda: len(rows(setup)) == 2)


def test_resume_after_subscriber_restart_without_replay_or_gap(setup):
    setup.subscribe()
    for i in range(3):
        setup.log.append(up(ITEMS, i, f"t{i}"))
    wait_for(lambda: len(rows(setup)) == 3)
    wait_for(lambda: setup.publisher.status()[setup.name]["pending_transactions"] == 0)
    last_applied = setup.log.entries[-1][1]

    setup.pg.restart()  # pg_ctl restart (blocks the hub meanwhile, like a real outage)
    for i in range(3, 6):
        setup.log.append(up(ITEMS, i, f"t{i}"))
    setup.reconnect()
    wait_for(lambda: len(rows(setup)) == 6, timeout=30, what="rows after restart")
    assert setup.log.opens[0] is None
    assert setup.log.opens[-1] == last_applied  # resumed right after the last applied tx
    assert setup.publisher.status()[setup.name]["resume"] == "exact"
    assert setup.publisher.status()[setup.name]["sessions"] >= 2
    titles = [t for _, t, _ in audit(setup)]
    assert sorted(titles) == [f"t{i}" for i in range(6)]  # no duplicates, no gaps


def test_disable_enable_mid_stream(setup):
    setup.subscribe()
    setup.log.append(up(ITEMS, 0, "a"))
    wait_for(lambda: len(rows(setup)) == 1)
    wait_for(lambda: setup.publisher.status()[setup.name]["pending_transactions"] == 0)
    setup.sql(f"ALTER SUBSCRIPTION {setup.name} DISABLE")
    wait_for(lambda: not setup.publisher.is_streaming(setup.name), what="worker gone")
    setup.log.append(up(ITEMS, 1, "b"))
    setup.log.append(up(ITEMS, 2, "c"))
    gevent.sleep(0.5)
    assert len(rows(setup)) == 1
    setup.sql(f"ALTER SUBSCRIPTION {setup.name} ENABLE")
    wait_for(lambda: len(rows(setup)) == 3, what="rows after enable")
    assert sorted(t for _, t, _ in audit(setup)) == ["a", "b", "c"]
    assert setup.log.opens[-1] == setup.log.entries[0][1]


def test_setup_window_is_closed(setup):
    """Changes logged while the subscription is being set up are not lost (held slot)."""
    setup.publisher.hold(setup.name)
    greenlet = gevent.spawn(setup.subscribe)
    for i in range(10):
        setup.log.append(up(ITEMS, i, f"w{i}"))
        gevent.sleep(0.02)
    greenlet.get(timeout=30)
    wait_for(lambda: len(rows(setup)) == 10, what="every row of the setup window")


def test_admission_and_unsupported_commands(setup):
    port = setup.publisher.port
    # not a replication connection
    c = RawClient(port)
    (tag, body), = c.login(PASSWORD, user="x", database="test", application_name=setup.name)
    assert tag == b"E" and error_fields(body)["C"] == "08004"
    assert c.read_message() is None
    # connector not ready
    c = RawClient(port)
    (tag, body), = c.login(PASSWORD, user="x", database="test", replication="database",
                           application_name="nobody")
    assert tag == b"E" and "not ready" in error_fields(body)["M"]
    assert c.read_message() is None

    c = RawClient(port)
    msgs = c.login(PASSWORD, user="x", database="test", replication="database",
                   application_name=setup.name)
    params = dict(tuple(b.rstrip(b"\0").decode().split("\0")) for t, b in msgs if t == b"S")
    assert params["server_version"] == "electric-0.0.1"
    for text in [
        "SHOW wal_segment_size",
        "TIMELINE_HISTORY 1",
        "SELECT 1",
        "READ_REPLICATION_SLOT s",
        "COPY public.items TO STDOUT",
        "CREATE_REPLICATION_SLOT x LOGICAL pgoutput USE_SNAPSHOT",
        'START_REPLICATION SLOT "nope" LOGICAL 0/0',
    ]:
        c.query(text)
        msgs = c.read_until(b"Z")
        assert [t for t, _ in msgs] == [b"E", b"Z"], text
        assert error_fields(msgs[0][1])["S"] == "ERROR"
    c.query("IDENTIFY_SYSTEM")
    assert [t for t, _ in c.read_until(b"Z")] == [b"T", b"D", b"C", b"Z"]
    # extended protocol: one error, then ReadyForQuery at Sync
    c.send(b"P\0\0\0\x08\0\0\0\0" + b"S\0\0\0\x04")
    assert [t for t, _ in c.read_until(b"Z")] == [b"E", b"Z"]
    c.query("SHOW server_version")
    assert [t for t, _ in c.read_until(b"Z")] == [b"T", b"D", b"C", b"Z"]
    c.close()


def test_malformed_input_costs_only_that_connection(setup):
    setup.subscribe()
    setup.log.append(up(ITEMS, 0, "first"))
    wait_for(lambda: len(rows(setup)) == 1)
    port = setup.publisher.port

    garbage = RawClient(port)
    garbage.send(b"\x00\x00\x00\x05GET / HTTP/1.1\r\n\r\n")
    tag, body = garbage.read_message()
    assert tag == b"E" and error_fields(body)["S"] == "FATAL"
    assert garbage.read_message() is None

    huge = RawClient(port)
    huge.send(b"\x7f\xff\xff\xff" + b"x" * 100)
    assert huge.read_message()[0] == b"E"

    truncated = RawClient(port)
    truncated.send(b"\x00\x00\x00\x50\x00\x03")  # then hang up mid-packet
    truncated.close()

    # a second "subscriber" that goes mad mid-stream on another slot name it is allowed to use
    setup.registry.set_ready("other")
    mad = RawClient(port)
    mad.login(PASSWORD, user="x", database="test", replication="database",
              application_name="other")
    mad.query('START_REPLICATION SLOT "other" LOGICAL 0/0')
    assert mad.read_message()[0] == b"W"
    mad.send(b"d\x00\x00\x00\x09zzzzz")  # not a status update
    msgs = mad.read_until(b"E")
    assert msgs[-1][0] == b"E" and error_fields(msgs[-1][1])["S"] == "FATAL"

    random_bytes = RawClient(port)
    random_bytes.send(bytes(range(256)) * 4)
    random_bytes.read_message()

    # the real subscriber was never disturbed
    setup.log.append(up(ITEMS, 1, "second"))
    wait_for(lambda: len(rows(setup)) == 2, what="stream still alive")
    assert setup.publisher.status()[setup.name]["sessions"] == 1


def test_numeric_server_version_shapes_work_too(setup):
    """With a numeric server_version PG15 sends proto_version '3' and the 3-column table list."""
    setup.publisher.stop()
    setup.publisher = setup.new_publisher(server_version="15.0")
    setup.log.append(up(ITEMS, 0, "v15"))
    setup.subscribe()
    wait_for(lambda: rows(setup) == [(IDS[0], "v15", None)])
    setup.log.append(up(ITEMS, 0, "v15 again"), delete(ITEMS, 0), up(ITEMS, 1, "b"))
    wait_for(lambda: rows(setup) == [(IDS[1], "b", None)])


def test_applied_changes_carry_the_subscription_origin(setup):
    """Loop prevention: what the apply worker (and the upsert trigger) writes is marked with
    an Origin message in the subscriber's own pgoutput, which the ingest side drops."""
    from electric.postgres import pgoutput, pgoutput_decode

    setup.sql("DROP PUBLICATION IF EXISTS peek_pub")
    setup.sql("CREATE PUBLICATION peek_pub FOR TABLE public.items")
    setup.sql(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        "WHERE slot_name = 'peek'"
    )
    setup.sql("SELECT pg_create_logical_replication_slot('peek', 'pgoutput')")
    try:
        setup.sql("INSERT INTO public.items VALUES (%s, 'local', 1)", (IDS[0],))
        setup.subscribe()
        setup.log.append(up(ITEMS, 0, "remote"), up(ITEMS, 1, "new"))  # trigger UPDATE + INSERT

        def transactions():
            data = setup.sql(
                "SELECT data FROM pg_logical_slot_peek_binary_changes('peek', NULL, NULL, "
                "'proto_version', '1', 'publication_names', 'peek_pub')"
            )
            txs, current = [], []
            for (raw,) in data:
                msg = pgoutput_decode.decode(bytes(raw))
                current.append(type(msg).__name__)
                if isinstance(msg, pgoutput.Commit):
                    txs.append(current)
                    current = []
            return txs if len(txs) >= 2 else None

        txs = wait_for(transactions, what="decoded transactions")
        assert txs[0] == ["Begin", "Relation", "Insert", "Commit"]  # local: no origin
        assert txs[1][:2] == ["Begin", "Origin"]
        assert sorted(txs[1][2:-1]) == ["Insert", "Relation", "Update"]
    finally:
        setup.sql("SELECT pg_drop_replication_slot('peek')")
        setup.sql("DROP PUBLICATION peek_pub")


def test_resume_after_collected_mappings_and_trailing_noops(setup):
    """Mappings below the subscriber's flushed position are collected; a subscriber whose
    origin stayed behind (its last transactions wrote nothing) still resumes without replay."""
    setup.publisher.stop()
    setup.publisher = setup.new_publisher(limits={"publisher_gc_interval": 0})
    setup.subscribe()
    setup.log.append(up(ITEMS, 0, "written"))
    for i in range(5):
        setup.log.append(delete(ITEMS, 10 + i))  # rows the subscriber never had: no-ops
    wait_for(lambda: len(rows(setup)) == 1)
    last = setup.log.entries[-1][1]
    wait_for(
        lambda: (
            setup.offsets.get_pg_offset_at_or_before(setup.name, 2**63) is not None
            and setup.publisher.status()[setup.name]["pending_transactions"] == 0
        )
    )
    # give the subscriber a chance to report its flushed position at the end (gc runs then)
    wait_for(lambda: _oldest(setup)[1] == last, what="mappings collected up to the last no-op")

    setup.pg.restart()
    setup.log.append(up(ITEMS, 1, "after"))
    setup.reconnect()
    wait_for(lambda: len(rows(setup)) == 2, timeout=30)
    assert setup.log.opens[-1] == last  # resumed after the oldest kept mapping: nothing replayed
    assert setup.publisher.status()[setup.name]["resume"] == "collected"
    assert [t for _, t, _ in audit(setup)] == ["written", "after"]


def _oldest(setup):
    from electric.postgres.slot import _oldest_mapping

    return _oldest_mapping(setup.offsets, setup.name) or (None, None)


def test_subscribe_when_ready_retries_until_admitted(setup):
    from gevent.event import Event

    from electric.postgres import green
    from electric.postgres.subscription import subscribe, subscribe_when_ready
    from electric.retry import Policy

    from .conftest import PUBLICATION

    setup.registry.set_ready(setup.name, False)
    setup.log.append(up(ITEMS, 0, "waiting"))
    ready = Event()
    attempts = []

    def attempt():  # what Application.subscribe does for a connector
        attempts.append(1)
        conn = green.connect(setup.pg.dsn())
        conn.autocommit = True
        try:
            subscribe(conn, name=setup.name, conninfo=setup.conninfo(),
                      publication=PUBLICATION,
                      relations=[ITEMS.relation, FULL_ITEMS.relation], gate=setup.publisher)
        finally:
            conn.close()

    g = gevent.spawn(subscribe_when_ready, setup.name, ready, attempt, Policy(0.05, 0.2))
    gevent.sleep(0)  # let it run until it blocks
    assert not g.dead and attempts == []  # waiting for the connector
    ready.set()  # ...but the registry does not admit it yet: REFRESH fails, the step retries
    wait_for(lambda: len(attempts) >= 2, what="a failed attempt retried")
    assert not g.dead and rows(setup) == []
    setup.registry.set_ready(setup.name, True)
    g.get(timeout=20)
    wait_for(lambda: rows(setup) == [(IDS[0], "waiting", None)])


def test_schema_change_reaches_the_subscriber_after_reset(setup):
    from electric.changes import Column, Table

    from .conftest import PUBLICATION

    setup.subscribe()
    setup.log.append(up(ITEMS, 0, "old shape"))
    wait_for(lambda: len(rows(setup)) == 1)
    # migration on the subscriber's Postgres and in the registry
    setup.sql("ALTER TABLE public.items ADD COLUMN note text")
    wider = Table("public", "items", 0, ITEMS.columns + (Column("note", "text", 25),), ("id",))
    setup.registry.put_tables(PUBLICATION, [wider])
    # the running session keeps the shape it announced: the stream does not break
    setup.log.append(
        UpdatedRecord(ITEMS.relation, {"id": IDS[1], "title": "b", "qty": None, "note": "not yet"})
    )
    wait_for(lambda: len(rows(setup)) == 2)
    assert setup.sql("SELECT note FROM public.items WHERE id = %s", (IDS[1],)) == [(None,)]
    assert setup.publisher.reset(setup.name)
    setup.log.append(
        UpdatedRecord(
            ITEMS.relation, {"id": IDS[2], "title": "c", "qty": None, "note": "new column"}
        )
    )
    wait_for(
        lambda: (
            setup.sql("SELECT note FROM public.items WHERE id = %s", (IDS[2],)) == [("new column",)]
        ),
        what="row with the new column",
    )
    assert [t for _, t, _ in audit(setup)] == ["old shape", "b", "c"]  # nothing replayed


def test_apply_error_loop_is_reported_and_skip_recovers(setup):
    setup.subscribe()
    setup.sql("ALTER TABLE public.items ADD CONSTRAINT qty_positive CHECK (qty > 0)")
    setup.log.append(up(ITEMS, 0, "fine", 1))
    wait_for(lambda: len(rows(setup)) == 1)
    setup.log.append(up(ITEMS, 1, "violates", -1))  # the subscriber cannot apply this one
    status = wait_for(
        lambda: (s := setup.publisher.status()[setup.name])["apply_failures"] >= 2 and s,
        timeout=30,
        what="error loop detected",
    )
    setup.log.append(up(ITEMS, 2, "after", 3))
    setup.sql(f"ALTER SUBSCRIPTION {setup.name} SKIP (lsn = '{status['failing_lsn']}')")
    wait_for(lambda: [t for _, t, _ in rows(setup)] == ["fine", "after"], timeout=30)
    wait_for(lambda: setup.publisher.status()[setup.name]["pending_transactions"] == 0)
    wait_for(lambda: setup.publisher.status()[setup.name]["apply_failures"] == 0)


def test_two_subscribers_stream_independently(setup):
    from electric.postgres import green
    from electric.postgres.subscription import subscribe

    from .conftest import PUBLICATION, SUBSCRIBER_SQL

    setup.pg.create_database("second")
    other = green.connect(setup.pg.dsn("second"))
    other.autocommit = True
    name_b = setup.name + "_b"
    setup.registry.set_ready(name_b)
    try:
        with other.cursor() as cur:
            cur.execute(SUBSCRIBER_SQL)
        setup.log.append(up(ITEMS, 0, "shared"))
        setup.subscribe()
        subscribe(
            other,
            name=name_b,
            conninfo=setup.conninfo(),
            publication=PUBLICATION,
            relations=[ITEMS.relation, FULL_ITEMS.relation],
            gate=setup.publisher,
        )

        def rows_b():
            with other.cursor() as cur:
                cur.execute("SELECT id::text, title, qty FROM public.items ORDER BY id")
                return cur.fetchall()

        setup.log.append(up(ITEMS, 1, "both"))
        wait_for(lambda: len(rows(setup)) == 2 and len(rows_b()) == 2)
        # one subscriber goes away; the other keeps streaming
        with other.cursor() as cur:
            cur.execute(f"ALTER SUBSCRIPTION {name_b} DISABLE")
        wait_for(lambda: not setup.publisher.is_streaming(name_b))
        setup.log.append(up(ITEMS, 2, "only a"))
        wait_for(lambda: len(rows(setup)) == 3)
        with other.cursor() as cur:
            cur.execute(f"ALTER SUBSCRIPTION {name_b} ENABLE")
        wait_for(lambda: rows_b() == rows(setup), what="b catches up")
        assert set(setup.offsets.pg_slots()) >= {setup.name, name_b}
    finally:
        with other.cursor() as cur:
            cur.execute(f"ALTER SUBSCRIPTION {name_b} DISABLE")
            cur.execute(f"ALTER SUBSCRIPTION {name_b} SET (slot_name = NONE)")
            cur.execute(f"DROP SUBSCRIPTION {name_b}")
        other.close()
