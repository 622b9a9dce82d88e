"""The parked tier in the ledger (``modelhost.park`` is the service's side): an evicted model may be parked, its
weights in host memory inside its service's live worker, instead of unloaded; its next load is then an un-park (a
copy back), which costs its measured ``unpark_s`` instead of its ``load_s``.

What the Core knows of a parked model, in its ``ModelInfo``: ``parked_bytes``, the device memory it still holds
(None: not parked; 0 on the host, where there is no device to free, and where a worker lives on for it after its
family's other models left, the part of the worker's CUDA context the release did not give back), charged in
``Core.used_bytes`` as any resident memory is; ``parked_host_bytes``, what its weights take in host memory;
``parkable``, whether its service would park it (its rows say); ``unpark_s``, learnt from un-parks and remembered
with the footprints as ``load_s`` is.

The choice (``choose``, pure): a victim is parked when its service can park it, the operator did not ask for an
unload (that means all of it), and the parked weights stay within ``PolicyConfig.park_host_bytes`` (None: the
services' own ``park_host_bytes`` decide; a service over its cap unloads instead and says so, which the Core then
takes as an unload). Everything else about an eviction is unchanged: drained first, released and verified.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from modelhost.contract import ModelRow

from .actions import Released, UnloadReason
from .policy import ModelInfo

if TYPE_CHECKING:
    from .core import Core


def choose(core: "Core", model: str, reason: UnloadReason) -> bool:
    """Whether the eviction of ``model`` for ``reason`` should park it rather than unload it."""
    info = core.models[model]
    if not info.parkable or reason is UnloadReason.REQUEST:
        return False
    cap = core.config.park_host_bytes
    return cap is None or host_bytes(core.models.values()) + info.footprint_bytes <= cap


def held(models: Iterable[ModelInfo]) -> int:
    """The device memory parked models still hold: charged in the ledger."""
    return sum(i.parked_bytes or 0 for i in models)


def host_bytes(models: Iterable[ModelInfo]) -> int:
    return sum(i.parked_host_bytes or 0 for i in models if i.parked_bytes is not None)


def parked(info: ModelInfo, released: Released) -> None:
    """The eviction of ``info``'s model ended parked (``Core.unload_done``)."""
    info.parked_bytes = max(0, released.held_bytes)
    info.parked_host_bytes = released.host_bytes


def loaded(info: ModelInfo, load_s: float | None, unparked: bool) -> None:
    """A load of ``info``'s model ended (``Core.load_done``; ``load_s`` None when it failed): it is not parked
    any more (an un-park that fails leaves it unloaded at its service), and its time is learnt as an un-park's or
    a load's."""
    info.parked_bytes = info.parked_host_bytes = None
    if load_s is not None:
        if unparked:
            info.unpark_s = load_s
        else:
            info.load_s = load_s


def seen(models: dict[str, ModelInfo], rows: list[ModelRow]) -> None:
    """A service's rows were read: which of its models it parks, and which are parked there now."""
    for row in rows:
        info = models.get(row.id)
        if info is None:
            continue
        if row.parkable is not None:
            info.parkable = row.parkable
        if row.parked:
            info.parked_bytes = row.memory_bytes or 0
            info.parked_host_bytes = row.host_memory_bytes
        else:
            info.parked_bytes = info.parked_host_bytes = None
