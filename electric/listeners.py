"""What the HTTP-based listeners (status port, websocket port) share: TLS and a connection cap.

:class:`GuardedWSGIServer` is gevent's WSGIServer with

* a per-listener cap on open connections (``MAX_CONNECTIONS``): one more connection gets a
  complete ``503`` JSON answer (over TLS when the listener has TLS, so the client can read
  it) and is closed, before any request or websocket upgrade is looked at; connections
  already open carry on unaffected;
* TLS handshakes bounded by ``ServiceLimits.tls_handshake_timeout`` (``electric/limits.py``),
  so a peer that connects and never speaks cannot hold a slot (gevent's own wrapper waits
  forever).
"""

from __future__ import annotations

import json
import socket
from typing import Any

import gevent
from gevent.pywsgi import WSGIServer
from loguru import logger

from electric.limits import DEFAULT

REFUSAL_LINGER = 2.0


def http_refusal(message: str) -> bytes:
    body = json.dumps({"error": "too_many_connections", "message": message},
                      separators=(",", ":"), sort_keys=True).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def close_after_reply(sock: Any, reply: bytes, linger: float = REFUSAL_LINGER) -> None:
    """Send ``reply``, half-close, let the peer read it (bounded), close. Never raises."""
    try:
        sock.sendall(reply)
        try:
            sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            pass
        with gevent.Timeout(linger, False):
            while sock.recv(65536):
                pass
    except (OSError, ValueError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


class GuardedWSGIServer(WSGIServer):
    """WSGIServer with a connection cap and bounded TLS handshakes (see the module doc)."""

    def __init__(self, *args: Any, max_connections: int, name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.name = name
        self.open_connections = 0
        self.refused_connections = 0

    def listener_status(self) -> dict[str, Any]:
        return {"tls": self.ssl_enabled, "open_connections": self.open_connections,
                "max_connections": self.max_connections,
                "refused_connections": self.refused_connections}

    def init_socket(self) -> None:
        # gevent picks the per-connection callable (plain or TLS-wrapping) here; wrap it.
        super().init_socket()
        self._inner_handle = self._handle
        self._handle = self._guarded_handle

    def _guarded_handle(self, client_socket: Any, address: Any) -> None:
        if self.open_connections >= self.max_connections:
            self._refuse(client_socket, address)
            return
        self.open_connections += 1
        try:
            self._inner_handle(client_socket, address)
        finally:
            self.open_connections -= 1

    def _refuse(self, client_socket: Any, address: Any) -> None:
        self.refused_connections += 1
        logger.bind(origin=self.name).warning(
            "refused a connection from {}: {} connections open (MAX_CONNECTIONS)",
            address[0] if isinstance(address, tuple) else address, self.open_connections)
        reply = http_refusal(f"{self.name}: too many connections, try again later")
        sock = client_socket
        if self.ssl_enabled:
            sock = self._handshake(client_socket, address)
            if sock is None:
                return
        close_after_reply(sock, reply)

    def _handshake(self, client_socket: Any, address: Any) -> Any:
        client_socket.settimeout(DEFAULT.service.tls_handshake_timeout)
        try:
            sock = self.wrap_socket(client_socket, **self.ssl_args)
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            logger.bind(origin=self.name).debug(f"TLS handshake with {address} failed: {exc}")
            client_socket.close()
            return None
        sock.settimeout(None)  # websockets idle for long; pywsgi does its own reading
        return sock

    def wrap_socket_and_handle(self, client_socket: Any, address: Any) -> Any:
        sock = self._handshake(client_socket, address)
        if sock is None:
            return None
        try:
            return self.handle(sock, address)
        except OSError as exc:
            # A TLS peer that vanishes (e.g. TCP FIN without close_notify) fails the answer
            # pywsgi then tries to write with SSLEOFError; that is the peer's doing.
            logger.bind(origin=self.name).debug(f"TLS connection from {address} ended: {exc}")
            return None
        finally:
            try:
                sock.close()
            except OSError:
                pass
