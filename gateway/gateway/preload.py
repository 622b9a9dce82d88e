"""Preload (like immich's): the catalog's ``preload: true`` models loaded when the gateway starts.

It runs once, after the first reconciliation (so models a service already holds are known and not loaded
twice), as a background task: the gateway answers at once, and a request for a model being preloaded joins
its load like any other. The models go in priority order (higher first, then catalog order), each charged at
its footprint (measured, else the catalog's estimate) against what its device's budget has left after the
models already resident and the preloads before it; one that does not fit is skipped with the reason,
rather than evicting a preload of higher priority. Each load goes through ``ModelAccess.load``: the
coordinator admits it, and weights not cached yet are pulled before it takes the swap slot.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from modelhost.catalog import Catalog
from modelhost.errors import RoundhouseError

from .access import ModelAccess
from .coordinator.loop import Coordinator

log = logging.getLogger(__name__)


@dataclass
class PreloadPlan:
    load: list[str] = field(default_factory=list)
    resident: list[str] = field(default_factory=list)  # already held: nothing to do
    skipped: dict[str, str] = field(default_factory=dict)  # model -> why it was not tried
    failed: dict[str, str] = field(default_factory=dict)  # model -> why its load failed


def plan(catalog: Catalog, coordinator: Coordinator) -> PreloadPlan:
    """Which preload models to load, in order, within each device's budget (pure: reads the ledger only)."""
    out = PreloadPlan()
    left = {dev: core.capacity() - core.used_bytes() for dev, core in coordinator.cores.items()}
    wanted = sorted((m for m in catalog.models if m.preload), key=lambda m: -m.priority)  # stable: catalog order
    for spec in wanted:
        if spec.id in coordinator.unavailable:
            out.skipped[spec.id] = coordinator.unavailable[spec.id]
            continue
        if coordinator.model_state(spec.id).ledger_state in ("loading", "ready"):
            out.resident.append(spec.id)
            continue
        dev = coordinator.device_of[spec.id]
        need = coordinator.cores[dev].models[spec.id].footprint_bytes
        if need > left[dev]:
            out.skipped[spec.id] = (f"needs {need / 2**20:.0f} MiB of {dev}, {max(0, left[dev]) / 2**20:.0f} MiB of its "
                                    "budget left after the models before it")
            continue
        left[dev] -= need
        out.load.append(spec.id)
    return out


async def preload(catalog: Catalog, coordinator: Coordinator, access: ModelAccess) -> PreloadPlan:
    """Load the plan's models one after another; a failure is logged and the next one goes on."""
    p = plan(catalog, coordinator)
    if not (p.load or p.skipped or p.resident):
        return p
    log.info("preload: loading %s; already resident %s; skipped %s", p.load or "none", p.resident or "none",
             p.skipped or "none")
    for model in p.load:
        try:
            loaded = await access.load(model)
            log.info("preload: %s ready on %s", model, loaded.device)
        except RoundhouseError as e:
            log.warning("preload: %s failed: %s", model, e.message)
            p.failed[model] = e.message
    return p
