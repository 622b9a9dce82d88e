"""The idle reaper: unloads a READY or PARKED model that nobody has used for its catalog ``ttl_s`` (a parked
model holds host memory and its worker, so its idle time counts the same; it is counted from its last use).

It decides nothing about state itself: it asks ``ModelRuntime.unload`` (without drain), which
refuses a model that got a lease meanwhile; that refusal is logged and the model kept. A model with
a lease, a drain under way or ``ttl_s: null`` is never reaped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from .errors import RoundhouseError
from .states import ModelState

if TYPE_CHECKING:
    from .runtime import ModelRuntime

log = logging.getLogger(__name__)

REAPABLE = (ModelState.READY, ModelState.PARKED)


async def reap_idle(runtime: "ModelRuntime") -> None:
    """Runs until cancelled, every ``reaper_interval_s``."""
    while True:
        await asyncio.sleep(runtime.settings.reaper_interval_s)
        now = time.monotonic()
        for entry in list(runtime.entries.values()):
            ttl = entry.spec.ttl_s
            if ttl is None or entry.state not in REAPABLE or entry.leases or entry.draining:
                continue
            if now - entry.last_used_mono >= ttl:
                log.info("model %s idle for %.0f s (ttl_s %.0f): unloading", entry.spec.id, now - entry.last_used_mono, ttl)
                try:
                    await runtime.unload(entry.spec.id, reason="ttl")
                except RoundhouseError as e:  # a lease arrived meanwhile: keep it
                    log.info("model %s: ttl unload skipped: %s", entry.spec.id, e.message)
                except Exception:
                    log.exception("model %s: ttl unload failed", entry.spec.id)
