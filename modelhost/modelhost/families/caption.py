"""Image captions: the contract between the gateway (``/v1/images/captions``, the ``caption`` job) and
caption-svc (``POST /v1/captions``).

- ``CaptionOptions``: what a caption asks for beside the image and the model, with its limits; the
  gateway's route, its jobs task and the service validate with it (``validated``: 400 naming the field).
- ``CaptionForm``: the service's form beside ``file``, as ``caption()`` sends it. Types only: a value of
  the wrong type is 422 at the service, as FastAPI answers it; a value out of range is the options' 400.
- ``CaptionResponse``: what the service answers and the gateway returns.
- ``caption()``: the one upstream call.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field

from . import Requester, not_a_bool, post_form

FAMILY = "caption"
PATH = "/v1/captions"
MAX_PROMPT_CHARS = 2000
MAX_NEW_TOKENS = 512


def _blank_is_none(value: Any) -> Any:
    """A form sends an empty field for one left out."""
    return None if value == "" else value


class CaptionOptions(BaseModel):
    """What a caption asks for beside the image and the model."""

    prompt: Annotated[str | None, BeforeValidator(_blank_is_none)] = Field(
        None, max_length=MAX_PROMPT_CHARS, description="A prompt (Qwen2.5-VL, BLIP-2) or a caption prefix (BLIP).")
    max_new_tokens: Annotated[int | None, BeforeValidator(_blank_is_none), BeforeValidator(not_a_bool)] = Field(
        None, ge=1, le=MAX_NEW_TOKENS, description="Most tokens to generate; default: the model's.")


class CaptionForm(BaseModel):
    """The caption service's form fields beside ``file``."""

    model: str = Field(description="Catalog id of a caption model.")
    prompt: str | None = Field(None, description="A prompt or caption prefix.")
    max_new_tokens: int | None = Field(None, description="Most tokens to generate.")


class CaptionTimings(BaseModel):
    decode_ms: float = Field(description="Time the caption service took to read and decode the image.")
    inference_ms: float = Field(description="Time waiting for a batch and running it.")


class CaptionResponse(BaseModel):
    object: str = "image.caption"
    model: str
    caption: str
    tokens: int = Field(description="Tokens generated for the caption.")
    width: int = Field(description="Width of the image as captioned (upright, after scaling).")
    height: int
    timings: CaptionTimings


async def caption(upstream: Requester, model: str, image: bytes, options: CaptionOptions, *, timeout_s: float,
                  request_id: str | None = None) -> CaptionResponse:
    """The caption of ``image`` (bytes of any format the service decodes); the service's errors as the
    ``Upstream`` maps them, an answer that does not fit ``CaptionResponse`` as 502."""
    form = CaptionForm(model=model, prompt=options.prompt, max_new_tokens=options.max_new_tokens)
    return await post_form(upstream, PATH, form, [("file", "image", image)], CaptionResponse, service="caption-svc",
                           timeout_s=timeout_s, request_id=request_id)
