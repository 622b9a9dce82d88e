"""One module per family: the contract between the gateway, its jobs and the family's service.

Each module (``caption``, ``face``, ``asr``, ``tts``) holds, once:

- the request parameters as pydantic models, with their limits (the gateway's router, the gateway's
  jobs task and the service's route all validate with these);
- the response schema (the service answers it, the gateway documents and returns it);
- the upstream call: the one function that sends a request to the family's service, used by both the
  gateway's router and its jobs task (it takes the ``Upstream`` of ``ModelAccess.hold``, or anything
  with the same ``request``).

Pydantic, the standard library and ``modelhost``'s own plumbing only: every environment imports these.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Protocol, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from ..client import multipart, reply_as  # noqa: F401 - reply_as is the families' too
from ..errors import BadRequest

P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


class Requester(Protocol):
    """What the upstream calls use: the ``Upstream`` of ``ModelAccess.hold`` (or a ``ModelHostClient``)."""

    async def request(self, method: str, path: str, **kwargs: Any) -> Any: ...

    def stream(self, method: str, path: str, **kwargs: Any) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]: ...

def not_a_bool(value: Any) -> Any:
    """A number field's guard: JSON ``true`` is not 1 (pydantic's lax mode would take it as 1)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


def validated(cls: type[P], values: dict[str, Any]) -> P:
    """``values`` as ``cls``, or 400 ``bad_request`` naming the first bad field (``param``)."""
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        message = first.get("msg", "invalid value")
        raise BadRequest(f"{param}: {message}" if param else message, param=param) from None


def default_model(models: Iterable[Any], family: str, configured: str | None = None) -> str:
    """The model a request of ``family`` gets when it names none: ``configured`` (a setting such as
    ``GATEWAY_DEFAULT_CAPTION_MODEL``), else the catalog's first model of the family; 400 when there is none."""
    if configured:
        return configured
    for m in models:
        if m.family == family:
            return m.id
    raise BadRequest(f"no {family} model is in the catalog; name one with 'model'", param="model",
                     code="no_default_model")


def form_text(value: Any) -> str | None:
    """A form field as a service's form model reads it back: booleans as true/false, None left out."""
    if value is None or isinstance(value, str):
        return value
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


async def post_form(upstream: Requester, path: str, form: BaseModel, files: list[tuple[str, str, bytes]],
                    reply: type[R], *, service: str, timeout_s: float, request_id: str | None = None) -> R:
    """POST ``form``'s fields and ``files`` (name, filename, bytes) as one multipart body; the answer as
    ``reply``. The service's errors come as the ``Upstream`` maps them."""
    body, content_type = multipart({k: form_text(v) for k, v in form.model_dump().items()}, files)
    answer = await upstream.request("POST", path, data=body, content_type=content_type, timeout_s=timeout_s,
                                    request_id=request_id)
    return reply_as(reply, answer, service)
