"""Videos for jobs: keyframes at scene changes, and the audio track as 16 kHz mono WAV pieces.
PyAV (FFmpeg's libraries, shipped in its wheel) decodes; these functions block, and the jobs run them on a
bounded executor of their own (``jobs.items``), never on the event loop.

Keyframes, the rule: the video is sampled up to ``samples_per_s`` (30) times a second; each sample is
reduced to a 48x27 colour thumbnail, and its score is the mean absolute difference from the last keyframe's
thumbnail over all pixels and channels (0 = identical, 1 = black against white; colour, not grey, so a cut
between two colours of the same brightness still counts).

- The first frame is always a keyframe.
- **Every scene change above the threshold gets a keyframe**: a sample whose score reaches ``threshold`` starts
  a new scene. A slow pan becomes a keyframe once it has drifted that far.
- **Minimum spacing** ``min_spacing_s`` (0.5 s) after the last keyframe: a change sooner than that (a flash,
  a strobe) is not taken then; if the new picture stays, its first sample past the spacing is. So every scene
  that lasts longer than the spacing is seen, and a strobe gives at most one keyframe per spacing.
- **A cap per video with a floor**: at most ``max(floor, per_minute x minutes)`` keyframes (the video's
  duration, or the time decoded so far when the container does not say). Short clips never reach the floor
  (20): a 10 s clip with four hard cuts gets 5 keyframes. Past the cap the strongest changes are kept, and
  the first frame.
"""

from __future__ import annotations

import io
import math
import wave
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

THUMB_W, THUMB_H = 48, 27


