from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from modelhost.settings import HostSettings


class FaceSettings(HostSettings):
    """Face service settings; every field can be set as FACE_SVC_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="FACE_SVC_", extra="ignore")

    port: int = Field(8102, description="Port the service listens on.")
    max_image_pixels: int = Field(
        50_000_000, gt=0, description="Largest image (width x height) accepted; bigger is a decompression bomb (413).")
    max_image_side: int = Field(
        2048, gt=0, description="Images are scaled down so their longer side is at most this before detection; "
        "boxes and landmarks are still reported in the uploaded image's pixels.")
    max_decode_bytes: int = Field(
        200 * 1024 * 1024, gt=0, description="Most memory one image's decode may allocate, counted before decoding "
        "as its pixels x 4 bytes (JPEG decoded reduced first, to no less than max_image_side); 413 decode_too_large above.")
    max_concurrent_decodes: int = Field(
        2, ge=1, description="Most uploads decoded at once; up to eight times as many more wait for a turn (holding "
        "only their spooled upload), and "
        "a request past those is 429 overloaded (Retry-After). Decode memory stays under about "
        "max_concurrent_decodes x 1.25 x max_decode_bytes.")
    max_faces: int = Field(
        64, ge=1, le=1024, description="Most faces reported per image (detect keeps the largest) and most crops "
        "per embed request (400 above).")
