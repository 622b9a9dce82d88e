from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from modelhost.families.embed import MAX_ITEMS
from modelhost.settings import ImageHostSettings


class EmbedSettings(ImageHostSettings):
    """Embed service settings; every field can be set as EMBED_SVC_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="EMBED_SVC_", extra="ignore")

    port: int = Field(8105, description="Port the service listens on.")
    max_queue: int = Field(
        4 * MAX_ITEMS, ge=1, description="Items (texts or images) that may wait for one model before 429; one request "
        f"brings up to {MAX_ITEMS}.")
    max_image_side: int = Field(
        448, gt=0, description="Images are scaled down so their longer side is at most this once decoded (the "
        "models see 224 to 384 pixels), so a request of many images holds little memory until its batch runs.")
