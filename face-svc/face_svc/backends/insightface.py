"""insightface-format face analysis on ONNX Runtime: SCRFD detection, ArcFace alignment, ArcFace-style
recognition (the ``buffalo_l`` pack by default; see _packs.py for where packs come from).

The insightface package itself is not used: it pins ``onnxruntime`` (which would replace
``onnxruntime-gpu`` in a GPU environment) and hides the session options that keep memory bounded. The
pre- and post-processing here are its arithmetic (the tests check them against it).

Batching: each image is detected on its own (SCRFD runs one image per pass), then every face that needs an
embedding, across all the items of the batch, goes through one recognition pass.

Given boxes (verify with ``box_a``/``box_b``): a box's face is the detected face whose centre lies in the
box and that overlaps it most, looked for in the whole image and, where there is none, again in the box's
region grown by half the box's size on every side (a face too small to be found at ``det_size`` in the
whole image); none there either is ``None``.

Options (catalog ``options``): ``det_size`` (int or [width, height], default 640), ``det_thresh`` (0.5),
``nms_thresh`` (0.4), ``rec_batch`` (most faces in one recognition pass, 64), ``det_model``,
``rec_model``, ``url``, ``sha256`` (_packs.py), ``rec_mean``, ``rec_std`` (_arcface.py), ``cpu_mem_arena``,
``arena_shrinkage``, ``cudnn_conv_algo_search``, ``gpu_mem_limit_mb``, ``threads`` (_ort.py),
``verify_threshold`` (read by the HTTP side).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from modelhost.backend import Backend
from modelhost.catalog import ModelSpec

from ..items import (DetectItem, DetectResult, EmbedItem, EmbedResult, Face, centre_inside, hand_out_embeddings, iou,
                     keep_largest, l2_normalise)
from . import _ort, _packs
from ._align import norm_crop
from ._memory import pin_mmap_threshold
from ._arcface import ArcFaceRecognizer, normalisation
from ._scrfd import ScrfdDetector

log = logging.getLogger(__name__)

BOX_MARGIN = 0.5


class InsightFaceAnalyzer(Backend):
    preload = ("onnxruntime", "cv2")  # what a warm spare imports ahead (``Backend.preload``)

    def __init__(self, spec: ModelSpec, cache_dir: str) -> None:
        super().__init__(spec, cache_dir)
        o = spec.options
        size = o.get("det_size", 640)
        self.det_size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        self.det_thresh = float(o.get("det_thresh", 0.5))
        self.nms_thresh = float(o.get("nms_thresh", 0.4))
        self.rec_batch = int(o.get("rec_batch", 64))
        self.detector: ScrfdDetector | None = None
        self.recognizer: ArcFaceRecognizer | None = None
        self.providers: dict[str, list[str]] = {}
        self.device = "cpu"

    def load(self) -> str:
        if self.spec.dtype != "float32":
            raise ValueError(f"model {self.spec.id!r}: dtype {self.spec.dtype!r} is not supported by the insightface "
                             "backend (ONNX models run in the precision they were exported in; use float32)")
        pin_mmap_threshold()
        pack = _packs.resolve(self.spec, self.cache_dir)
        factory = _ort.SessionFactory(self.spec)
        det_session = factory.open(str(pack.detector))
        rec_session = factory.open(str(pack.recognizer))
        self.providers = {"detection": det_session.get_providers(), "recognition": rec_session.get_providers()}
        devices = {factory.device_of(det_session), factory.device_of(rec_session)}
        # Both must be on the GPU to call it a GPU model: a half-CPU pipeline is a CPU fallback.
        self.device = devices.pop() if len(devices) == 1 else "cpu"
        run_options = factory.run_options(self.device)
        self.detector = ScrfdDetector(det_session, det_size=self.det_size, det_thresh=self.det_thresh,
                                      nms_thresh=self.nms_thresh, run_options=run_options)
        mean, std = normalisation(_packs.graph_of(pack.recognizer))
        self.recognizer = ArcFaceRecognizer(rec_session, mean=float(self.spec.options.get("rec_mean", mean)),
                                            std=float(self.spec.options.get("rec_std", std)),
                                            rec_batch=self.rec_batch, run_options=run_options)
        log.info("model %s: detector %s (input %dx%d), recogniser %s (input %d), on %s (providers %s)",
                 self.spec.id, pack.detector.name, *self.detector.input_size, pack.recognizer.name,
                 self.recognizer.size, self.device, self.providers)
        return self.device

    def warmup(self) -> None:
        # A bright square on grey runs every head of the detector; the recogniser runs on one crop.
        image = np.full((self.det_size[1], self.det_size[0], 3), 96, np.uint8)
        image[40:104, 40:104] = 255
        detected, embedded = self.infer([DetectItem(image=image, max_faces=1, embed=True),
                                         EmbedItem(crops=(np.ascontiguousarray(image[:112, :112]),))])
        if not isinstance(detected["faces"], list) or len(embedded["embeddings"]) != 1:
            raise RuntimeError(f"warm-up produced {detected!r}, {embedded!r}")

    def infer(self, items: list[DetectItem | EmbedItem]) -> list[DetectResult | EmbedResult]:
        assert self.detector is not None and self.recognizer is not None, "infer before load"
        results: list[Any] = []
        to_embed: list[np.ndarray] = []
        owners: list[tuple[int, int]] = []  # (item index, face index or crop index) per crop to embed
        for i, item in enumerate(items):
            if isinstance(item, EmbedItem):
                results.append({"embeddings": [], "recognition_batch": 0})
                for j, crop in enumerate(item.crops):
                    to_embed.append(crop)
                    owners.append((i, j))
                continue
            faces, found = self._faces(item)
            for j, face in enumerate(faces):
                if face is None:
                    continue
                if item.embed or item.crops:
                    crop = norm_crop(item.image, np.asarray(face["landmarks"], np.float32), self.recognizer.size)
                    face["crop"] = crop if item.crops else None
                    if item.embed:
                        to_embed.append(crop)
                        owners.append((i, j))
            results.append({"faces": faces, "found": found, "recognition_batch": 0})
        if to_embed:
            embeddings = l2_normalise(self.recognizer.embed(to_embed))
            hand_out_embeddings(items, results, owners, embeddings)
        return results

    def _faces(self, item: DetectItem) -> tuple[list[Face | None], int]:
        """The item's faces (largest first, or one per given box) and how many the detector found."""
        assert self.detector is not None
        if item.boxes is None:
            boxes, scores, kps = self.detector.detect(item.image)
            faces = [_face(b, s, k) for b, s, k in zip(boxes, scores, kps)]
            return list(keep_largest(faces, item.max_faces)), len(faces)
        # Boxes usually come from an earlier detect of the same image: match them against the whole image's
        # faces first; detect again only on the region of a box nothing matched (a face too small there).
        boxes, scores, kps = self.detector.detect(item.image)
        whole = [_face(b, s, k) for b, s, k in zip(boxes, scores, kps)]
        out: list[Face | None] = []
        for box in item.boxes:
            face = _best_overlap(whole, box)
            if face is None:
                face = _best_overlap(self._detect_region(item.image, box), box)
            out.append(face)
        return out, sum(f is not None for f in out)

    def _detect_region(self, image: np.ndarray, box: tuple[float, float, float, float]) -> list[Face]:
        assert self.detector is not None
        h, w = image.shape[:2]
        bw, bh = box[2] - box[0], box[3] - box[1]
        x1, y1 = max(0, int(box[0] - BOX_MARGIN * bw)), max(0, int(box[1] - BOX_MARGIN * bh))
        x2, y2 = min(w, int(np.ceil(box[2] + BOX_MARGIN * bw))), min(h, int(np.ceil(box[3] + BOX_MARGIN * bh)))
        if x2 - x1 < 2 or y2 - y1 < 2:
            return []
        boxes, scores, kps = self.detector.detect(np.ascontiguousarray(image[y1:y2, x1:x2]))
        offset = np.array([x1, y1], np.float32)
        return [_face(b + np.tile(offset, 2), s, k + offset) for b, s, k in zip(boxes, scores, kps)]

    def close(self) -> None:
        self.detector = None
        self.recognizer = None

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return _ort.is_out_of_memory(exc)


def _best_overlap(faces: list[Face], box: tuple[float, float, float, float]) -> Face | None:
    candidates = [f for f in faces if centre_inside(f["box"], box)]
    return max(candidates, key=lambda f: iou(f["box"], box), default=None)


def _face(box: np.ndarray, score: float, landmarks: np.ndarray) -> Face:
    return {"box": [float(v) for v in box[:4]], "score": float(score),
            "landmarks": [[float(x), float(y)] for x, y in landmarks], "embedding": None, "crop": None}
