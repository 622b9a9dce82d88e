"""An Ollama server as a tenant (https://github.com/ollama/ollama/blob/main/docs/api.md).

- Residency: ``GET /api/ps``, ``{"models": [{"name", "model", "size", "size_vram", ...}]}``. ``size_vram``
  is the model's bytes on the GPU: what the ledger charges for a model on a GPU (``size``, its whole
  size, for a model the catalog puts on the CPU).
- Load: ``POST /api/generate {"model": source, "keep_alive": ...}`` with no prompt: Ollama loads the
  model and answers ``done`` (``done_reason: load``). ``keep_alive`` is the catalog's ``ttl_s`` (Ollama
  then lets it go after that long idle, which reconciliation sees), else -1: kept until the coordinator
  evicts it.
- Unload: ``POST /api/generate {"model": source, "keep_alive": 0}``; ``/api/ps`` then shows it gone.

A request on Ollama's OpenAI routes (what the gateway proxies) sets the model's keep_alive back to
Ollama's default (``OLLAMA_KEEP_ALIVE``, 5 minutes): after that long idle Ollama lets the model go by
itself, and the next reconciliation forgets it. ``OLLAMA_KEEP_ALIVE=-1`` leaves that to the coordinator.

Ollama lists a name given without a tag under ``:latest`` (``llama3.1`` runs as ``llama3.1:latest``).
"""

from __future__ import annotations

from typing import Any

from modelhost.catalog import ModelSpec
from modelhost.errors import UpstreamError

from .base import Residency, TenantClient


class OllamaClient(TenantClient):
    backend = "ollama"

    async def residency(self) -> dict[str, Residency]:
        body = await self.control("GET", "/api/ps")
        models = body.get("models") if isinstance(body, dict) else None
        if not isinstance(models, list):
            raise UpstreamError(f"{self.name}: GET /api/ps answered no 'models' list", code="bad_upstream_response")
        resident: dict[str, Residency] = {}
        for m in models:
            if not isinstance(m, dict):
                continue
            entry = Residency(vram_bytes=_int(m.get("size_vram")), size_bytes=_int(m.get("size")))
            for key in ("name", "model"):
                if isinstance(m.get(key), str):
                    resident[m[key]] = entry
        return resident

    def held(self, spec: ModelSpec, resident: dict[str, Residency]) -> Residency | None:
        return resident.get(spec.source) or (resident.get(f"{spec.source}:latest") if ":" not in spec.source else None)

    async def _load(self, spec: ModelSpec, timeout_s: float) -> None:
        keep_alive: Any = int(spec.ttl_s) if spec.ttl_s is not None else -1
        await self.request("POST", "/api/generate", json_body={"model": spec.source, "keep_alive": keep_alive, "stream": False},
                           timeout_s=timeout_s)

    async def _unload(self, spec: ModelSpec) -> None:
        await self.control("POST", "/api/generate", json_body={"model": spec.source, "keep_alive": 0, "stream": False})


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