class MediaError(Exception):
    """A file PyAV cannot read as the job needs it: the item ends with this error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(order=True)
class Keyframe:
    t_s: float
    score: float = field(compare=False)
    jpeg: bytes = field(compare=False, repr=False)


@dataclass
class VideoInfo:
    duration_s: float | None
    width: int
    height: int
    has_audio: bool


def probe(path: str) -> VideoInfo:
    try:
        with av.open(path) as c:
            vs = c.streams.video[0] if c.streams.video else None
            if vs is None:
                raise MediaError("no_video_stream", "the file has no video stream")
            dur = float(c.duration / av.time_base) if c.duration else None
            return VideoInfo(dur, vs.codec_context.width, vs.codec_context.height, bool(c.streams.audio))
    except av.FFmpegError as e:
        raise MediaError("unreadable_video", f"the video could not be read: {e}") from e


def scene_score(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two thumbnails (any shape, 0..255 values), 0..1."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() / 255.0)


DEFAULT_MIN_SPACING_S = 0.5
DEFAULT_FLOOR = 20


class KeyframePicker:
    """The selection rule on its own (pure, fed thumbnails in time order; see the module's docstring).
    Per sample: ``candidate`` (a scene change, spaced?), then ``wants`` (within the cap?) before the caller
    makes the JPEG, then ``keep``. Memory holds at most the cap's keyframes."""

    def __init__(self, *, threshold: float, per_minute: float, floor: int = DEFAULT_FLOOR,
                 min_spacing_s: float = DEFAULT_MIN_SPACING_S, duration_s: float | None = None) -> None:
        self.threshold = threshold
        self.per_minute = per_minute
        self.floor = max(1, int(floor))
        self.min_spacing_s = min_spacing_s
        self.duration_s = duration_s or 0.0
        self.last: np.ndarray | None = None  # the last keyframe's thumbnail: what a scene change is measured from
        self.last_t: float | None = None
        self.kept: list[tuple[float, float, bool, object]] = []  # (t, score, first, payload)

    def cap(self, t_s: float) -> int:
        """The most keyframes the video may have, known at ``t_s``."""
        return max(self.floor, math.ceil(self.per_minute * max(t_s, self.duration_s) / 60.0))

    def candidate(self, t_s: float, thumb: np.ndarray) -> float | None:
        """The sample's score if it starts a scene that may be kept now (the first sample always does), else
        None. A change inside the spacing is left for a later sample, measured from the same keyframe."""
        if self.last is None:
            return 1.0
        score = scene_score(thumb, self.last)
        if score < self.threshold or (self.last_t is not None and t_s - self.last_t < self.min_spacing_s):
            return None
        return score

    def wants(self, t_s: float, score: float) -> bool:
        """Whether a candidate would be kept under the cap (ask before making its JPEG)."""
        if len(self.kept) < self.cap(t_s):
            return True
        return any(not first and s < score for _, s, first, _ in self.kept)

    def keep(self, t_s: float, score: float, payload: object, thumb: np.ndarray) -> None:
        """Keep the sample (its ``thumb`` becomes what the next change is measured from); past the cap, the
        weakest change kept so far (never the first frame) makes room."""
        self.kept.append((t_s, score, not self.kept, payload))
        self.last = thumb
        self.last_t = t_s
        while len(self.kept) > self.cap(t_s):
            self.kept.remove(min((k for k in self.kept if not k[2]), key=lambda k: k[1]))

    def skip(self, thumb: np.ndarray) -> None:
        """A scene change the cap refused: later changes are measured from it, as if it had been kept."""
        self.last = thumb

    def keyframes(self) -> list[tuple[float, float, object]]:
        return sorted((t, s, p) for t, s, _, p in self.kept)


def extract_keyframes(path: str, *, threshold: float, per_minute: float, floor: int = DEFAULT_FLOOR,
                      min_spacing_s: float = DEFAULT_MIN_SPACING_S, samples_per_s: float = 30.0,
                      max_side: int = 1280) -> tuple[VideoInfo, list[Keyframe]]:
    """The video's keyframes as JPEGs with their timestamps (see the module's docstring)."""
    info = probe(path)
    picker = KeyframePicker(threshold=threshold, per_minute=per_minute, floor=floor, min_spacing_s=min_spacing_s,
                            duration_s=info.duration_s)
    next_t = 0.0
    step = 1.0 / samples_per_s
    try:
        with av.open(path) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            for frame in c.decode(vs):
                if frame.time is None:
                    continue
                t = float(frame.time)
                if t + 1e-6 < next_t:
                    continue
                next_t = t + step
                thumb = frame.to_ndarray(format="rgb24", width=THUMB_W, height=THUMB_H)
                score = picker.candidate(t, thumb)
                if score is None:
                    continue
                if picker.wants(t, score):
                    picker.keep(t, score, _jpeg(frame, max_side), thumb)
                else:
                    picker.skip(thumb)
    except av.FFmpegError as e:
        raise MediaError("unreadable_video", f"the video could not be decoded: {e}") from e
    frames = [Keyframe(round(t, 3), round(s, 4), p) for t, s, p in picker.keyframes()]  # type: ignore[arg-type]
    if not frames:
        raise MediaError("no_frames", "no frame of the video could be decoded")
    return info, frames


def _jpeg(frame: av.VideoFrame, max_side: int) -> bytes:
    im = frame.to_image()
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def extract_audio(path: str, out_dir: Path, *, chunk_s: float, rate: int = 16000) -> list[tuple[float, Path]]:
    """The first audio track as 16 kHz mono 16-bit WAV files of at most ``chunk_s`` seconds each:
    [(offset_s, file)]. Empty when the file has no audio."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pieces: list[tuple[float, Path]] = []
    per_chunk = int(chunk_s * rate) * 2  # bytes of s16 mono
    buf = bytearray()
    written = 0

    def flush(final: bool) -> None:
        nonlocal buf, written
        while len(buf) >= per_chunk or (final and buf):
            data, buf = bytes(buf[:per_chunk]), buf[per_chunk:]
            f = out_dir / f"audio-{len(pieces):05d}.wav"
            with wave.open(str(f), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(rate)
                w.writeframes(data)
            pieces.append((written / 2 / rate, f))
            written += len(data)

    try:
        with av.open(path) as c:
            if not c.streams.audio:
                return []
            stream = c.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            for frame in c.decode(stream):
                for out in resampler.resample(frame):
                    buf += out.to_ndarray().tobytes()
                flush(False)
            for out in resampler.resample(None):
                buf += out.to_ndarray().tobytes()
            flush(True)
    except av.FFmpegError as e:
        raise MediaError("unreadable_audio", f"the audio track could not be decoded: {e}") from e
    return pieces
