"""Provisioning against a real Postgres 15: idempotent, verifies, reports tables without PK."""

from __future__ import annotations

import pytest

from electric.postgres import provision as pv
from electric.schema import SchemaRegistry


def run(db, origin="pg_1"):
    return pv.provision(db.conn(), publication=db.publication, slot=db.slot, origin=origin)


def test_fresh_database_is_provisioned_and_idempotent(source_db):
    db = source_db
    db.execute(
        """
        CREATE TYPE mood AS ENUM ('sad', 'ok');
        CREATE DOMAIN posint AS int CHECK (VALUE > 0);
        CREATE TABLE items (id uuid PRIMARY KEY, body varchar(64) NOT NULL, n numeric,
                            at timestamptz, tags text[], doc jsonb, m mood, p posint,
                            g int GENERATED ALWAYS AS (1) STORED);
        CREATE TABLE composite (b int, a text, c text, PRIMARY KEY (b, a));
        ALTER TABLE composite REPLICA IDENTITY FULL;
        CREATE TABLE nopk (x text);
        """
    )
    first = run(db)
    assert set(first.created) == {
        "schema electric",
        f"publication {db.publication}",
        f"slot {db.slot}",
    }
    assert [m.vsn for m in first.migrations] == ["1"]
    assert first.encoding.replace("_", "-").lower() == "utf-8"
    assert first.tables_without_pk == [("public", "nopk")]
    by_name = {t.name: t for t in first.tables}
    assert set(by_name) == {"items", "composite"}  # electric.migrations is bookkeeping

    items = by_name["items"]
    # Created with the default identity; provisioning made it FULL (per-column merge).
    assert items.primary_keys == ("id",) and items.replica_identity == "f"
    assert db.query("SELECT relreplident FROM pg_class WHERE relname = 'items'") == [("f",)]
    cols = {c.name: c for c in items.columns}
    assert [c.name for c in items.columns] == ["id", "body", "n", "at", "tags", "doc", "m", "p"]
    assert (cols["id"].type_name, cols["id"].type_oid, cols["id"].part_of_identity) == (
        "uuid",
        2950,
        True,
    )
    assert (cols["body"].type_name, cols["body"].type_modifier, cols["body"].nullable) == (
        "varchar",
        68,
        False,
    )
    assert not cols["body"].part_of_identity
    assert cols["tags"].type_name == "_text" and cols["tags"].type_oid == 1009
    assert cols["m"].type_name == "text" and cols["m"].type_oid == 25  # enum → text
    assert cols["p"].type_name == "text"  # domain → text
    assert (cols["doc"].type_name, cols["at"].type_name, cols["n"].type_name) == (
        "jsonb",
        "timestamptz",
        "numeric",
    )

    composite = by_name["composite"]
    assert composite.primary_keys == ("b", "a")  # key order, not attnum order
    assert composite.replica_identity == "f"
    assert all(c.part_of_identity for c in composite.columns)

    second = run(db)
    assert second.created == []
    assert [t.name for t in second.tables] == [t.name for t in first.tables]
    assert db.query("SELECT count(*) FROM electric.migrations") == [(1,)]

    registry = SchemaRegistry()
    registered = pv.register(registry, "pg_1", db.publication, second)
    assert {t.oid for t in registered} == {20000, 20001}
    assert registry.table(("public", "composite")).primary_keys == ("b", "a")
    assert [m.vsn for m in registry.migrations("pg_1")] == ["1"]


def test_existing_objects_are_verified(source_db):
    db = source_db
    db.execute("CREATE PUBLICATION all_tables FOR ALL TABLES WITH (publish = 'insert')")
    db.execute("SELECT pg_create_physical_replication_slot(%s)", (db.slot,))
    with pytest.raises(pv.ProvisionError, match="physical slot"):
        run(db)
    db.execute("SELECT pg_drop_replication_slot(%s)", (db.slot,))
    db.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (db.slot,))
    with pytest.raises(pv.ProvisionError, match="plugin test_decoding"):
        run(db)
    db.execute("SELECT pg_drop_replication_slot(%s)", (db.slot,))
    result = run(db)  # publication exists (warned about), slot created
    assert result.created == [f"slot {db.slot}"]  # the schema was made by the first try


def test_existing_electric_schema_kept(source_db):
    db = source_db
    db.execute(
        "CREATE SCHEMA electric; CREATE TABLE electric.migrations (id serial primary key, "
        "version varchar(64) not null unique, hash varchar(64) not null, "
        "applied_at timestamptz default now());"
        "INSERT INTO electric.migrations (version, hash) VALUES ('1', 'a'), ('2', 'b')"
    )
    result = run(db)
    assert "schema electric" not in result.created
    assert sorted(m.vsn for m in result.migrations) == ["1", "2"]


def test_subscription_helpers(source_db):
    db = source_db
    run(db)
    conninfo = "host=127.0.0.1 port=1 dbname=electric"
    assert pv.create_subscription(db.conn(), "sub_pg_1", conninfo, db.publication)
    assert not pv.create_subscription(db.conn(), "sub_pg_1", conninfo, db.publication)
    rows = db.query(
        "SELECT subenabled, subslotname FROM pg_subscription WHERE subname = 'sub_pg_1'"
    )
    assert rows == [(False, "sub_pg_1")]
    # Electric moved: the existing subscription is pointed at the new address.
    moved = "host=127.0.0.1 port=2 dbname=electric"
    assert not pv.create_subscription(db.conn(), "sub_pg_1", moved, db.publication)
    assert db.query("SELECT subconninfo FROM pg_subscription WHERE subname = 'sub_pg_1'") == [
        (moved,)]
    db.execute("ALTER SUBSCRIPTION sub_pg_1 SET (slot_name = NONE)")
    db.execute("DROP SUBSCRIPTION sub_pg_1")
