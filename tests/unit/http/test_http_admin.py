"""The admin rule of the status port's router: reads open, mutations need the token or a
loopback peer (403 JSON otherwise)."""

from __future__ import annotations

import json

import pytest

from electric.http.server import Request, Response, Router


def router(token: str = "") -> Router:
    r = Router(admin_token=token)
    r.add("GET", r"/api/thing", lambda _req: Response(200, b"{}"))
    r.add("PUT", r"/api/thing", lambda _req: Response(200, b"{}"))
    return r


def call(r: Router, method: str, remote: str, authorization: str = "") -> Response:
    return r.dispatch(Request(method, "/api/thing", {}, b"", remote, authorization))


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_without_token_loopback_may_mutate(remote):
    assert call(router(), "PUT", remote).status == 200


@pytest.mark.parametrize("remote", ["192.0.2.7", "::ffff:192.0.2.7", "2001:db8::1", "", "junk"])
def test_without_token_others_may_only_read(remote):
    refused = call(router(), "PUT", remote)
    assert refused.status == 403 and json.loads(refused.body)["error"] == "forbidden"
    assert call(router(), "GET", remote).status == 200


@pytest.mark.parametrize("authorization, status", [
    ("Bearer s3cret", 200), ("bearer s3cret", 200), ("Bearer wrong", 403), ("s3cret", 403),
    ("", 403), ("Basic czNjcmV0", 403),
])
def test_with_token_everyone_needs_it_even_loopback(authorization, status):
    assert call(router("s3cret"), "PUT", "127.0.0.1", authorization).status == status
    assert call(router("s3cret"), "GET", "192.0.2.7").status == 200


def test_a_body_over_the_limit_it_was_given_is_refused_before_it_is_read():
    from dataclasses import replace
    from io import BytesIO

    from electric.limits import DEFAULT

    r = Router(limits=replace(DEFAULT.service, http_max_body_bytes=8))
    r.add("PUT", r"/api/thing", lambda _req: Response(200, b"{}"))
    statuses = []

    def put(body: bytes) -> dict:
        environ = {"REQUEST_METHOD": "PUT", "PATH_INFO": "/api/thing", "QUERY_STRING": "",
                   "CONTENT_LENGTH": str(len(body)), "wsgi.input": BytesIO(body),
                   "REMOTE_ADDR": "127.0.0.1"}
        out = b"".join(r.wsgi(environ, lambda status, _headers: statuses.append(status)))
        return json.loads(out)

    assert put(b"12345678") == {}
    assert put(b"123456789") == {"error": "too_large", "message": "body over 8 bytes"}
    assert statuses == ["200 OK", "413 Payload Too Large"]
