"""The generic upsert trigger on a real PostgreSQL, in the apply worker's session mode.

The apply worker runs with ``session_replication_role = replica`` and ``search_path = ''``;
a session set up the same way fires exactly the triggers the worker fires, so these tests
exercise the trigger as a subscriber would (the publisher tests cover the real worker).
"""

from __future__ import annotations

import gevent
import psycopg2
import pytest

from electric.postgres import upsert

SCHEMA_SQL = """
DROP SCHEMA IF EXISTS ups CASCADE;
CREATE SCHEMA ups;
CREATE TABLE ups.items (id uuid PRIMARY KEY, title text, qty int);
CREATE TABLE ups.pairs (a int, b text, val text, PRIMARY KEY (a, b));
CREATE TABLE ups.tags (a int, b text, PRIMARY KEY (a, b));
CREATE TABLE ups."Odd Table" ("Key" int PRIMARY KEY, "some col" text);
CREATE TABLE ups.full_pk (id int PRIMARY KEY, body text);
ALTER TABLE ups.full_pk REPLICA IDENTITY FULL;
CREATE TABLE ups.gen (id int PRIMARY KEY, n int, twice int GENERATED ALWAYS AS (n * 2) STORED);
CREATE TABLE ups.nopk (k text, v text);
"""

TABLES = [
    ("ups", "items"),
    ("ups", "pairs"),
    ("ups", "tags"),
    ("ups", "Odd Table"),
    ("ups", "full_pk"),
    ("ups", "gen"),
    ("ups", "nopk"),
]

U1 = "46ae8d74-ea44-4322-a4f3-9cd1b680a5bf"
U2 = "dab0679d-2c3b-4c3e-9d0a-1f0f0b7e9a11"


@pytest.fixture(scope="module")
def pg(pg_factory):
    return pg_factory("publisher")


@pytest.fixture
def conn(pg):
    pg.psql(SCHEMA_SQL, pg.database)
    c = psycopg2.connect(pg.dsn())
    c.autocommit = True
    assert upsert.install(c, TABLES) == len(TABLES)
    yield c
    c.close()


def replica(pg):
    """A session that behaves like the logical replication apply worker."""
    c = psycopg2.connect(pg.dsn())
    c.autocommit = True
    with c.cursor() as cur:
        cur.execute("SET session_replication_role = replica")
        cur.execute("SELECT pg_catalog.set_config('search_path', '', false)")
    return c


