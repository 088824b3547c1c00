"""Query text to typed commands (docs/protocols.md §2.2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from electric.postgres import commands
from electric.postgres.commands import (
    CreateReplicationSlot,
    DropReplicationSlot,
    EmptyQuery,
    IdentifySystem,
    ListPublications,
    ListPublicationTables,
    RelationColumns,
    RelationInfo,
    SetConfig,
    SetParameter,
    Show,
    StartReplication,
    TransactionControl,
    Unsupported,
    parse_command,
)


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# ------------------------------------------------------------------ normalisation + commands


def test_normalize_query():
    assert commands.normalize_query("SELECT  1 ;;\0\0") == "SELECT 1"
    assert commands.normalize_query("  a\n\t b  ") == "a b"
    assert commands.normalize_query("x 'a  \n b' \"c  d\"") == "x 'a  \n b' \"c  d\""
    assert commands.normalize_query("x 'it''s  ;' ;") == "x 'it''s  ;'"
    assert commands.normalize_query("x E'a\\'  b'") == "x E'a\\'  b'"
    assert commands.normalize_query("") == ""


PG14_LIST = (
    "SELECT DISTINCT t.schemaname, t.tablename\n  FROM pg_catalog.pg_publication_tables t\n"
    " WHERE t.pubname IN ('all_tables')"
)
PG15_LIST = (
    "SELECT DISTINCT t.schemaname, t.tablename \nFROM pg_catalog.pg_publication_tables t\n"
    " WHERE t.pubname IN ('all_tables')"
)
PG15_NUMERIC_LIST = (
    "SELECT DISTINCT t.schemaname, t.tablename \n, t.attnames\nFROM "
    "pg_catalog.pg_publication_tables t\n WHERE t.pubname IN ('all_tables')"
)
PG14_ATTRS = (
    "SELECT a.attname,       a.atttypid,       a.attnum = ANY(i.indkey)"
    "  FROM pg_catalog.pg_attribute a"
    "  LEFT JOIN pg_catalog.pg_index i"
    "       ON (i.indexrelid = pg_get_replica_identity_index(20000))"
    " WHERE a.attnum > 0::pg_catalog.int2"
    "   AND NOT a.attisdropped AND a.attgenerated = ''"
    "   AND a.attrelid = 20000"
    " ORDER BY a.attnum"
)
PG15_ATTRS = (
    "SELECT a.attnum,       a.attname,       a.atttypid,       a.attnum = ANY(i.indkey)"
    "  FROM pg_catalog.pg_attribute a"
    "  LEFT JOIN pg_catalog.pg_index i"
    "       ON (i.indexrelid = pg_get_replica_identity_index(20000))"
    " WHERE a.attnum > 0::pg_catalog.int2"
    "   AND NOT a.attisdropped"
    "   AND a.attrelid = 20000"
    " ORDER BY a.attnum"
)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "SELECT pg_catalog.set_config('search_path', '', false);",
            SetConfig("search_path", "", False),
        ),
        ("select pg_catalog.set_config('x', 'it''s', true)", SetConfig("x", "it's", True)),
        ("IDENTIFY_SYSTEM", IdentifySystem()),
        ("identify_system;", IdentifySystem()),
        (PG14_LIST, ListPublicationTables(["all_tables"], False)),
        (PG15_LIST, ListPublicationTables(["all_tables"], False)),
        (PG15_NUMERIC_LIST, ListPublicationTables(["all_tables"], True)),
        (
            "SELECT DISTINCT t.schemaname, t.tablename FROM pg_catalog.pg_publication_tables t "
            "WHERE t.pubname IN ('a', 'b''c', E'd\\\\e')",
            ListPublicationTables(["a", "b'c", "d\\e"], False),
        ),
        (
            "SELECT t.pubname FROM\n pg_catalog.pg_publication t WHERE\n t.pubname IN ('all_tables')",
            ListPublications(["all_tables"]),
        ),
        (
            "SELECT c.oid, c.relreplident, c.relkind  FROM pg_catalog.pg_class c  INNER JOIN "
            "pg_catalog.pg_namespace n        ON (c.relnamespace = n.oid) WHERE n.nspname = "
            "'public'   AND c.relname = 'items'",
            RelationInfo("public", "items"),
        ),
        (PG14_ATTRS, RelationColumns(20000, False)),
        (PG15_ATTRS, RelationColumns(20000, True)),
        ("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ", TransactionControl("BEGIN")),
        ("START TRANSACTION", TransactionControl("BEGIN")),
        ("COMMIT", TransactionControl("COMMIT")),
        ("ROLLBACK", TransactionControl("ROLLBACK")),
        ("DROP_REPLICATION_SLOT s WAIT", DropReplicationSlot("s", True)),
        ('DROP_REPLICATION_SLOT "My Slot"', DropReplicationSlot("My Slot", False)),
        (
            'CREATE_REPLICATION_SLOT "pg_16518_sync_16385_7" LOGICAL pgoutput USE_SNAPSHOT',
            CreateReplicationSlot("pg_16518_sync_16385_7", False, True, "pgoutput", "USE_SNAPSHOT"),
        ),
        (
            "CREATE_REPLICATION_SLOT \"x\" TEMPORARY LOGICAL pgoutput (SNAPSHOT 'use')",
            CreateReplicationSlot("x", True, True, "pgoutput", "(SNAPSHOT 'use')"),
        ),
        ("SHOW wal_segment_size", Show("wal_segment_size")),
        ("SET search_path = ''", SetParameter("search_path", "")),
        ("SET datestyle TO ISO", SetParameter("datestyle", "ISO")),
        ("", EmptyQuery()),
        (" ;; ", EmptyQuery()),
    ],
)
def test_parse_command(text, expected):
    assert parse_command(text) == expected


def test_start_replication_forms():
    cmd = parse_command(
        "START_REPLICATION SLOT \"s\" LOGICAL 2/A7F4A880 (proto_version '3', streaming 'on', "
        "two_phase 'on', publication_names '\"all_tables\",\"Other\"\"x\", plain', binary 'true')"
    )
    assert isinstance(cmd, StartReplication)
    assert cmd.slot == "s"
    assert cmd.lsn == 0x2A7F4A880
    assert cmd.proto_version == 3
    assert cmd.publication_names == ["all_tables", 'Other"x', "plain"]
    assert cmd.options["streaming"] == "on" and cmd.options["binary"] == "true"
    assert list(cmd.options) == [
        "proto_version",
        "streaming",
        "two_phase",
        "publication_names",
        "binary",
    ]

    cmd = parse_command("START_REPLICATION SLOT postgres_1 LOGICAL 0/258")
    assert cmd == StartReplication("postgres_1", 0x258, {})
    assert cmd.proto_version is None and cmd.publication_names == []

    cmd = parse_command('START_REPLICATION SLOT "s""q" LOGICAL 0/0 (messages, origin \'any\')')
    assert cmd.slot == 's"q'
    assert cmd.options == {"messages": None, "origin": "any"}


@pytest.mark.parametrize(
    "text, reason",
    [
        ("START_REPLICATION 0/0", "physical replication"),
        ("START_REPLICATION SLOT s PHYSICAL 0/0", "physical replication"),
        ("START_REPLICATION SLOT s LOGICAL zz", "could not parse"),
        ("START_REPLICATION SLOT s LOGICAL 0/0 (proto_version", "could not parse"),
        ("START_REPLICATION SLOT s LOGICAL 0/0 (a 'b') extra", "could not parse"),
        ("START_REPLICATION SLOT s LOGICAL 123456789/0", "could not parse"),
        ("START_REPLICATION SLOT", "could not parse"),
        ("SELECT 1", "query not supported"),
        (
            "SELECT DISTINCT t.schemaname, t.tablename FROM pg_catalog.pg_publication_tables t WHERE t.pubname IN (1)",
            "query not supported",
        ),
        ("COPY public.items (id) TO STDOUT", "COPY is not supported"),
        ("TIMELINE_HISTORY 1", "TIMELINE_HISTORY is not supported"),
        ("READ_REPLICATION_SLOT s", "READ_REPLICATION_SLOT"),
        ("IDENTIFY_SYSTEM now", "syntax error"),
        ("BEGIN; SELECT 1", "multiple statements"),
        ("DROP_REPLICATION_SLOT s NOW", "could not parse"),
        ("CREATE_REPLICATION_SLOT s", "could not parse"),
    ],
)
def test_unsupported_commands(text, reason):
    cmd = parse_command(text)
    assert isinstance(cmd, Unsupported), cmd
    assert reason in cmd.reason


def test_semicolon_inside_quotes_is_not_a_second_statement():
    cmd = parse_command("SELECT pg_catalog.set_config('a', 'x;y', false)")
    assert cmd == SetConfig("a", "x;y", False)


def test_split_identifier_list():
    assert commands.split_identifier_list('"a", B ,"C""d"') == ["a", "b", 'C"d']
    with pytest.raises(ValueError):
        commands.split_identifier_list("a b")
    with pytest.raises(ValueError):
        commands.split_identifier_list("a,,b")




@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_parse_command_never_raises(text):
    cmd = parse_command(text)
    assert cmd is not None


_words = st.sampled_from(
    [
        "START_REPLICATION",
        "SLOT",
        "LOGICAL",
        "0/0",
        "1/FF",
        '"s"',
        "s",
        "(",
        ")",
        ",",
        "'1'",
        "proto_version",
        "publication_names",
        "E'x\\\\'",
        "'",
        '"',
        "DROP_REPLICATION_SLOT",
        "CREATE_REPLICATION_SLOT",
        "WAIT",
        "TEMPORARY",
        "pgoutput",
        "SELECT",
        "SHOW",
        "SET",
        "=",
        "TO",
        ";",
        "IN",
        "\n",
        "pg_catalog.set_config",
        "BEGIN",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_words, max_size=14))
def test_parse_command_on_command_like_text_never_raises(words):
    parse_command(" ".join(words))
    parse_command("".join(words))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=100))
def test_normalize_is_idempotent(text):
    once = commands.normalize_query(text)
    assert commands.normalize_query(once) == once
