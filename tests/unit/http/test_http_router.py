"""The status port's router and request validation (electric/http/server.py) and the
migrations API's refusals that need no Postgres (electric/http/migrations.py): every bad
request gets one JSON error reply ``{"error": code, "message": text}`` with a clear status,
never a traceback. The admin rule is in test_http_admin.py; malformed HTTP on a real
socket in tests/e2e/test_malformed_http.py."""

from __future__ import annotations

import json
from io import BytesIO

import pytest
from gevent.lock import BoundedSemaphore

from electric.http.migrations import MigrationsApi
from electric.http.server import HttpError, Request, Response, Router, json_response
from electric.postgres.connector import Connector
from electric.schema import Migration, SchemaRegistry


def get(r: Router, path: str, method: str = "GET", body: bytes = b"") -> Response:
    return r.dispatch(Request(method, path, {}, body, "127.0.0.1"))


def error_of(response: Response) -> tuple[int, str, str]:
    assert response.content_type == "application/json"
    payload = json.loads(response.body)
    assert set(payload) == {"error", "message"}
    return response.status, payload["error"], payload["message"]


def wsgi(r: Router, method: str, path: str, body: bytes = b"",
         content_length: str | None = None, stream=None) -> tuple[str, dict, bytes]:
    started = []
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "",
               "wsgi.input": stream or BytesIO(body), "REMOTE_ADDR": "127.0.0.1",
               "CONTENT_LENGTH": str(len(body)) if content_length is None else content_length}
    out = b"".join(r.wsgi(environ, lambda status, headers: started.append((status, headers))))
    [(status, headers)] = started
    return status, dict(headers), out


def echo(request: Request) -> Response:
    return json_response(200, {"params": request.params, "body": request.json()})


@pytest.fixture
def router() -> Router:
    r = Router()
    r.add("GET", r"/api/items/(?P<name>[^/]+)", echo)
    r.add("PUT", r"/api/items/(?P<name>[^/]+)", echo)
    return r


# -- routing ---------------------------------------------------------------------------


def test_named_groups_become_params(router):
    response = get(router, "/api/items/a%20b")
    assert response.status == 200
    assert json.loads(response.body) == {"body": None, "params": {"name": "a%20b"}}


def test_patterns_match_the_whole_path(router):
    assert get(router, "/api/items/a/extra").status == 404
    assert get(router, "/prefix/api/items/a").status == 404


def test_an_unknown_path_is_404_not_found(router):
    response = get(router, "/nowhere")
    assert (response.status, response.body, response.content_type) == (
        404, b"Not found", "text/plain")


def test_a_known_path_with_another_method_is_405_naming_the_allowed_ones(router):
    assert error_of(get(router, "/api/items/a", "DELETE")) == (
        405, "method_not_allowed", "use GET, PUT on /api/items/a")


def test_json_is_compact_with_sorted_keys():
    assert json_response(201, {"b": 1, "a": [1, 2]}).body == b'{"a":[1,2],"b":1}'


# -- handler failures ------------------------------------------------------------------


