"""One configured source Postgres ("connector"): provision it, then stream it into a sink.

Lifecycle (one greenlet per connector, independent of every other connector):

1. **Provision** (``provision.py``) on an ordinary connection; register tables and migration
   history in the :class:`~electric.schema.SchemaRegistry`. While Postgres is unreachable or
   provisioning fails, retry with capped back-off; ``status()["ready"]`` stays false.
2. Call the optional ``after_provision(connector)`` hook (the publisher side uses it to create
   / enable the subscription in the order it needs; its failures are logged, not fatal).
3. Run the :class:`~electric.postgres.source.SourceReader`; once it streams, ``ready`` is set
   and the origin is marked ready in the registry. The reader reconnects on its own after
   connection loss. If it ever dies of an unexpected exception, :meth:`Connector.run` raises
   it: restarting is the :class:`~electric.supervisor.Supervisor`'s job (the only place that
   restarts a component, with its one back-off). The restarted ``run`` starts a new reader
   at the slot's confirmed position and does not provision again.

Tables that appear after start (created outside Electric's migrations) are picked up the
first time a change for them arrives: the table lookup re-reads the publication's tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import psycopg2
import psycopg2.extensions as ext
from gevent import Greenlet, GreenletExit
from loguru import logger

from electric.changes import RelationName, Table
from electric.errors import describe
from electric.limits import DEFAULT, PostgresLimits
from electric.postgres import errors as pg_errors
from electric.postgres import green, initial_sync
from electric.postgres import provision as pv
from electric.postgres.source import Sink, SourceReader
from electric.postgres.subscription import SetupState
from electric.retry import Backoff, Policy
from electric.schema import SchemaRegistry
from electric.supervisor import Supervisor

# Copying the rows of tables that joined replication, until it succeeds.
COPY_RETRY = Policy(1.0, 30.0)
# How often a change for an unknown table may trigger a re-read of the publication.
_REFRESH_UNKNOWN_EVERY = 10.0
_REFRESH_NO_PK_EVERY = 60.0
# Tables can be created (or get a primary key) by any means at any time: re-read the
# catalog this often so they join replication without a restart or a change to them.
TABLE_WATCH_EVERY = 10.0


class Unreachable(Exception):
    """A connector's Postgres could not be reached (``name``: the connector)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: cannot connect: {reason}")
        self.name = name


class ReaderCrashed(Exception):
    """The source reader of connector ``name`` died of an unexpected exception (a bug: the
    reader handles connection and write failures itself)."""

    def __init__(self, name: str, exc: BaseException):
        super().__init__(f"source reader of {name} crashed: {describe(exc)}")
        self.name = name


def connect_all(connectors: list) -> dict[str, Any]:
    """An autocommit psycopg2 connection to each configured connector's Postgres (operator
    commands); raises :class:`Unreachable` naming the first one that fails (closing the
    others)."""
    conns: dict[str, Any] = {}
    for connector in connectors:
        try:
            conn = psycopg2.connect(plain_dsn(connector.dsn()))
        except psycopg2.Error as exc:
            for opened in conns.values():
                opened.close()
            raise Unreachable(connector.name, str(exc).strip()) from None
        conn.autocommit = True
        conns[connector.name] = conn
    return conns


def plain_dsn(dsn: str) -> str:
    """The DSN without ``replication=…`` (provisioning needs an ordinary session)."""
    params = ext.parse_dsn(dsn)
    params.pop("replication", None)
    return ext.make_dsn(**params)


