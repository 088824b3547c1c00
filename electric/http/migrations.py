"""The migrations API: ``GET /api/migrations[/<origin>]`` and ``PUT /api/migrations/<origin>``.

A PUT holds the stream into that connector's Postgres, applies the file in one transaction,
re-reads the schema and resumes; replication out of that Postgres carries on throughout.
Whatever happens — success or failure — the stream resumes: on the new schema after success
(the subscriber's session restarts with fresh table descriptions), unchanged after a failure
or a version that was already applied (the session goes on; nothing restarts). Requests for one connector are serialised with each other
and with its subscription set-up; different connectors migrate independently.
"""

from __future__ import annotations

from typing import Protocol

from gevent.lock import BoundedSemaphore
from loguru import logger

from electric import migrations
from electric.http.server import HttpError, Request, Response, Router, json_response
from electric.migrations import MigrationError
from electric.schema import SchemaRegistry


class MigratableConnector(Protocol):
    name: str

    def is_ready(self) -> bool: ...

    def dsn(self) -> str: ...

    def pause(self) -> None:
        """Hold the stream into this Postgres while its schema changes."""

    def resume(self) -> None:
        """Re-read the schema and release the stream (never raises: retries on its own)."""

    def release(self) -> None:
        """Release the stream unchanged (the schema did not change)."""


class MigrationsApi:
    def __init__(self, connectors: dict[str, MigratableConnector], registry: SchemaRegistry,
                 migrations_dir: str, suffix: str, locks: dict[str, BoundedSemaphore]):
        self.connectors = connectors
        self.registry = registry
        self.migrations_dir = migrations_dir
        self.suffix = suffix
        self._locks = locks

    def install(self, router: Router) -> None:
        router.add("GET", r"/api/migrations", self.list_all)
        router.add("GET", r"/api/migrations/(?P<origin>[^/]+)", self.show)
        router.add("PUT", r"/api/migrations/(?P<origin>[^/]+)", self.put)

    def _latest(self, origin: str):
        history = self.registry.migrations(origin)
        return migrations.as_json(origin, history[0] if history else None)

    def _connector(self, origin: str) -> MigratableConnector:
        connector = self.connectors.get(origin)
        if connector is None:
            raise HttpError(404, "unknown_origin", f"no connector named {origin!r}")
        return connector

    def list_all(self, _request: Request) -> Response:
        return json_response(200, [self._latest(name) for name in sorted(self.connectors)])

    def show(self, request: Request) -> Response:
        origin = request.params["origin"]
        self._connector(origin)
        return json_response(200, self._latest(origin))

    def put(self, request: Request) -> Response:
        origin = request.params["origin"]
        connector = self._connector(origin)
        body = request.json()
        if not isinstance(body, dict) or "vsn" not in body:
            raise HttpError(400, "invalid_body", 'body must be a JSON object {"vsn": "<name>"}')
        try:
            migration = migrations.read_migration(self.migrations_dir, self.suffix, body["vsn"])
            with self._locks[origin]:
                applied = self._migrate(connector, migration)
        except MigrationError as exc:
            raise HttpError(exc.status, exc.code, exc.message) from None
        return json_response(200, migrations.as_json(origin, applied))

    def _migrate(self, connector: MigratableConnector, migration: migrations.MigrationFile):
        log = logger.bind(origin=connector.name)
        if not connector.is_ready():
            raise MigrationError(503, "not_ready",
                                 f"connector {connector.name} is not ready; try again later")
        log.info(f"ready to migrate to version: {migration.vsn}")
        connector.pause()
        try:
            applied = migrations.apply(connector.dsn(), migration)
        except MigrationError as exc:
            # Nothing changed (rolled back, or already applied): release the held stream as
            # it was, without re-reading the schema or restarting the subscriber's session.
            connector.release()
            if exc.code == "migration_failed":
                log.warning(" ".join(exc.message.split()))  # one line; Postgres' has several
            else:
                log.info(f"migration {migration.vsn} not applied: {exc.message}")
            raise
        except BaseException:
            # Outcome unknown (e.g. the connection broke): resume as after a schema change.
            connector.resume()
            raise
        log.info(f"successful migration to version: {migration.vsn} md5: {migration.hash}")
        connector.resume()  # on the new schema: re-read it, restart the subscriber's session
        return applied
