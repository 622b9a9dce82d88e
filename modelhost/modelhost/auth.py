"""The internal credential: what makes a family service answer the gateway and nobody else.

A deployment has one secret (``make dev`` makes one per run; ``make up`` writes one to ``.env`` as
``ROUNDHOUSE_INTERNAL_TOKEN``, and compose hands it to every component under its own prefix). The
gateway sends it on every call to a service as ``Authorization: Bearer <token>``; a service with one set
answers any other caller 401 in the envelope, except on ``OPEN_PATHS``:

* ``/health/live`` and ``/health/ready``: for orchestrators and compose healthchecks, which carry no
  secret; they change nothing and say only whether the process and its worker answer.
* ``/metrics``: Prometheus scrapes every service by name and carries no secret either (its config is a
  static file); the metrics hold model names and memory, no inputs or outputs.

A caller that sends a credential on an open path has it checked all the same: the gateway's readiness
probe then tells a gateway configured with another deployment's secret (its ``/health/ready`` says the
service is down: wrong internal credential) instead of finding out at the first load.

Everything else (inference, load and unload, ``/v1/models``, the OpenAPI document) needs the credential.
The comparison is constant-time (``hmac.compare_digest``). With no credential set the service is open, as
for a service run by hand on loopback; it says so once in its log.
"""

from __future__ import annotations

import hmac
import json
import logging

from .errors import REQUEST_ID_HEADER, envelope, new_request_id

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health/live", "/health/ready", "/metrics"})


def bearer_header(token: str) -> tuple[str, str]:
    """The header a caller of a service sends (the gateway's client, a test)."""
    return "Authorization", f"Bearer {token}"


def bearer_token(scope) -> bytes | None:  # noqa: ANN001 - an ASGI scope
    """The token of a request's ``Authorization: Bearer <token>`` header, or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, rest = value.partition(b" ")
            return rest.strip() if scheme.lower() == b"bearer" else None
    return None


async def send_unauthorized(send, src: str, code: str, message: str) -> None:  # noqa: ANN001 - ASGI send
    """A 401 in the error envelope, with ``WWW-Authenticate: Bearer`` and a new request id."""
    rid = new_request_id()
    body = json.dumps(envelope(src, rid, type="authentication_error", code=code, message=message,
                               param=None)).encode()
    await send({"type": "http.response.start", "status": 401, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b"Bearer"), (REQUEST_ID_HEADER.lower().encode(), rid.encode())]})
    await send({"type": "http.response.body", "body": body})


class InternalTokenMiddleware:
    """Plain ASGI: a dict lookup and a constant-time compare per request, nothing when the path is open."""

    def __init__(self, app, token: str | None, src: str) -> None:  # noqa: ANN001 - ASGI app
        self.app = app
        self._token = token.encode() if token else None
        self._src = src
        if self._token is None:
            log.warning("%s: no internal credential set (%s_INTERNAL_TOKEN): any caller that reaches this port "
                        "may load models and run inference", src, src.upper().replace("-", "_"))

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http" or self._token is None:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope)
        if (token is None and scope["path"] in OPEN_PATHS) or (token is not None and hmac.compare_digest(token, self._token)):
            await self.app(scope, receive, send)
            return
        message = ("this service answers the Roundhouse gateway only: missing internal credential"
                   if token is None else "wrong internal credential")
        await send_unauthorized(send, self._src, "invalid_internal_token", message)
