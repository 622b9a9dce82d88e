from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """Gateway settings; every field can be set as GATEWAY_<FIELD> (lists and maps as JSON)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8080, description="Port the gateway listens on.")
    catalog: Path = Field(Path("models.yaml"), description="Path of the model catalog (models.yaml).")
    services: dict[str, str] = Field(
        default_factory=lambda: {"caption": "http://127.0.0.1:8101"},
        description='Family service base URLs, as JSON: {"caption": "http://caption-svc:8101", ...}.',
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description='Accepted API keys, as JSON: ["key1", "key2"]. Empty: no authentication (local use only).',
    )
    max_upload_bytes: int = Field(25 * 1024 * 1024, gt=0, description="Largest accepted upload (413 above).")
    max_image_pixels: int = Field(50_000_000, gt=0, description="Largest image in pixels (413 above: decompression bombs).")
    default_caption_model: str | None = Field(None, description="Caption model used when a request names none; default: the catalog's first.")
    request_timeout_s: float = Field(300.0, gt=0, description="Longest wait for a service's answer to one request.")
    load_timeout_s: float = Field(1800.0, gt=0, description="Longest wait for a model load (includes a first download).")
    log_level: str = Field("INFO", description="Log level.")
