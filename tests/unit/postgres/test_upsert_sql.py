"""The parts of electric/postgres/upsert.py decidable without a server: the SQL it generates
for a table and a function schema, identifier and literal quoting, the event trigger's name,
and the TablesMissing refusal. What that SQL does in Postgres (upserts, regeneration on
ALTER TABLE, the non-superuser fallback, a missing table) is in
tests/integration/publisher/test_upsert.py."""

from __future__ import annotations

import pytest

from electric import errors
from electric.postgres import upsert


@pytest.mark.parametrize("name, quoted", [
    ("items", '"items"'),
    ("Items", '"Items"'),              # case kept: unquoted, Postgres would fold it
    ("my table", '"my table"'),
    ("a.b", '"a.b"'),                  # one identifier, not schema.table
    ('say "hi"', '"say ""hi"""'),
    ('"', '""""'),
    ("select", '"select"'),            # a keyword
    ("déjà_vu", '"déjà_vu"'),
    ("x'); DROP TABLE t; --", "\"x'); DROP TABLE t; --\""),
])
def test_quote_ident_always_quotes_and_doubles_quotes(name, quoted):
    assert upsert.quote_ident(name) == quoted


def test_quote_ident_refuses_nul_naming_it():
    with pytest.raises(ValueError, match="NUL"):
        upsert.quote_ident("\0")


def test_trigger_sql_for_a_plain_table_is_exact():
    assert upsert.trigger_sql(("public", "items")) == (
        'CREATE OR REPLACE TRIGGER "electric_upsert" BEFORE INSERT ON "public"."items" '
        'FOR EACH ROW EXECUTE FUNCTION "electric"."replication_upsert"();\n'
        'ALTER TABLE "public"."items" ENABLE REPLICA TRIGGER "electric_upsert";\n'
    )


def test_trigger_sql_quotes_both_parts_and_the_function_schema():
    sql = upsert.trigger_sql(('we"ird', "a.b"), schema="Fn Schema")
    assert sql.count('ON "we""ird"."a.b"') == 1
    assert 'ALTER TABLE "we""ird"."a.b" ENABLE REPLICA' in sql
    assert 'EXECUTE FUNCTION "Fn Schema"."replication_upsert"();' in sql


def test_trigger_sql_with_a_table_s_own_static_function():
    sql = upsert.trigger_sql(("s", "t"), function='"electric"."upsert_42"')
    assert 'EXECUTE FUNCTION "electric"."upsert_42"();' in sql
    assert "replication_upsert" not in sql


def test_trigger_sql_accepts_a_relation_given_as_a_list():
    assert upsert.trigger_sql(["s", "t"]) == upsert.trigger_sql(("s", "t"))


def test_function_sql_names_the_generic_function_in_its_schema():
    default = upsert.function_sql()
    assert 'CREATE OR REPLACE FUNCTION "electric"."replication_upsert"() RETURNS trigger' in default
    odd = upsert.function_sql('my "fn" schema')
    assert 'FUNCTION "my ""fn"" schema"."replication_upsert"()' in odd
    # the body reads the catalog, so it is the same for every schema
    assert default.split("$electric_upsert$")[1] == odd.split("$electric_upsert$")[1]
    # everything it calls is pg_catalog-qualified: the apply worker runs with search_path ''
    assert "pg_catalog.format(" in default and " format(" not in default


def test_generator_sql_embeds_the_schema_as_identifier_and_as_literal():
    sql = upsert.generator_sql("it's")
    assert 'FUNCTION "it\'s"."upsert_function"(rel oid) RETURNS text' in sql
    # a quote in a literal is doubled, so the generated names land in that schema
    assert "pg_catalog.format('%I.%I', 'it''s', 'upsert_' || rel)" in sql
    assert 'REVOKE ALL ON FUNCTION "it\'s"."upsert_function"(oid) FROM PUBLIC;' in sql
    assert "SECURITY DEFINER SET search_path = pg_catalog" in sql


def test_event_trigger_name_is_per_function_schema():
    assert upsert.event_trigger_name() == "electric_upsert_refresh"
    assert upsert.event_trigger_name("other") == "other_upsert_refresh"


def test_refresh_sql_creates_the_event_trigger_once_under_its_name():
    sql = upsert.refresh_sql("it's")
    # looked up as a literal, created as an identifier: both escaped their own way
    assert "WHERE evtname = 'it''s_upsert_refresh'" in sql
    assert 'CREATE EVENT TRIGGER "it\'s_upsert_refresh" ON ddl_command_end' in sql
    assert "WHEN TAG IN ('ALTER TABLE', 'ALTER SCHEMA')" in sql
    assert 'PERFORM "it\'s"."upsert_function"(r);' in sql
    assert "t.tgname = 'electric_upsert'" in sql


def test_tables_missing_names_every_table_and_is_permanent():
    missing = [("public", "items"), ("other", "b")]
    exc = upsert.TablesMissing(missing)
    assert str(exc) == ("upsert trigger cannot be installed: table public.items, other.b "
                        "not found")
    missing.clear()
    assert exc.relations == [("public", "items"), ("other", "b")]
    assert errors.is_permanent(exc)
