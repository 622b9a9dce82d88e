"""The coordinator's state as the admin API shows it: ``GET /admin/gpu`` (a ``DeviceLedger`` per
device) and the ledger's columns of ``GET /admin/models`` (``LedgerState``). Read-only: built from a
Core, never fed back into one."""

from __future__ import annotations

from pydantic import BaseModel, Field

from .core import Core
from .footprints import FootprintStore


class ResidentCharge(BaseModel):
    charged_bytes: int = Field(description="What the ledger charges it: its measured peak (plus what a released "
                                           "sibling left in their shared worker).")
    in_flight: int = Field(description="Requests granted and not yet released.")
    draining: bool = Field(description="No new grants: it is to be unloaded once its requests in flight finish.")
    idle_s: float = Field(description="Seconds since its last grant or release.")


class Footprint(BaseModel):
    bytes: int = Field(description="What a load of it is admitted by: its measured peak, else the catalog's estimate.")
    measured: bool = Field(description="Measured by a real load (remembered in footprints.json).")


class SwapInFlight(BaseModel):
    load: str
    evict: list[str]


class MeterReading(BaseModel):
    """The device's own figures, beside the ledger's."""

    kind: str = Field(description="nvml, or host for the host's memory.")
    total_bytes: int | None = Field(None, description="None when the meter cannot read the device (error says why).")
    used_bytes: int | None = None
    free_bytes: int | None = None
    error: str | None = Field(None, description="Why the device could not be read (the GPU is lost, ...).")


class DeviceLedger(BaseModel):
    budget_bytes: int
    used_bytes: int = Field(description="Charged: resident models + the load in flight + unloads in flight + unverified.")
    loading: str | None = Field(None, description="The model whose load is in flight.")
    unloading: dict[str, int] = Field(
        description="Models whose unload is in flight: the bytes still charged to each until its release is over.")
    unverified: dict[str, int] = Field(
        default_factory=dict,
        description="Bytes still charged, per model, that its releases gave no proof of (the meter did not show them "
                    "back, or the service did not unload): let go when a later meter reading shows them back, the "
                    "service's worker is gone, or an operator forgets them. Loads have that much less room.")
    foreign_bytes: int | None = Field(
        None, description="Memory on the device that is not ours (another process: an LLM server, a desktop, a game): "
                          "what its meter showed used beyond every charge of the ledger at the last reading taken while "
                          "nothing loaded or unloaded. None where the device is not metered (the host).")
    total_bytes: int | None = Field(None, description="The device's total by its meter; None where it is not metered.")
    room_bytes: int = Field(description="What the ledger may charge now: the budget, or less where the device's total, "
                                        "less the reserve and the memory not ours, is smaller. A load fits in it.")
    swap: SwapInFlight | None = None
    swaps: int = Field(description="Swaps committed since the gateway started.")
    resident: dict[str, ResidentCharge]
    queues: dict[str, int] = Field(description="Requests waiting, per model with any.")
    footprints: dict[str, Footprint]
    meter: MeterReading | None = None


class LedgerState(BaseModel):
    """One model in its device's ledger."""

    ledger_state: str = Field(description="unloaded, loading, ready, draining or unloading.")
    queue_depth: int = Field(description="Requests waiting at the coordinator for it.")
    device_ledger: str = Field(description="The device whose memory budget it is charged to.")
    charged_bytes: int | None = Field(None, description="What the ledger charges it now (None when it holds nothing).")


def device_ledger(core: Core, store: FootprintStore, now: float) -> DeviceLedger:
    return DeviceLedger(
        budget_bytes=core.budget_bytes,
        used_bytes=core.used_bytes(),
        loading=core.loading,
        unloading=dict(sorted(core.unloading.items())),
        unverified=dict(sorted(core.unverified.by_model.items())),
        foreign_bytes=None if core.total_bytes is None else core.foreign_bytes,
        total_bytes=core.total_bytes,
        room_bytes=core.capacity(),
        swap=None if core.swap is None else SwapInFlight(load=core.swap.load, evict=list(core.swap.evict)),
        swaps=core.swaps,
        resident={m: ResidentCharge(charged_bytes=r.charged_bytes, in_flight=r.in_flight, draining=r.draining,
                                    idle_s=round(now - r.last_used, 3)) for m, r in core.resident.items()},
        queues={m: len(q) for m, q in core.queues.items() if q},
        footprints={m: Footprint(bytes=i.footprint_bytes, measured=store.get(m) is not None) for m, i in core.models.items()},
    )


def ledger_state(core: Core, model: str) -> LedgerState:
    r = core.resident.get(model)
    charged = r.charged_bytes if r is not None else core.unloading.get(model)
    if model == core.loading:
        charged = core.loading_bytes
    return LedgerState(ledger_state=core.state_of(model), queue_depth=len(core.queues[model]), device_ledger=core.device,
                       charged_bytes=charged)
