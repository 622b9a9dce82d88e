"""``DirectRoute``: a route FastAPI documents like any other and serves without its per-request machinery, and
``DirectApp``: the FastAPI app that serves those routes on a lane of their own.

An inference route reads its own body (``bodies.read_upload``), validates what it reads, and has a validated
answer to send; FastAPI's handler would still solve dependencies (there are none but the ``Request``), then
validate and serialise the returned model against ``response_model`` once more. With this route class (FastAPI's
hook for a custom handler, ``get_route_handler``) the endpoint is the handler: it takes the ``Request`` and returns
the ``Response``. The OpenAPI document is unchanged (``response_model``, ``responses`` and ``openapi_extra`` of the
decorator); errors still reach the app's handlers as they did (Starlette's ``request_response`` wraps it).

Measured on POST /v1/images/captions, the app driven in-process against a trivial upstream: 287 against 311 us of
CPU per request (median of four rounds' best batch), about 8 %.

The lane. Before its endpoint, every request still crossed FastAPI's and Starlette's application calls,
ServerErrorMiddleware, FastAPI's telemetry and body-limit middlewares, ExceptionMiddleware, FastAPI's exit-stack
middleware, the router's matching of route after route (a regular expression each, included routers in turn) and
``request_response``: about a quarter of the app's CPU for a caption. ``DirectApp`` looks the request's method and
path up in a dict; a ``DirectRoute`` found there gets the app's own user middlewares (the same classes with the
same arguments, built the way Starlette builds them: request id and metrics, API key, body idle timeout) around
its endpoint, and an exception it raises is rendered by the app's own exception handlers (the envelope, the 500
included). Everything else goes through the app as before. Left out on the lane: FastAPI's ``max_body_size`` (not
set here: each route bounds its own body, ``bodies.read_body``), its telemetry (off) and ServerErrorMiddleware's
debug page (never on).

Measured with ``bench/gateway_overhead.py`` (whole runs, quiet 2-CPU VM, the two trees in turn): the gateway's CPU
per caption with a trivial upstream 0.34-0.42 -> 0.28-0.30 ms, its added sequential latency p50 0.62-0.70 ->
0.42-0.56 ms; with the 20 ms upstream at 16 connections the ratio to direct did not move (0.93-0.94 -> 0.93-0.95;
``bench/README.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

Lane = Callable[[dict, Any, Any], Coroutine[Any, Any, None]]  # an ASGI app


class DirectRoute(APIRoute):
    """For ``async def endpoint(request: Request) -> Response`` only (``json_response`` makes the Response)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint


def json_response(answer: BaseModel, *, exclude_none: bool = False) -> Response:
    """``answer`` as FastAPI would have sent it for its ``response_model`` (and ``response_model_exclude_none``):
    compact JSON, application/json."""
    return Response(answer.model_dump_json(exclude_none=exclude_none), media_type="application/json")


class DirectApp(FastAPI):
    """A FastAPI app whose ``DirectRoute`` routes are served on their own lane (the module's docstring).

    A route gets a lane when its router is included with no prefix and no dependencies, its path has no
    parameters, and no route registered before it matches its path and method (the router would pick that one):
    anything else is served through the app, as before."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._direct: dict[tuple[str, str], DirectRoute] = {}
        self._included: list[Any] = []  # the routes of the routers included so far, in order
        self._lanes: dict[tuple[str, str], Lane] | None = None

    def include_router(self, router: APIRouter, **kwargs: Any) -> None:  # type: ignore[override]
        super().include_router(router, **kwargs)
        earlier = [r for r in self.router.routes if hasattr(r, "path_regex")] + self._included
        plain = not kwargs.get("prefix") and not kwargs.get("dependencies") and not router.dependencies
        for route in router.routes:
            if plain and isinstance(route, DirectRoute) and not route.param_convertors:
                for method in route.methods or ():
                    if not any(_may_match(r, method, route.path) for r in earlier):
                        self._direct.setdefault((method, route.path), route)
            earlier.append(route)
            self._included.append(route)

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        if scope["type"] == "http" and self._direct and not self.root_path:
            if self._lanes is None:
                self._lanes = {key: self._lane(route) for key, route in self._direct.items()}  # every middleware is in
            lane = self._lanes.get((scope["method"], scope["path"]))
            if lane is not None:
                scope["app"] = self
                await lane(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _lane(self, route: DirectRoute) -> Lane:
        lane: Lane = _Endpoint(self, route)
        for cls, args, kwargs in reversed(self.user_middleware):  # as Starlette's build_middleware_stack
            lane = cls(lane, *args, **kwargs)
        return lane


def _may_match(route: Any, method: str, path: str) -> bool:
    """Whether ``route`` (registered earlier) could take ``method path`` from the router: any route that is not a
    plain one with a path pattern (a mount, a nested router) is taken to."""
    regex = getattr(route, "path_regex", None)
    if regex is None:
        return True
    methods = getattr(route, "methods", None)
    return bool(regex.match(path)) and (methods is None or method in methods)


class _Endpoint:
    """A ``DirectRoute``'s endpoint as an ASGI app: the scope keys the router would have set, the app's exception
    handlers for what it raises (looked up by the exception's classes, as Starlette does), and its form closed."""

    def __init__(self, app: FastAPI, route: DirectRoute) -> None:
        self.app = app
        self.route = route

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        scope["route"] = self.route
        scope["endpoint"] = self.route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            try:
                response = await self.route.endpoint(request)
            except Exception as exc:
                handler = next((h for cls in type(exc).__mro__ if (h := self.app.exception_handlers.get(cls))), None)
                if handler is None:
                    raise
                response = await handler(request, exc)
            await response(scope, receive, send)
        finally:
            await request.close()  # an uploaded form's files
