"""Initial sync: a connector's existing rows reach the log before its stream starts.

Postgres' own table sync is the model. When Electric creates a connector's slot, it creates
it over a replication connection with an exported snapshot (``CREATE_REPLICATION_SLOT …
(SNAPSHOT 'export')``), reads every replicated table in a ``REPEATABLE READ`` transaction
that imports that snapshot, and writes the rows into the log in batches; only then does the
source reader stream the slot, which starts exactly at the snapshot. So no row is missed and
none is read twice, whatever is written meanwhile. Rows that also exist on other connectors
merge like concurrent inserts (the copy is the later write).

The copy must finish before streaming, and a copy cut short (crash, kill, lost
connection) is done again from scratch: the caller records "started" before and "done"
after (see :class:`SyncState`), and a slot whose sync was started but not done is dropped
and created again. Memory stays bounded: rows are read with a server-side cursor and
written ``PostgresLimits.initial_sync_batch_rows`` at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg2
import psycopg2.extras
from loguru import logger
from psycopg2 import sql

from electric.changes import NewRecord, SeedRecord, Table, Transaction, utc_now
from electric.limits import DEFAULT
from electric.postgres import green


class SyncState(Protocol):
    """Where a connector's initial-sync state survives restarts (the store's meta table)."""

    def get(self, connector: str) -> str | None: ...

    def put(self, connector: str, state: str) -> None: ...


@dataclass
class Progress:
    """What ``/api/status`` shows while a sync runs (and after)."""

    state: str = "pending"  # pending, copying, done, skipped
    tables_total: int = 0
    tables_done: int = 0
    rows_copied: int = 0
    current_table: str | None = None
    started_at: float | None = None
    seconds: float | None = None
    tables: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "tables_total": self.tables_total,
                "tables_done": self.tables_done, "rows_copied": self.rows_copied,
                "current_table": self.current_table, "seconds": self.seconds}


def create_slot_with_snapshot(dsn: str, slot: str) -> tuple[Any, str, str]:
    """Create the logical slot over a replication connection; returns the connection (keep
    it open and idle until the snapshot has been imported), the snapshot name and the
    slot's consistent point."""
    conn = psycopg2.connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    try:
        cur = conn.cursor()
        # Cooperative (green) wait: the command waits for transactions running on the source
        # to finish before the slot is consistent, and the rest of Electric goes on meanwhile.
        cur.execute(sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')")
                    .format(sql.Identifier(slot)).as_string(conn))
        _name, consistent_point, snapshot, _plugin = cur.fetchone()
    except BaseException:
        conn.close()
        raise
    return conn, snapshot, consistent_point


def drop_slot(conn: Any, slot: str) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_catalog.pg_drop_replication_slot(slot_name) "
                    "FROM pg_catalog.pg_replication_slots WHERE slot_name = %s", (slot,))


def copy_tables(conn: Any, snapshot: str, tables: list[Table],
                write: Callable[[Transaction], None], progress: Progress,
                origin: str | None = None, batch_rows: int = DEFAULT.postgres.initial_sync_batch_rows) -> None:
    """Read ``tables`` as of ``snapshot`` on ``conn`` (an ordinary connection, not in a
    transaction) and ``write`` their rows as inserts, ``batch_rows`` per transaction."""
    log = logger.bind(origin=origin) if origin else logger
    conn.autocommit = False
    progress.tables_total = len(tables)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
        for table in tables:
            name = f"{table.schema}.{table.name}"
            progress.current_table = name
            copied = _copy_table(conn, table, write, batch_rows, progress)
            progress.tables[name] = copied
            progress.tables_done += 1
            log.info("initial sync: {} rows of {} copied ({} of {} tables)", copied, name,
                     progress.tables_done, progress.tables_total)
        conn.commit()
    finally:
        progress.current_table = None
        conn.autocommit = True


def _copy_table(conn: Any, table: Table, write: Callable[[Transaction], None],
                batch_rows: int, progress: Progress, record: type = NewRecord) -> int:
    columns = [c.name for c in table.columns]
    # ``::text`` is each type's output function: the same text pgoutput sends.
    query = sql.SQL("SELECT {} FROM ONLY {}").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
        sql.Identifier(table.schema, table.name))
    copied = 0
    with conn.cursor(name=f"electric_sync_{table.oid}") as cur:
        cur.itersize = batch_rows
        cur.execute(query)
        while True:
            rows = cur.fetchmany(batch_rows)
            if not rows:
                return copied
            changes = [record(table.relation, dict(zip(columns, row, strict=True)))
                       for row in rows]
            write(Transaction(changes, utc_now(), origin=None, publication=None))
            copied += len(rows)
            progress.rows_copied += len(rows)


def copy_current(conn: Any, table: Table, write: Callable[[Transaction], None],
                 progress: Progress, batch_rows: int = DEFAULT.postgres.initial_sync_batch_rows) -> None:
    """Copy a table's current rows (one REPEATABLE READ transaction, no slot snapshot): for a
    table that joins replication while the stream runs. The copy is not in step with the
    stream, so its rows are seeds: written only for keys the log has no state of (rows that
    never came through the stream); a row the stream carried is never overwritten."""
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        progress.tables_total += 1
        _copy_table(conn, table, write, batch_rows, progress, record=SeedRecord)
        progress.tables_done += 1
        conn.commit()
    finally:
        conn.autocommit = True


def run(dsn: str, slot: str, tables: list[Table], write: Callable[[Transaction], None],
        state: SyncState, connector: str, progress: Progress,
        batch_rows: int = DEFAULT.postgres.initial_sync_batch_rows) -> None:
    """Create ``slot`` with a snapshot and copy ``tables`` as of it (see the module notes).
    The caller has made sure the slot does not exist."""
    log = logger.bind(origin=connector)
    progress.state = "copying"
    progress.started_at = time.monotonic()
    state.put(connector, f"started:{slot}")
    repl, snapshot, point = create_slot_with_snapshot(dsn, slot)
    try:
        log.info("initial sync: slot {} created at {}; copying {} tables", slot, point,
                 len(tables))
        conn = green.connect(dsn)
        try:
            copy_tables(conn, snapshot, tables, write, progress, origin=connector,
                        batch_rows=batch_rows)
        finally:
            conn.close()
    finally:
        repl.close()
    state.put(connector, "done")
    progress.state = "done"
    progress.seconds = round(time.monotonic() - progress.started_at, 3)
    log.info("initial sync done: {} rows from {} tables in {:.1f}s", progress.rows_copied,
             progress.tables_done, progress.seconds)
