"""``gateway.routes.DirectRoute``: the endpoint is the handler (its Response is sent as it is), errors reach the
app's handlers as the envelope, and the OpenAPI document still shows the decorator's response model."""

from __future__ import annotations

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request, Response
from gateway.routes import DirectRoute, json_response
from modelhost.errors import BadRequest, install_error_handlers
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
