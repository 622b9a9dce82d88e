"""How a vector is written: float16, little-endian, raw in the index's BLOB column and base64 in an embed
job's stored result (half the size of float32, a tenth of a JSON list of floats; cosine ranks agree to
about 1e-3)."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np

F16 = np.dtype("<f2")


def to_f16_bytes(vector: Sequence[float] | np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).astype(F16).tobytes()


def to_f16_b64(vector: Sequence[float] | np.ndarray) -> str:
    return base64.b64encode(to_f16_bytes(vector)).decode("ascii")


def from_f16_b64(text: str) -> np.ndarray:
    """The float32 vector that ``to_f16_b64`` wrote."""
    return np.frombuffer(base64.b64decode(text), dtype=F16).astype(np.float32)


def from_f16_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=F16).astype(np.float32)