class Connector:
    """Per-connector lifecycle object; see the module docstring."""

    def __init__(
        self,
        name: str,
        dsn: str,
        publication: str,
        slot: str,
        registry: SchemaRegistry,
        sink: Sink,
        *,
        after_provision: Callable[[Connector], None] | None = None,
        sync_state: initial_sync.SyncState | None = None,
        on_tables_added: Callable[[Connector, list[RelationName]], None] | None = None,
        retry_min: float = 1.0,
        retry_max: float = 10.0,
        reader_options: dict[str, Any] | None = None,
        limits: PostgresLimits = DEFAULT.postgres,
    ) -> None:
        self.name = name
        self.dsn = dsn
        self.publication = publication
        self.slot = slot
        self.registry = registry
        self.sink = sink
        self.after_provision = after_provision
        # With a place to remember its progress, a connector copies its existing rows into
        # the log when it creates its slot (initial_sync.py); without one it only streams.
        self.sync_state = sync_state
        self.sync = initial_sync.Progress()
        # Called with the relations that joined replication after provisioning (tables
        # created or given a primary key later), once their current rows are in the log.
        self.on_tables_added = on_tables_added
        self.backfilled: dict[str, int] = {}
        self.retry = Backoff(Policy(retry_min, retry_max))
        self.reader_options = dict(reader_options or {})
        self.limits = limits
        self.log = logger.bind(origin=name)

        self.ready = gevent.event.Event()  # set once provisioned and streaming
        self.provisioned = False
        self.result: pv.ProvisionResult | None = None
        self.tables: dict[RelationName, Table] = {}
        self.tables_without_pk: list[RelationName] = []
        self.last_error: str | None = None
        self.reader: SourceReader | None = None
        # This Postgres' subscription to Electric, as its set-up (by the application) goes.
        self.subscription = SetupState()

        self._greenlet: Greenlet | None = None
        self._supervisor: Supervisor | None = None
        self._stopping = False
        self._refreshed_at: dict[RelationName, float] = {}

    # -- public API ---------------------------------------------------------------------

    def start(self) -> Greenlet:
        """Run the connector under a supervisor of its own (idempotent), for use without an
        application (which spawns :meth:`run` under its own supervisor instead)."""
        if self._greenlet is None or self._greenlet.dead:
            self._stopping = False
            self._supervisor = Supervisor()
            self._greenlet = self._supervisor.spawn(f"connector-{self.name}", self.run)
        return self._greenlet

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the reader (flushing acknowledgements) and the lifecycle greenlet."""
        self._stopping = True
        if self.reader is not None:
            self.reader.stop(timeout)
        if self._supervisor is not None:
            self._supervisor.stop(timeout)
            self._supervisor = None
        self._greenlet = None

    def is_ready(self) -> bool:
        return self.provisioned and self.reader is not None and self.reader.connected

    def status(self) -> dict[str, Any]:
        """Detail for ``/api/status``; ``ready`` is the connector's boolean."""
        reader = self.reader.status() if self.reader is not None else {}
        return {
            "ready": self.is_ready(),
            "provisioned": self.provisioned,
            "reader_connected": bool(reader.get("connected")),
            "last_acked_lsn": reader.get("last_acked_lsn"),
            "lag_bytes": reader.get("lag_bytes"),
            "publication": self.publication,
            "slot": self.slot,
            "tables": sorted(f"{s}.{t}" for s, t in self.tables),
            "tables_without_pk": [f"{s}.{t}" for s, t in self.tables_without_pk],
            "transactions_written": reader.get("transactions_written", 0),
            "sink_retrying": reader.get("sink_retrying", False),
            "blocked_lsn": reader.get("blocked_lsn"),
            "reconnects": reader.get("reconnects", 0),
            "last_error": reader.get("last_error") or self.last_error,
            "subscription_blocked": self.subscription.blocked,
            "initial_sync": self.sync.as_dict(),
            "backfilled": dict(self.backfilled),
        }

    def connect(self) -> Any:
        """An ordinary green connection to this source (autocommit), e.g. for migrations."""
        conn = green.connect(plain_dsn(self.dsn))
        conn.autocommit = True
        return conn

    def reprovision(self) -> pv.ProvisionResult:
        """Re-run provisioning and refresh the registry (e.g. after a migration)."""
        conn = self.connect()
        try:
            result = pv.provision(
                conn, publication=self.publication, slot=self.slot, origin=self.name,
                create_slot=self.sync_state is None,
            )
            self._apply(result)
            if self.sync_state is not None:
                self._initial_sync(conn, result)
        finally:
            conn.close()
        return result

    def _initial_sync(self, conn: Any, result: pv.ProvisionResult) -> None:
        """Create the slot with a snapshot and copy the existing rows, when this connector's
        slot is new, or when a copy was started but never finished (then the slot goes and
        the copy starts again: the stream must begin exactly where the copy's snapshot
        does)."""
        state = self.sync_state.get(self.name)
        unfinished = state is not None and state.startswith("started")
        if result.slot_exists and not unfinished:
            if self.sync.state == "pending":
                self.sync.state = "done" if state == "done" else "skipped"
            return
        if result.slot_exists:
            self.log.warning("initial sync of {} was interrupted; starting it again", self.name)
            initial_sync.drop_slot(conn, self.slot)
        self.sync = initial_sync.Progress()
        initial_sync.run(plain_dsn(self.dsn), self.slot, list(self.tables.values()),
                         self.sink, self.sync_state, self.name, self.sync,
                         batch_rows=self.limits.initial_sync_batch_rows)

    # -- lifecycle ----------------------------------------------------------------------

    def run(self) -> None:
        """The whole lifecycle; blocks until stopped, raises what crashed the source reader.
        Run it under a supervisor (``start()`` makes one). Killing this greenlet also stops
        the reader (acks flushed). Run again after a crash, it only starts a new reader."""
        try:
            if not self.provisioned:
                self._provision_until_done()
                if self.after_provision is not None and not self._stopping:
                    try:
                        self.after_provision(self)
                    except GreenletExit:
                        raise
                    except Exception as exc:
                        self.log.warning("after-provision step failed: {}", describe(exc))
            watcher = gevent.spawn(self.watch_tables)
            try:
                self._run_reader()
            finally:
                watcher.kill(block=False)
        finally:
            if self.reader is not None:
                self.reader.stop()

    def _provision_until_done(self) -> None:
        while not self._stopping:
            try:
                result = self.reprovision()
            except GreenletExit:
                raise
            except Exception as exc:
                self.last_error = describe(exc)
                delay = self.retry.next()
                if isinstance(exc, pv.ProvisionError):
                    self.log.error("cannot provision: {}; retrying in {:.1f}s", exc, delay)
                elif isinstance(exc, psycopg2.OperationalError | OSError):
                    self.log.warning(
                        "Postgres {} unreachable ({}); retrying in {:g} s",
                        self.name, pg_errors.reason(exc), delay,
                    )
                else:
                    self.log.error(
                        "provisioning failed: {}; retrying in {:.1f}s", self.last_error, delay
                    )
                gevent.sleep(delay)
                continue
            self.retry.reset()
            self.last_error = None
            self.provisioned = True
            made = f" (created {', '.join(result.created)})" if result.created else ""
            self.log.info(
                "provisioned{}: {} replicated tables, {} without primary key",
                made,
                len(result.tables),
                len(result.tables_without_pk),
            )
            return

    def _apply(self, result: pv.ProvisionResult) -> None:
        self.result = result
        registered = pv.register(self.registry, self.name, self.publication, result)
        self.tables = {t.relation: t for t in registered}
        self.tables_without_pk = list(result.tables_without_pk)

    def _run_reader(self) -> None:
        """One source reader until it stops; what crashed it is raised (to the supervisor)."""
        if self._stopping:
            return
        assert self.result is not None
        options = {"encoding": self.result.encoding, **self.reader_options}
        self.reader = SourceReader(
            self.name,
            self.dsn,
            slot=self.slot,
            publication=self.publication,
            sink=self.sink,
            table_lookup=self._lookup,
            refresh_table=self._refresh,
            limits=self.limits,
            **options,
        )
        greenlet = self.reader.start()
        watcher = gevent.spawn(self._mark_ready, self.reader)
        try:
            greenlet.join()
        finally:
            watcher.kill(block=False)
        if greenlet.exception is not None and not self._stopping:
            raise ReaderCrashed(self.name, greenlet.exception) from greenlet.exception

    def _mark_ready(self, reader: SourceReader) -> None:
        reader.wait_connected()
        self.registry.set_ready(self.name, True)
        if not self.ready.is_set():
            self.log.info("connector {} ready", self.name)
        self.ready.set()

    # -- table lookup used by the reader ------------------------------------------------

    def _lookup(self, relation: RelationName) -> Table | None:
        """The table if replicated; an unknown one triggers a re-read (at once the first time
        a relation shows up, so the changes of a table created a moment ago are kept; then
        rate-limited)."""
        table = self.tables.get(relation)
        if table is not None:
            return table
        no_pk = relation in self.tables_without_pk
        if relation not in self._refreshed_at:
            return self._reread(relation, 0.0)
        return self._reread(relation, _REFRESH_NO_PK_EVERY if no_pk else _REFRESH_UNKNOWN_EVERY)

    def _refresh(self, relation: RelationName) -> Table | None:
        """Its columns changed under us (DDL outside migrations): re-read, rate-limited."""
        return self._reread(relation, _REFRESH_UNKNOWN_EVERY)

    def _reread(self, relation: RelationName, every: float) -> Table | None:
        now = time.monotonic()
        if now - self._refreshed_at.get(relation, -1e9) < every:
            return self.tables.get(relation)
        self._refreshed_at[relation] = now
        try:
            self._refresh_tables()
        except psycopg2.Error as exc:
            self.log.warning("could not re-read tables: {}", describe(exc))
        return self.tables.get(relation)

    def _refresh_tables(self) -> None:
        conn = self.connect()
        try:
            tables, without_pk = pv.read_tables(conn, self.publication, quiet=True)
            tables = pv.ensure_full_identity(conn, tables, origin=self.name)
        finally:
            conn.close()
        known = set(self.tables)
        registered = self.registry.put_tables(self.publication, tables)
        self.tables = {t.relation: t for t in registered}
        added = sorted(self.tables.keys() - known)
        for relation in added:
            self.log.info("now replicating {}.{}", *relation)
        for relation in set(without_pk) - set(self.tables_without_pk):
            self.log.warning("table {}.{} has no primary key: it is not replicated (add one; "
                             "it then joins replication by itself)", *relation)
        self.tables_without_pk = list(without_pk)
        if added and self.provisioned:
            # Not inline: this may run inside the source reader (a lookup while a message is
            # assembled, possibly with a large transaction holding the store's writer), and
            # the copy writes into the store.
            gevent.spawn(self._tables_added, added)

    def _tables_added(self, added: list[RelationName]) -> None:
        """Tables that joined replication while running (own greenlet): copy their current
        rows into the log as seeds (rows written while the table had no primary key, or
        before it was published, never came through the stream; a row the stream carried is
        never overwritten by the copy), then tell the application so other Postgres can
        subscribe to them. Retried with back-off until the copy succeeds."""
        if self.sync_state is not None:
            backoff = Backoff(COPY_RETRY)
            attempt = 0
            while not self._stopping:
                try:
                    self._copy_new_tables(added)
                    break
                except GreenletExit:
                    raise
                except Exception as exc:  # Postgres or the store away: try again
                    attempt += 1
                    delay = backoff.next()
                    if attempt <= 3 or attempt % 10 == 0:
                        self.log.warning("copying the rows of {} failed ({}); retrying in "
                                         "{:.0f}s", ", ".join(f"{s}.{t}" for s, t in added),
                                         describe(exc), delay)
                    gevent.sleep(delay)
        if self.on_tables_added is not None:
            self.on_tables_added(self, added)

    def _copy_new_tables(self, added: list[RelationName]) -> None:
        conn = green.connect(plain_dsn(self.dsn))
        try:
            for relation in added:
                table = self.tables[relation]
                progress = initial_sync.Progress()
                initial_sync.copy_current(conn, table, self.sink, progress,
                                          batch_rows=self.limits.initial_sync_batch_rows)
                self.backfilled[f"{relation[0]}.{relation[1]}"] = progress.rows_copied
                self.log.info("{} existing rows of {}.{} copied", progress.rows_copied,
                              *relation)
        finally:
            conn.close()

    def refresh_tables(self) -> None:
        """Re-read the catalog now (another Postgres gained tables this one may have too)."""
        if not self.provisioned:
            return
        try:
            self._refresh_tables()
        except GreenletExit:
            raise
        except Exception as exc:  # Postgres away: the watcher tries again
            self.log.debug("could not re-read tables: {}", describe(exc))

    def watch_tables(self) -> None:
        """Re-read the catalog every TABLE_WATCH_EVERY seconds (runs in its own greenlet)."""
        while not self._stopping:
            gevent.sleep(TABLE_WATCH_EVERY)
            self.refresh_tables()
