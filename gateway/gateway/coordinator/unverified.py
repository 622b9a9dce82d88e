"""Bytes a device's ledger still charges although their release was never verified, and the rule
for letting them go. Pure bookkeeping, owned by the Core: no clock, no I/O, no logs.

A release is unverified when its service did not say "unloaded" (or could not be asked), or, on a
GPU, when the meter did not show the memory back in time: a worker that kept its CUDA context, a
zombie process, a lost GPU. The memory may still be held, so the ledger keeps charging what the
meter did not see back, and lets it go only when the truth is known again:

- the meter: a later reading, taken while nothing loads or unloads on the device, shows them back.
  What the device holds beyond the ledger's other charges is compared with ``outside_bytes``, the
  same figure when they were recorded (all of them then taken as still held); when it has fallen
  by at least ``tolerance`` of them (the 80 % a release is verified by), they are back. A ledger
  that corrects itself without the device changing (reconciliation) drops the baseline, and the
  next reading takes it again: a correction must never read as memory coming back;
- the service: it holds no model of the family any more (its worker is gone), or it holds the
  model again (the Core then charges it as resident instead);
- an operator forgets them (the device's figure for them becomes someone else's business).

They are never let go because a release was merely answered: that was the bug (an unverified
release dropped its whole charge, and the ledger admitted a model into memory NVML showed in use).
"""

from __future__ import annotations

from collections.abc import Mapping

from .policy import ModelInfo


class Unverified:
    def __init__(self, tolerance: float = 0.8) -> None:
        self.by_model: dict[str, int] = {}  # model -> bytes its releases left unverified
        self.outside_bytes: int | None = None  # device used - every charge, when last recorded; None: not known
        self.tolerance = tolerance

    def total(self) -> int:
        return sum(self.by_model.values())

    def families(self, models: Mapping[str, ModelInfo]) -> tuple[str, ...]:
        """The services whose releases left these bytes (a ``Recheck`` reads them)."""
        return tuple(sorted({models[m].family for m in self.by_model if models[m].family is not None}))

    def add(self, model: str, nbytes: int) -> None:
        self.by_model[model] = self.by_model.get(model, 0) + nbytes

    def baseline(self, device_used_bytes: int | None, charged_bytes: int) -> None:
        """Take the baseline from the meter's reading and the ledger's whole charge (these included,
        all taken as still held); None: at the next quiet reading."""
        self.outside_bytes = None if device_used_bytes is None else device_used_bytes - charged_bytes

    def shown_back(self, device_used_bytes: int, other_charges_bytes: int) -> bool:
        """A reading taken while nothing loads or unloads: True when the device shows them all back.
        Without a baseline, this reading becomes it (they are taken as still held)."""
        if self.outside_bytes is None:
            self.outside_bytes = device_used_bytes - other_charges_bytes - self.total()
            return False
        still_held = device_used_bytes - other_charges_bytes - self.outside_bytes
        return still_held <= (1 - self.tolerance) * self.total()

    def rebaseline(self) -> None:
        """The ledger corrected itself (the device did not change): take the baseline again."""
        self.outside_bytes = None

    def pop(self, model: str) -> int:
        """Let ``model``'s bytes go: they are back (its worker is gone) or charged elsewhere now."""
        nbytes = self.by_model.pop(model, 0)
        if not self.by_model:
            self.outside_bytes = None
        return nbytes

    def forget(self, model: str) -> int:
        """An operator lets ``model``'s bytes go: whatever the device still holds of them counts as
        outside the ledger from now on, so they do not hide the others coming back."""
        nbytes = self.by_model.pop(model, 0)
        if self.outside_bytes is not None:
            self.outside_bytes += nbytes
        if not self.by_model:
            self.outside_bytes = None
        return nbytes
