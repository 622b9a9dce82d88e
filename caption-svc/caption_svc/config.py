from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from modelhost.settings import ImageHostSettings


class CaptionSettings(ImageHostSettings):
    """Caption service settings; every field can be set as CAPTION_SVC_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="CAPTION_SVC_", extra="ignore")

    port: int = Field(8101, description="Port the service listens on.")
    max_image_side: int = Field(
        2048, gt=0, description="Images are scaled down so their longer side is at most this before inference.")
