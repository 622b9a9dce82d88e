"""The one error envelope: shape, string codes, statuses, Retry-After, and no leaked internals."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, HTTPException, Query
from fastapi.testclient import TestClient

from modelhost import errors as E

pytestmark = pytest.mark.unit

SRC = "test-svc"

TYPED = [
    (E.BadRequest, 400, "invalid_request_error", "bad_request"),
    (E.Unauthorized, 401, "authentication_error", "invalid_api_key"),
    (E.Forbidden, 403, "permission_error", "forbidden"),
    (E.NotFound, 404, "not_found_error", "not_found"),
    (E.ModelNotFound, 404, "not_found_error", "model_not_found"),
    (E.Conflict, 409, "conflict_error", "conflict"),
    (E.ModelLeased, 409, "conflict_error", "model_in_use"),
    (E.PayloadTooLarge, 413, "invalid_request_error", "payload_too_large"),
    (E.UnsupportedMediaType, 415, "invalid_request_error", "unsupported_media_type"),
    (E.Overloaded, 429, "rate_limit_error", "overloaded"),
    (E.Unavailable, 503, "unavailable_error", "unavailable"),
    (E.ModelNotReady, 503, "unavailable_error", "model_not_ready"),
    (E.OutOfMemory, 503, "unavailable_error", "out_of_memory"),
    (E.UpstreamError, 502, "upstream_error", "upstream_error"),
    (E.DeadlineExceeded, 504, "timeout_error", "deadline_exceeded"),
    (E.InternalError, 500, "server_error", "internal_error"),
]
BY_NAME = {cls.__name__: cls for cls, *_ in TYPED}


def _app() -> FastAPI:
    app = FastAPI()
    E.install_error_handlers(app, SRC)

    @app.get("/raise/{name}")
    async def raise_typed(name: str, retry_after_s: float | None = None) -> dict:
        raise BY_NAME[name]("something precise went wrong", param="thing", retry_after_s=retry_after_s)

    @app.get("/custom-code")
    async def custom_code() -> dict:
        raise E.BadRequest("the file is empty", param="file", code="empty_file")

    @app.delete("/boom")
    async def boom_delete() -> dict:
        return {}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("password=hunter2 at /srv/secret/path.py line 12")

    @app.get("/http/{status}")
    async def http(status: int) -> dict:
        raise HTTPException(status, detail="plain starlette error", headers={"X-Extra": "kept"})

    @app.get("/validated")
    async def validated(n: int = Query(..., ge=1)) -> dict:
        return {"n": n}

    return app


@pytest.fixture(scope="module")
def client() -> TestClient:
    # raise_server_exceptions=False: see the 500 the client sees, not the exception in the test.
    with TestClient(_app(), raise_server_exceptions=False) as c:
        yield c


def _assert_envelope(body: dict, *, code: str, type: str) -> None:
    assert set(body) == {"src", "request_id", "error"}
    assert body["src"] == SRC
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert set(body["error"]) == {"type", "code", "message", "param"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["code"], str) and not body["error"]["code"].isdigit()
    assert body["error"]["type"] == type
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.mark.parametrize(("cls", "status", "type", "code"), TYPED, ids=[t[0].__name__ for t in TYPED])
def test_typed_error_renders_its_status_and_string_code(client, cls, status, type, code) -> None:
    r = client.get(f"/raise/{cls.__name__}")
    assert r.status_code == status
    body = r.json()
    _assert_envelope(body, code=code, type=type)
    assert body["error"]["message"] == "something precise went wrong"
    assert body["error"]["param"] == "thing"
    assert r.headers[E.REQUEST_ID_HEADER] == body["request_id"]


def test_code_can_be_narrowed_per_raise(client) -> None:
    r = client.get("/custom-code")
    assert r.status_code == 400
    _assert_envelope(r.json(), code="empty_file", type="invalid_request_error")
    assert r.json()["error"]["param"] == "file"


@pytest.mark.parametrize(("retry_after_s", "header"), [(1, "1"), (2.6, "3"), (0.2, "1"), (30, "30")])
@pytest.mark.parametrize("name", ["Overloaded", "Unavailable", "ModelNotReady", "OutOfMemory"])
def test_retry_after_is_whole_seconds_at_least_one(client, name, retry_after_s, header) -> None:
    r = client.get(f"/raise/{name}", params={"retry_after_s": retry_after_s})
    assert r.status_code in (429, 503)
    assert r.headers["Retry-After"] == header


@pytest.mark.parametrize("name", ["Overloaded", "Unavailable", "ModelNotReady", "OutOfMemory"])
def test_overloaded_and_unavailable_always_carry_retry_after(client, name) -> None:
    # STYLE.md: "429 overloaded, 503 not ready (with Retry-After)": a raise that forgot the hint
    # still tells the client when to come back.
    r = client.get(f"/raise/{name}")
    assert r.status_code in (429, 503)
    assert int(r.headers["Retry-After"]) >= 1


@pytest.mark.parametrize("name", ["BadRequest", "ModelNotFound", "ModelLeased", "InternalError"])
def test_other_errors_carry_no_retry_after(client, name) -> None:
    r = client.get(f"/raise/{name}")
    assert "Retry-After" not in r.headers


def test_validation_error_is_422_envelope_naming_the_field(client) -> None:
    r = client.get("/validated", params={"n": 0})
    assert r.status_code == 422
    body = r.json()
    _assert_envelope(body, code="validation_error", type="invalid_request_error")
    assert body["error"]["param"] == "n"
    assert body["error"]["message"].startswith("n: ")

    missing = client.get("/validated")
    assert missing.status_code == 422
    assert missing.json()["error"]["param"] == "n"


def test_unknown_exception_is_500_envelope_without_its_text(client) -> None:
    r = client.get("/boom", headers={E.REQUEST_ID_HEADER: "req-123"})
    assert r.status_code == 500
    body = r.json()
    _assert_envelope(body, code="internal_error", type="server_error")
    assert body["request_id"] == "req-123"
    assert "req-123" in body["error"]["message"]  # the client can quote it
    for secret in ("hunter2", "password", "/srv/secret", "RuntimeError"):
        assert secret not in r.text


def test_unknown_route_is_404_envelope(client) -> None:
    r = client.get("/no/such/route")
    assert r.status_code == 404
    body = r.json()
    _assert_envelope(body, code="route_not_found", type="not_found_error")
    assert "/no/such/route" in body["error"]["message"]


def test_wrong_method_is_405_envelope_with_allow(client) -> None:
    r = client.post("/boom")
    assert r.status_code == 405
    _assert_envelope(r.json(), code="method_not_allowed", type="invalid_request_error")
    # RFC 9110: a 405 names every method allowed on the path, not only the first route's
    assert r.headers["Allow"] == "DELETE, GET"


@pytest.mark.parametrize(("status", "code"), [(400, "bad_request"), (409, "conflict"), (413, "payload_too_large")])
def test_starlette_http_exception_becomes_envelope(client, status, code) -> None:
    r = client.get(f"/http/{status}")
    assert r.status_code == status
    _assert_envelope(r.json(), code=code, type=r.json()["error"]["type"])
    assert r.json()["error"]["message"] == "plain starlette error"


def test_starlette_http_exception_keeps_its_headers(client) -> None:
    r = client.get("/http/409")
    assert r.headers["X-Extra"] == "kept"


def test_client_request_id_is_echoed_and_one_is_made_up_otherwise(client) -> None:
    r = client.get("/raise/BadRequest", headers={E.REQUEST_ID_HEADER: "abc"})
    assert r.json()["request_id"] == "abc" and r.headers[E.REQUEST_ID_HEADER] == "abc"
    a = client.get("/raise/BadRequest").json()["request_id"]
    b = client.get("/raise/BadRequest").json()["request_id"]
    assert a != b
