"""Measured footprints and swap costs remembered across restarts: a small JSON file in the gateway's
data volume (``footprints.json``).

One entry per model: ``peak_memory_bytes``, ``load_s`` and ``device`` from its last load, and
``unload_s`` from its last verified unload (how long the release took, the worker's end included when
it was the family's last model), and ``unpark_s`` from its last un-park (the parked tier: ``parking``). Files
written before ``unload_s`` or ``unpark_s`` existed read as they are: the time is then unknown until measured.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)


class FootprintStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict] = {}
        try:
            self._data = json.loads(path.read_text())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.warning("footprint file %s unreadable (%s); starting from catalog estimates", path, e)

    def get(self, model: str) -> dict | None:
        """The model's last measured load (``peak_memory_bytes``, ``load_s``, ``device``, and
        ``unload_s`` once known), or None when it was never measured loading."""
        known = self._data.get(model)
        if known is not None and "peak_memory_bytes" not in known and "peak_bytes" in known:
            known["peak_memory_bytes"] = known.pop("peak_bytes")  # the name files written before 0.2 used
        return known if known is not None and "peak_memory_bytes" in known else None

    def unload_s(self, model: str) -> float | None:
        """How long the model's last verified unload took; None when never measured."""
        known = self._data.get(model, {}).get("unload_s")
        return float(known) if isinstance(known, (int, float)) else None

    def record(self, model: str, *, peak_memory_bytes: int, load_s: float, device: str) -> None:
        entry = self._data.setdefault(model, {})
        entry.pop("peak_bytes", None)
        entry.update({"peak_memory_bytes": int(peak_memory_bytes), "load_s": float(load_s), "device": device,
                      "measured_at": time.time()})
        self._save()

    def unpark_s(self, model: str) -> float | None:
        """How long the model's last un-park took (``parking``); None when never measured."""
        known = self._data.get(model, {}).get("unpark_s")
        return float(known) if isinstance(known, (int, float)) else None

    def record_unpark(self, model: str, unpark_s: float) -> None:
        self._data.setdefault(model, {})["unpark_s"] = float(unpark_s)
        self._save()

    def record_unload(self, model: str, unload_s: float) -> None:
        self._data.setdefault(model, {})["unload_s"] = float(unload_s)
        self._save()

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".footprints.")
            with os.fdopen(fd, "w") as f:
                json.dump(self._data, f, indent=2, sort_keys=True)
            os.replace(tmp, self.path)  # atomic: a crash never leaves half a file
        except OSError as e:
            log.warning("could not save footprints to %s: %s", self.path, e)
