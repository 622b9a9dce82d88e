"""The driver's reads of the world (part of ``loop.Coordinator``): a family service's models for
reconciliation, and a device's meter — periodically (``metered``: memory not ours, the room left),
for a ``Recheck``, and after reconciliation. Each read only fetches figures and hands them to the
Core; what they mean for the ledger is decided there. A read never raises and never blocks the event
loop for long: a service is read over HTTP, a meter (NVML) answers in about a millisecond."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from modelhost.errors import RoundhouseError

from . import parking
from .actions import Held

if TYPE_CHECKING:
    from .loop import Coordinator

log = logging.getLogger(__name__)


class WorldReads:
    def schedule_reconcile(self: Coordinator, family: str) -> None:
        task = self._reconciling.get(family)
        if task is None or task.done():
            self._reconciling[family] = asyncio.create_task(self.reconcile(family), name=f"reconcile-{family}")

    async def reconcile(self: Coordinator, family: str) -> None:
        """Read ``family``'s service and hand what it holds to each device's Core (``Core.reconcile``
        decides what that means for the ledger)."""
        since = {dev: core.epoch for dev, core in self.cores.items()}
        try:
            rows = await self.effects.models(family)
        except RoundhouseError as e:
            log.warning("reconcile %s: service unreachable (%s); it holds nothing", family, e.message)
            held = None
        else:
            held = {r.id: Held(r.peak_memory_bytes, settled=r.state == "ready") for r in rows if r.resident}
        for dev, core in self.cores.items():
            if held is not None:
                parking.seen(core.models, rows)  # which of them it parks, and which are parked there now
            self._apply(dev, core.reconcile(family, held, self.clock(), since=since[dev]))

    async def reconcile_all(self: Coordinator) -> None:
        """Every service, then every device's meter (``rechecked`` where unverified bytes are charged,
        else ``metered``)."""
        families = sorted({s.family for s in self.catalog.models})
        await asyncio.gather(*(self.reconcile(f) for f in families), return_exceptions=True)
        for dev, core in self.cores.items():
            used, total = self._meter(dev)
            if core.unverified.by_model:
                self._apply(dev, core.rechecked(self.clock(), device_used_bytes=used, total_bytes=total))
            elif total is not None:
                self._apply(dev, core.metered(self.clock(), used, total))

    def meter_all(self: Coordinator) -> None:
        """Read every metered device's meter and hand it to its Core (``Core.metered``)."""
        for dev, core in self.cores.items():
            used, total = self._meter(dev)
            if total is not None or core.total_bytes is not None:
                self._apply(dev, core.metered(self.clock(), used, total))

    async def _meter_forever(self: Coordinator, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.meter_all()

    async def _recheck(self: Coordinator, dev: str, families: tuple[str, ...]) -> None:
        """Carry out a ``Recheck``: read the services whose releases were not verified, then the meter,
        and always answer (requests wait for it): neither read raises."""
        await asyncio.gather(*(self.reconcile(f) for f in families), return_exceptions=True)
        used, total = self._meter(dev)
        self._apply(dev, self.cores[dev].rechecked(self.clock(), device_used_bytes=used, total_bytes=total))

    def _meter(self: Coordinator, dev: str) -> tuple[int | None, int | None]:
        """The device's (used, total) bytes by its meter; (None, None) where it is not metered or the
        meter fails (a lost GPU: unverified bytes stay charged, the room stays as last read). A failure
        is logged when it starts and when it ends, not at every periodic read."""
        try:
            used, total = self.effects.device_used(dev), self.effects.device_total(dev)
        except Exception as e:
            if dev not in self._meter_failing:
                log.warning("%s: the meter cannot be read (%s); what no release verified stays charged, and the "
                            "room beside memory not ours stays as last read", dev, e)
            self._meter_failing.add(dev)
            return None, None
        if dev in self._meter_failing:
            log.info("%s: the meter reads again", dev)
            self._meter_failing.discard(dev)
        return used, total

    def forget_unverified(self: Coordinator, dev: str, model: str | None = None) -> int:
        """An operator's word that the unverified bytes of ``model`` (None: all) on ``dev`` are free:
        the ledger lets them go. Returns how many bytes that was."""
        core = self.cores[dev]
        before = core.unverified.total()
        self._apply(dev, core.forget_unverified(self.clock(), model))
        return before - core.unverified.total()
