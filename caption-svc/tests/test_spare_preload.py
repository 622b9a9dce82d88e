"""What a warm spare worker does for this family (``Backend.preload`` and ``Backend.prepare`` of every backend),
in a fresh process as a spare does it: every module named imports, every prepare runs, and torch's CUDA is never
initialised (a spare must hold no device memory; its load creates the context)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from caption_svc.backends import BACKENDS

pytestmark = pytest.mark.model

SPARE = """
import json, sys
from modelhost.backend import preload_modules
imported, failed = preload_modules(sys.argv[1:])
torch = sys.modules.get("torch")
print(json.dumps({"imported": imported, "failed": failed, "cuda": bool(torch and torch.cuda.is_initialized())}))
"""


def test_a_spare_imports_and_prepares_every_backend_without_initialising_cuda() -> None:
    run = subprocess.run([sys.executable, "-c", SPARE, *BACKENDS.values()], capture_output=True, text=True,
                         timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}
    assert report["cuda"] is False
    for path in BACKENDS.values():
        assert path.partition(":")[0] in report["imported"]
