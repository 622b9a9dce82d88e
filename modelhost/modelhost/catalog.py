"""The model catalog (models.yaml): the one source of truth for which models exist.

The gateway reads every model; each family service reads only its own family. Relative ``source``
paths resolve against the catalog file's directory, so a catalog and its tiny models can move together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ModelSpec(BaseModel):
    """One model of the catalog. ``None`` means "never" / "no limit" wherever it appears."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Public model id, used in API requests.", pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
    family: str = Field(description="Model family: caption, face, asr, tts.")
    backend: str = Field(description="Backend name inside the family (e.g. blip, blip2, qwen_vl).")
    source: str = Field(description="Hub id or local path of the weights.")
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
        for m in self.models:
            if m.id in seen:
                raise ValueError(f"model id {m.id!r} appears twice in the catalog")
            seen.add(m.id)
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
