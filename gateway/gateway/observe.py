"""Request metrics and request ids as a plain ASGI middleware."""

from __future__ import annotations

import time
from typing import Any

from modelhost.errors import REQUEST_ID_HEADER, clean_request_id, new_request_id

from .metrics import GatewayMetrics

_RID = REQUEST_ID_HEADER.lower().encode()


class ObserveMiddleware:
    def __init__(self, app, metrics: GatewayMetrics) -> None:  # noqa: ANN001 - ASGI app
        self.app = app
        self.metrics = metrics
        # (route, method, status class) -> its counter and histogram children: ``labels()`` validates and
        # looks the labels up anew on every call, twice per request otherwise.
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == _RID:
                rid = clean_request_id(value.decode("latin-1"))  # not echoable as sent (non-ASCII...): ours
                break
        rid = rid or new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message) -> None:  # noqa: ANN001
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers") or []
                if not any(k == _RID for k, _ in headers):
                    message = {**message, "headers": [*headers, (_RID, rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            key = (getattr(route, "path", None) or "unmatched", scope.get("method", "GET"), f"{status // 100}xx")
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (self.metrics.requests.labels(*key), self.metrics.latency.labels(*key[:2]))
            series[0].inc()
            series[1].observe(time.perf_counter() - t0)
