"""What goes into the Core besides plain arguments, and what comes out of it: the actions the world
carries out, and the closed sets of kinds they are labelled with.

Kinds are enums whose values are the strings the metrics and the logs use (``str(kind)`` is the
value), so a new kind is added here once and every table keyed by it is checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class _Kind(str, Enum):
    def __str__(self) -> str:  # the value, on every Python this runs on (StrEnum is 3.11+)
        return self.value


class FailKind(_Kind):
    """Why the Core refused or gave up on a request. ``loop.FAIL_ERRORS`` maps each to its error."""

    QUEUE_FULL = "queue_full"  # its model's queue is at max_queue
    NOT_READY_IN_TIME = "not_ready_in_time"  # its model loads slower than its deadline allows
    TOO_LARGE = "too_large"  # its model can never fit in the device's budget
    LOAD_FAILED = "load_failed"  # the load it waited for failed
    DEADLINE = "deadline"  # its deadline passed while it waited
    MEMORY_UNVERIFIED = "memory_unverified"  # it fits the budget only once releases no one verified are let go
    FOREIGN_MEMORY = "foreign_memory"  # it fits the budget, but not the device's room beside memory not ours
    OUT_OF_MEMORY = "out_of_memory"  # its load ran out of device memory twice, the second time after evictions


class UnloadReason(_Kind):
    """Why the Core unloads a model (the ``reason`` label of the evictions counter)."""

    SWAP = "swap"  # a victim of a swap
    REQUEST = "request"  # an operator asked (POST /admin/models/{id}/unload)
    OVER_BUDGET = "over_budget"  # a first measurement over the estimate pushed the ledger past the budget
    RECONCILE = "reconcile"  # found loaded at its service, unknown to the ledger, and over the budget
    FOREIGN = "foreign"  # memory not ours grew: the device's room no longer holds what the ledger charges


class UnloadOutcome(_Kind):
    """How an operator's unload ended (``UnloadAnswer``)."""

    RELEASED = "released"  # an Unload ran for it and its release completed (the driver knows the figures)
    NOT_RESIDENT = "not_resident"  # nothing was resident (or it left by other means before it was unloaded)
    IN_USE = "in_use"  # refused: requests in flight and the operator did not ask to drain


# Actions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    req_id: int
    model: str


@dataclass(frozen=True)
class Fail:
    req_id: int
    model: str
    kind: FailKind
    message: str


@dataclass(frozen=True)
class Load:
    model: str


@dataclass(frozen=True)
class Unload:
    model: str
    reason: UnloadReason
    park: bool = False  # park it in its service's host memory instead (``parking.choose``)


@dataclass(frozen=True)
class UnloadAnswer:
    """The answer to the operator's unload ``ticket`` (``Core.request_unload``)."""

    ticket: int
    model: str
    outcome: UnloadOutcome


@dataclass(frozen=True)
class Wake:
    at: float


@dataclass(frozen=True)
class Recheck:
    """Requests wait for room that releases no one verified still hold: re-read the truth about them
    (the ``families``' services, then the device's meter) and answer with ``Core.rechecked``."""

    families: tuple[str, ...]


Action = Grant | Fail | Load | Unload | UnloadAnswer | Wake | Recheck


# Inputs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Released:
    """How an ``Unload`` ended (the input of ``Core.unload_done``; the effects return it, and an
    operator's unload is answered with it)."""

    freed_bytes: int  # what the release gave back, as the service measured it
    verified: bool  # the service said unloaded and (on a GPU) the meter agreed in time
    seconds: float  # from asking for the unload until verified (or given up on)
    detail: str  # how it was verified, or why not
    worker_stopped: bool = False  # the service's last resident model left, so its worker process ended
    unloaded: bool = True  # the service said the model is unloaded (False: it answered otherwise, or failed)
    returned_bytes: int | None = None  # what the meter showed back; None without a meter reading
    device_used_bytes: int | None = None  # the meter's last reading of the device's used bytes
    parked: bool = False  # its service parked it (``parking``): what follows is only for a park
    held_bytes: int = 0  # the device memory it still holds parked (0 on the host)
    host_bytes: int | None = None  # what its parked weights take in host memory


@dataclass(frozen=True)
class Held:
    """A model its service says it holds memory for (the input of ``Core.reconcile``)."""

    peak_memory_bytes: int | None = None
    """What the service measured; None when it has no measurement (the model's footprint is charged)."""
    settled: bool = True
    """False while the service is still loading or unloading it: reconciliation leaves it alone."""