@pytest.mark.parametrize("body, message", [
    (b"{", "request body is not valid JSON"),
    (b"\xff\xfe", "request body is not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "request body is not valid JSON"),
])
def test_a_body_that_is_not_json_is_400_invalid_body(router, body, message):
    assert error_of(get(router, "/api/items/a", "PUT", body)) == (400, "invalid_body", message)


def test_an_empty_body_is_json_null(router):
    assert json.loads(get(router, "/api/items/a", "PUT").body)["body"] is None


def test_an_http_error_of_a_handler_is_its_own_reply():
    r = Router()

    def conflict(_request):
        raise HttpError(409, "busy", "try later")

    r.add("GET", "/x", conflict)
    assert error_of(get(r, "/x")) == (409, "busy", "try later")


def test_a_handler_crash_is_500_without_its_details():
    r = Router()

    def crash(_request):
        raise KeyError("secret internals")

    r.add("GET", "/x", crash)
    response = get(r, "/x")
    assert error_of(response) == (500, "internal", "internal failure, see Electric's log")
    assert b"secret" not in response.body


# -- the WSGI side: status line, headers, Content-Length -------------------------------


def test_the_reply_carries_status_line_type_and_length(router):
    status, headers, body = wsgi(router, "PUT", "/api/items/a", b'{"x": 1}')
    assert status == "200 OK"
    assert headers == {"Content-Type": "application/json", "Content-Length": str(len(body))}
    assert json.loads(body) == {"body": {"x": 1}, "params": {"name": "a"}}


@pytest.mark.parametrize("content_length", ["abc", "1.5", " "])
def test_a_content_length_that_is_not_a_number_is_400(router, content_length):
    status, _headers, body = wsgi(router, "PUT", "/api/items/a", b"{}", content_length)
    assert status == "400 Bad Request"
    assert json.loads(body) == {"error": "invalid_body", "message": "bad Content-Length"}


def test_a_body_shorter_than_its_content_length_is_400(router):
    status, _headers, body = wsgi(router, "PUT", "/api/items/a", b"{}", "7")
    assert status == "400 Bad Request"
    assert json.loads(body)["message"] == "body shorter than Content-Length"


def test_a_body_that_cannot_be_read_is_400():
    class Broken:
        def read(self, _n):
            raise OSError("connection reset")

    status, _headers, body = wsgi(Router(), "PUT", "/x", content_length="2", stream=Broken())
    assert status == "400 Bad Request"
    assert json.loads(body)["error"] == "invalid_body"


# -- the migrations API's refusals -----------------------------------------------------


@pytest.fixture
def api(tmp_path):
    """A router with the migrations API of one connector, ``pg_1``, that is not ready (it was
    never started), over a migrations folder holding ``1_init.sql`` and an empty ``2.sql``."""
    (tmp_path / "1_init.sql").write_text("CREATE TABLE t (id int PRIMARY KEY);")
    (tmp_path / "2.sql").write_text("  \n")
    registry = SchemaRegistry()
    registry.put_migrations("pg_1", [Migration("1_init", "ABC", None)])
    connector = Connector("pg_1", "host=nowhere", "pub", "slot", registry, lambda _t: None)
    r = Router()
    MigrationsApi({"pg_1": connector}, registry, str(tmp_path), ".sql",
                  {"pg_1": BoundedSemaphore()}).install(r)
    return r


def test_migrations_of_every_connector_and_of_one(api):
    latest = {"applied_at": None, "hash": "ABC", "origin": "pg_1", "vsn": "1_init"}
    assert json.loads(get(api, "/api/migrations").body) == [latest]
    assert json.loads(get(api, "/api/migrations/pg_1").body) == latest


def test_an_unknown_origin_is_404(api):
    assert error_of(get(api, "/api/migrations/pg_9")) == (
        404, "unknown_origin", "no connector named 'pg_9'")
    assert error_of(get(api, "/api/migrations/pg_9", "PUT", b'{"vsn": "1_init"}'))[:2] == (
        404, "unknown_origin")


@pytest.mark.parametrize("body", [b"[]", b'"1_init"', b"{}", b'{"version": "1_init"}', b""])
def test_a_put_body_without_vsn_is_400(api, body):
    assert error_of(get(api, "/api/migrations/pg_1", "PUT", body)) == (
        400, "invalid_body", 'body must be a JSON object {"vsn": "<name>"}')


@pytest.mark.parametrize("vsn", ["../1_init", "-x", "", "a" * 65, 1, None, "a b"])
def test_a_vsn_that_is_not_a_plain_name_is_400(api, vsn):
    body = json.dumps({"vsn": vsn}).encode()
    assert error_of(get(api, "/api/migrations/pg_1", "PUT", body))[:2] == (400, "invalid_vsn")


def test_a_vsn_without_a_file_is_404_and_an_empty_file_400(api):
    status, code, message = error_of(get(api, "/api/migrations/pg_1", "PUT", b'{"vsn": "3"}'))
    assert (status, code) == (404, "vsn_not_found") and message.endswith("3.sql")
    status, code, message = error_of(get(api, "/api/migrations/pg_1", "PUT", b'{"vsn": "2"}'))
    assert (status, code) == (400, "invalid_file") and message.endswith("2.sql is empty")


def test_a_migration_for_a_connector_that_is_not_ready_is_503(api):
    assert error_of(get(api, "/api/migrations/pg_1", "PUT", b'{"vsn": "1_init"}')) == (
        503, "not_ready", "connector pg_1 is not ready; try again later")
