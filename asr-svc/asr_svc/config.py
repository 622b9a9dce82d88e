from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from modelhost.settings import HostSettings


class AsrSettings(HostSettings):
    """Speech-to-text service settings; every field can be set as ASR_SVC_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="ASR_SVC_", extra="ignore")

    port: int = Field(8103, description="Port the service listens on.")
    max_audio_s: float = Field(
        2 * 3600.0, gt=0,
        description="Longest audio accepted, in seconds (413 above). Checked while decoding, which stops at the "
        "limit: a small file that expands to days of audio never fills memory.")
    max_concurrent_decodes: int = Field(
        2, ge=1, description="Most uploads decoded at once; up to eight times as many more wait for a turn (holding "
        "only their spooled upload), and "
        "a request past those is 429 overloaded (Retry-After). Decode memory stays under about "
        "max_concurrent_decodes x max_audio_s x 32 kB.")
    silence_dbfs: float = Field(
        -60.0, le=0,
        description="Audio whose loudest sample is below this level (dBFS) is silence: it gets an empty "
        "transcript without running the model (Whisper invents text on silence).")
    infer_timeout_s: float = Field(
        3600.0, gt=0, description="Longest single batch before the request fails (long audio on CPU takes a while).")
