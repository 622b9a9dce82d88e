"""Model files shipped inside an installed Python package (dlib's and YuNet/SFace's), found without importing
the package: its ``__init__`` may import what this environment lacks or refuses (``pkg_resources``)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def models_dir(source: str, install: str) -> Path:
    """The directory holding the model files: ``source`` itself, or the ``models/`` folder of the package it
    names; ``install`` is the pip requirement a missing package is told to install with."""
    if os.path.isdir(source):
        return Path(source)
    try:
        found = importlib.util.find_spec(source)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"source {source!r} is neither a directory nor an installed package "
                                f"(pip install {install})")
    return Path(next(iter(found.submodule_search_locations))) / "models"
