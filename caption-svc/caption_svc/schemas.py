from __future__ import annotations

from pydantic import BaseModel, Field


class CaptionTimings(BaseModel):
    decode_ms: float = Field(description="Time to read and decode the image.")
    inference_ms: float = Field(description="Time waiting for a batch and running it.")


class CaptionResponse(BaseModel):
    object: str = "image.caption"
    model: str
    caption: str
    tokens: int = Field(description="Tokens generated for the caption.")
    width: int = Field(description="Width of the image as captioned (upright, after scaling).")
    height: int
    timings: CaptionTimings
