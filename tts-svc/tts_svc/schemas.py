"""What only this service needs beyond the family's contract (``modelhost.families.tts``)."""

from __future__ import annotations

from pydantic import Field, StrictStr

from modelhost.families.tts import SpeechRequest


class ServiceSpeechRequest(SpeechRequest):
    """The family's speech request, with ``model`` required: the gateway has picked it."""

    model: StrictStr = Field(description="Catalog id of a tts model.")
