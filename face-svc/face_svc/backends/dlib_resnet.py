"""dlib face analysis, offline on CPU: HOG or CNN (MMOD) detection, 68-point landmarks, dlib's ResNet
128-d embedder. The trained models ship in the ``face_recognition_models`` package (the HOG detector is
compiled into dlib itself), so nothing is downloaded: a box without internet still recognises faces.

``source`` names that package (or a directory holding its four ``.dat`` files). The package is located
without being imported: its ``__init__`` imports ``pkg_resources``, which setuptools 81 and later no
longer ship. ``dlib`` comes from the prebuilt ``dlib-bin`` wheel (the dlib sdist compiles for over 15
minutes); it is a CPU build, so a catalog entry asking for CUDA gets an honest ``cpu`` back (and FAILS
unless it allows the fallback).

Landmarks: the 68-point model; the five reported (and used by nothing else) are insightface's five
points: the centres of the two eyes, the nose tip and the mouth corners, left to right as seen. Crops are
dlib's aligned face chips (``get_face_chip``, 150x150, padding 0.25), the embedder's input.

Batching: detection and landmarks run image by image; every chip of the batch then goes through the
embedder in one call (dlib runs a list of chips as one batch of its network).

Options: ``detector`` (``hog``, default, about 0.15 s for a 512x512 photo on one core; or ``cnn``, the MMOD
detector: better on turned faces, about 5 s for the same photo on CPU), ``upsample`` (times the image is
doubled before detection, so faces down to 40 px are found: default 1), ``det_thresh`` (HOG score or CNN
confidence to keep a face: default 0.0 for HOG, 0.5 for CNN), ``det_max_side`` (longer side the detector
sees, larger photos are scaled down for detection only: default 1024), ``verify_threshold``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from modelhost.backend import Backend
from modelhost.catalog import ModelSpec

from ..items import (DetectItem, DetectResult, EmbedItem, EmbedResult, Face, centre_inside, hand_out_embeddings, iou,
                     keep_largest, l2_normalise)
from . import _installed
from ._memory import pin_mmap_threshold

log = logging.getLogger(__name__)

FILES = {
    "landmarks": "shape_predictor_68_face_landmarks.dat",
    "embedder": "dlib_face_recognition_resnet_model_v1.dat",
    "cnn": "mmod_human_face_detector.dat",
}
CHIP_SIZE = 150
CHIP_PADDING = 0.25


def models_dir(source: str) -> Path:
    """The directory holding the ``.dat`` files: ``source`` itself, or the ``models/`` folder of the package
    it names (``_installed.models_dir``)."""
    return _installed.models_dir(source, "face-recognition-models")


class DlibFaceAnalyzer(Backend):
    preload = ("dlib", "cv2")  # what a warm spare imports ahead (``Backend.preload``)

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        o = spec.options
        self.kind = str(o.get("detector", "hog"))
        if self.kind not in ("hog", "cnn"):
            raise ValueError(f"model {spec.id!r}: detector must be 'hog' or 'cnn', not {self.kind!r}")
        self.upsample = int(o.get("upsample", 1))
        self.det_thresh = float(o.get("det_thresh", 0.0 if self.kind == "hog" else 0.5))
        self.det_max_side = int(o.get("det_max_side", 1024))
        self.detector: Any = None
        self.landmarks: Any = None
        self.embedder: Any = None
        self.device = "cpu"

    def load(self) -> str:
        import dlib

        if self.spec.dtype != "float32":
            raise ValueError(f"model {self.spec.id!r}: dtype {self.spec.dtype!r} is not supported by the dlib backend "
                             "(use float32)")
        pin_mmap_threshold()
        directory = models_dir(self.spec.source)
        paths = {k: directory / f for k, f in FILES.items()}
        missing = [str(p) for k, p in paths.items() if not p.is_file() and (k != "cnn" or self.kind == "cnn")]
        if missing:
            raise FileNotFoundError(f"missing dlib model file(s): {', '.join(missing)}")
        if self.spec.wants_gpu and dlib.DLIB_USE_CUDA:
            index = int(self.spec.device.split(":")[1]) if ":" in self.spec.device else 0
            dlib.cuda.set_device(index)
            self.device = f"cuda:{index}"
        self.detector = (dlib.cnn_face_detection_model_v1(str(paths["cnn"])) if self.kind == "cnn"
                         else dlib.get_frontal_face_detector())
        self.landmarks = dlib.shape_predictor(str(paths["landmarks"]))
        self.embedder = dlib.face_recognition_model_v1(str(paths["embedder"]))
        log.info("model %s: dlib %s (%s detector, CUDA build: %s) from %s, on %s", self.spec.id, dlib.__version__,
                 self.kind, dlib.DLIB_USE_CUDA, directory, self.device)
        return self.device

    def warmup(self) -> None:
        image = np.full((160, 160, 3), 128, np.uint8)
        detected, embedded = self.infer([DetectItem(image=image, max_faces=1, boxes=((40.0, 40.0, 120.0, 120.0),), embed=True),
                                         EmbedItem(crops=(np.zeros((CHIP_SIZE, CHIP_SIZE, 3), np.uint8),))])
        if detected["faces"][0] is None or len(embedded["embeddings"]) != 1:
            raise RuntimeError(f"warm-up produced {detected!r}, {embedded!r}")

    def infer(self, items: list[DetectItem | EmbedItem]) -> list[DetectResult | EmbedResult]:
        results: list[Any] = []
        chips: list[np.ndarray] = []
        owners: list[tuple[int, int]] = []
        for i, item in enumerate(items):
            if isinstance(item, EmbedItem):
                results.append({"embeddings": [], "recognition_batch": 0})
                for j, crop in enumerate(item.crops):
                    chips.append(_chip_sized(crop))
                    owners.append((i, j))
                continue
            faces, found = self._faces(item)
            for j, face in enumerate(faces):
                if face is None:
                    continue
                chip = face.pop("_chip")  # type: ignore[misc]
                face["crop"] = chip if item.crops else None
                if item.embed:
                    chips.append(chip)
                    owners.append((i, j))
            results.append({"faces": faces, "found": found, "recognition_batch": 0})
        if chips:
            vectors = l2_normalise(np.array(self.embedder.compute_face_descriptor(chips), dtype=np.float32))
            hand_out_embeddings(items, results, owners, vectors)
        return results

    def _detect(self, image: np.ndarray) -> list[tuple[tuple[float, float, float, float], float]]:
        """Boxes (x1, y1, x2, y2 in ``image``'s pixels) and scores, on a copy scaled to ``det_max_side``."""
        import cv2

        h, w = image.shape[:2]
        scale = min(1.0, self.det_max_side / max(h, w))
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) \
            if scale < 1.0 else image
        if self.kind == "cnn":
            found = [(d.rect, float(d.confidence)) for d in self.detector(small, self.upsample)]
        else:
            rects, scores, _ = self.detector.run(small, self.upsample, self.det_thresh)
            found = list(zip(rects, (float(s) for s in scores)))
        return [((r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale), s)
                for r, s in found if s >= self.det_thresh]

    def _faces(self, item: DetectItem) -> tuple[list[Face | None], int]:
        detected = self._detect(item.image)
        if item.boxes is None:
            faces = keep_largest([{"box": list(b), "score": s} for b, s in detected], item.max_faces)  # type: ignore[misc]
            return [self._analyse(item.image, f["box"], f["score"]) for f in faces], len(detected)
        out: list[Face | None] = []
        for box in item.boxes:
            # The detected face whose centre lies in the box and that overlaps it most; else the box itself:
            # dlib's landmark model places its points in any box, so a given box always has a face (score 0:
            # not detected).
            inside = [(b, s) for b, s in detected if centre_inside(b, box)]
            best, score = max(inside, key=lambda d: iou(d[0], box), default=(box, 0.0))
            out.append(self._analyse(item.image, list(best), score))
        return out, len(out)

    def _analyse(self, image: np.ndarray, box: list[float], score: float) -> Face:
        import dlib

        rect = dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])) - 1, int(round(box[3])) - 1)
        shape = self.landmarks(image, rect)
        pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
        five = np.stack([pts[36:42].mean(axis=0), pts[42:48].mean(axis=0), pts[30], pts[48], pts[54]])
        chip = np.asarray(dlib.get_face_chip(image, shape, size=CHIP_SIZE, padding=CHIP_PADDING), dtype=np.uint8)
        face: Any = {"box": [float(v) for v in box], "score": float(score),
                     "landmarks": [[float(x), float(y)] for x, y in five], "embedding": None, "crop": None,
                     "_chip": chip}
        return face

    def close(self) -> None:
        self.detector = None
        self.landmarks = None
        self.embedder = None


def _chip_sized(crop: np.ndarray) -> np.ndarray:
    import cv2

    if crop.shape[:2] == (CHIP_SIZE, CHIP_SIZE):
        return np.ascontiguousarray(crop)
    return cv2.resize(crop, (CHIP_SIZE, CHIP_SIZE), interpolation=cv2.INTER_AREA)