def rows(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def run(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.rowcount


def test_trigger_is_installed_for_replicas_only(conn):
    assert set(TABLES) <= upsert.installed_tables(conn)
    states = rows(
        conn, "SELECT DISTINCT tgenabled FROM pg_trigger WHERE tgname = 'electric_upsert'"
    )
    assert states == [("R",)]


def test_install_is_idempotent(conn):
    assert upsert.install(conn, TABLES) == len(TABLES)
    assert rows(conn, "SELECT count(*) FROM pg_trigger WHERE tgname = 'electric_upsert'") == [
        (len(TABLES),)
    ]


def test_a_missing_table_is_named_and_nothing_is_installed(conn):
    run(conn, "DROP TRIGGER electric_upsert ON ups.items")
    with pytest.raises(upsert.TablesMissing) as raised:
        upsert.install(conn, [("ups", "items"), ("ups", "nope")])
    assert raised.value.relations == [("ups", "nope")]
    assert str(raised.value) == "upsert trigger cannot be installed: table ups.nope not found"
    assert ("ups", "items") not in upsert.installed_tables(conn)  # rolled back as a whole


def test_a_subscription_set_up_is_held_at_a_missing_table_until_it_exists(pg, conn):
    """One ERROR naming the table, the state (status, metrics) says so while it lasts, the
    set-up is retried and completes once the table is there. The set-up has a connection of
    its own, as in production: the test creates the table on ``conn`` while the set-up's
    greenlet may be inside a query, and one psycopg2 connection cannot serve both."""
    from gevent.event import Event
    from loguru import logger

    from electric.metrics import StatusCollector
    from electric.postgres.subscription import SetupState, subscribe_when_ready
    from electric.retry import Policy
    from tests.support.waiting import wait_until

    relations = [("ups", "items"), ("ups", "later")]
    state = SetupState()
    ready = Event()
    ready.set()
    lines = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])),
                      level="INFO")
    setup_conn = psycopg2.connect(pg.dsn())
    setup_conn.autocommit = True
    try:
        setup = gevent.spawn(subscribe_when_ready, "pg_1", ready,
                             lambda: upsert.install(setup_conn, relations),
                             Policy(0.01, 0.05), state)
        wait_until(lambda: state.failures >= 5, what="five attempts held at the table")
        assert state.blocked == "upsert trigger cannot be installed: table ups.later not found"
        collector = StatusCollector(lambda: {"pg_1": {"subscription_blocked": state.blocked}},
                                    dict, lambda: {}, lambda: True)
        gauge = next(m for m in collector.collect() if m.name == "electric_subscription_blocked")
        assert [s.value for s in gauge.samples] == [1.0]
        assert not setup.dead
        run(conn, "CREATE TABLE ups.later (id int PRIMARY KEY)")
        setup.join(timeout=15)
        assert setup.successful()
    finally:
        logger.remove(sink)
        setup_conn.close()
    assert state.blocked is None
    assert set(relations) <= upsert.installed_tables(conn)
    errors = [text for level, text in lines if level == "ERROR"]
    assert errors == ["subscription pg_1 cannot be set up: upsert trigger cannot be installed: "
                      "table ups.later not found; its stream is held (nothing is lost) and the "
                      "set-up retried until the cause is fixed"]
    assert any(level == "INFO" and "no longer held" in text for level, text in lines)


def test_insert_of_existing_key_becomes_update(pg, conn):
    run(conn, "INSERT INTO ups.items VALUES (%s, 'local', 1)", (U1,))
    r = replica(pg)
    # INSERT 0 0: the trigger updated the row and skipped the insert, no duplicate-key error
    assert run(r, "INSERT INTO ups.items VALUES (%s, 'remote', NULL)", (U1,)) == 0
    assert rows(conn, "SELECT title, qty FROM ups.items") == [("remote", None)]


def test_insert_of_new_key_inserts(pg, conn):
    r = replica(pg)
    assert run(r, "INSERT INTO ups.items VALUES (%s, 'new', 3)", (U2,)) == 1
    assert rows(conn, "SELECT id::text, title, qty FROM ups.items") == [(U2, "new", 3)]


def test_same_new_key_twice_in_one_transaction_keeps_the_last(pg, conn):
    r = replica(pg)
    r.autocommit = False
    run(r, "INSERT INTO ups.items VALUES (%s, 'first', 1)", (U1,))
    run(r, "INSERT INTO ups.items VALUES (%s, 'second', 2)", (U1,))
    r.commit()
    assert rows(conn, "SELECT title, qty FROM ups.items") == [("second", 2)]


def test_local_sessions_keep_plain_insert_semantics(conn):
    run(conn, "INSERT INTO ups.items VALUES (%s, 'local', 1)", (U1,))
    with pytest.raises(psycopg2.errors.UniqueViolation):
        run(conn, "INSERT INTO ups.items VALUES (%s, 'again', 2)", (U1,))


def test_composite_key(pg, conn):
    run(conn, "INSERT INTO ups.pairs VALUES (1, 'x', 'old')")
    r = replica(pg)
    run(r, "INSERT INTO ups.pairs VALUES (1, 'x', 'new')")
    run(r, "INSERT INTO ups.pairs VALUES (1, 'y', 'other')")
    assert rows(conn, "SELECT a, b, val FROM ups.pairs ORDER BY a, b") == [
        (1, "x", "new"),
        (1, "y", "other"),
    ]


