"""The API-key middleware on a minimal ASGI app (app tier: the real middleware, a stub endpoint)."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from gateway.auth import ApiKeyMiddleware

pytestmark = pytest.mark.app


def make_app(keys: list[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"ok": True}

    @app.get("/admin/models")
    async def admin() -> dict:
        return {"ok": True}

    @app.get("/health/live")
    async def live() -> dict:
        return {"ok": True}

    app.add_middleware(ApiKeyMiddleware, keys=keys)
    return app


async def get(app: FastAPI, path: str, headers: dict | None = None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return await c.get(path, headers=headers)


async def test_no_keys_configured_means_open() -> None:
    assert (await get(make_app([]), "/v1/models")).status_code == 200


@pytest.mark.parametrize("headers", [None, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer"}, {"Authorization": "k1"}])
async def test_missing_or_wrong_key_is_401_envelope(headers) -> None:
    for path in ("/v1/models", "/admin/models"):
        r = await get(make_app(["k1", "k2"]), path, headers)
        assert r.status_code == 401
        body = r.json()
        assert body["src"] == "gateway" and body["error"]["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"


async def test_any_configured_key_passes_and_health_stays_open() -> None:
    app = make_app(["k1", "k2"])
    assert (await get(app, "/v1/models", {"Authorization": "Bearer k2"})).status_code == 200
    assert (await get(app, "/admin/models", {"authorization": "bearer k1"})).status_code == 200
    assert (await get(app, "/health/live")).status_code == 200
