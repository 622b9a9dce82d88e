"""Test doubles for the model-host kit. They stand in for hardware (a device that runs out of
memory, a GPU that is not usable) and for slow frameworks; the kit's own logic is always real.

``ArithmeticBackend`` is a real Backend run in the real worker process: items are numbers and the
"model" doubles them. It really allocates ``alloc_mb`` of memory while loaded, so the meter measures
something real.
"""

from __future__ import annotations

import os
import time

from modelhost.backend import Backend


class ArithmeticBackend(Backend):
    def load(self) -> str:
        o = self.spec.options
        # fail_load_while_exists: a path; loads fail while it exists (a broken disk, later mended).
        broken = o.get("fail_load_while_exists")
        if o.get("fail_load") or (broken and os.path.exists(broken)):
            raise RuntimeError("weights are corrupt")
        # oom_load_while_exists: a path; loads run out of device memory while it exists (a full GPU, later freed).
        full = o.get("oom_load_while_exists")
        if full and os.path.exists(full):
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity)")
        time.sleep(float(o.get("load_delay_s", 0)))
        self._ballast = bytearray(int(o.get("alloc_mb", 0)) * 1024 * 1024)
        for i in range(0, len(self._ballast), 4096):  # touch every page so it is resident
            self._ballast[i] = 1
        self.batches: list[int] = []
        # Stand-in for a machine without a usable GPU: a cuda ask runs on cpu, as torch would.
        return "cpu"

    def warmup(self) -> None:
        if self.spec.options.get("fail_warmup"):
            raise RuntimeError("warm-up produced NaN")
        self.infer([1])

    def infer(self, items: list) -> list:
        o = self.spec.options
        limit = o.get("oom_above_batch")
        if limit is not None and len(items) > int(limit):
            raise MemoryError(f"simulated device out of memory at batch {len(items)}")
        if any(i == "oom" for i in items):
            raise MemoryError("simulated: this item alone does not fit")
        if any(i == "crash" for i in items):
            os._exit(3)  # the worker process dies, as a segfaulting framework would
        time.sleep(float(o.get("infer_delay_s", 0)))
        out = []
        for i in items:
            if i == "bad":
                raise ValueError("cannot double 'bad'")
            out.append({"value": i * 2, "batch": len(items), "pid": os.getpid()})
        return out

    def close(self) -> None:
        self._ballast = None


FRAMEWORK_MB = 32
_framework: bytearray | None = None


def _framework_memory() -> None:
    """What a framework takes once per process (torch's import, its caches): 32 MiB, resident."""
    global _framework
    if _framework is None:
        _framework = bytearray(FRAMEWORK_MB * 1024 * 1024)
        for i in range(0, len(_framework), 4096):
            _framework[i] = 1


class PreloadingArithmeticBackend(ArithmeticBackend):
    """The same, with a framework: 32 MiB taken once per process, by ``prepare`` in a warm spare, else by the
    first ``load``; and declaring what a spare imports for it: a module that exists and one that does not (a
    spare whose preload partly fails must still be a usable worker)."""

    preload = ("colorsys", "roundhouse_no_such_module")

    @classmethod
    def prepare(cls) -> None:
        _framework_memory()

    def load(self) -> str:
        _framework_memory()
        return super().load()