def test_all_key_table_existing_row_is_a_noop(pg, conn):
    run(conn, "INSERT INTO ups.tags VALUES (1, 'x')")
    r = replica(pg)
    assert run(r, "INSERT INTO ups.tags VALUES (1, 'x')") == 0
    assert run(r, "INSERT INTO ups.tags VALUES (2, 'x')") == 1
    assert rows(conn, "SELECT a, b FROM ups.tags ORDER BY a") == [(1, "x"), (2, "x")]


def test_quoted_identifiers(pg, conn):
    run(conn, "INSERT INTO ups.\"Odd Table\" VALUES (1, 'a')")
    r = replica(pg)
    run(r, "INSERT INTO ups.\"Odd Table\" VALUES (1, 'b')")
    run(r, "INSERT INTO ups.\"Odd Table\" VALUES (2, 'c')")
    assert rows(conn, 'SELECT "Key", "some col" FROM ups."Odd Table" ORDER BY 1') == [
        (1, "b"),
        (2, "c"),
    ]


def test_replica_identity_full_with_pk(pg, conn):
    run(conn, "INSERT INTO ups.full_pk VALUES (1, 'a')")
    run(replica(pg), "INSERT INTO ups.full_pk VALUES (1, 'b')")
    assert rows(conn, "SELECT id, body FROM ups.full_pk") == [(1, "b")]


def test_generated_columns_are_recomputed(pg, conn):
    run(conn, "INSERT INTO ups.gen (id, n) VALUES (1, 1)")
    run(replica(pg), "INSERT INTO ups.gen (id, n) VALUES (1, 5)")
    assert rows(conn, "SELECT id, n, twice FROM ups.gen") == [(1, 5, 10)]


def test_table_without_pk_gets_plain_inserts(pg, conn):
    r = replica(pg)
    run(r, "INSERT INTO ups.nopk VALUES ('k', 'v')")
    run(r, "INSERT INTO ups.nopk VALUES ('k', 'v')")
    assert rows(conn, "SELECT count(*) FROM ups.nopk") == [(2,)]


def test_delete_by_key_then_reinsert(pg, conn):
    """Update-wins-over-delete: a later upsert of a deleted key brings the row back."""
    run(conn, "INSERT INTO ups.items VALUES (%s, 'State1', 1)", (U1,))
    r = replica(pg)
    run(r, "DELETE FROM ups.items WHERE id = %s", (U1,))
    assert run(r, "DELETE FROM ups.items WHERE id = %s", (U1,)) == 0  # missing: no-op
    run(r, "INSERT INTO ups.items VALUES (%s, 'State2', 1)", (U1,))
    assert rows(conn, "SELECT title FROM ups.items") == [("State2",)]


# -- per-table static functions ---------------------------------------------------------


def function_of(conn, relation: str) -> tuple[str, str]:
    """The name and generated source of ``relation``'s upsert trigger function."""
    with conn.cursor() as cur:
        cur.execute(
            # spelled out: the test role is called "electric", so regproc would drop the schema
            "SELECT n.nspname || '.' || p.proname, p.prosrc FROM pg_trigger t"
            " JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE t.tgname = 'electric_upsert' AND t.tgrelid = %s::regclass",
            (relation,),
        )
        [(name, src)] = cur.fetchall()
    return name, src


def oid_of(conn, relation: str) -> int:
    return rows(conn, f"SELECT '{relation}'::regclass::oid")[0][0]


