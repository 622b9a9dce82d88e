"""Sample conversions the backends share (worker side)."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np


def float_to_pcm16(wav: Any) -> bytes:
    """Float samples in [-1, 1] (list, numpy array or tensor already on CPU) → mono s16le bytes."""
    x = np.asarray(wav, dtype=np.float32).reshape(-1)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def change_tempo(pcm: bytes, sample_rate: int, factor: float) -> bytes:
    """Play ``pcm`` ``factor`` times faster without changing its pitch (FFmpeg's ``atempo`` through
    PyAV). For engines whose own rate control does not reach the speed asked for."""
    if not pcm or abs(factor - 1.0) < 1e-3:
        return pcm
    import av

    # atempo takes 0.5 to 100 per instance: chain instances for slower rates.
    stages: list[float] = []
    rest = factor
    while rest < 0.5:
        stages.append(0.5)
        rest /= 0.5
    stages.append(rest)
    graph = av.filter.Graph()
    src = graph.add_abuffer(format="s16", sample_rate=sample_rate, layout="mono", time_base=f"1/{sample_rate}")
    node = src
    for stage in stages:
        nxt = graph.add("atempo", f"{stage:.6f}")
        node.link_to(nxt)
        node = nxt
    sink = graph.add("abuffersink")
    node.link_to(sink)
    graph.configure()
    frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = 0
    frame.time_base = Fraction(1, sample_rate)
    graph.push(frame)
    graph.push(None)
    out: list[bytes] = []
    while True:
        try:
            got = graph.pull()
        except (av.error.BlockingIOError, av.error.EOFError):
            break
        out.append(got.to_ndarray().astype("<i2", copy=False).reshape(-1).tobytes())
    return b"".join(out)
