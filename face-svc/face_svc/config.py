from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from modelhost.settings import ImageHostSettings


class FaceSettings(ImageHostSettings):
    """Face service settings; every field can be set as FACE_SVC_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="FACE_SVC_", extra="ignore")

    port: int = Field(8102, description="Port the service listens on.")
    max_image_side: int = Field(
        2048, gt=0, description="Images are scaled down so their longer side is at most this before detection; "
        "boxes and landmarks are still reported in the uploaded image's pixels.")
    max_faces: int = Field(
        64, ge=1, le=1024, description="Most faces reported per image (detect keeps the largest) and most crops "
        "per embed request (400 above).")
