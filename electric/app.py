"""The one place that wires Electric together and runs it.

Start order matters for durability: the offset file and Vaxine first (everything acks
against them), then the listeners, then the connectors that start reading Postgres.
Shutdown runs in reverse: stop accepting, stop readers, flush and close files.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import replace

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore
from loguru import logger

from electric import errors, limits, metrics, replication_password, sync_rules, tls
from electric.changes import RelationName, Transaction
from electric.http.migrations import MigrationsApi
from electric.http.server import HttpServer, Request, Response, Router, json_response
from electric.limits import DEFAULT, Limits
from electric.offsets.errors import OffsetFileError
from electric.offsets.store import OffsetStore
from electric.postgres.connector import Connector, plain_dsn
from electric.postgres.publisher import Publisher, vaxine_stream_opener
from electric.postgres.subscription import electric_conninfo, subscribe, subscribe_when_ready
from electric.satellite.auth import AuthConfigError, provider_from_settings
from electric.satellite.server import SatelliteServer
from electric.satellite.session import FilterUnavailable
from electric.schema import SchemaRegistry
from electric.store import ChainedWriter, LocalStore, StoreFormatError, UnmappableChange, legacy
from electric.supervisor import Supervisor
from electric.sync_rules.watch import RulesWatch
from electric.vaxine import rows
from electric.vaxine.offset import VaxineOffset
from electric.vaxine.pool import VaxinePool
from electric.vaxine.stream import WalStream
from electric.vaxine.stream import blocked_readers as wal_blocked_readers

STAGE_LISTENERS, STAGE_PRODUCERS, STAGE_VAXINE, STAGE_FILES = range(4)


class StartupError(Exception):
    """Electric cannot start (port taken, unreadable offset file…): one line for the operator."""


def _close(name: str, closer: Callable[[], None]) -> None:
    try:
        closer()
    except Exception as exc:  # shutting down: report and carry on closing the rest
        logger.warning(f"closing {name} failed: {type(exc).__name__}: {exc}")


def _listen(setting: str, port: int, start: Callable[[], object]) -> None:
    try:
        start()
    except OSError as exc:
        raise StartupError(f"{setting}: cannot listen on port {port}: {exc.strerror or exc}") \
            from None


class Application:
    def __init__(self, settings, limits: Limits = DEFAULT):
        self.settings = settings
        self.limits = limits  # each component gets its section (electric/limits.py)
        self.listen_host = getattr(settings, "listen_address", "0.0.0.0")
        self.max_connections = getattr(settings, "max_connections", 10_000)
        self.tls = None  # server SSLContext when TLS_CERT_FILE/TLS_KEY_FILE are set
        self.replication_password = ""
        self.registry = SchemaRegistry()
        self.supervisor = Supervisor()
        self.router = Router(admin_token=getattr(settings, "status_api_token", ""),
                             limits=limits.service)
        self.http: HttpServer | None = None
        self.offsets: OffsetStore | None = None
        self.store: LocalStore | None = None  # embedded mode (no VAXINE_HOST)
        self.pool: VaxinePool | None = None  # an external Vaxine
        self.vaxine_host = "127.0.0.1"
        self.publisher: Publisher | None = None
        self.satellite: SatelliteServer | None = None
        self.connectors: dict[str, Connector] = {}
        # Serialises a connector's subscription set-up with migrations of its Postgres.
        self.connector_locks: dict[str, BoundedSemaphore] = {}
        self._closers: list[tuple[int, str, Callable[[], None]]] = []
        self._stopped = Event()
        self._exit_code = 0
        # SYNC_RULES_FILE once checked against the replicated tables (None until then, and
        # without the setting): what Satellite sessions bind their clients' claims to.
        self.sync_rules: sync_rules.RuleSet | None = None
        self._sync_rules_checked = Event()
        self._rules_watch: RulesWatch | None = None
        self._subscribe_attempts = 0
        self._install_routes()

    # -- wiring -------------------------------------------------------------------------

    def _install_routes(self) -> None:
        self.router.add("GET", r"/api/status", self._status)
        self.router.add("GET", r"/api/health", self._health)
        self.router.add("GET", r"/metrics", self._metrics)

    def _connector_flags(self) -> dict[str, bool]:
        connectors = {c.name: False for c in self.settings.connectors}
        for name, connector in self.connectors.items():
            connectors[name] = connector.is_ready()
        return connectors

    def _status(self, _request: Request) -> Response:
        body: dict[str, object] = {"connectors": self._connector_flags(),
                                   "vaxine": self._vaxine_reachable()}
        if self.publisher is not None and self.satellite is not None:
            # The reference keys, plus operator detail under a key of its own.
            body["detail"] = self._detail()
        return json_response(200, body)

    def _health(self, _request: Request) -> Response:
        connectors = self._connector_flags()
        vaxine = self._vaxine_reachable()
        healthy = vaxine and all(connectors.values())
        body = {"healthy": healthy, "vaxine": vaxine,
                "connectors_down": sorted(n for n, up in connectors.items() if not up)}
        return json_response(200 if healthy else 503, body)

    def _metrics(self, _request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(200, body, content_type)

    def on_close(self, stage: int, name: str, closer: Callable[[], None]) -> None:
        """Register something to close at shutdown, by stage: listeners (0) stop accepting
        first, then producers (1: connectors), then Vaxine (2), then files (3)."""
        self._closers.append((stage, name, closer))

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Bring every component up; raises StartupError with one line naming the cause."""
        s = self.settings
        try:
            self.offsets = OffsetStore(s.offset_storage_file, limits=self.limits.service)
        except OffsetFileError as exc:
            raise StartupError(f"OFFSET_STORAGE_FILE: {exc}") from None
        except OSError as exc:
            raise StartupError(
                f"OFFSET_STORAGE_FILE: cannot open {s.offset_storage_file}: {exc.strerror}"
            ) from None
        self.on_close(STAGE_FILES, "offsets", self.offsets.close)
        self._load_secrets()
        self._warn_without_sync_rules()
        self._start_vaxine()
        self.http = HttpServer(self.listen_host, s.status_port, self.router, tls=self.tls,
                               max_connections=self.max_connections)
        _listen("STATUS_PORT", s.status_port, self.http.start)
        self.on_close(STAGE_LISTENERS, "http", self.http.stop)
        self._start_publisher()
        self._start_satellite()
        self._start_connectors()
        self._check_sync_rules_when_ready()
        metrics.watch(metrics.StatusCollector(
            connectors=self._connector_statuses, subscribers=self.publisher.status,
            satellite=self.satellite.status, vaxine_up=self._vaxine_reachable,
            listeners=self._listener_statuses,
            store=self.store.status if self.store is not None else None))
        logger.info(f"status API listening on port {s.status_port}")

    def _load_secrets(self) -> None:
        """TLS context and the replication password (generated and kept when unset)."""
        s = self.settings
        if getattr(s, "tls_cert_file", ""):
            try:
                self.tls = tls.server_context(s.tls_cert_file, s.tls_key_file)
            except tls.TlsConfigError as exc:
                raise StartupError(str(exc)) from None
        elif not tls.is_loopback(self.listen_host):
            logger.warning(
                f"listening on {self.listen_host} without TLS: the replication, websocket and "
                f"status ports ({s.postgres_replication_port}, {s.websocket_port}, "
                f"{s.status_port}) are reachable in plain text; set TLS_CERT_FILE and "
                f"TLS_KEY_FILE, or LISTEN_ADDRESS=127.0.0.1")
        try:
            self.replication_password, kept_in = replication_password.resolve(
                getattr(s, "postgres_replication_password", ""), s.offset_storage_file)
        except replication_password.PasswordFileError as exc:
            raise StartupError(f"POSTGRES_REPLICATION_PASSWORD: {exc}") from None
        if kept_in:
            logger.info(f"replication password: generated, kept in {kept_in} "
                        f"(set POSTGRES_REPLICATION_PASSWORD to choose one)")
        _raise_open_files_limit(self.max_connections + 1024)

    def _warn_without_sync_rules(self) -> None:
        """JWT mode means clients are told apart; without sync rules each still gets every
        row (docs/sync-rules.md)."""
        s = self.settings
        if s.satellite_auth_mode == "jwt" and getattr(s, "sync_rules", None) is None:
            logger.warning("SYNC_RULES_FILE is not set: every Satellite client receives, and "
                           "may write, every row of every replicated table "
                           "(see docs/sync-rules.md)")

    def _rules_for_session(self) -> sync_rules.RuleSet:
        """The checked rules for a Satellite client authenticating: a client arriving before
        the connectors have described their tables waits for the check (up to
        ``ServiceLimits.sync_rules_wait``), then is refused and retries; it never gets an unfiltered
        or unchecked view."""
        if not self._sync_rules_checked.wait(self.limits.service.sync_rules_wait) or self.sync_rules is None:
            raise FilterUnavailable("sync rules are not checked yet (connectors starting)")
        return self.sync_rules

    def _check_sync_rules_when_ready(self) -> None:
        """Check SYNC_RULES_FILE against the tables once every connector has reported them:
        a rule naming a table or column that is not there, or comparing a claim with a column
        of another type, stops Electric with exit code 2 and the file's line. Afterwards
        every change of the tables re-checks them (RulesWatch: an ERROR, not an exit)."""
        rules = getattr(self.settings, "sync_rules", None)
        if rules is None:
            return
        if not self.connectors:
            logger.info(f"sync rules {rules.path}: no connectors, nothing to check them against")
            self.sync_rules = rules
            self._sync_rules_checked.set()
            return

        def run() -> None:
            if self._rules_watch is not None:  # restarted by the supervisor: watch on
                self._rules_watch.run()
                return
            for connector in list(self.connectors.values()):
                connector.ready.wait()
            try:
                self.sync_rules = sync_rules.check(rules, self.registry.tables())
            except sync_rules.RulesError as exc:
                logger.critical(f"SYNC_RULES_FILE: {exc}")
                self._exit_code = 2
                self._stopped.set()
                return
            logger.info(f"sync rules {rules.path}: checked against "
                        f"{len(self.registry.tables())} replicated table(s)")
            self._sync_rules_checked.set()
            self._rules_watch = RulesWatch(rules, self.registry, self._rules_rechecked)
            self._rules_watch.run()

        self.supervisor.spawn("sync-rules-check", run)

    def _rules_rechecked(self, checked: sync_rules.RuleSet) -> None:
        self.sync_rules = checked

    def _listener_statuses(self) -> dict[str, dict]:
        """Per listener: TLS, open connections against the cap, refusals."""
        return {"replication": self.publisher.listener_status(),
                "satellite": self.satellite.listener_status(),
                "status": self.http.listener_status()}

    def _connector_statuses(self) -> dict[str, dict]:
        return {name: c.status() for name, c in self.connectors.items()}

    def _detail(self) -> dict:
        """Operator detail beside the reference keys of /api/status."""
        subscribers = self.publisher.status()
        connectors = {}
        for name, st in self._connector_statuses().items():
            connectors[name] = {**st, "subscriber": subscribers.get(name, {"streaming": False})}
        satellite = self.satellite.status()
        return {
            "connectors": connectors,
            "satellite": {"clients_connected": satellite["clients_connected"],
                          "clients": satellite["clients"],
                          # Sync rules: clients sharing a filter share encodings.
                          "distinct_filters": satellite["oplog_cache"]["distinct_filters"]},
            "listeners": self._listener_statuses(),
            # Log readers held at a transaction they cannot read (never skipped).
            "blocked": wal_blocked_readers() + satellite.get("streams_held", []),
            # SYNC_RULES_FILE and whether it still fits the tables (null without rules).
            "sync_rules": self._rules_watch.status() if self._rules_watch else None,
            "vaxine": self._store_detail(),
        }

    def _store_detail(self) -> dict:
        if self.store is not None:
            return self.store.status()
        return {"mode": "external", "host": self.vaxine_host,
                "api_port": self.settings.vaxine_api_port,
                "replication_port": self.settings.vaxine_replication_port}

    def _start_vaxine(self) -> None:
        s = self.settings
        if s.vaxine_host is None:
            self._open_store(s.vaxine_data_dir)
            return
        self.vaxine_host = s.vaxine_host
        self.pool = VaxinePool(self.vaxine_host, s.vaxine_api_port, s.vaxine_pool_size,
                               connect_timeout_ms=s.vaxine_connection_timeout,
                               limits=limits.DEFAULT.vaxine)
        self.on_close(STAGE_VAXINE, "vaxine pool", self.pool.close)

    def _open_store(self, data_dir: str) -> None:
        """The embedded store, in process (a data directory of the first release must be
        imported first: see electric/store/legacy.py)."""
        try:
            legacy.check(data_dir)
            self.store = LocalStore(data_dir, self._primary_keys, limits=replace(
                self.limits.store, retain_changes=self.settings.store_retain_changes))
        except (StoreFormatError, legacy.LegacyDataError) as exc:
            raise StartupError(f"VAXINE_DATA_DIR: {exc}") from None
        except OSError as exc:
            raise StartupError(f"VAXINE_DATA_DIR: cannot open {data_dir}: "
                               f"{exc.strerror or exc}") from None
        self.on_close(STAGE_VAXINE, "store", self.store.close)

    def _vaxine_reachable(self) -> bool:
        """Embedded: the store is open. External, like the reference: a pool connection can
        be had (and is alive) within 100 ms."""
        if self.store is not None:
            return not self.store.closed
        if self.pool is None:
            return False
        try:
            with gevent.Timeout(0.1), self.pool.connection() as conn:
                return conn.is_alive()
        except (gevent.Timeout, Exception):
            return False

    def _primary_keys(self, relation: RelationName) -> list[str]:
        table = self.registry.table(relation)
        if table is None:
            # Refuses that one transaction (permanent, reported by its writer), not the
            # group commit it shares with others.
            raise UnmappableChange(f"table {relation[0]}.{relation[1]} is not replicated")
        return list(table.primary_keys)

    def write_transaction(self, tx: Transaction, source: str) -> None:
        """Write one transaction into the log (one store / Vaxine transaction); returns once
        it is durable, raises on failure (a ValueError when it can never be written)."""
        if self.store is not None:
            self.store.write(tx)
        else:
            rows.write_transaction(self.pool, tx, self._primary_keys, self.pool.limits)
        metrics.transactions_in.labels(source).inc()

    def _open_wal_stream(self, start):
        """The log from ``start`` (``"eof"``, ``0`` or an ``(L, R)`` offset) for Satellite."""
        if self.store is not None:
            return _satellite_stream(self.store, start)
        s = self.settings
        return WalStream(self.vaxine_host, s.vaxine_replication_port, start,
                         connect_timeout_ms=s.vaxine_connection_timeout, name="satellite",
                         limits=limits.DEFAULT.vaxine)

    def _publisher_stream_opener(self):
        if self.store is not None:
            return lambda after: _publisher_stream(self.store, after)
        s = self.settings
        return vaxine_stream_opener(self.vaxine_host, s.vaxine_replication_port,
                                    connect_timeout_ms=s.vaxine_connection_timeout)

    def _start_publisher(self) -> None:
        s = self.settings
        self.publisher = Publisher(
            registry=self.registry, offsets=self.offsets,
            open_stream=self._publisher_stream_opener(),
            host=self.listen_host, port=s.postgres_replication_port,
            table_lookup=self._connector_table, password=self.replication_password,
            tls=self.tls, max_connections=self.max_connections, limits=limits.DEFAULT.postgres,
            open_snapshot=(lambda relations: self.store.snapshot(relations).transaction())
            if self.store is not None else None,
        )
        _listen("POSTGRES_REPLICATION_PORT", s.postgres_replication_port, self.publisher.start)
        self.on_close(STAGE_LISTENERS, "publisher", self.publisher.stop)

    def _connector_table(self, slot: str, relation: RelationName):
        connector = self.connectors.get(slot)
        return connector.tables.get(relation) if connector is not None else None

    def _start_satellite(self) -> None:
        s = self.settings
        try:
            auth = provider_from_settings(s)
        except AuthConfigError as exc:
            raise StartupError(str(exc)) from None
        self.satellite = SatelliteServer(
            self.listen_host, s.websocket_port, auth=auth, cluster_id=s.global_cluster_id,
            lookup_table=self.registry.table,
            write_transaction=lambda tx: self.write_transaction(tx, "satellite"),
            open_stream=self._open_wal_stream, offsets=self.offsets,
            tls=self.tls, max_connections=self.max_connections,
            is_permanent=errors.is_permanent, limits=limits.DEFAULT.satellite,
            sync_rules=(self._rules_for_session if getattr(s, "sync_rules", None) is not None
                        else None),
            current_rows=self.store.current_rows if self.store is not None else None,
        )
        _listen("WEBSOCKET_PORT", s.websocket_port, self.satellite.start)
        self.on_close(STAGE_LISTENERS, "satellite", self.satellite.stop)

    def _start_connectors(self) -> None:
        s = self.settings
        for cfg in s.connectors:
            reader_options = {}
            if self.store is not None:  # pipelined: the reader goes on while commits run
                counter = metrics.transactions_in.labels(cfg.name)
                reader_options["submit"] = ChainedWriter(self.store, counter.inc)
                # Transactions too big for memory are written while they are read.
                reader_options["begin_big"] = lambda c=counter: self.store.begin(c.inc)
            connector = Connector(
                cfg.name, cfg.dsn(), s.postgres_publication, s.postgres_slot, self.registry,
                sink=lambda tx, name=cfg.name: self.write_transaction(tx, name),
                reader_options=reader_options,
                sync_state=_StoreSyncState(self.store) if self.store is not None else None,
                on_tables_added=self._tables_added,
                limits=self.limits.postgres,
            )
            self.connectors[cfg.name] = connector
            self.connector_locks[cfg.name] = BoundedSemaphore()
            # Supervised: should the lifecycle itself ever crash, it is logged and restarted.
            self.supervisor.spawn(f"connector-{cfg.name}", connector.run)
            self.on_close(STAGE_PRODUCERS, f"connector {cfg.name}", connector.stop)
            self._subscribe_later(connector)
        targets = {name: _MigrationTarget(self, c) for name, c in self.connectors.items()}
        MigrationsApi(targets, self.registry, s.migrations_dir, s.migrations_file_name_suffix,
                      self.connector_locks).install(self.router)

    def _tables_added(self, connector: Connector, added: list[RelationName]) -> None:
        """Tables joined replication on ``connector``'s Postgres while running (created, or
        given a primary key, by any means). Its subscription must take them in (upsert
        trigger, refresh) and receive the rows the log already has of them; the other
        Postgres may have them too, so they look now instead of at their next watch."""
        names = ", ".join(f"{s}.{t}" for s, t in added)
        logger.bind(origin=connector.name).info(
            f"subscribing {connector.name} to {names} and sending it their current rows")
        self.publisher.backfill(connector.name, added)
        self._subscribe_later(connector, after_migration=True)
        for other in self.connectors.values():
            if other is not connector:
                gevent.spawn(other.refresh_tables)

    def subscription_conninfo(self) -> str:
        """What every subscription Electric creates (or brings up to date) connects with."""
        s = self.settings
        extra = {"password": self.replication_password}
        if self.tls is not None:
            # Encrypted, not verified: the subscriber's Postgres cannot be assumed to trust
            # Electric's CA; operators wanting verify-full subscribe by hand (README).
            extra["sslmode"] = "require"
        return electric_conninfo(s.electric_host, s.postgres_replication_port, **extra)

    def subscribe(self, connector: Connector) -> None:
        """Create/point/enable/refresh this Postgres' subscription to Electric (idempotent)."""
        conn = connector.connect()
        try:
            subscribe(conn, name=connector.name, conninfo=self.subscription_conninfo(),
                      publication=self.settings.postgres_publication,
                      relations=list(connector.tables), gate=self.publisher)
        finally:
            conn.close()

    def _subscribe_later(self, connector: Connector, after_migration: bool = False) -> None:
        """Set the subscription up once the connector is ready, retrying with back-off."""

        def attempt() -> None:
            with self.connector_locks[connector.name]:
                if after_migration:
                    connector.reprovision()
                self.subscribe(connector)
                if after_migration:
                    self.publisher.reset(connector.name)

        def run() -> None:
            subscribe_when_ready(connector.name, connector.ready, attempt,
                                 state=connector.subscription)

        self._subscribe_attempts += 1
        self.supervisor.spawn(f"subscribe-{connector.name}-{self._subscribe_attempts}", run)

    def serve_forever(self) -> int:
        """Run until SIGTERM/SIGINT, then shut down gracefully. Returns the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self._on_signal, signum)
        self.start()
        logger.info("Electric started")
        self._stopped.wait()
        self.shutdown()
        return self._exit_code

    def _on_signal(self, signum: int) -> None:
        logger.info(f"received {signal.Signals(signum).name}, shutting down")
        self._stopped.set()

    def shutdown(self) -> None:
        """Stop stage by stage; the closers of one stage run in parallel, and every stage but
        the last (files, which is quick and must happen) shares one overall deadline."""
        deadline = gevent.get_hub().loop.now() + self.limits.service.shutdown_timeout
        self.supervisor.stop(timeout=1.0)
        for stage in sorted({stage for stage, _, _ in self._closers}):
            closers = [(name, closer) for st, name, closer in self._closers if st == stage]
            jobs = [gevent.spawn(_close, name, closer) for name, closer in closers]
            remaining = max(0.1, deadline - gevent.get_hub().loop.now())
            done = gevent.joinall(jobs, timeout=None if stage == STAGE_FILES else remaining)
            for (name, _), job in zip(closers, jobs, strict=True):
                if job not in done:
                    logger.warning(f"closing {name} did not finish in time; moving on")
        logger.info("Electric stopped")


class _StoreSyncState:
    """Initial-sync progress of each connector, kept in the store it copies into. A store
    with no record and no transaction at all was wiped (or never had this connector's rows):
    that counts as an unfinished copy, so the connector copies its rows again."""

    def __init__(self, store: LocalStore):
        self.store = store

    def get(self, connector: str) -> str | None:
        state = self.store.get_meta(f"initial_sync:{connector}")
        if state is None and self.store.committed == 0:
            return "started:empty store"
        return state

    def put(self, connector: str, state: str) -> None:
        self.store.put_meta(f"initial_sync:{connector}", state)


def _satellite_stream(store: LocalStore, start):
    """Store positions as the ``(L, R)`` offsets Satellite lsns encode (``L == R``, as the
    first release's log used them)."""
    if start == "eof":
        after = store.committed
    elif isinstance(start, tuple | list):
        after = start[1]
    else:
        after = int(start or 0)
    stream = store.stream(after)
    try:
        for tx, pos in stream:
            yield tx, (pos, pos)
    finally:
        stream.close()


def _publisher_stream(store: LocalStore, after: bytes | None):
    """The publisher keeps offsets as ``term_to_binary({L, R})`` bytes (see the offset file)."""
    stream = store.stream(0 if after is None else VaxineOffset.from_bytes(after).right)
    try:
        for tx, pos in stream:
            yield tx, VaxineOffset(pos, pos).to_bytes()
    finally:
        stream.close()


def _raise_open_files_limit(wanted: int) -> None:
    """Every connection is a file descriptor: lift the soft limit towards what the caps
    need (up to the hard limit) and say so when even the hard limit is lower."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if hard != resource.RLIM_INFINITY and hard < wanted:
            logger.warning(f"open files limit is {hard}; MAX_CONNECTIONS={wanted - 1024} "
                           f"needs about {wanted} (raise 'ulimit -n')")
    except (ImportError, ValueError, OSError) as exc:
        logger.warning(f"cannot raise the open files limit: {exc}")


class _MigrationTarget:
    """A connector as the migrations API sees it.

    Migrating does not stop the source reader: pgoutput re-describes a relation after DDL, so
    inbound changes keep flowing. Only the stream *to* this Postgres is held while its schema
    changes; afterwards the schema is re-read, upsert triggers cover any new table, and the
    subscriber's session is restarted so it receives the new table descriptions.
    """

    def __init__(self, app: Application, connector: Connector):
        self.app = app
        self.connector = connector
        self.name = connector.name
        self._held_before = True

    def is_ready(self) -> bool:
        return self.connector.is_ready()

    def dsn(self) -> str:
        return plain_dsn(self.connector.dsn)

    def pause(self) -> None:
        publisher = self.app.publisher
        # A stream still held by an unfinished subscription set-up must stay held.
        self._held_before = publisher.status().get(self.name, {"held": True})["held"]
        publisher.hold(self.name)

    def release(self) -> None:
        """Undo pause() when the schema did not change: the session goes on as it was."""
        if not self._held_before:
            self.app.publisher.release(self.name)

    def resume(self) -> None:
        """Runs under the connector's lock (held by the migrations API). Never raises: if the
        schema cannot be re-read or the subscription refreshed now, a supervised retry does
        it later and the stream stays held until then (rows for new tables are not lost)."""
        publisher = self.app.publisher
        try:
            self.connector.reprovision()
            # End the old session before the stream opens again, so no row goes out with a
            # table description from before the migration.
            publisher.reset(self.name)
            self.app.subscribe(self.connector)  # releases the stream when done
        except Exception as exc:
            logger.bind(origin=self.name).warning(
                f"re-reading the schema after the migration failed ({exc}); retrying")
            self.app._subscribe_later(self.connector, after_migration=True)
