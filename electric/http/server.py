"""The HTTP listener on STATUS_PORT: a tiny WSGI router served by gevent.pywsgi.

Routes are registered by the application (status, migrations, metrics); every answer is JSON
(or Prometheus text for /metrics) with a clear status code, and unknown paths get 404.

Admin rule: reading (GET/HEAD) is open; every other method changes something (today
``PUT /api/migrations/…``) and needs ``Authorization: Bearer <STATUS_API_TOKEN>`` when a token
is configured, or else comes from a loopback peer. Refusals are 403 with a JSON error.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gevent.pywsgi import WSGIHandler
from loguru import logger

from electric.limits import DEFAULT, ServiceLimits
from electric.listeners import GuardedWSGIServer
from electric.tls import is_loopback


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    body: bytes
    remote_addr: str = ""
    authorization: str = ""

    def json(self):
        """Parsed JSON body; raises HttpError(400) when it is not valid JSON."""
        try:
            return json.loads(self.body.decode("utf-8") or "null")
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise HttpError(400, "invalid_body", "request body is not valid JSON") from None


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def json_response(status: int, payload) -> Response:
    """Compact JSON with sorted keys, the reference's format."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return Response(status, body)


def error_response(status: int, code: str, message: str) -> Response:
    return json_response(status, {"error": code, "message": message})


Handler = Callable[[Request], Response]

REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 411: "Length Required",
           413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


READ_ONLY_METHODS = ("GET", "HEAD")


class Router:
    def __init__(self, admin_token: str = "", limits: ServiceLimits = DEFAULT.service) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.max_body_bytes = limits.http_max_body_bytes
        self.admin_token = admin_token
        self.refused_admin_requests = 0

    def admin_refusal(self, request: Request) -> Response | None:
        """None when ``request`` may change something (see the module doc), else the 403."""
        if self.admin_token:
            scheme, _, token = request.authorization.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                    token.strip().encode(), self.admin_token.encode()):
                return None
            return error_response(403, "forbidden", "this endpoint needs 'Authorization: "
                                  "Bearer <STATUS_API_TOKEN>'")
        if is_loopback(request.remote_addr):
            return None
        return error_response(403, "forbidden", "this endpoint only answers loopback clients "
                              "when STATUS_API_TOKEN is not set")

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """``pattern`` is a full-match regex over the path; named groups become params."""
        self._routes.append((method, re.compile(pattern), handler))

    def dispatch(self, request: Request) -> Response:
        allowed = []
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(request.path)
            if not match:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            request.params = match.groupdict()
            if method not in READ_ONLY_METHODS:
                refusal = self.admin_refusal(request)
                if refusal is not None:
                    self.refused_admin_requests += 1
                    logger.bind(origin="http").warning(
                        f"refused {request.method} {request.path} from {request.remote_addr}:"
                        f" {'bad or missing token' if self.admin_token else 'not loopback'}")
                    return refusal
            try:
                return handler(request)
            except HttpError as exc:
                return error_response(exc.status, exc.code, exc.message)
            except Exception:
                logger.exception(f"HTTP handler for {request.method} {request.path} failed")
                return error_response(500, "internal", "internal failure, see Electric's log")
        if allowed:
            return error_response(405, "method_not_allowed",
                                  f"use {', '.join(sorted(set(allowed)))} on {request.path}")
        return Response(404, b"Not found", "text/plain")

    def wsgi(self, environ, start_response) -> Iterable[bytes]:
        response = self._answer(environ)
        reason = REASONS.get(response.status, "")
        start_response(f"{response.status} {reason}", [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
        ])
        return [response.body]

    def _answer(self, environ) -> Response:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return error_response(400, "invalid_body", "bad Content-Length")
        if length < 0 or length > self.max_body_bytes:
            return error_response(413, "too_large", f"body over {self.max_body_bytes} bytes")
        try:
            body = environ["wsgi.input"].read(length) if length else b""
        except (OSError, ValueError):
            body = None
        if body is None or len(body) != length:
            return error_response(400, "invalid_body", "body shorter than Content-Length")
        request = Request(environ["REQUEST_METHOD"], environ.get("PATH_INFO") or "/", {}, body,
                          environ.get("REMOTE_ADDR") or "", environ.get("HTTP_AUTHORIZATION") or "")
        return self.dispatch(request)


class QuietClientErrors:
    """Mixin for pywsgi handlers: malformed requests get a 400 and one debug line.

    pywsgi prints a traceback for some client mistakes (an HTTP version such as "HTTP/2",
    more than 100 headers); a listener exposed to the network must not.
    """

    def _check_http_version(self) -> bool:
        try:
            return super()._check_http_version()
        except (ValueError, IndexError):  # "HTTP/2", "HTTP/x.y": not a version we serve
            return False

    def _handle_client_error(self, ex):
        logger.debug(f"rejected a malformed HTTP request from {self.client_address}: "
                     f"{str(ex)[:200] or type(ex).__name__}")
        return ("400", b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
                       b"Content-length: 0\r\n\r\n")


class _Handler(QuietClientErrors, WSGIHandler):
    pass


class LogWriter:
    """pywsgi's error log, into loguru (one line, bounded length)."""

    def __init__(self, origin: str = "http", level: str = "DEBUG"):
        self.log = logger.bind(origin=origin)
        self.level = level

    def write(self, message: str) -> None:
        if message.strip():
            self.log.log(self.level, "{}", message.strip()[:300])

    def flush(self) -> None:
        pass


class HttpServer:
    """``tls``: a server SSLContext (https); ``max_connections``: the listener's cap."""

    def __init__(self, host: str, port: int, router: Router, *, tls=None,
                 max_connections: int = 10_000):
        self.router = router
        ssl_args = {"ssl_context": tls} if tls is not None else {}
        self._server = GuardedWSGIServer((host, port), router.wsgi, log=None,
                                         error_log=LogWriter(), handler_class=_Handler,
                                         max_connections=max_connections, name="status",
                                         **ssl_args)

    def start(self) -> None:
        self._server.start()

    @property
    def port(self) -> int:
        return self._server.server_port

    def listener_status(self) -> dict:
        return {**self._server.listener_status(),
                "refused_admin_requests": self.router.refused_admin_requests}

    def stop(self, timeout: float = 1.0) -> None:
        self._server.stop(timeout=timeout)
