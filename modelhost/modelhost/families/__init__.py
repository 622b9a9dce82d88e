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

from typing import Any, Iterable, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import BadRequest

P = TypeVar("P", bound=BaseModel)

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
