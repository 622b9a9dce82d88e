"""Shared fixtures of the face service's tests: the tiny insightface-format pack built locally, and real
photos that ship inside packages."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelhost.catalog import Catalog, load_catalog

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-models")
    subprocess.run([sys.executable, str(REPO / "tools" / "make_tiny_face_models.py"), str(out)],
                   check=True, capture_output=True, text=True, timeout=120)
    return out


@pytest.fixture(scope="session")
def tiny_catalog(tiny_dir: Path) -> Catalog:
    return load_catalog(tiny_dir / "catalog.yaml")


# -- real photos that ship inside packages -------------------------------------------------------

@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins), 512x512 RGB, shipped in its wheel: one face, at about
    x 175-265, y 75-165."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def astronaut_flipped(astronaut: np.ndarray) -> np.ndarray:
    """The astronaut mirrored left to right and cropped to 420x360: the same person, other pixels."""
    return np.ascontiguousarray(astronaut[:, ::-1][40:400, 60:480])


@pytest.fixture(scope="session")
def group_photo() -> np.ndarray:
    """insightface's t1.jpg: six people, none of them the astronaut."""
    return _insightface_photo("t1.jpg")


@pytest.fixture(scope="session")
def tom_hanks() -> np.ndarray:
    """insightface's Tom_Hanks_54745.png: one 112x112 face."""
    return _insightface_photo("Tom_Hanks_54745.png")


def _insightface_photo(name: str) -> np.ndarray:
    # Read from the installed wheel without importing insightface (its import pulls in much more).
    spec = importlib.util.find_spec("insightface")
    assert spec is not None and spec.submodule_search_locations, "insightface (the wheel, --no-deps) is a test dependency"
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "images" / name
    return np.asarray(Image.open(path).convert("RGB"))
