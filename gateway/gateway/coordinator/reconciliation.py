"""What the world says about one device's memory, against its Core's ledger: a family service's
models (``reconcile``) and the meter's reading (``rechecked``), which requests only unverified
bytes keep out (``blocked``), and a release left unverified (``keep_unverified``) whose victim must
not be evicted again for the same waiters (``refuse_evicting_again``). Called by the Core only (its
events and its step), synchronously, like every other decision about the ledger; the Core then takes
its step.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

from . import foreign
from .actions import Action, Fail, FailKind, Held, Released, Unload, UnloadReason
from .policy import Resident, SwapPlan

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger(__name__)


def reconcile(core: Core, family: str, held: dict[str, Held] | None, now: float, *, since: int | None = None) -> list[Action]:
    """``family``'s service was read: ``held`` is what it says it holds (model -> ``Held``), or
    None when it could not be reached — a service that is down holds nothing.

    - A resident model of the family that the service does not hold leaves the ledger.
    - The service holds no model at all: its worker is gone, and with it whatever releases of
      the family left unverified.
    - A model the service holds, settled, that the ledger has neither resident, loading nor
      unloading is charged: its measured peak, else its footprint (instead of what its release
      left unverified, if any). If that breaks the budget, it is unloaded at once (charged no
      more than it already was; only its release is waited for).
    - A model loading or unloading, here or at its service, is left alone: the event in flight
      will tell.
    - ``since`` is the ``epoch`` when the read began: a model whose residency changed after it
      (a load or an unload completed while the read was in flight) is left alone, because the
      reply is older than what the ledger knows. None: the reply is current.
    """
    worker_gone = held is not None and not held
    held = held or {}
    actions: list[Action] = []

    def newer(m: str) -> bool:
        return since is not None and core.changed.get(m, 0) > since

    for model in [m for m in core.resident if core.models[m].family == family]:
        if model not in held and not newer(model):
            log.warning("%s: reconcile %s: %s is not loaded at its service; the ledger forgets it",
                        core.device, family, model)
            core.resident.pop(model)
            core.mark_changed(model)
            core.unverified.rebaseline()
    for model in list(core.unverified.by_model) if worker_gone else ():
        if core.models[model].family == family and not newer(model):
            log.info("%s: reconcile %s: its worker is gone; the %.0f MiB %s's release left unverified are let go",
                     core.device, family, core.unverified.pop(model) / 2**20, model)
    for model, h in held.items():
        info = core.models.get(model)
        if info is None or info.family != family or not h.settled or newer(model) \
                or core.state_of(model) != "unloaded":
            continue
        charged = h.peak_memory_bytes or info.footprint_bytes
        log.warning("%s: reconcile %s: %s is loaded at its service; the ledger charges %.0f MiB",
                    core.device, family, model, charged / 2**20)
        before = core.unverified.pop(model)  # it never left: charged as resident instead
        # The meter read it as memory not ours until now: it is ours again, not counted twice.
        core.foreign_bytes = max(0, core.foreign_bytes - max(0, charged - before))
        core.resident[model] = Resident(charged_bytes=charged, last_used=now, loaded_at=now)
        core.mark_changed(model)
        core.unverified.rebaseline()
        if core.used_bytes() > core.budget_bytes:
            del core.resident[model]
            core.unloading[model] = before  # the rest is already outside the budget; only wait for it
            core.evictions[UnloadReason.RECONCILE] += 1
            actions.append(Unload(model, UnloadReason.RECONCILE))
    return actions


def rechecked(core: Core, device_used_bytes: int | None, total_bytes: int | None = None) -> list[Action]:
    """The truth was read again (a ``Recheck``, or the periodic reconciliation): the services of the
    unverified bytes were reconciled, and ``device_used_bytes`` is the meter's reading now (None:
    the host, or a meter that failed). Taken while nothing loads or unloads, a reading that shows
    the unverified bytes back lets them go, and then tells the memory not ours (``foreign.metered``).
    Requests that still cannot fit are then refused (MEMORY_UNVERIFIED or FOREIGN_MEMORY): the truth
    was just read. While a load or an unload is in flight they wait instead; its completion asks again."""
    core.rechecking = False
    quiet = core.loading is None and not core.unloading
    total = core.unverified.total()
    if total and device_used_bytes is not None and quiet \
            and core.unverified.shown_back(device_used_bytes, core.used_bytes() - total):
        for model in list(core.unverified.by_model):
            core.unverified.pop(model)
        log.info("%s: the meter shows the %.0f MiB no release verified back; the ledger lets them go",
                 core.device, total / 2**20)
    foreign.metered(core, device_used_bytes, total_bytes)
    actions: list[Action] = []
    for model in blocked(core) if quiet else ():
        need = core.models[model].footprint_bytes / 2**20
        if foreign.blocked_kind(core, model) is FailKind.MEMORY_UNVERIFIED:
            kind = FailKind.MEMORY_UNVERIFIED
            message = (f"{model} needs {need:.0f} MiB, but {core.unverified.total() / 2**20:.0f} MiB of the {core.device} "
                       f"budget are held by releases not verified ({', '.join(sorted(core.unverified.by_model))}); "
                       "try again later")
        else:
            kind = FailKind.FOREIGN_MEMORY
            message = (f"{model} needs {need:.0f} MiB, but {core.device} has {foreign.capacity(core) / 2**20:.0f} MiB of "
                       f"room for our models beside {core.foreign_bytes / 2**20:.0f} MiB held by processes not ours "
                       f"(held now: {foreign.holders(core)}); try again later")
        actions += [Fail(w.req_id, model, kind, message) for w in core.queues[model]]
        core.queues[model].clear()
    return actions


def blocked(core: Core) -> list[str]:
    """Models with waiting requests that cannot fit beside the unverified bytes or the memory not ours,
    even with every resident of ours evicted."""
    return [m for m, q in core.queues.items()
            if q and m != core.loading and foreign.blocked_kind(core, m) is not None]


def keep_unverified(core: Core, model: str, kept: int, released: Released) -> None:
    """``model``'s release (``unload_done``) left ``kept`` bytes unverified: they stay charged. A victim
    of the swap in flight: its waiters are not given that eviction again (``refuse_evicting_again``)."""
    core.unverified.add(model, kept)
    core.unverified.baseline(None if core.loading else released.device_used_bytes, core.used_bytes())
    log.warning("%s: the release of %s is not verified (%s): %.0f MiB stay charged until the meter shows "
                "them back, its worker is gone or an operator forgets them", core.device, model,
                released.detail, kept / 2**20)
    if core.swap is not None and model in core.swap.evict:
        for w in core.queues[core.swap.load]:
            w.not_released.add(model)


def refuse_evicting_again(core: Core, plan: SwapPlan) -> list[Action]:
    """``plan`` would evict a victim that was already evicted for some of its waiters and not released
    (its service answered, and kept it: reconciliation then charged it as resident again). Those
    waiters are refused (MEMORY_UNVERIFIED: transient), naming what holds the device, instead of being
    given the same eviction until their deadline; the others get their one try. Returns the ``Fail``s."""
    again = set(plan.evict)
    q = core.queues[plan.load]
    refused = [w for w in q if w.not_released & again]
    if not refused:
        return []
    core.queues[plan.load] = collections.deque(w for w in q if not w.not_released & again)
    victims = sorted(set().union(*(w.not_released & again for w in refused)))
    need = core.models[plan.load].footprint_bytes / 2**20
    log.warning("%s: %s would be evicted again for %d request(s) for %s, but was not released the first time; "
                "they are refused (holding the device: %s)", core.device, victims, len(refused), plan.load,
                foreign.holders(core))
    message = (f"{plan.load} needs {need:.0f} MiB, but {', '.join(victims)} did not release its memory when asked to "
               f"make room for it (its service still holds it); held now: {foreign.holders(core)}; try again later")
    return [Fail(w.req_id, plan.load, FailKind.MEMORY_UNVERIFIED, message) for w in refused]


def forget_unverified(core: Core, model: str | None) -> None:
    """An operator says the unverified bytes of ``model`` (None: all of them) are free. Whatever the
    device still holds of them reads as memory not ours at the next quiet reading (``foreign.py``)."""
    for m in [model] if model is not None else list(core.unverified.by_model):
        if m in core.unverified.by_model:
            log.warning("%s: an operator lets go of the %.0f MiB %s's release left unverified",
                        core.device, core.unverified.forget(m) / 2**20, m)
