"""Measured footprints remembered across restarts: a small JSON file in the gateway's data volume."""

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
        known = self._data.get(model)
        if known is not None and "peak_memory_bytes" not in known and "peak_bytes" in known:
            known["peak_memory_bytes"] = known.pop("peak_bytes")  # the name files written before 0.2 used
        return known

    def record(self, model: str, *, peak_memory_bytes: int, load_s: float, device: str) -> None:
        self._data[model] = {"peak_memory_bytes": int(peak_memory_bytes), "load_s": float(load_s), "device": device,
                             "measured_at": time.time()}
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
