"""The embedded Vaxine-compatible server: the store plus its two TCP endpoints.

``EmbeddedVaxine(data_dir, host, api_port, replication_port)`` opens the store in
``data_dir/vaxine.db`` (SQLite; a first-release ``vaxine.log`` there is imported first, see
:mod:`~electric.vaxine.embedded.upgrade`) and serves the Antidote API and the WAL stream with
gevent StreamServers. Port 0 picks a free port (see :attr:`api_port` /
:attr:`replication_port` after :meth:`start`).

Malformed input on the API port is handled like the real Vaxine: an undecodable frame
(unknown code, bad protobuf, empty, or longer than the frame limit) gets no reply and only
that connection is closed; a decodable request that fails gets ``ApbErrorResp``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

import gevent
from gevent import socket
from gevent.event import Event
from gevent.server import StreamServer
from loguru import logger

from electric.limits import DEFAULT, ByteBudget, VaxineLimits
from electric.vaxine import antidote
from electric.vaxine.embedded import upgrade
from electric.vaxine.embedded.api import ApiSession
from electric.vaxine.embedded.engine import EngineError
from electric.vaxine.embedded.replication import ReplicationConnection
from electric.vaxine.embedded.store import DEFAULT_NODE, Store
from electric.vaxine.framing import FrameDecoder, FrameTooLarge
from electric.vaxine.memo import EncodingMemo

log = logger.bind(origin="vaxine_embedded")




class EmbeddedVaxine:
    def __init__(
        self,
        data_dir: str,
        host: str = "127.0.0.1",
        api_port: int = 8087,
        replication_port: int = 8088,
        memo: EncodingMemo | None = None,
        limits: VaxineLimits = DEFAULT.vaxine,
    ):
        self.data_dir = data_dir
        self.host = host
        self._api_port = api_port
        self._replication_port = replication_port
        self.limits = limits
        # All API connections together may hold this much of requests still being received,
        # so peers sending slowly cannot add up to unbounded memory.
        self.api_budget = ByteBudget(limits.server_api_budget, "vaxine api")
        # Shared with WalStreams of this same process (benchmarks, tests): see EncodingMemo.
        self.memo = memo
        self._status_logger: gevent.Greenlet | None = None
        self.store: Store | None = None
        self._servers: list[StreamServer] = []
        self._connections: set = set()

    @property
    def api_port(self) -> int:
        return self._servers[0].server_port if self._servers else self._api_port

    @property
    def replication_port(self) -> int:
        return self._servers[1].server_port if self._servers else self._replication_port

    def start(self) -> EmbeddedVaxine:
        os.makedirs(self.data_dir, exist_ok=True)
        if upgrade.needs_import(self.data_dir):
            log.info(f"importing the first release's log {self.data_dir}/vaxine.log")
            count = upgrade.import_first_release(self.data_dir, DEFAULT_NODE)
            log.info(f"imported {count} transactions at their offsets; the old log is kept as "
                     f"{self.data_dir}/vaxine.log.imported")
        self.store = Store(self.data_dir, memo=self.memo, limits=self.limits)
        api = StreamServer((self.host, self._api_port), self._serve_api)
        repl = StreamServer((self.host, self._replication_port), self._serve_replication)
        try:
            api.start()
            repl.start()
        except Exception:
            api.stop()
            self.store.close()
            raise
        self._servers = [api, repl]
        self._status_logger = gevent.spawn(self._log_status_every,
                                           self.limits.server_status_log_s)
        st = self.store.status()
        log.info(
            f"embedded Vaxine serving {self.store.path}: API on {self.host}:{self.api_port}, "
            f"replication on {self.host}:{self.replication_port}; {st['objects']} objects, "
            f"{st['log_transactions']} transactions logged (log end {st['log_end']}), "
            f"{st['bytes']} bytes"
        )
        return self

    def status(self) -> dict:
        """Store size, objects, log length, cache and connections (logged at start and stop)."""
        if self.store is None:
            return {}
        return {**self.store.status(), "connections": len(self._connections),
                "replication_streams": self.store.live_streams}

    def _log_status_every(self, seconds: float) -> None:
        """The server has no status port: its figures go to the log now and then."""
        while True:
            gevent.sleep(seconds)
            st = self.status()
            log.info(f"store {st['path']}: {st['bytes']} bytes, {st['objects']} objects, "
                     f"{st['log_transactions']} transactions logged (log end {st['log_end']}), "
                     f"{st['cached_objects']} states cached, {st['open_transactions']} open "
                     f"transactions, {st['replication_streams']} streams, "
                     f"{st['group_commits']} group commits")

    def stop(self, timeout: float = 5) -> None:
        if self._status_logger is not None:
            self._status_logger.kill()
        for server in self._servers:
            server.close()
        for sock in list(self._connections):
            try:
                sock.shutdown(2)
            except OSError:
                pass
        for server in self._servers:
            server.stop(timeout=timeout)
        self._servers = []
        if self.store is not None:
            st = self.store.status()
            self.store.close()
            log.info(f"embedded Vaxine stopped: {st['objects']} objects, "
                     f"{st['log_transactions']} transactions logged, {st['bytes']} bytes")

    def serve_forever(self) -> None:
        self._servers[0].serve_forever()

    # ------------------------------------------------------------------ handlers

    def _serve_api(self, sock, address) -> None:
        self._connections.add(sock)
        _no_delay(sock)
        session = ApiSession(self.store)
        decoder = FrameDecoder(max_frame=self.limits.max_frame)
        budget = self.api_budget
        held = 0  # bytes of incomplete frames this connection holds against the budget
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                bodies = decoder.feed(data)
                if decoder.buffered > held and not budget.try_reserve(decoder.buffered - held):
                    log.warning(f"API client {address}: {budget.used} bytes of incomplete "
                                f"requests already held (budget {budget.capacity}); "
                                "closing the connection")
                    return
                budget.release(max(0, held - decoder.buffered))
                held = decoder.buffered
                for body in bodies:
                    try:
                        request = antidote.decode_body(body)
                    except antidote.AntidoteDecodeError as exc:
                        log.warning(f"API client {address}: {exc}; closing the connection")
                        return
                    sock.sendall(antidote.encode_message(session.handle(request)))
        except FrameTooLarge as exc:
            log.warning(f"API client {address}: {exc}; closing the connection")
        except OSError:
            pass
        except Exception:
            log.exception(f"API client {address}: unexpected failure; closing the connection")
        finally:
            budget.release(held)
            session.close()
            self._connections.discard(sock)
            sock.close()

    def _serve_replication(self, sock, address) -> None:
        self._connections.add(sock)
        _no_delay(sock)
        try:
            ReplicationConnection(self.store, sock, address, self.limits).serve()
        except Exception:
            log.exception(f"replication client {address}: unexpected failure; closing")
        finally:
            self._connections.discard(sock)
            sock.close()


def _no_delay(sock) -> None:
    # Small request/response frames: Nagle would add tens of ms per round trip.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Standalone server (``electric vaxine ...``) so several Electric processes can share
    one store. The caller must have monkey-patched (the CLI does it at start-up).

    It reads the same settings as the service (``--config``, environment), so
    ``electric --config conf/electric.ini vaxine`` uses VAXINE_DATA_DIR and the Vaxine ports
    from there; the flags below override them."""
    from electric import config

    parser = config.build_parser(prog="electric vaxine")
    parser.description = "Run the embedded Vaxine-compatible store on its own."
    parser.add_argument("--data-dir", default=None,
                        help="directory holding vaxine.db (default: VAXINE_DATA_DIR)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    parser.add_argument("--api-port", type=int, default=None,
                        help="Antidote API port (default: VAXINE_API_PORT)")
    parser.add_argument("--replication-port", type=int, default=None,
                        help="WAL stream port (default: VAXINE_REPLICATION_PORT)")
    try:
        settings = config.load(argv, parser=parser)
    except config.ConfigError as exc:
        print(f"electric vaxine: invalid setting {exc}", file=sys.stderr)
        return 2
    args = argparse.Namespace(
        data_dir=settings.data_dir or settings.vaxine_data_dir, host=settings.host,
        api_port=settings.vaxine_api_port if settings.api_port is None else settings.api_port,
        replication_port=(settings.vaxine_replication_port if settings.replication_port is None
                          else settings.replication_port))
    from electric import log as electric_log

    electric_log.setup(settings.log_level, settings.log_file, settings.log_format,
                       settings.log_rotation, settings.log_retention)
    server = EmbeddedVaxine(args.data_dir, args.host, args.api_port, args.replication_port)
    try:
        server.start()
    except (OSError, EngineError) as exc:
        log.error(f"embedded Vaxine cannot start: {exc}")
        return 1
    done = Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, done.set)
    done.wait()
    server.stop()
    return 0
