"""The Core's invariants as a check (``Core.check_invariants``), run after every event by the trace
tests. The invariants themselves are stated in ``core.py`` and DESIGN.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import Core


class InvariantBroken(AssertionError):
    pass


def check(core: Core) -> None:
    if core.used_bytes() > core.budget_bytes:
        raise InvariantBroken(f"{core.device}: ledger {core.used_bytes()} > budget {core.budget_bytes}")
    if core.foreign_bytes < 0 or (core.total_bytes is None and core.foreign_bytes):
        raise InvariantBroken(f"{core.device}: foreign bytes {core.foreign_bytes} without a meter that showed them")
    if core.loading is not None and (core.loading in core.resident or core.loading in core.unloading):
        raise InvariantBroken(f"{core.loading} is loading and resident/unloading at once")
    for m in core.unloading:
        if m in core.resident:
            raise InvariantBroken(f"{m} is unloading and resident at once")
    if any(b <= 0 for b in core.unverified.by_model.values()):
        raise InvariantBroken(f"unverified entries must hold bytes: {core.unverified.by_model}")
    for m, q in core.queues.items():
        r = core.resident.get(m)
        if q and r is not None and not r.draining:
            raise InvariantBroken(f"{m} is ready but has {len(q)} waiting requests")
    for m in core.tickets:
        if core.state_of(m) not in ("draining", "loading", "unloading"):
            raise InvariantBroken(f"an operator unload of {m} waits, but {m} is {core.state_of(m)}: nothing will answer it")
