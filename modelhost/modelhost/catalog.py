"""The model catalog (models.yaml): the one source of truth for which models exist.

The gateway reads every model; each family service reads only its own family. Relative ``source``
paths resolve against the catalog file's directory, so a catalog and its tiny models can move together.

A model of the ``llm`` family is an external tenant: another server (Ollama, llama-swap, or any HTTP
server with residency and unload URLs) serves it, and the gateway charges it to ``device``, evicts it
through that server's API and proxies its OpenAI routes. Its ``source`` is the model's name on that
server, and ``options.url`` the server's base URL::

    - {id: llama3.1, family: llm, backend: ollama, source: "llama3.1:8b", device: "cuda:0",
       memory_estimate_mb: 5200, options: {url: "http://ollama:11434"}}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TENANT_FAMILY = "llm"
# backend -> the options it needs beside ``url``
TENANT_BACKENDS: dict[str, tuple[str, ...]] = {"ollama": (), "llama-swap": (), "http": ("residency_url", "unload_url")}


class ModelSpec(BaseModel):
    """One model of the catalog. ``None`` means "never" / "no limit" wherever it appears."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Public model id, used in API requests.", pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    family: str = Field(description="Model family: caption, face, asr, tts, or llm (a model another server serves).")
    backend: str = Field(description="Backend name inside the family (e.g. blip, blip2, qwen_vl); for llm the "
                                     "server: ollama, llama-swap or http.")
    source: str = Field(description="Hub id or local path of the weights; for llm the model's name on its server.")
    device: str = Field("cpu", description="Device the model must run on: cpu, cuda, cuda:N.")
    allow_cpu_fallback: bool = Field(
        False, description="Accept running on CPU when the device asked for is a GPU that is not usable."
    )
    dtype: str = Field("float32", description="Weights dtype: float32, float16, bfloat16, int8.")
    memory_estimate_mb: int = Field(
        512, ge=0, description="Estimated device memory; used only until the first load measures it."
    )
    ttl_s: float | None = Field(None, gt=0, description="Unload after this many idle seconds; None = never.")
    pin: bool = Field(False, description="Never evicted by the swap coordinator.")
    preload: bool = Field(
        False, description="The gateway loads it at start-up (after its first reconciliation), in priority order, as "
        "far as the device's budget allows; its weights are pulled first when they are not cached.")
    priority: int = Field(0, description="Higher is kept resident in preference to lower.")
    group: str | None = Field(None, description="Exclusive group: a model that needs the whole device.")
    max_batch: int = Field(8, ge=1, le=1024, description="Largest batch gathered for one forward pass.")
    max_wait_ms: float = Field(5.0, ge=0, le=10_000, description="Longest wait to fill a batch when idle.")
    options: dict[str, Any] = Field(default_factory=dict, description="Backend-specific options.")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v == "cpu" or v == "cuda" or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device must be cpu, cuda or cuda:N, not {v!r}")

    @model_validator(mode="after")
    def _tenant(self) -> "ModelSpec":
        """An llm model names its server's kind and URL (an http server also its residency and unload
        URLs); a server's kind belongs to the llm family only."""
        if self.family != TENANT_FAMILY:
            if self.backend in TENANT_BACKENDS:
                raise ValueError(f"model {self.id!r}: backend {self.backend!r} serves family {TENANT_FAMILY!r} only, "
                                 f"not {self.family!r}")
            return self
        if self.backend not in TENANT_BACKENDS:
            raise ValueError(f"model {self.id!r} of family {TENANT_FAMILY!r} needs backend "
                             f"{' | '.join(TENANT_BACKENDS)}, not {self.backend!r}")
        for key in ("url", *TENANT_BACKENDS[self.backend]):
            value = self.options.get(key)
            if not isinstance(value, str) or not value.startswith(("http://", "https://")):
                raise ValueError(f"model {self.id!r} (backend {self.backend}) needs options.{key}: an http:// or "
                                 f"https:// URL{f', not {value!r}' if value is not None else ''}")
        return self

    @property
    def tenant(self) -> bool:
        """Served by another server (Ollama, llama-swap, http), not by a family service of ours."""
        return self.family == TENANT_FAMILY

    @property
    def wants_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def memory_estimate_bytes(self) -> int:
        return self.memory_estimate_mb * 1024 * 1024


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec]
    path: Path | None = None

    @model_validator(mode="after")
    def _unique(self) -> "Catalog":
        seen: set[str] = set()
        served: dict[tuple[str, str], str] = {}  # (server URL, its name for the model) -> the catalog id
        for m in self.models:
            if m.id in seen:
                raise ValueError(f"model id {m.id!r} appears twice in the catalog")
            seen.add(m.id)
            if m.tenant:  # one model of a server charged twice would hold the budget twice
                key = (str(m.options["url"]).rstrip("/"), m.source)
                if key in served:
                    raise ValueError(f"models {served[key]!r} and {m.id!r} both name {m.source!r} at {key[0]}")
                served[key] = m.id
        return self

    def get(self, model_id: str) -> ModelSpec | None:
        for m in self.models:
            if m.id == model_id:
                return m
        return None

    def family(self, family: str) -> "Catalog":
        return Catalog(models=[m for m in self.models if m.family == family], path=self.path)

    def on_device(self, device: str | None) -> "Catalog":
        """Every model moved to ``device`` (``None``: unchanged). The CPU override of the compose
        stack uses this so the GPU catalog runs as is on a host without a GPU."""
        if device is None:
            return self
        return Catalog(models=[m.model_copy(update={"device": device}) for m in self.models], path=self.path)

    @property
    def families(self) -> list[str]:
        return sorted({m.family for m in self.models})


class CatalogError(ValueError):
    """The catalog file is missing or invalid; the message says where."""


def load_catalog(path: str | Path) -> Catalog:
    """Read a catalog file. ``defaults`` apply to every model; relative local sources resolve
    against the file's directory."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError as e:
        raise CatalogError(f"catalog file {p} does not exist") from e
    except yaml.YAMLError as e:
        raise CatalogError(f"catalog file {p} is not valid YAML: {e}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise CatalogError(f"catalog file {p} needs a top-level 'models:' list")
    defaults = raw.get("defaults") or {}
    models = []
    for entry in raw["models"]:
        merged = {**defaults, **entry}
        src = merged.get("source")
        if isinstance(src, str) and (src.startswith("./") or src.startswith("../")):
            merged["source"] = str((p.parent / src).resolve())
        models.append(merged)
    try:
        return Catalog(models=models, path=p.resolve())
    except ValueError as e:
        raise CatalogError(f"catalog file {p} is invalid: {e}") from e
