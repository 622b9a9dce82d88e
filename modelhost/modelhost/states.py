"""The per-model state machine: the states, and the only transitions allowed between them.

    unloaded ──▶ loading ──▶ ready ──▶ unloading ──▶ unloaded
                    │          │           │
                    ▼          ▼           ▼
                  failed ◀─────┴───────────┘   (worker died, warm-up failed, device refused)
                    │
                    ├──▶ loading   (a new load retries)
                    └──▶ unloaded  (an unload clears the failure)

    ready ──▶ parking ──▶ parked ──▶ loading   (an un-park: a copy back to the device, ``modelhost.park``)
                 │           └─────▶ unloading (a full unload of a parked model)
                 └──▶ ready (the backend could not park after all) / failed (the worker died)

A parked model keeps its weights in host memory inside the live worker; it takes no request.

The runtime is the one owner; it changes state only through ``ModelRuntime._transition``, which
checks this table, so an impossible transition is a bug that fails loudly instead of a lie in
``/v1/models``.

``unavailable`` is outside the machine: the runtime never enters it. A model shows it (with the reason)
while something it needs is missing on this machine (a system program: "flite is not installed: apt-get
install flite"; the GPU the catalog asks for), and a load of it is refused with ``ModelUnavailable``
(503 ``model_unavailable``) instead of being tried. It is decided again at every look, so the model is
``unloaded`` as soon as the program is installed.
"""

from __future__ import annotations

import enum

from .errors import Unavailable


class ModelState(str, enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    PARKING = "parking"
    PARKED = "parked"
    FAILED = "failed"
    UNAVAILABLE = "unavailable"  # reported, never entered: see the module's docstring


S = ModelState

TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    S.UNLOADED: frozenset({S.LOADING}),
    S.LOADING: frozenset({S.READY, S.FAILED}),
    S.READY: frozenset({S.UNLOADING, S.PARKING, S.FAILED}),
    S.PARKING: frozenset({S.PARKED, S.READY, S.FAILED}),
    S.PARKED: frozenset({S.LOADING, S.UNLOADING, S.FAILED}),
    S.UNLOADING: frozenset({S.UNLOADED, S.FAILED}),
    S.FAILED: frozenset({S.LOADING, S.UNLOADED}),
    S.UNAVAILABLE: frozenset(),
}


class ModelUnavailable(Unavailable):
    """The model cannot run on this machine as it is (its reason in the message): retrying will not help
    until an operator installs what is missing, so bulk work fails the item instead of pausing."""

    code = "model_unavailable"
    retryable = False



class IllegalTransition(RuntimeError):
    """A transition outside ``TRANSITIONS``: always a bug in the caller."""


def check_transition(current: ModelState, new: ModelState) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"{current.value} -> {new.value} is not a legal model state transition")
