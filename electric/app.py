"""The one place that wires Electric together and runs it.

Start order matters for durability: the offset file and Vaxine first (everything acks
against them), then the listeners, then the connectors that start reading Postgres.
Shutdown runs in reverse: stop accepting, stop readers, flush and close files.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import gevent
from gevent.event import Event
from loguru import logger

from electric import metrics
from electric.http.server import HttpServer, Request, Response, Router, json_response
from electric.offsets import OffsetFileError, OffsetStore
from electric.schema import SchemaRegistry
from electric.supervisor import Supervisor

SHUTDOWN_TIMEOUT = 4.0


class StartupError(Exception):
    """Electric cannot start (port taken, unreadable offset file…): one line for the operator."""


class Application:
    def __init__(self, settings, listen_host: str = "0.0.0.0"):
        self.settings = settings
        self.listen_host = listen_host
        self.registry = SchemaRegistry()
        self.supervisor = Supervisor()
        self.router = Router()
        self.http: HttpServer | None = None
        self.offsets: OffsetStore | None = None
        # Components report into /api/status through these.
        self.connector_states: dict[str, Callable[[], bool]] = {}
        self.vaxine_check: Callable[[], bool] = lambda: False
        self.details: dict[str, Callable[[], object]] = {}
        self._closers: list[tuple[str, Callable[[], None]]] = []
        self._stopped = Event()
        self._install_routes()

    # -- wiring -------------------------------------------------------------------------

    def _install_routes(self) -> None:
        self.router.add("GET", r"/api/status", self._status)
        self.router.add("GET", r"/api/health", self._health)
        self.router.add("GET", r"/metrics", self._metrics)

    def _connector_flags(self) -> dict[str, bool]:
        connectors = {c.name: False for c in self.settings.connectors}
        for name, state in self.connector_states.items():
            connectors[name] = bool(state())
        return connectors

    def _status(self, _request: Request) -> Response:
        body: dict[str, object] = {"connectors": self._connector_flags(),
                                   "vaxine": bool(self.vaxine_check())}
        # Reference keys first; operator detail lives under keys of its own.
        for key, provider in self.details.items():
            body[key] = provider()
        return json_response(200, body)

    def _health(self, _request: Request) -> Response:
        connectors = self._connector_flags()
        vaxine = bool(self.vaxine_check())
        healthy = vaxine and all(connectors.values())
        body = {"healthy": healthy, "vaxine": vaxine,
                "connectors_down": sorted(n for n, up in connectors.items() if not up)}
        return json_response(200 if healthy else 503, body)

    def _metrics(self, _request: Request) -> Response:
        body, content_type = metrics.exposition()
        return Response(200, body, content_type)

    def on_close(self, name: str, closer: Callable[[], None]) -> None:
        """Register something to close at shutdown (closed in reverse order)."""
        self._closers.append((name, closer))

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        try:
            self.offsets = OffsetStore(s.offset_storage_file)
        except OffsetFileError as exc:
            raise StartupError(f"OFFSET_STORAGE_FILE: {exc}") from None
        except OSError as exc:
            raise StartupError(
                f"OFFSET_STORAGE_FILE: cannot open {s.offset_storage_file}: {exc.strerror}"
            ) from None
        self.on_close("offsets", self.offsets.close)
        self.http = HttpServer(self.listen_host, s.status_port, self.router)
        try:
            self.http.start()
        except OSError as exc:
            raise StartupError(f"STATUS_PORT: cannot listen on port {s.status_port}: {exc.strerror}") from None
        self.on_close("http", self.http.stop)
        logger.info(f"status API listening on port {s.status_port}")

    def serve_forever(self) -> int:
        """Run until SIGTERM/SIGINT, then shut down gracefully. Returns the exit code."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self._on_signal, signum)
        self.start()
        logger.info("Electric started")
        self._stopped.wait()
        self.shutdown()
        return 0

    def _on_signal(self, signum: int) -> None:
        logger.info(f"received {signal.Signals(signum).name}, shutting down")
        self._stopped.set()

    def request_stop(self) -> None:
        self._stopped.set()

    def shutdown(self) -> None:
        with gevent.Timeout(SHUTDOWN_TIMEOUT, False):
            self.supervisor.stop(timeout=SHUTDOWN_TIMEOUT / 2)
        for name, closer in reversed(self._closers):
            try:
                closer()
            except Exception as exc:  # shutting down: report and carry on closing the rest
                logger.warning(f"closing {name} failed: {type(exc).__name__}: {exc}")
        logger.info("Electric stopped")
