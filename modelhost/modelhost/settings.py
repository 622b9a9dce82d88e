"""Settings every model host shares. A family subclasses ``HostSettings`` and sets its own env
prefix (``CAPTION_SVC_`` ...). Built once in ``main`` and passed down; never read at import time."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class HostSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELHOST_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the service listens on.")
    port: int = Field(8101, description="Port the service listens on.")
    catalog: Path = Field(Path("models.yaml"), description="Path of the model catalog (models.yaml).")
    cache_dir: Path = Field(Path("~/.cache/roundhouse").expanduser(), description="Where downloaded weights are kept.")
    gpu_index: int | None = Field(
        None, description="GPU the worker measures with NVML; None = detect from the catalog's devices (cuda:N).")
    max_upload_bytes: int = Field(25 * 1024 * 1024, gt=0, description="Largest accepted upload.")
    body_read_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for the next byte of a request body that is still due (fewer bytes than its Content-Length, a chunked body that does not end): past it, 408 body_timeout and the connection is closed. A bound on each wait, not on the whole upload.")
    max_queue: int = Field(256, ge=1, description="Items that may wait for one model before 429.")
    worker_start_timeout_s: float = Field(60.0, gt=0, description="Longest wait for the worker process to start.")
    load_timeout_s: float = Field(1800.0, gt=0, description="Longest load (includes a first download).")
    infer_timeout_s: float = Field(600.0, gt=0, description="Longest single batch before the request fails.")
    drain_timeout_s: float = Field(300.0, gt=0, description="Longest wait for leases to end on an unload with drain.")
    reaper_interval_s: float = Field(1.0, gt=0, description="How often idle models are checked against their ttl_s.")
    worker_threads: int | None = Field(
        None, ge=1, description="CPU threads for the frameworks in the worker (OMP/MKL); None = one fewer than "
        "the cores, leaving one to the HTTP process.")
    spare_worker: bool = Field(
        True, description="Keep a warm spare worker process: the family's frameworks imported, no device touched "
        "(no CUDA context, no device memory), so a load into a family whose worker had ended does not wait for a "
        "process start and its imports. Costs the spare's host memory (torch: some hundreds of MB); turn it off "
        "on hosts tight on RAM.")
    park: bool = Field(
        False, description="Park an evicted model instead of unloading it where its backend can (torch modules, "
        "CTranslate2): its weights move to (pinned) host memory in the live worker, its device memory is released "
        "but the worker's CUDA context, and its next load is a copy back instead of a load from disk. Costs the "
        "parked weights in host memory (up to park_host_bytes) and keeps the worker (and its context) alive.")
    park_host_bytes: int | None = Field(
        None, gt=0, description="Most host memory parked weights may take in all; a park past it unloads instead. "
        "None: no cap.")
    force_device: str | None = Field(
        None, description="Run every catalog model on this device (e.g. cpu), whatever the catalog says.")
    log_level: str = Field("INFO", description="Log level.")
    internal_token: SecretStr | None = Field(
        None, description="The internal credential: callers other than /health/* and /metrics must send it as "
        "'Authorization: Bearer <token>' (401 otherwise). The gateway sends its GATEWAY_INTERNAL_TOKEN, which must "
        "be the same; compose sets both from ROUNDHOUSE_INTERNAL_TOKEN, make dev generates one per run. None: open "
        "to any caller (a service run by hand on loopback).")
    worker_silent_s: float = Field(
        10.0, gt=0, description="A worker that has sent no heartbeat for this long makes /health/ready 503 "
        "(stopped or frozen). It sends one a second from a thread of its own, so a long load or inference "
        "does not silence it.")


class ImageHostSettings(HostSettings):
    """The limits of a family that decodes uploaded images (caption, face): one definition, each service's prefix."""

    max_image_pixels: int = Field(
        50_000_000, gt=0, description="Largest image (width x height) accepted; bigger is a decompression bomb (413).")
    max_decode_bytes: int = Field(
        200 * 1024 * 1024, gt=0, description="Most memory one image's decode may allocate, counted before decoding "
        "as its pixels x 4 bytes (JPEG decoded reduced first, to no less than max_image_side); 413 decode_too_large above.")
    max_concurrent_decodes: int = Field(
        2, ge=1, description="Most uploads decoded at once; up to eight times as many more wait for a turn (holding "
        "only their spooled upload), and "
        "a request past those is 429 overloaded (Retry-After). Decode memory stays under about "
        "max_concurrent_decodes x 1.25 x max_decode_bytes.")
