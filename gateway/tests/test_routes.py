"""``gateway.routes.DirectRoute``: the endpoint is the handler (its Response is sent as it is), errors reach the
app's handlers as the envelope, and the OpenAPI document still shows the decorator's response model.
``DirectApp``: such a route is served on its lane, through the app's own middlewares and exception handlers,
and only when the router would have picked it."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from gateway.auth import ApiKeyMiddleware
from gateway.metrics import GatewayMetrics
from gateway.observe import ObserveMiddleware
from gateway.routes import DirectApp, DirectRoute, json_response
from modelhost.errors import BadRequest, install_error_handlers
from modelhost.wire import BodyTimeoutMiddleware
from pydantic import BaseModel

pytestmark = pytest.mark.unit


class Answer(BaseModel):
    object: str = "answer"
    value: int


def app() -> FastAPI:
    router = APIRouter(route_class=DirectRoute)

    @router.post("/v1/answer", response_model=Answer)
    async def answer(request: Request) -> Response:
        value = int(request.query_params.get("value", "0"))
        if value < 0:
            raise BadRequest("value must not be negative", param="value")
        return json_response(Answer(value=value))

    a = FastAPI()
    install_error_handlers(a, "gateway")
    a.include_router(router)
    return a


async def test_a_direct_route_sends_its_response_and_its_errors_as_the_envelope() -> None:
    the_app = app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=the_app), base_url="http://t") as client:
        r = await client.post("/v1/answer?value=3")
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.content == b'{"object":"answer","value":3}'
        r = await client.post("/v1/answer?value=-1")
        assert r.status_code == 400 and r.json()["src"] == "gateway" and r.json()["error"]["param"] == "value"
    schema = the_app.openapi()["paths"]["/v1/answer"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Answer"}


def direct_app(metrics: GatewayMetrics, *, first: APIRouter | None = None, prefix: str = "") -> DirectApp:
    router = APIRouter(route_class=DirectRoute)

    @router.post("/v1/answer", response_model=Answer)
    async def answer(request: Request) -> Response:
        body = await request.body()
        if body == b"bug":
            raise RuntimeError("a bug")
        if not body:
            raise BadRequest("send a number", param="value")
        return json_response(Answer(value=int(body)))

    @router.get("/v1/answer/{n}", response_model=Answer)
    async def numbered(request: Request) -> Response:  # a parameter in its path: served through the app
        return json_response(Answer(value=int(request.path_params["n"])))

    a = DirectApp()
    install_error_handlers(a, "gateway")
    if first is not None:
        a.include_router(first)
    a.include_router(router, prefix=prefix)
    a.add_middleware(BodyTimeoutMiddleware, idle_s=5.0, src="gateway")
    a.add_middleware(ApiKeyMiddleware, keys=["k1"])
    a.add_middleware(ObserveMiddleware, metrics=metrics)
    return a


def sample(metrics: GatewayMetrics, route: str, status_class: str) -> float:
    return metrics.registry.get_sample_value("roundhouse_gateway_requests_total",
                                             {"route": route, "method": "POST", "status": status_class}) or 0.0


async def test_a_direct_app_serves_its_direct_routes_through_its_middlewares_and_handlers_only() -> None:
    metrics = GatewayMetrics()
    the_app = direct_app(metrics)
    key = {"Authorization": "Bearer k1"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=the_app, raise_app_exceptions=False),
                                 base_url="http://t") as client:
        r = await client.post("/v1/answer", content=b"7", headers={**key, "X-Request-ID": "abc-123"})
        assert r.status_code == 200 and r.json() == {"object": "answer", "value": 7}
        assert r.headers["x-request-id"] == "abc-123"  # ObserveMiddleware
        assert the_app.middleware_stack is None  # served on its lane: the app's stack was never even built
        assert (await client.post("/v1/answer", content=b"7")).status_code == 401  # ApiKeyMiddleware
        r = await client.post("/v1/answer", content=b"", headers=key)
        assert r.status_code == 400 and r.json()["error"]["param"] == "value"  # the envelope, by the app's handler
        rid = r.headers["x-request-id"]
        assert r.json()["request_id"] == rid
        r = await client.post("/v1/answer", content=b"bug", headers=key)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"  # the app's handler for Exception
        assert sample(metrics, "/v1/answer", "2xx") == 1 and sample(metrics, "/v1/answer", "4xx") == 1
        assert sample(metrics, "unmatched", "4xx") == 1  # the 401, refused before a route is chosen (as in the app)
        assert sample(metrics, "/v1/answer", "5xx") == 1
        r = await client.get("/v1/answer/5", headers=key)
        assert r.status_code == 200 and r.json()["value"] == 5 and the_app.middleware_stack is not None
        r = await client.get("/v1/answer", headers=key)  # another method on a laned path: the router's 405
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_a_direct_route_the_router_would_not_pick_is_served_through_the_app() -> None:
    first = APIRouter()

    @first.post("/v1/answer")
    async def earlier() -> dict:
        return {"object": "answer", "value": -1}

    key = {"Authorization": "Bearer k1"}
    for the_app, value in ((direct_app(GatewayMetrics(), first=first), -1),  # an earlier route takes the path
                           (direct_app(GatewayMetrics(), prefix="/p"), 3)):  # a prefix: no lane, same answers
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=the_app), base_url="http://t") as client:
            path = "/p/v1/answer" if value == 3 else "/v1/answer"
            r = await client.post(path, content=b"3", headers=key)
            assert r.status_code == 200 and r.json()["value"] == value
            assert the_app.middleware_stack is not None
