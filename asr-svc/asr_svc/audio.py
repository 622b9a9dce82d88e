"""Decoding uploads to 16 kHz mono int16 PCM, with every bad input mapped to its 4xx.

Runs in the HTTP process (in the threadpool), so a file that is not audio, too long or corrupt is refused
before any model is leased. PyAV (FFmpeg's libraries in a wheel) reads every container people send:
wav, flac, mp3, ogg/vorbis, ogg/opus, m4a/aac, webm, mp4 with an audio track, and more.

What is refused, and how:

* 400 ``empty_file``: zero bytes; 400 ``empty_audio``: a valid container holding no audio samples;
  400 ``corrupt_audio``: the decoder failed part-way.
* 413 ``payload_too_large``: more bytes than ``max_bytes``; 413 ``audio_too_long``: longer than
  ``max_duration_s``, found while decoding: decoding stops at the limit, so a small file that expands to
  days of audio never fills memory. (Headers are not trusted for this: a WAV written to a pipe declares
  4 GB of data whatever it holds.)

Memory: one decode holds at most ``max_duration_s`` x 16000 x 2 bytes of samples (230 MB for the default
two hours; the samples are written once into a buffer whose pages are touched only as they fill) plus the
upload and one decoded frame; the service runs at most ``ASR_SVC_MAX_CONCURRENT_DECODES`` at once
(``modelhost.decodes``: 429 past those and their queue).
* 415 ``unsupported_media_type``: not a container FFmpeg recognises, or one outside ``CONTAINERS`` (image,
  playlist and concat demuxers can open other files or URLs); 415 ``no_audio_track``: no audio stream.

Silence is not an error: ``DecodedAudio.silent`` says whether the loudest sample is below the silence
level, and the route answers an empty transcript for it without running a model.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from modelhost.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

from .items import SAMPLE_RATE

# FFmpeg demuxer names (``container.format.name`` is a comma-separated list of aliases) that hold audio.
CONTAINERS = frozenset({
    "wav", "w64", "flac", "mp3", "ogg", "matroska", "webm", "mov", "mp4", "m4a", "3gp", "3g2", "aac", "aiff",
    "caf", "amr", "au", "wv", "ape", "mpegts", "avi", "asf", "mpeg", "tta", "mp2", "ac3", "eac3", "dts", "opus",
})
FORMATS_HINT = "wav, flac, mp3, ogg/opus, m4a/aac, webm, mp4"


@dataclass(frozen=True)
class DecodedAudio:
    pcm: np.ndarray
    """Mono 16 kHz int16."""
    container: str
    """FFmpeg's name of the container, e.g. ``"wav"``, ``"mov,mp4,m4a,3gp,3g2,mj2"``."""
    codec: str
    source_rate: int
    source_channels: int
    peak_dbfs: float
    """Level of the loudest sample; ``-inf`` for digital silence."""
    silent: bool

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


def decode_audio(data: bytes, *, max_bytes: int, max_duration_s: float, silence_dbfs: float) -> DecodedAudio:
    import av

    if not data:
        raise BadRequest("the file is empty", param="file", code="empty_file")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the file has {len(data)} bytes; the limit is {max_bytes}", param="file")
    try:
        # No nested opens: a playlist or concat script must not make FFmpeg read other files or URLs.
        container = av.open(io.BytesIO(data), mode="r", options={"protocol_whitelist": "none"})
    except (av.error.FFmpegError, ValueError, IndexError) as e:
        raise UnsupportedMediaType(
            f"the file is not audio in a container we read ({FORMATS_HINT}): {_reason(e)}", param="file")
    with container:
        name = container.format.name
        if not CONTAINERS.intersection(name.split(",")):
            raise UnsupportedMediaType(f"the container {name!r} is not an audio format we read ({FORMATS_HINT})", param="file")
        if not container.streams.audio:
            raise UnsupportedMediaType("the file has no audio track", param="file", code="no_audio_track")
        stream = container.streams.audio[0]
        pcm, peak = _decode(container, stream, max_samples=int(max_duration_s * SAMPLE_RATE), max_duration_s=max_duration_s)
        codec = stream.codec_context.name
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        channels = int(stream.codec_context.channels or 0)
    if len(pcm) == 0:
        raise BadRequest("the file holds no audio samples", param="file", code="empty_audio")
    peak_dbfs = 20 * math.log10(peak / 32768) if peak else -math.inf
    return DecodedAudio(pcm=pcm, container=name, codec=codec, source_rate=rate, source_channels=channels,
                        peak_dbfs=peak_dbfs, silent=peak_dbfs < silence_dbfs)


def _decode(container, stream, *, max_samples: int, max_duration_s: float) -> tuple[np.ndarray, int]:  # noqa: ANN001
    """(the samples, the largest absolute sample). Written into one buffer of ``max_samples`` reserved
    up front: the pages are only touched as samples arrive, so a decode holds the audio's own size once
    (a list of pieces joined at the end held it twice, and the peak's int32 copy twice more)."""
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    out = np.empty(max_samples, np.int16)
    total = 0
    peak = 0

    def take(frames: list) -> None:  # noqa: ANN001
        nonlocal total, peak
        for f in frames:
            chunk = f.to_ndarray().reshape(-1)
            if total + len(chunk) > max_samples:
                raise PayloadTooLarge(f"the audio is longer than the limit of {max_duration_s:.0f} s",
                                      param="file", code="audio_too_long")
            out[total:total + len(chunk)] = chunk
            total += len(chunk)
            if len(chunk):
                peak = max(peak, int(np.abs(chunk.astype(np.int32)).max()))

    try:
        for frame in container.decode(stream):
            take(resampler.resample(frame))
        take(resampler.resample(None))  # flush
    except (av.error.FFmpegError, ValueError) as e:
        raise BadRequest(f"the audio could not be decoded (truncated or corrupt): {_reason(e)}",
                         param="file", code="corrupt_audio")
    return out[:total], peak


def _reason(e: BaseException) -> str:
    """FFmpeg's own words without the errno and the '<none>' file name PyAV adds for in-memory input."""
    text = getattr(e, "strerror", None) or str(e)
    return text.split(": '<none>'")[0]