def test_each_table_gets_its_own_static_function(conn):
    for rel, expected in [
        ("ups.items", "UPDATE ups.items t SET title = NEW.title, qty = NEW.qty"
                      " WHERE t.id = NEW.id;"),
        ("ups.pairs", "UPDATE ups.pairs t SET val = NEW.val WHERE t.a = NEW.a AND t.b = NEW.b;"),
        ('ups."Odd Table"', 'UPDATE ups."Odd Table" t SET "some col" = NEW."some col"'
                            ' WHERE t."Key" = NEW."Key";'),
        # all-key table: an existence check instead of an UPDATE
        ("ups.tags", "PERFORM 1 FROM ups.tags t WHERE t.a = NEW.a AND t.b = NEW.b FOR UPDATE;"),
        # generated column left out: Postgres recomputes it
        ("ups.gen", "UPDATE ups.gen t SET n = NEW.n WHERE t.id = NEW.id;"),
    ]:
        name, src = function_of(conn, rel)
        assert name == f"electric.upsert_{oid_of(conn, rel)}"
        assert expected in src, src
        assert "EXECUTE" not in src  # static SQL: planned once per session, no catalog look-ups
    name, src = function_of(conn, "ups.nopk")
    assert "UPDATE" not in src and "RETURN NEW;" in src


def test_odd_identifiers_everywhere(pg, conn):
    run(conn, """
        CREATE SCHEMA "Sch ema";
        CREATE TABLE "Sch ema"."we""ird; DROP TABLE x" (
            "new" int, "t" text, "SELECT" text, "Ünï" text, PRIMARY KEY ("new", "t"));
    """)
    rel = ("Sch ema", 'we"ird; DROP TABLE x')
    try:
        assert upsert.install(conn, [rel]) == 1
        q = '"Sch ema"."we""ird; DROP TABLE x"'
        run(conn, f"INSERT INTO {q} VALUES (1, 'a', 'old', 'old')")
        r = replica(pg)
        assert run(r, f"INSERT INTO {q} VALUES (1, 'a', 'new', 'neu')") == 0
        assert run(r, f"INSERT INTO {q} VALUES (2, 'a', 'x', 'y')") == 1
        assert rows(conn, f'SELECT * FROM {q} ORDER BY 1') == [
            (1, "a", "new", "neu"), (2, "a", "x", "y")]
    finally:
        run(conn, 'DROP SCHEMA "Sch ema" CASCADE')


def test_column_added_outside_migrations_is_not_lost(pg, conn):
    """A plain ALTER TABLE on the subscriber (no Electric migration, no re-install): the DDL
    event trigger regenerates the function inside the ALTER's transaction, so an upsert
    carrying the new column sets it instead of silently keeping the old value."""
    run(conn, "INSERT INTO ups.items VALUES (%s, 'local', 1)", (U1,))
    run(conn, "ALTER TABLE ups.items ADD COLUMN note text")
    assert "note = NEW.note" in function_of(conn, "ups.items")[1]
    r = replica(pg)
    assert run(r, "INSERT INTO ups.items VALUES (%s, 'remote', 2, 'hello')", (U1,)) == 0
    assert rows(conn, "SELECT title, qty, note FROM ups.items") == [("remote", 2, "hello")]


def test_dropped_and_renamed_columns_and_tables_keep_working(pg, conn):
    run(conn, "INSERT INTO ups.items VALUES (%s, 'local', 1)", (U1,))
    run(conn, "ALTER TABLE ups.items DROP COLUMN qty")
    run(conn, "ALTER TABLE ups.items RENAME COLUMN title TO name")
    run(conn, "ALTER TABLE ups.items RENAME TO things")
    run(conn, "ALTER SCHEMA ups RENAME TO ups_renamed")
    try:
        r = replica(pg)
        assert run(r, "INSERT INTO ups_renamed.things VALUES (%s, 'remote')", (U1,)) == 0
        assert rows(conn, "SELECT name FROM ups_renamed.things") == [("remote",)]
        assert "UPDATE ups_renamed.things t SET name = NEW.name" in function_of(
            conn, "ups_renamed.things")[1]
    finally:
        run(conn, "ALTER SCHEMA ups_renamed RENAME TO ups")


