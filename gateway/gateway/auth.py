"""API-key authentication as a plain ASGI middleware (no per-request overhead beyond a dict
lookup and a constant-time compare). Health, metrics and the docs stay open; every /v1 and
/admin route needs ``Authorization: Bearer <key>`` when keys are configured."""

from __future__ import annotations

import hmac
import json

from modelhost.errors import REQUEST_ID_HEADER, envelope, new_request_id

PROTECTED_PREFIXES = ("/v1/", "/admin/")


class ApiKeyMiddleware:
    def __init__(self, app, keys: list[str]) -> None:  # noqa: ANN001 - ASGI app
        self.app = app
        self._keys = [k.encode() for k in keys]

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http" or not self._keys or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    token = rest.strip()
                break
        if token is not None and any(hmac.compare_digest(token, k) for k in self._keys):
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        message = "missing API key: send 'Authorization: Bearer <key>'" if token is None else "invalid API key"
        body = json.dumps(envelope("gateway", rid, type="authentication_error", code="invalid_api_key",
                                   message=message, param=None)).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b"Bearer"), (REQUEST_ID_HEADER.lower().encode(), rid.encode())]})
        await send({"type": "http.response.body", "body": body})
