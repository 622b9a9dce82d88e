"""Any HTTP server as a tenant (backend ``http``), through URLs the catalog gives in ``options``:

- ``residency_url``: ``GET`` answers what the server holds, as JSON: a list, or an object whose
  ``models``, ``running`` or ``data`` is one (so Ollama's ``/api/ps`` and llama-swap's ``/running``
  shapes both read). Each item is a model's name, or an object naming it by ``name``, ``model`` or ``id``,
  with optionally ``state`` (ready, loading, unloading; llama-swap's starting and stopping) and its
  memory: ``size_vram`` or ``vram_bytes`` on the GPU, ``size`` or ``size_bytes`` in all, or
  ``memory_bytes`` for either.
- ``unload_url``: ``POST {"model": source}``; once it answers, the residency is read until the model is gone.
- ``load_url`` (optional): ``POST {"model": source}``, answered once the model is loaded. Without it, a
  load is ``POST {url}/v1/completions`` with one token to generate: the OpenAI route that makes such
  servers load a model (a server that serves embeddings only needs a ``load_url``).

``{model}`` in a URL is replaced by the model's name on the server.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from modelhost.catalog import ModelSpec
from modelhost.errors import UpstreamError

from .base import Residency, TenantClient

_STATES = {"ready": "ready", "loading": "loading", "starting": "loading", "unloading": "unloading", "stopping": "unloading"}


class HttpTenantClient(TenantClient):
    backend = "http"

    def _url(self, spec: ModelSpec, key: str) -> str | None:
        url = spec.options.get(key)
        return None if url is None else str(url).replace("{model}", quote(spec.source, safe=":@"))

    async def residency(self) -> dict[str, Residency]:
        # Every model of one server shares its residency URL; the first names it.
        spec = next(iter(self.specs.values()))
        body = await self.control("GET", self._url(spec, "residency_url") or "")
        items = body
        if isinstance(body, dict):
            items = next((body[k] for k in ("models", "running", "data") if isinstance(body.get(k), list)), None)
        if not isinstance(items, list):
            raise UpstreamError(f"{self.name}: its residency URL answered no list of models", code="bad_upstream_response")
        resident: dict[str, Residency] = {}
        for item in items:
            if isinstance(item, str):
                resident[item] = Residency()
                continue
            if not isinstance(item, dict):
                continue
            name = next((item[k] for k in ("name", "model", "id") if isinstance(item.get(k), str)), None)
            if name is not None:
                resident[name] = Residency(vram_bytes=_first_int(item, "size_vram", "vram_bytes", "memory_bytes"),
                                           size_bytes=_first_int(item, "size", "size_bytes", "memory_bytes"),
                                           state=_STATES.get(str(item.get("state", "ready")), "unloading"))
        return resident

    async def _load(self, spec: ModelSpec, timeout_s: float) -> None:
        url = self._url(spec, "load_url")
        if url is not None:
            await self.request("POST", url, json_body={"model": spec.source}, timeout_s=timeout_s)
        else:
            await self.request("POST", "/v1/completions", json_body={"model": spec.source, "prompt": "", "max_tokens": 1},
                               timeout_s=timeout_s)

    async def _unload(self, spec: ModelSpec) -> None:
        await self.control("POST", self._url(spec, "unload_url") or "", json_body={"model": spec.source})


def _first_int(item: dict[str, Any], *keys: str) -> int | None:
    for k in keys:
        v = item.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
    return None
