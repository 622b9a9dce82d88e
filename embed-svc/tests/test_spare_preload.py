"""A warm spare of this family (every backend's preload and prepare), checked in a fresh process as a spare starts."""

import pytest

from embed_svc.backends import BACKENDS
from modelhost import preload_check

pytestmark = pytest.mark.model


def test_a_spare_imports_and_prepares_every_backend_without_initialising_cuda() -> None:
    assert preload_check.run(BACKENDS.values()).problems(BACKENDS.values()) == []
