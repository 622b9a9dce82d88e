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
        default_factory=lambda: {"caption": "http://127.0.0.1:8101", "face": "http://127.0.0.1:8102",
                                 "asr": "http://127.0.0.1:8103", "tts": "http://127.0.0.1:8104",
                                 "embed": "http://127.0.0.1:8105"},
        description='Family service base URLs, as JSON: {"caption": "http://caption-svc:8101", ...}.',
    )
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description='Accepted API keys, as JSON: ["key1", "key2"]. Empty: no authentication (local use only).',
    )
    internal_token: SecretStr | None = Field(
        None, description="The internal credential sent to every family service ('Authorization: Bearer'): the "
        "same secret as their <PREFIX>_INTERNAL_TOKEN. Compose sets both from ROUNDHOUSE_INTERNAL_TOKEN; make dev "
        "generates one per run. None: the services are called without one (they must then be open).")
    max_upload_bytes: int = Field(25 * 1024 * 1024, gt=0, description="Largest accepted upload (413 above).")
    body_read_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for the next byte of a request body that is still due (fewer bytes than its Content-Length, a chunked body that does not end): past it, 408 body_timeout and the connection is closed. A bound on each wait, not on the whole upload.")
    max_image_pixels: int = Field(50_000_000, gt=0, description="Largest image in pixels (413 above: decompression bombs).")
    default_caption_model: str | None = Field(None, description="Caption model used when a request names none; default: the catalog's first.")
    tts_max_input_chars: int = Field(4096, gt=0, description="Longest text for /v1/audio/speech in characters (413 above), as OpenAI's.")
    default_asr_model: str | None = Field(None, description="Speech-to-text model used when a request names none; default: the catalog's first.")
    default_face_model: str | None = Field(None, description="Face model used when a request names none; default: the catalog's first.")
    default_embed_model: str | None = Field(
        None, description="Embed model used when a search or an embed job names none (a search naming jobs uses "
        "theirs); default: the catalog's first.")
    transcription_timeout_s: float = Field(
        3600.0, gt=0, description="Longest wait for one transcription or translation (long audio on CPU takes a while).")
    request_timeout_s: float = Field(300.0, gt=0, description="Longest wait for a service's answer to one request.")
    load_timeout_s: float = Field(1800.0, gt=0, description="Longest wait for a model load (includes a first download).")
    force_device: str | None = Field(
        None, description="Treat every catalog model as running on this device (e.g. cpu); set with the services'.")
    log_level: str = Field("INFO", description="Log level.")


class CoordinatorSettings(BaseSettings):
    """Swap-coordinator settings; every field can be set as GATEWAY_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    memory_budget_mb: dict[str, int] = Field(
        default_factory=dict,
        description='Memory budget per device, as JSON: {"cpu": 8192, "cuda:0": 22000}. A GPU not named here gets '
        'its NVML total minus gpu_reserve_mb; the CPU gets 75 % of the host memory.')
    gpu_reserve_mb: int = Field(768, ge=0, description="Memory left free on each GPU for the desktop, drivers and fragmentation.")
    max_wait_s: float = Field(30.0, gt=0, description="No request waits longer than this plus one swap for its model.")
    interactive_patience_s: float = Field(0.0, ge=0, description="How long an interactive request lets a busy model keep the device.")
    bulk_patience_s: float = Field(10.0, ge=0, description="How long bulk work lets a busy model keep the device.")
    idle_grace_s: float = Field(0.5, ge=0, description="A model used within this many seconds counts as busy.")
    swap_batch: int = Field(16, ge=1, description="This many waiting requests justify a swap before their patience runs out.")
    max_queue: int = Field(512, ge=1, description="Requests that may wait for one model before 429.")
    release_timeout_s: float = Field(15.0, gt=0, description="Longest wait for an eviction's memory to show as free.")
    reconcile_interval_s: float | None = Field(15.0, gt=0, description="How often every service's models are re-read; None = only on start and errors.")
    meter_interval_s: float | None = Field(
        2.0, gt=0, description="How often each GPU's meter is read for memory not ours (another process on the card): "
        "it shrinks the room for our models, and idle ones are evicted when it grows; None = only on start, at "
        "reconciliation and when a request is kept out.")
    data_dir: Path = Field(Path("data"), description="Where the gateway keeps state (measured footprints).")


class JobSettings(BaseSettings):
    """Bulk-job settings; every field can be set as GATEWAY_<FIELD>. The job database lives in the
    coordinator's ``data_dir`` (GATEWAY_DATA_DIR)."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    library_roots: list[Path] = Field(
        default_factory=list,
        description='Folders jobs may read by path, as JSON: ["/photos", "/videos"]. A path or glob that resolves '
        "(symlinks and '..' included) outside every root is refused with 403 and never read. Empty: jobs take uploads only.")
    jobs_concurrency: int | None = Field(
        None, ge=1, description="Items of one job in flight at once; default: twice the model's max_batch, so one "
        "batch runs while the next one fills in the service's batcher.")
    jobs_parallel: int = Field(1, ge=1, description="Jobs run at once; more run one after another (fewest swaps).")
    jobs_yield_s: float | None = Field(
        3.0, ge=0, description="Bulk work pauses while interactive requests are in flight on the same device and "
        "for this many seconds after the last one, so a person's burst of requests is not queued behind job batches "
        "(None or 0: never pause).")
    jobs_max_yield_s: float | None = Field(
        60.0, gt=0, description="After pausing this long without a break, a job sends one batch anyway: endless "
        "interactive traffic slows bulk work but never stops it (None: pause for as long as it lasts).")
    jobs_max_items: int = Field(200_000, ge=1, description="Most items in one job (413 above).")
    jobs_max_request_bytes: int = Field(
        2 * 1024**3, gt=0, description="Largest POST /v1/jobs body (uploads); send bigger libraries in several requests or by path.")
    jobs_max_file_bytes: int = Field(
        8 * 1024**3, gt=0, description="Largest single input file (videos included); larger items end with an error.")
    jobs_max_attempts: int = Field(
        3, ge=1, description="Tries of an item whose service failed with a server error (5xx); 4xx errors are final at "
        "once, and unavailability (429/503) only pauses the job.")
    jobs_keyframes_per_minute: float = Field(
        12.0, gt=0, description="A video's keyframe cap grows by this many per minute of video, above the floor "
        "(past the cap the strongest scene changes are kept).")
    jobs_keyframes_floor: int = Field(
        20, ge=1, description="Every video may have this many keyframes whatever its length, so short clips keep "
        "every scene change.")
    jobs_keyframe_min_spacing_s: float = Field(
        0.5, ge=0, description="Seconds after a keyframe before the next scene change is taken (flashes, strobes).")
    jobs_scene_threshold: float = Field(
        0.3, gt=0, le=1, description="Scene-change score (0..1, a frame's difference from the last keyframe) that makes a keyframe.")
    jobs_audio_chunk_s: float = Field(
        600.0, gt=0, description="A video's audio is sent for transcription in pieces of at most this many seconds.")
