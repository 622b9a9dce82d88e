from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .encoding import FORMATS

FORMAT_NAMES = tuple(FORMATS)
MIN_SPEED, MAX_SPEED = 0.25, 4.0


class SpeechRequest(BaseModel):
    """OpenAI's speech request. Types are loose on purpose: values are checked by hand so that each bad
    one gets its own 4xx code (``speed_out_of_range``, ``unsupported_response_format`` ...), as at the
    gateway."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="Catalog id of a tts model.")
    input: str = Field(description="The text to speak.")
    voice: str | None = Field(None, description="A voice the model lists; default: its first.")
    response_format: str = Field("mp3", description=f"One of {', '.join(FORMAT_NAMES)}.")
    speed: float = Field(1.0, description=f"{MIN_SPEED} to {MAX_SPEED}; 1.0 is the voice's natural rate.")
    language: str | None = Field(None, description="For multilingual models (XTTS-v2); default: the model's.")


class VoiceCard(BaseModel):
    id: str
    language: str | None = None
    name: str | None = None


class ModelVoices(BaseModel):
    model: str
    backend: str
    voices: list[VoiceCard]
    languages: list[str] | None = Field(None, description="Languages a multilingual model accepts, where the catalog names them.")


class VoiceList(BaseModel):
    object: str = "list"
    data: list[ModelVoices]
