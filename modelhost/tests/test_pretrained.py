"""``modelhost.pretrained``, the loading plumbing the caption and embed backends share: importing it needs no
torch (the gateway imports modelhost and has none), and ``from_pretrained`` reads a local directory as it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelhost.catalog import ModelSpec
from modelhost.pretrained import pretrained_kwargs

pytestmark = pytest.mark.unit


def test_importing_it_imports_no_torch() -> None:
    code = "import sys, modelhost.pretrained; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_a_local_directory_is_read_as_it_is_and_a_hub_id_goes_to_the_cache(tmp_path: Path) -> None:
    local = ModelSpec(id="tiny", family="embed", backend="clip", source=str(tmp_path))
    hub = ModelSpec(id="clip", family="embed", backend="clip", source="openai/clip-vit-base-patch32")
    assert pretrained_kwargs(local, "/models/cache") == {"local_files_only": True}
    assert pretrained_kwargs(hub, "/models/cache") == {"cache_dir": "/models/cache"}
