"""SCRFD face detection (insightface's format: det_10g.onnx in buffalo_l, det_500m.onnx in buffalo_s ...).

Pre-processing: the image is scaled to fit the detector's input (``det_size``, or the graph's fixed size),
keeping its aspect ratio, placed in the top-left corner of a black canvas, normalised as
``(x - 127.5) / 128`` (RGB, NCHW). Post-processing: per stride, anchor centres on a grid; scores at or
above ``det_thresh`` keep their anchor; boxes and the five landmarks are distances from the anchor centre
in stride units; non-maximum suppression at ``nms_thresh``. Outputs come in the order SCRFD exports them:
scores for every stride, then boxes, then landmarks (6 or 9 outputs: strides 8/16/32 with 2 anchors; 10 or
15: strides 8...128 with one). Only models with landmark outputs (9 or 15) can feed recognition.
"""

from __future__ import annotations

from typing import Any

import numpy as np

INPUT_MEAN = 127.5
INPUT_STD = 128.0


class ScrfdDetector:
    def __init__(self, session: Any, *, det_size: tuple[int, int], det_thresh: float, nms_thresh: float,
                 run_options: Any = None) -> None:
        self.session = session
        self.run_options = run_options
        self.det_thresh = det_thresh
        self.nms_thresh = nms_thresh
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        fixed = inp.shape[2:4]
        if all(isinstance(d, int) and d > 0 for d in fixed):
            det_size = (int(fixed[1]), int(fixed[0]))  # the graph's own size wins
        self.input_size = det_size  # (width, height)
        outputs = session.get_outputs()
        self.output_names = [o.name for o in outputs]
        n = len(outputs)
        if n in (6, 9):
            self.strides, self.num_anchors = (8, 16, 32), 2
        elif n in (10, 15):
            self.strides, self.num_anchors = (8, 16, 32, 64, 128), 1
        else:
            raise ValueError(f"an SCRFD detector has 6, 9, 10 or 15 outputs, this one {n}")
        if n in (6, 10):
            raise ValueError("this SCRFD detector has no landmark outputs; recognition needs the five landmarks")
        self.batched = len(outputs[0].shape) == 3
        self._centers: dict[tuple[int, int, int], np.ndarray] = {}

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces in ``image`` (RGB uint8): boxes (N, 4) x1 y1 x2 y2, scores (N,), landmarks (N, 5, 2), in
        the image's pixels, best score first."""
        import cv2

        h, w = image.shape[:2]
        in_w, in_h = self.input_size
        if h / w > in_h / in_w:
            new_h, new_w = in_h, max(1, int(in_h * w / h))
        else:
            new_w, new_h = in_w, max(1, int(in_w * h / w))
        scale = new_h / h
        canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h)) if (new_w, new_h) != (w, h) else image
        blob = canvas.transpose(2, 0, 1)[None].astype(np.float32, order="C")  # NCHW
        blob -= INPUT_MEAN
        blob /= INPUT_STD
        outs = self.session.run(self.output_names, {self.input_name: blob}, self.run_options)

        scores_l, boxes_l, kps_l = [], [], []
        fmc = len(self.strides)
        for i, stride in enumerate(self.strides):
            scores, boxes, kps = outs[i], outs[i + fmc] * stride, outs[i + 2 * fmc] * stride
            if self.batched:
                scores, boxes, kps = scores[0], boxes[0], kps[0]
            centers = self._anchor_centers(in_h // stride, in_w // stride, stride)
            keep = np.where(scores.reshape(-1) >= self.det_thresh)[0]
            if keep.size == 0:
                continue
            c = centers[keep]
            b = boxes[keep]
            scores_l.append(scores.reshape(-1)[keep])
            boxes_l.append(np.stack([c[:, 0] - b[:, 0], c[:, 1] - b[:, 1], c[:, 0] + b[:, 2], c[:, 1] + b[:, 3]], axis=-1))
            k = kps[keep].reshape(len(keep), -1, 2)
            kps_l.append(c[:, None, :] + k)
        if not scores_l:
            return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0, 5, 2), np.float32)
        scores = np.concatenate(scores_l).astype(np.float32)
        boxes = (np.concatenate(boxes_l) / scale).astype(np.float32)
        kps = (np.concatenate(kps_l) / scale).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        scores, boxes, kps = scores[order], boxes[order], kps[order]
        keep = nms(boxes, scores, self.nms_thresh)
        return boxes[keep], scores[keep], kps[keep]

    def _anchor_centers(self, rows: int, cols: int, stride: int) -> np.ndarray:
        key = (rows, cols, stride)
        centers = self._centers.get(key)
        if centers is None:  # one entry per stride of the one input size: bounded
            grid = np.stack(np.mgrid[:rows, :cols][::-1], axis=-1).astype(np.float32)
            centers = (grid * stride).reshape(-1, 2)
            if self.num_anchors > 1:
                centers = np.repeat(centers, self.num_anchors, axis=0)
            self._centers[key] = centers
        return centers


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression (insightface's arithmetic: +1 pixel widths)."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep
