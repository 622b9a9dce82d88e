"""Cutting long audio into chunks at its quietest moments, so that a backend holds one chunk's
features (float32 samples, log-mel frames, encoder states) at a time, never the whole file's.

Whisper-family models see 30 s windows anyway; a chunk is many windows. Cutting at the quietest 100 ms
near each boundary keeps words whole in all but wall-to-wall speech, where a cut falls between two
syllables at worst."""

from __future__ import annotations

import numpy as np

from .items import SAMPLE_RATE

FRAME = SAMPLE_RATE // 100  # 10 ms
SMOOTH_FRAMES = 10  # energy over 100 ms


def chunk_bounds(audio: np.ndarray, *, max_chunk_s: float, search_s: float = 10.0) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` sample ranges covering ``audio`` in order, each at most ``max_chunk_s``
    long. Each cut lies in the last ``search_s`` before the limit, at the quietest 100 ms found there."""
    n_samples = len(audio)
    max_len = int(max_chunk_s * SAMPLE_RATE)
    if max_len <= 0:
        raise ValueError("max_chunk_s must be positive")
    if n_samples <= max_len:
        return [(0, n_samples)]
    search = min(int(search_s * SAMPLE_RATE), max_len // 2)
    bounds: list[tuple[int, int]] = []
    start = 0
    while n_samples - start > max_len:
        lo, hi = start + max_len - search, start + max_len
        cut = _quietest(audio[lo:hi]) + lo
        bounds.append((start, cut))
        start = cut
    bounds.append((start, n_samples))
    return bounds


def _quietest(window: np.ndarray) -> int:
    """Offset (a multiple of 10 ms) of the centre of the quietest 100 ms in ``window``."""
    frames = len(window) // FRAME
    if frames <= SMOOTH_FRAMES:
        return len(window) // 2
    x = window[: frames * FRAME].astype(np.float32).reshape(frames, FRAME)
    energy = np.einsum("ij,ij->i", x, x)
    smooth = np.convolve(energy, np.ones(SMOOTH_FRAMES, np.float32), mode="valid")
    # The last quietest place wins ties: longer chunks, fewer cuts.
    best = len(smooth) - 1 - int(np.argmin(smooth[::-1]))
    return (best + SMOOTH_FRAMES // 2) * FRAME


def to_float32(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM → float32 in [-1, 1), the input Whisper models expect."""
    return pcm.astype(np.float32) / 32768.0
