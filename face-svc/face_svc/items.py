"""What a face backend receives and returns, shared by the HTTP side and the worker.

The worker pickles items and results across the process boundary, so this module imports nothing heavy
(numpy only). Images are upright RGB ``uint8`` arrays of shape ``(height, width, 3)``.

A batch (``Backend.infer(items)``) may mix both kinds of item. A backend detects faces image by image, then
gathers every face that needs an embedding, from every item of the batch (the faces of one photo, the faces
of the other requests batched with it, the crops of embed requests), and embeds them in ONE recognition
forward pass (split only past the model's ``rec_batch`` option). That is how recognition batches across one
image and across concurrent requests.

Results are plain dicts (see ``Face`` and the two ``*Result`` types below); embeddings are L2-normalised
``float32`` arrays and crops ``uint8`` RGB arrays, turned into JSON by the HTTP side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np

Box = tuple[float, float, float, float]
"""x1, y1, x2, y2 in pixels of the image the item holds."""


@dataclass(frozen=True)
class DetectItem:
    image: np.ndarray
    """RGB uint8, (height, width, 3), already EXIF-transposed."""
    max_faces: int
    """Keep at most this many faces: the largest (by box area) first."""
    embed: bool = False
    """Add each face's normalised embedding."""
    crops: bool = False
    """Add each face's aligned crop (the model's recognition input, e.g. 112x112 for ArcFace)."""
    boxes: tuple[Box, ...] | None = None
    """Analyse the faces in these boxes instead of every face found: one result face per box, the detected
    face whose centre lies in the box and that overlaps it most; where the detector finds none, ``None``
    in ``faces`` (dlib: the box itself, with score 0)."""


@dataclass(frozen=True)
class EmbedItem:
    crops: tuple[np.ndarray, ...]
    """Aligned face crops (RGB uint8), as detect returns them; other sizes are resized to the model's input."""


class Face(TypedDict):
    box: list[float]
    """x1, y1, x2, y2."""
    score: float
    landmarks: list[list[float]]
    """Five points: left eye, right eye, nose tip, left mouth corner, right mouth corner (as seen in the image)."""
    embedding: np.ndarray | None
    crop: np.ndarray | None


class DetectResult(TypedDict):
    faces: list[Face | None]
    """Largest first. ``None`` only for a given box without a face in it."""
    found: int
    """Faces the detector found before the ``max_faces`` cut."""
    recognition_batch: int
    """Faces in the recognition forward pass this item's faces were embedded in (0: none embedded)."""


class EmbedResult(TypedDict):
    embeddings: list[np.ndarray]
    recognition_batch: int


def keep_largest(faces: list[Face], max_faces: int) -> list[Face]:
    """Largest box first (ties: higher score first), at most ``max_faces``."""
    faces = sorted(faces, key=lambda f: (-(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]), -f["score"]))
    return faces[:max_faces]


def iou(a: Box | list[float], b: Box | list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def centre_inside(face: Box | list[float], box: Box | list[float]) -> bool:
    cx, cy = (face[0] + face[2]) / 2, (face[1] + face[3]) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def hand_out_embeddings(items: list[DetectItem | EmbedItem], results: list[Any], owners: list[tuple[int, int]],
                        vectors: np.ndarray) -> None:
    """Each of a recognition pass's ``vectors`` to its owner (item index, face or crop index): appended to an
    embed item's ``embeddings``, or set on the face of a detect item; every result given one records the pass's
    size (``recognition_batch``)."""
    for (i, j), vector in zip(owners, vectors):
        result = results[i]
        result["recognition_batch"] = len(owners)
        if isinstance(items[i], EmbedItem):
            result["embeddings"].append(vector)
        else:
            result["faces"][j]["embedding"] = vector
