from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from modelhost.settings import HostSettings


class TtsSettings(HostSettings):
    """Text-to-speech service settings; every field can be set as TTS_SVC_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="TTS_SVC_", extra="ignore")

    port: int = Field(8104, description="Port the service listens on.")
    max_input_chars: int = Field(4096, gt=0, description="Longest input text in characters (413 above), as OpenAI's.")
    max_sentence_chars: int = Field(
        300, ge=20, description="Sentences longer than this are cut at a clause or word boundary before synthesis "
        "(a model's max_sentence_chars option overrides it: XTTS-v2 takes about 250 characters of English).")
    lookahead_sentences: int = Field(
        2, ge=1, le=64,
        description="Sentences of one request queued for synthesis ahead of the one being streamed: enough to keep "
        "the model busy, few enough that concurrent requests take turns.")
    pause_s: float = Field(0.25, ge=0, le=5, description="Silence streamed for a piece with nothing to say ('...', an emoji).")
