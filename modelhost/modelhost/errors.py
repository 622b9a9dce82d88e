"""Typed errors, one status table, and the one error envelope.

Every error a Roundhouse component returns has the same shape::

    {"src": "gateway", "request_id": "...",
     "error": {"type": "invalid_request_error", "code": "unsupported_media_type",
               "message": "...", "param": "file"}}

``code`` is a string naming the condition, never the HTTP status. Handlers match on exception
classes, never on message text.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"


class RoundhouseError(Exception):
    """Base of every error that is rendered to a client. Subclasses set the class attributes."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"
    retry_after_s: float | None = None
    """Seconds a client should wait before retrying (the Retry-After header); None = no header."""
    retryable: bool = False
    """Transient: the same request may well succeed later, unchanged (overloaded, not ready yet, slow).
    A bulk job pauses and tries such an item again without counting an attempt; anything else is
    permanent for that request (a 4xx is the item's final error, another 5xx counts an attempt)."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after_s: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s
        if code is not None:
            self.code = code
        self.src: str | None = None  # set when passing on another component's error unchanged


class BadRequest(RoundhouseError):
    status, type, code = 400, "invalid_request_error", "bad_request"


class Unauthorized(RoundhouseError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class Forbidden(RoundhouseError):
    status, type, code = 403, "permission_error", "forbidden"


class NotFound(RoundhouseError):
    status, type, code = 404, "not_found_error", "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(RoundhouseError):
    status, type, code = 409, "conflict_error", "conflict"


class ModelLeased(Conflict):
    code = "model_in_use"


class PayloadTooLarge(RoundhouseError):
    status, type, code = 413, "invalid_request_error", "payload_too_large"


class UnsupportedMediaType(RoundhouseError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class Overloaded(RoundhouseError):
    status, type, code = 429, "rate_limit_error", "overloaded"
    retry_after_s = 1.0  # a 429 always says when to come back
    retryable = True


class Unavailable(RoundhouseError):
    status, type, code = 503, "unavailable_error", "unavailable"
    retry_after_s = 1.0  # a 503 always says when to come back
    retryable = True


class ModelNotReady(Unavailable):
    code = "model_not_ready"


class OutOfMemory(Unavailable):
    """A single item did not fit on the device even alone."""

    code = "out_of_memory"


class LoadOutOfMemory(OutOfMemory):
    """A model's load (or warm-up) ran out of device memory: something else holds it. Transient: the
    gateway's coordinator makes room and loads again (``modelhost.oom`` tells such a failure)."""

    retry_after_s = 5.0


class InsufficientMemory(Unavailable):
    """The model can never fit in its device's budget (the coordinator refuses it at once)."""

    code = "insufficient_memory"
    retryable = False


class ServiceNotConfigured(Unavailable):
    """The catalog has the model's family, but the gateway has no URL for its service."""

    code = "service_not_configured"
    retryable = False


class ServiceUnreachable(Unavailable):
    """A family service refused the connection (down, restarting)."""

    code = "service_unavailable"


class UpstreamError(RoundhouseError):
    status, type, code = 502, "upstream_error", "upstream_error"


class UpstreamEnvelope(RoundhouseError):
    """A service answered with an error envelope: the gateway passes it on as it came (its ``src`` kept),
    transient or not by its status."""

    def __init__(self, status: int, body: Mapping[str, Any], retry_after: str | None) -> None:
        err = body.get("error") or {}
        super().__init__(str(err.get("message") or "upstream error"), param=err.get("param"))
        self.status = status
        self.type = str(err.get("type") or "upstream_error")
        self.code = str(err.get("code") or "upstream_error")
        self.src = str(body.get("src") or "upstream")
        self.retryable = status in (429, 503, 504)
        if retry_after is not None:
            try:
                self.retry_after_s = float(retry_after)
            except ValueError:
                pass


class DeadlineExceeded(RoundhouseError):
    status, type, code = 504, "timeout_error", "deadline_exceeded"
    retryable = True


class InternalError(RoundhouseError):
    status, type, code = 500, "server_error", "internal_error"


class ModelLoadFailed(RoundhouseError):
    """The model's load or warm-up failed (its cause in the message)."""

    status, type, code = 500, "server_error", "model_load_failed"


class InferenceFailed(RoundhouseError):
    status, type, code = 500, "server_error", "inference_failed"


class ErrorBody(BaseModel):
    type: str = Field(description="The error's class: invalid_request_error, not_found_error, unavailable_error, ...")
    code: str = Field(description="The condition, a string: model_not_found, payload_too_large, ...")
    message: str
    param: str | None = Field(None, description="The request field at fault, where there is one.")


