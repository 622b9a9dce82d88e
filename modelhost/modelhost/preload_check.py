"""What a warm spare worker of this environment would do, checked in a fresh interpreter as a spare does it:

    python -m modelhost.preload_check caption_svc.backends.blip:BlipBackend ...

imports each backend's module and the modules its ``preload`` names, runs its ``prepare``, and prints one JSON
line: what was imported, what failed and why, and whether torch's CUDA got initialised (a spare must hold no
device memory, so it must not). Exit status 1 when anything failed or CUDA was initialised. Each family
service's tests run it over every backend of the family (``run``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Report:
    imported: list[str]
    failed: dict[str, str]
    cuda_initialised: bool

    @property
    def ok(self) -> bool:
        return not self.failed and not self.cuda_initialised

    def problems(self, paths: Iterable[str]) -> list[str]:
        """What keeps a spare of these backends from being ready and device-free; [] when nothing does."""
        out = [f"{name}: {why}" for name, why in self.failed.items()]
        if self.cuda_initialised:
            out.append("torch's CUDA was initialised: a spare would hold device memory")
        out += [f"{path}: its module was not imported" for path in paths if path.partition(":")[0] not in self.imported]
        return out


def check(paths: list[str]) -> Report:
    """In this process (a fresh one: ``run``)."""
    from .backend import preload_modules

    imported, failed = preload_modules(paths)
    torch = sys.modules.get("torch")
    return Report(imported, failed, bool(torch and torch.cuda.is_initialized()))


def run(paths: Iterable[str], *, timeout_s: float = 600.0) -> Report:
    """``check`` in a new interpreter of this environment, as a spare starts with nothing imported."""
    proc = subprocess.run([sys.executable, "-m", "modelhost.preload_check", *paths], capture_output=True, text=True,
                          timeout=timeout_s)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"modelhost.preload_check printed nothing (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return Report(**json.loads(lines[-1]))


def main(argv: list[str]) -> int:
    report = check(argv)
    print(json.dumps({"imported": report.imported, "failed": report.failed, "cuda_initialised": report.cuda_initialised}))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