def test_alter_by_a_non_superuser_table_owner_regenerates(pg, conn):
    """The event trigger runs as whoever ALTERs; the generator is SECURITY DEFINER, so a
    table owner without rights on Electric's schema still gets a current function."""
    run(conn, """
        DROP ROLE IF EXISTS ups_alter;
        CREATE ROLE ups_alter LOGIN PASSWORD 'ups_alter';
        ALTER TABLE ups.pairs OWNER TO ups_alter;
        GRANT USAGE ON SCHEMA ups TO ups_alter;
    """)
    try:
        c = psycopg2.connect(pg.dsn(user="ups_alter", password="ups_alter"))
        c.autocommit = True
        try:
            run(c, "ALTER TABLE ups.pairs ADD COLUMN extra int")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                run(c, "SELECT electric.upsert_function('ups.pairs'::regclass)")
        finally:
            c.close()
        assert "extra = NEW.extra" in function_of(conn, "ups.pairs")[1]
    finally:
        run(conn, "DROP TABLE ups.pairs")
        run(conn, "DROP OWNED BY ups_alter; DROP ROLE ups_alter")


def test_reinstall_after_add_column_picks_up_the_new_column(pg, conn):
    """Without the event trigger (disabled here) the column list is stale until the next
    install — which Electric runs after every migration."""
    run(conn, f"ALTER EVENT TRIGGER {upsert.event_trigger_name()} DISABLE")
    run(conn, "ALTER TABLE ups.pairs ADD COLUMN extra int")
    assert "extra" not in function_of(conn, "ups.pairs")[1]
    before = function_of(conn, "ups.pairs")[0]
    assert upsert.install(conn, TABLES) == len(TABLES)  # also re-enables the event trigger
    name, src = function_of(conn, "ups.pairs")
    assert name == before and "val = NEW.val, extra = NEW.extra" in src
    assert rows(conn, "SELECT evtenabled FROM pg_event_trigger WHERE evtname = %s"
                .replace("%s", f"'{upsert.event_trigger_name()}'")) == [("O",)]
    run(conn, "INSERT INTO ups.pairs VALUES (1, 'x', 'old', 1)")
    run(replica(pg), "INSERT INTO ups.pairs VALUES (1, 'x', 'new', 2)")
    assert rows(conn, "SELECT val, extra FROM ups.pairs") == [("new", 2)]


def test_functions_of_dropped_tables_are_cleaned_up(conn):
    name = function_of(conn, "ups.items")[0]
    run(conn, "DROP TABLE ups.items")
    upsert.install(conn, [("ups", "pairs")])
    assert rows(conn, f"SELECT to_regproc('{name}')") == [(None,)]  # qualified: no $user
    assert function_of(conn, "ups.tags")[0].startswith("electric.upsert_")  # still in use


def test_non_superuser_falls_back_to_the_generic_function(pg, conn):
    run(conn, """
        DROP ROLE IF EXISTS ups_owner;
        CREATE ROLE ups_owner LOGIN PASSWORD 'ups_owner';
        CREATE TABLE ups.owned (id int PRIMARY KEY, v text);
        ALTER TABLE ups.owned OWNER TO ups_owner;
        GRANT USAGE ON SCHEMA ups TO ups_owner;
    """)
    run(conn, f"GRANT CREATE ON DATABASE {pg.database} TO ups_owner")
    try:
        c = psycopg2.connect(pg.dsn(user="ups_owner", password="ups_owner"))
        try:
            assert upsert.install(c, [("ups", "owned")], schema="ups_fn") == 1
        finally:
            c.close()
        assert function_of(conn, "ups.owned")[0] == "ups_fn.replication_upsert"
        run(conn, "INSERT INTO ups.owned VALUES (1, 'local')")
        run(replica(pg), "INSERT INTO ups.owned VALUES (1, 'remote')")
        assert rows(conn, "SELECT v FROM ups.owned") == [("remote",)]
    finally:
        run(conn, "DROP TABLE ups.owned")
        run(conn, "DROP OWNED BY ups_owner; DROP ROLE ups_owner")
