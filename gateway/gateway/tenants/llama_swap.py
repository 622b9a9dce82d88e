"""A llama-swap server as a tenant (https://github.com/mostlygeek/llama-swap, ``internal/server/``).

- Residency: ``GET /running``, ``{"running": [{"model": id, "state": ...}]}``: every process that is not
  stopped, in state ``ready``, ``starting`` or ``stopping`` (``loading`` and ``unloading`` here, which
  reconciliation leaves alone). llama-swap gives no memory figure: a load is measured with the meter
  (``HttpEffects``), else charged at the catalog's estimate.
- Load: ``GET /upstream/{model}/health``. ``/upstream/{model}/...`` is llama-swap's passthrough to the
  model's own server: it starts (swaps in) the model, waits for its health check, then forwards the
  path, so the answer comes once the model is ready; ``/health`` is answered by llama.cpp's server, vLLM
  and most others without doing any work (``options.load_path`` names another path).
- Unload: ``POST /api/models/unload/{model}``, which returns once the process has stopped. Older
  versions have no such route: a 404 or 405 while ``/running`` still lists the model means that, and
  then ``GET /unload`` stops every model of that llama-swap.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from modelhost.catalog import ModelSpec
from modelhost.errors import UpstreamEnvelope, UpstreamError

from .base import Residency, TenantClient

log = logging.getLogger(__name__)

_STATES = {"ready": "ready", "starting": "loading", "stopping": "unloading"}


class LlamaSwapClient(TenantClient):
    backend = "llama-swap"

    async def residency(self) -> dict[str, Residency]:
        body = await self.control("GET", "/running")
        running = body.get("running") if isinstance(body, dict) else None
        if not isinstance(running, list):
            raise UpstreamError(f"{self.name}: GET /running answered no 'running' list", code="bad_upstream_response")
        return {r["model"]: Residency(state=_STATES.get(str(r.get("state")), "unloading"))
                for r in running if isinstance(r, dict) and isinstance(r.get("model"), str)}

    async def _load(self, spec: ModelSpec, timeout_s: float) -> None:
        path = str(spec.options.get("load_path", "/health")).lstrip("/")
        await self.request("GET", f"/upstream/{_path(spec.source)}/{path}", timeout_s=timeout_s)

    async def _unload(self, spec: ModelSpec) -> None:
        try:
            await self.control("POST", f"/api/models/unload/{_path(spec.source)}")
        except UpstreamEnvelope as e:
            if e.status not in (404, 405) or self.held(spec, await self.residency()) is None:
                raise
            # The model runs, yet the route is not there: an older llama-swap, whose only unload stops
            # everything it runs.
            log.info("%s has no POST /api/models/unload/{model} (an older version); GET /unload stops all its models",
                     self.name)
            await self.control("GET", "/unload")


def _path(name: str) -> str:
    return quote(name, safe=":/@")
