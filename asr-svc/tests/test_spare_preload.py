"""What a warm spare worker does for this family (``Backend.preload`` and ``Backend.prepare`` of every backend),
in a fresh process as a spare does it (``modelhost.preload_check``): every module named imports, every prepare
runs, and torch's CUDA is never initialised (a spare must hold no device memory; its load creates the context)."""

from __future__ import annotations

import pytest

from asr_svc.backends import BACKENDS
from modelhost import preload_check

pytestmark = pytest.mark.model


def test_a_spare_imports_and_prepares_every_backend_without_initialising_cuda() -> None:
    report = preload_check.run(BACKENDS.values())
    assert report.failed == {}
    assert report.cuda_initialised is False
    assert {path.partition(":")[0] for path in BACKENDS.values()} <= set(report.imported)
