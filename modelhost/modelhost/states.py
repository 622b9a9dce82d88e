"""The per-model state machine: the states, and the only transitions allowed between them.

    unloaded ──▶ loading ──▶ ready ──▶ unloading ──▶ unloaded
                    │          │           │
                    ▼          ▼           ▼
                  failed ◀─────┴───────────┘   (worker died, warm-up failed, device refused)
                    │
                    ├──▶ loading   (a new load retries)
                    └──▶ unloaded  (an unload clears the failure)

The runtime is the one owner; it changes state only through ``ModelRuntime._transition``, which
checks this table, so an impossible transition is a bug that fails loudly instead of a lie in
``/v1/models``.
"""

from __future__ import annotations

import enum


class ModelState(str, enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    FAILED = "failed"


S = ModelState

TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    S.UNLOADED: frozenset({S.LOADING}),
    S.LOADING: frozenset({S.READY, S.FAILED}),
    S.READY: frozenset({S.UNLOADING, S.FAILED}),
    S.UNLOADING: frozenset({S.UNLOADED, S.FAILED}),
    S.FAILED: frozenset({S.LOADING, S.UNLOADED}),
}


class IllegalTransition(RuntimeError):
    """A transition outside ``TRANSITIONS``: always a bug in the caller."""


def check_transition(current: ModelState, new: ModelState) -> None:
    if new not in TRANSITIONS[current]:
        raise IllegalTransition(f"{current.value} -> {new.value} is not a legal model state transition")
