"""API-key authentication as a plain ASGI middleware (no per-request overhead beyond a dict
lookup and a constant-time compare). Health, metrics and the docs stay open; every /v1 and
/admin route needs ``Authorization: Bearer <key>`` when keys are configured."""

from __future__ import annotations

import hmac

from modelhost.auth import bearer_token, send_unauthorized

PROTECTED_PREFIXES = ("/v1/", "/admin/")


class ApiKeyMiddleware:
    def __init__(self, app, keys: list[str]) -> None:  # noqa: ANN001 - ASGI app
        self.app = app
        self._keys = [k.encode() for k in keys]

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http" or not self._keys or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if token is not None and any(hmac.compare_digest(token, k) for k in self._keys):
            await self.app(scope, receive, send)
            return
        message = "missing API key: send 'Authorization: Bearer <key>'" if token is None else "invalid API key"
        await send_unauthorized(send, "gateway", "invalid_api_key", message)
