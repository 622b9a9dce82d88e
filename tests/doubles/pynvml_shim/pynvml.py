"""``pynvml`` for the processes of a CPU rehearsal: put this folder first on ``PYTHONPATH`` and name a
fake's JSON description in ``ROUNDHOUSE_FAKE_NVML`` (``tests/doubles/fake_nvml_host.py`` writes both).
Importing it replaces this module with the fake, so ``import pynvml`` anywhere in the process, a
worker child included, reaches the fake NVML and nothing else."""

import sys
from pathlib import Path

_root = str(Path(__file__).resolve().parents[3])
if _root not in sys.path:
    sys.path.insert(0, _root)

from tests.doubles.fake_nvml_host import from_env  # noqa: E402

sys.modules[__name__] = from_env()
