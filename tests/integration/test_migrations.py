"""electric.migrations against a real Postgres: atomic apply, history, conflicts."""

import uuid

import psycopg2
import pytest

from electric import migrations
from electric.devenv import DEV_SCHEMA_SQL
from electric.migrations import MigrationError
from electric.postgres.provision import read_migrations


def history(dsn):
    conn = psycopg2.connect(dsn)
    try:
        return read_migrations(conn)
    finally:
        conn.close()


@pytest.fixture
def db(pg_factory):
    pg = pg_factory("migrations")
    name = f"mig_{uuid.uuid4().hex[:10]}"
    pg.create_database(name)
    pg.psql(DEV_SCHEMA_SQL, database=name)
    return pg.dsn(database=name), pg, name


def write(tmp_path, vsn, sql):
    folder = tmp_path / vsn
    folder.mkdir()
    (folder / "postgres.sql").write_text(sql)


def test_apply_records_hash_and_history(db, tmp_path):
    dsn, pg, name = db
    write(tmp_path, "2_add_col", "ALTER TABLE entries ADD COLUMN extra TEXT;\n"
                                 "INSERT INTO entries (content) VALUES ('seeded');")
    m = migrations.read_migration(str(tmp_path), "/postgres.sql", "2_add_col")
    assert len(m.hash) == 32 and m.hash == m.hash.upper()
    applied = migrations.apply(dsn, m)
    assert applied.vsn == "2_add_col"
    assert [h.vsn for h in history(dsn)] == ["2_add_col", "1"]
    assert pg.psql("SELECT count(*) FROM entries WHERE content = 'seeded'", name).strip() == "1"
    body = migrations.as_json("postgres_1", applied)
    assert list(body) == ["applied_at", "hash", "origin", "vsn"]
    assert body["applied_at"].endswith("Z")

    with pytest.raises(MigrationError) as again:
        migrations.apply(dsn, m)
    assert (again.value.status, again.value.code) == (409, "already_migrated")

    (tmp_path / "2_add_col" / "postgres.sql").write_text("SELECT 1;")
    changed = migrations.read_migration(str(tmp_path), "/postgres.sql", "2_add_col")
    with pytest.raises(MigrationError) as bad:
        migrations.apply(dsn, changed)
    assert bad.value.code == "already_migrated_bad_md5"


def test_failing_migration_rolls_back_everything(db, tmp_path):
    dsn, pg, name = db
    write(tmp_path, "3_broken", "ALTER TABLE entries ADD COLUMN half_done TEXT;\n"
                                "ALTER TABLE no_such_table ADD COLUMN x INT;")
    m = migrations.read_migration(str(tmp_path), "/postgres.sql", "3_broken")
    with pytest.raises(MigrationError) as exc:
        migrations.apply(dsn, m)
    assert exc.value.status == 500 and "no_such_table" in exc.value.message
    columns = pg.psql("SELECT string_agg(column_name, ',') FROM information_schema.columns"
                      " WHERE table_name = 'entries'", name)
    assert "half_done" not in columns
    assert [h.vsn for h in history(dsn)] == ["1"]


@pytest.mark.parametrize("vsn", ["", "../etc", "a b", None, 3, "x;drop"])
def test_invalid_vsn_is_400(tmp_path, vsn):
    with pytest.raises(MigrationError) as exc:
        migrations.read_migration(str(tmp_path), "/postgres.sql", vsn)
    assert exc.value.status == 400


def test_missing_file_is_404(tmp_path):
    with pytest.raises(MigrationError) as exc:
        migrations.read_migration(str(tmp_path), "/postgres.sql", "999")
    assert (exc.value.status, exc.value.code) == (404, "vsn_not_found")


def test_unqualified_create_table_lands_in_public_even_for_a_role_named_electric(db, tmp_path):
    dsn, pg, name = db
    assert pg.user == "electric"  # "$user" in search_path resolves to Electric's schema
    write(tmp_path, "4_items", "CREATE TABLE items (id int PRIMARY KEY, label text);")
    migrations.apply(dsn, migrations.read_migration(str(tmp_path), "/postgres.sql", "4_items"))
    where = pg.psql("SELECT table_schema FROM information_schema.tables"
                    " WHERE table_name = 'items'", name).split()
    assert where == ["public"]
