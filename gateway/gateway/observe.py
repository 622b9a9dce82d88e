"""Request metrics and request ids as a plain ASGI middleware."""

from __future__ import annotations

import time

from modelhost.errors import REQUEST_ID_HEADER, clean_request_id, new_request_id

from .metrics import GatewayMetrics

_RID = REQUEST_ID_HEADER.lower().encode()


class ObserveMiddleware:
    def __init__(self, app, metrics: GatewayMetrics) -> None:  # noqa: ANN001 - ASGI app
        self.app = app
        self.metrics = metrics

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
            m = self.metrics
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "GET")
            m.series(m.requests, template, method, f"{status // 100}xx").inc()
            m.series(m.latency, template, method).observe(time.perf_counter() - t0)
