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

from electric.http.server import HttpServer, Request, Response, Router, json_response
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

    def _status(self, _request: Request) -> Response:
        connectors = {c.name: False for c in self.settings.connectors}
        for name, state in self.connector_states.items():
            connectors[name] = bool(state())
        body = {"connectors": connectors, "vaxine": bool(self.vaxine_check())}
        return json_response(200, body)

    def on_close(self, name: str, closer: Callable[[], None]) -> None:
        """Register something to close at shutdown (closed in reverse order)."""
        self._closers.append((name, closer))

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
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
