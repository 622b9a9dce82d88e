"""ArcFace-style recognition (insightface's format: w600k_r50.onnx in buffalo_l, or any recogniser with one
square input of at least 112 pixels and one embedding output, such as LVFace exported to ONNX).

Pre-processing: aligned RGB crops at the input size, normalised as ``(x - mean) / std``: 127.5 / 127.5,
except for graphs converted from MXNet that normalise inside (a ``Sub``/``_minus`` and a ``Mul``/``_mul``
node among their first eight), which take raw pixels (0 / 1) - insightface's own rule. The options
``rec_mean`` and ``rec_std`` override it for a recogniser trained otherwise. One forward pass takes every
crop, split into chunks of ``rec_batch`` only past it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def normalisation(graph: Any) -> tuple[float, float]:
    names = [node.name for node in graph.node[:8]]
    has_sub = any(n.startswith("Sub") or n.startswith("_minus") for n in names)
    has_mul = any(n.startswith("Mul") or n.startswith("_mul") for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


class ArcFaceRecognizer:
    def __init__(self, session: Any, *, mean: float, std: float, rec_batch: int, run_options: Any = None) -> None:
        self.session = session
        self.run_options = run_options
        self.mean, self.std = float(mean), float(std)
        self.rec_batch = rec_batch
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.size = int(inp.shape[2])
        self.output_name = session.get_outputs()[0].name
        self.forward_passes = 0  # how many times the network ran (tests read it to see batching)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """Raw embeddings (N, D) of ``crops``: RGB uint8, resized to the input size where they differ."""
        import cv2

        if not crops:
            return np.zeros((0, 0), np.float32)
        blob = np.empty((len(crops), 3, self.size, self.size), np.float32)
        for i, crop in enumerate(crops):
            if crop.shape[:2] != (self.size, self.size):
                crop = cv2.resize(crop, (self.size, self.size), interpolation=cv2.INTER_AREA)
            blob[i] = ((crop.astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1)
        out = []
        for start in range(0, len(crops), self.rec_batch):
            self.forward_passes += 1
            out.append(self.session.run([self.output_name], {self.input_name: blob[start:start + self.rec_batch]},
                                        self.run_options)[0])
        return np.concatenate(out).reshape(len(crops), -1).astype(np.float32)
