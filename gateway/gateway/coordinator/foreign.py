"""Memory on a metered device that is not ours, the device's physical room, and a load that ran out of
device memory. Called by the Core only (its ``metered``, ``rechecked`` and ``load_done`` events and its
step), synchronously; no clock, no I/O. Like ``reconciliation.py``, it decides what the world's news
means for one device's ledger.

**Foreign bytes.** A quiet reading of the device's meter (nothing loads or unloads, so the device is
not between states) shows ``used``; the ledger charges ``Core.used_bytes()`` (residents, releases
left unverified — so unverified bytes are never foreign too —, and nothing in flight, since the
reading is quiet). What the device holds beyond that is someone else's: an LLM server we do not
manage, a desktop, a game, another container. It is charged as a resident that cannot be evicted.
A reading taken during a load or an unload proves nothing and changes nothing.

**The room.** A load is admitted only when its footprint fits both the budget (what the operator
gives Roundhouse) and the device's physical room: its total, less the reserve kept free for drivers
and fragmentation, less the foreign bytes, less what the ledger charges. ``capacity`` is the smaller
of the two limits; ``plan_swap`` sees it as the budget. When foreign memory grows past the room the
ledger holds, our own idle models are evicted (the policy's victim order: never pinned, lower
priority first, then least recently used) until the ledger fits again; busy ones finish first and
go once idle, at a later reading. A model that fits the budget but not the room beside the foreign
bytes waits for one fresh reading (``Recheck``) and is then refused, transiently
(``FOREIGN_MEMORY``: 503 ``model_not_ready``, so a bulk job pauses).

What the meter cannot tell apart: a model's charge is its measured peak, and what it holds at rest
may be less, so foreign bytes read beside resident models can come out low (never below 0); a load
admitted on such a reading can then run out of memory, which ``out_of_memory`` below recovers from.

**A load that ran out of device memory** (the service answered ``out_of_memory``): the ledger
believed the model fit, so reality holds more than it charges. The first time, idle residents whose
charges add up to the model's footprint are evicted (or every idle one, if they are fewer) and the
load is retried once, as a swap; its waiters stay queued. When there is nothing to evict, or the
retry runs out of memory too, its waiters are refused with ``OUT_OF_MEMORY`` (503
``insufficient_memory``, with a Retry-After) and a message naming what holds the device; the model
is left unloaded, and a later request tries again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .actions import Action, Fail, FailKind, UnloadReason
from .policy import SwapPlan, _busy

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger(__name__)

MiB = 2**20
NOTABLE_CHANGE_BYTES = 64 * MiB  # a change in foreign bytes worth a log line


def capacity(core: Core) -> int:
    """What the ledger may charge: the budget, or the device's physical room when that is smaller."""
    if core.total_bytes is None:
        return core.budget_bytes
    return max(0, min(core.budget_bytes, core.total_bytes - core.reserve_bytes - core.foreign_bytes))


def metered(core: Core, used_bytes: int | None, total_bytes: int | None) -> None:
    """The device's meter was read (None: it could not be). Only a quiet reading of a device whose
    total is known changes the foreign bytes."""
    if total_bytes is not None:
        core.total_bytes = total_bytes
    if used_bytes is None or core.total_bytes is None or core.loading is not None or core.unloading:
        return  # no total: not a metered device, nothing to compare the room with
    foreign = max(0, used_bytes - core.used_bytes())
    if abs(foreign - core.foreign_bytes) >= NOTABLE_CHANGE_BYTES:  # an eviction it causes logs a warning
        log.info("%s: memory not ours went from %.0f to %.0f MiB (device %.0f MiB used, the ledger charges %.0f); "
                    "room for ours: %.0f MiB", core.device, core.foreign_bytes / MiB, foreign / MiB, used_bytes / MiB,
                    core.used_bytes() / MiB, (core.total_bytes - core.reserve_bytes - foreign) / MiB)
    core.foreign_bytes = foreign


def _idle_victims(core: Core, need_bytes: int, now: float) -> tuple[str, ...]:
    """Idle, unpinned residents in the policy's order, until their charges reach ``need_bytes``
    (all of them if they are fewer)."""
    snap = core.snapshot(now)
    idle = [m for m, r in core.resident.items()
            if not r.draining and not core.models[m].pin and not _busy(snap, m) and m not in core.pending_unloads]
    idle.sort(key=lambda m: (core.models[m].priority, core.resident[m].last_used))
    chosen: list[str] = []
    freed = 0
    for m in idle:
        if freed >= need_bytes:
            break
        chosen.append(m)
        freed += core.resident[m].charged_bytes
    return tuple(chosen)


def evict_for_room(core: Core, now: float) -> None:
    """Foreign memory grew past the room the ledger holds: drain idle residents until it fits again
    (``pending_unloads``, reason FOREIGN; the step unloads them). Those on their way out already count."""
    going = sum(core.resident[m].charged_bytes for m in core.pending_unloads if m in core.resident)
    if core.swap is not None:
        going += sum(core.resident[m].charged_bytes for m in core.swap.evict if m in core.resident)
    over = core.used_bytes() - going - capacity(core)
    if over <= 0:
        return
    victims = _idle_victims(core, over, now)
    if victims:
        log.warning("%s: %.0f MiB not ours leave %.0f MiB of room, %.0f MiB short of what the ledger charges; "
                    "evicting %s", core.device, core.foreign_bytes / MiB, capacity(core) / MiB, over / MiB, list(victims))
    for victim in victims:
        core.resident[victim].draining = True
        core.pending_unloads[victim] = UnloadReason.FOREIGN


def blocked_kind(core: Core, model: str) -> FailKind | None:
    """Why ``model`` cannot fit even with every resident of ours evicted: releases not verified
    (MEMORY_UNVERIFIED) or memory not ours (FOREIGN_MEMORY); None when it can."""
    need = core.models[model].footprint_bytes
    unverified = core.unverified.total()
    if need <= capacity(core) - unverified:
        return None
    return FailKind.MEMORY_UNVERIFIED if need > core.budget_bytes - unverified else FailKind.FOREIGN_MEMORY


def holders(core: Core) -> str:
    """What holds the device, for a message: the ledger's charges, then the memory not ours."""
    parts = [f"{m} {r.charged_bytes / MiB:.0f} MiB" for m, r in sorted(core.resident.items())]
    parts += [f"{m} {b / MiB:.0f} MiB (unloading)" for m, b in sorted(core.unloading.items())]
    if core.unverified.total():
        parts.append(f"releases not verified {core.unverified.total() / MiB:.0f} MiB")
    if core.total_bytes is not None:
        parts.append(f"not ours {core.foreign_bytes / MiB:.0f} MiB of {core.total_bytes / MiB:.0f} MiB")
    return ", ".join(parts) or "nothing the ledger knows of"


def out_of_memory(core: Core, model: str, now: float) -> list[Action]:
    """``model``'s load (no longer in flight) ran out of device memory. The first time: evict idle
    residents worth its footprint and retry the load once, as a swap. Else, or with nothing to evict:
    refuse its waiters (OUT_OF_MEMORY) naming what holds the device; it stays unloaded."""
    retried = core.oom_retry == model
    core.oom_retry = None
    if not core.queues[model]:
        log.warning("%s: %s ran out of device memory while loading; no request waits for it any more", core.device, model)
        return []
    need = core.models[model].footprint_bytes
    victims = () if retried or core.swap is not None else _idle_victims(core, need, now)
    if victims:
        log.warning("%s: %s ran out of device memory while loading; evicting %s and trying once more",
                    core.device, model, list(victims))
        core.oom_retry = model
        core.swap = SwapPlan(load=model, evict=victims)
        for victim in victims:
            core.resident[victim].draining = True
        return []
    why = "again, after evictions" if retried else "and nothing idle of ours could make room"
    log.warning("%s: %s ran out of device memory %s; its %d waiting request(s) are refused (holding the device: %s)",
                core.device, model, why, len(core.queues[model]), holders(core))
    actions: list[Action] = [
        Fail(w.req_id, model, FailKind.OUT_OF_MEMORY,
             f"{model} ran out of {core.device} memory while loading ({why}); {need / MiB:.0f} MiB are needed and the "
             f"device is held by: {holders(core)}; try again later")
        for w in core.queues[model]]
    core.queues[model].clear()
    return actions