class ErrorEnvelope(BaseModel):
    """Every error answer of every component."""

    src: str = Field(description="The component that answered: gateway, caption-svc, ...")
    request_id: str
    error: ErrorBody


_DESCRIPTIONS = {
    400: "Bad input: a field out of range, a file that is not what it claims, ...",
    401: "No or a wrong API key.",
    403: "The request is not allowed here (a path outside the library, ...).",
    404: "An unknown model, job or voice.",
    409: "Conflict with the resource's state.",
    413: "The body, a file or an image's pixels over the limit.",
    415: "A Content-Type or file format not taken here.",
    422: "The body does not fit the schema.",
    429: "Overloaded: the model's queue is full (Retry-After).",
    502: "The family service answered something unreadable.",
    503: "Not ready: the model cannot be loaded in time or its service is down (Retry-After).",
    504: "The deadline passed while waiting.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each status it can answer, documented with the envelope."""
    return {s: {"model": ErrorEnvelope, "description": _DESCRIPTIONS[s]} for s in statuses}


def new_request_id() -> str:
    """32 random hex digits (``uuid.uuid4().hex`` built the same from 16 random bytes, at several times the cost,
    and it runs on every request)."""
    return os.urandom(16).hex()


def clean_request_id(value: str | None) -> str | None:
    """A caller's request id if it can be echoed as sent: 1 to 128 printable ASCII characters. Anything else
    (bytes past ASCII, which a header carries as Latin-1 and a UTF-8 echo would turn to mojibake; controls;
    a novel's worth) is None, and the request gets an id of ours."""
    if value and len(value) <= 128 and value.isascii() and value.isprintable() and not value.isspace():
        return value.strip()
    return None


def request_id_of(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = clean_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
        request.state.request_id = rid
    return rid


def envelope(
    src: str,
    request_id: str,
    *,
    type: str,
    code: str,
    message: str,
    param: str | None = None,
) -> dict[str, Any]:
    return {
        "src": src,
        "request_id": request_id,
        "error": {"type": type, "code": code, "message": message, "param": param},
    }


def error_response(
    src: str, request_id: str, exc: RoundhouseError, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The envelope for ``exc``; ``headers`` (e.g. an HTTPException's ``Allow``) are sent as well."""
    headers = {**(headers or {}), REQUEST_ID_HEADER: request_id}
    if exc.retry_after_s is not None and "Retry-After" not in headers:
        headers["Retry-After"] = str(max(1, int(round(exc.retry_after_s))))
    body = envelope(exc.src or src, request_id, type=exc.type, code=exc.code, message=exc.message, param=exc.param)
    return JSONResponse(body, status_code=exc.status, headers=headers)


_STARLETTE_STATUS = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: BadRequest,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: Overloaded,
    503: Unavailable,
}


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on the request's path. Starlette's own 405 names only the first
    route whose path matched, though a path often has several (GET and POST /v1/jobs). Each method is
    asked of the routes through their public ``matches``, which also looks inside included routers."""
    routes = request.app.router.routes
    return [method for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
            if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)]


def install_error_handlers(app: FastAPI, src: str) -> None:
    """Render every error raised in ``app`` as the envelope, naming ``src`` as the answering component."""

    @app.exception_handler(RoundhouseError)
    async def _roundhouse(request: Request, exc: RoundhouseError) -> JSONResponse:
        return error_response(src, request_id_of(request), exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        message = first.get("msg", "invalid request")
        if loc:
            message = f"{'.'.join(loc)}: {message}"
        err = RoundhouseError(message, param=".".join(loc) or None)
        err.status, err.type, err.code = 422, "invalid_request_error", "validation_error"
        return error_response(src, request_id_of(request), err)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cls = _STARLETTE_STATUS.get(exc.status_code)
        if cls is None:
            err: RoundhouseError = InternalError("internal error")
            err.status = exc.status_code
        else:
            err = cls(str(exc.detail))
        if exc.status_code == 404 and cls is NotFound:
            err = NotFound(f"no route for {request.method} {request.url.path}", code="route_not_found")
        headers = exc.headers
        if exc.status_code == 405:
            err = BadRequest(f"method {request.method} not allowed on {request.url.path}", code="method_not_allowed")
            err.status = 405
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(src, request_id_of(request), err, headers)

    @app.exception_handler(Exception)
    async def _unknown(request: Request, exc: Exception) -> JSONResponse:
        rid = request_id_of(request)
        log.exception("unhandled error (request_id=%s)", rid)
        return error_response(src, rid, InternalError(f"internal error; quote request_id {rid} when reporting it"))


class PromptTooLong(BadRequest):
    """The prompt alone fills the model's context (the positions its text decoder has), leaving no room for
    a single new token. A backend finds it before generating; the family's route raises this for it."""

    code = "prompt_too_long"
