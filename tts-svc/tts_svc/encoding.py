"""Streaming encoders: PCM chunks in, bytes of the response format out, as each chunk arrives.

Every format is made with PyAV and the FFmpeg it bundles in its wheel (libmp3lame, libopus, FFmpeg's aac
and flac encoders), so no Debian ffmpeg is needed. All output is mono at one rate (``OUTPUT_SAMPLE_RATE``,
24 kHz, what OpenAI's speech API returns); each model's own rate is resampled by FFmpeg's swresample, which
keeps its state across chunks, so sentence boundaries do not click.

    mp3   MPEG-1 layer III in a bare MP3 stream                       audio/mpeg
    opus  Opus in Ogg, a page per 20 ms so pages leave at once         audio/ogg
    aac   AAC-LC in ADTS frames (streamable; m4a would need its index)  audio/aac
    flac  FLAC; streamed, so STREAMINFO holds no total length           audio/flac
    wav   RIFF/WAVE s16le; streamed, so its sizes are 0xFFFFFFFF        audio/wav
    pcm   raw s16le, no header (as OpenAI's ``pcm``)                    audio/pcm

The streamed FLAC and WAV headers say "length unknown", as any piped encoder's do. PyAV/FFmpeg and
browsers read both to the end, soundfile (libsndfile) reads the WAV, the MP3 and the Opus, but refuses a
FLAC whose STREAMINFO holds no total length: decode FLAC with PyAV/ffmpeg, or ask for WAV.

An ``Encoder`` is not thread-safe; one request uses one, from one thread at a time.
"""

from __future__ import annotations

import struct
import numpy as np

OUTPUT_SAMPLE_RATE = 24_000

# format -> (content type, PyAV container format, codec); None = written here without a muxer.
FORMATS: dict[str, tuple[str, str | None, str | None]] = {
    "mp3": ("audio/mpeg", "mp3", "libmp3lame"),
    "opus": ("audio/ogg", "ogg", "libopus"),
    "aac": ("audio/aac", "adts", "aac"),
    "flac": ("audio/flac", "flac", "flac"),
    "wav": ("audio/wav", None, None),
    "pcm": ("audio/pcm", None, None),
}

# Muxer options: Ogg pages of 20 ms (the default of 1 s would hold each sentence's audio back).
_MUX_OPTIONS: dict[str, dict[str, str]] = {"ogg": {"page_duration": "20000"}}
_BIT_RATES = {"mp3": 64_000, "opus": 48_000, "aac": 64_000}


def content_type(fmt: str) -> str:
    return FORMATS[fmt][0]


class _Sink:
    """The file object PyAV's muxer writes to: collects bytes until ``take``. No ``seek``, so muxers
    write a streamable file (they never go back to patch a header)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class Encoder:
    """``encode(pcm, rate)`` for each chunk, in order, then ``finish()`` once; each returns the bytes
    that are ready (possibly none: a codec holds back a frame's worth)."""

    def __init__(self, fmt: str, *, sample_rate: int = OUTPUT_SAMPLE_RATE) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.format = fmt
        self.sample_rate = sample_rate
        self._header_sent = False
        self._container = None
        self._stream = None
        self._resampler = None
        self._resampler_rate: int | None = None
        self._sink = _Sink()
        _, container, codec = FORMATS[fmt]
        import av

        if container is not None:
            self._container = av.open(self._sink, mode="w", format=container, options=_MUX_OPTIONS.get(container, {}))
            stream = self._container.add_stream(codec, rate=sample_rate)
            stream.layout = "mono"
            if fmt in _BIT_RATES:
                stream.bit_rate = _BIT_RATES[fmt]
            self._stream = stream
            self._av_format = stream.codec_context.format.name
        else:
            self._av_format = "s16"
        self._finished = False

    def encode(self, pcm: bytes, sample_rate: int) -> bytes:
        """Encode one chunk of mono s16le PCM at ``sample_rate``."""
        if self._finished:
            raise RuntimeError("encoder already finished")
        out = self._start()
        if pcm:
            if self._resampler_rate not in (None, sample_rate):
                out += self._push(None)  # a new input rate: drain the old resampler first
            out += self._push(self._frame(pcm, sample_rate))
        return out

    def pause(self, duration_s: float) -> bytes:
        """Encode ``duration_s`` of silence (at the current input rate, so the resampler is kept)."""
        rate = self._resampler_rate or self.sample_rate
        return self.encode(bytes(2 * int(round(duration_s * rate))), rate)

    def finish(self) -> bytes:
        """Flush the resampler, the codec and the muxer; the stream is complete after these bytes."""
        if self._finished:
            return b""
        out = self._start()
        if self._resampler is not None:
            out += self._push(None)
        if self._container is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            out += self._sink.take()
        self._finished = True
        return out

    def close(self) -> None:
        """Release the codec without finishing (the client went away)."""
        if self._container is not None and not self._finished:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - best effort on an abandoned stream
                pass
        self._finished = True

    # internals ------------------------------------------------------------------------------------

    def _start(self) -> bytes:
        if self._header_sent:
            return b""
        self._header_sent = True
        return wav_header(self.sample_rate) if self.format == "wav" else b""

    def _frame(self, pcm: bytes, sample_rate: int):  # noqa: ANN202 - av.AudioFrame
        import av

        if self._resampler is None:
            self._resampler = av.AudioResampler(format=self._av_format, layout="mono", rate=self.sample_rate)
            self._resampler_rate = sample_rate
        samples = np.frombuffer(pcm, dtype="<i2")
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = sample_rate
        return frame

    def _push(self, frame) -> bytes:  # noqa: ANN001 - av.AudioFrame, or None to flush the resampler
        out = b""
        for resampled in self._resampler.resample(frame):
            if self._container is None:
                out += _s16_bytes(resampled)
            else:
                for packet in self._stream.encode(resampled):
                    self._container.mux(packet)
        if self._container is not None:
            out += self._sink.take()
        if frame is None:
            self._resampler = None
            self._resampler_rate = None
        return out


def _s16_bytes(frame) -> bytes:  # noqa: ANN001 - av.AudioFrame in s16 mono
    return frame.to_ndarray().astype("<i2", copy=False).reshape(-1).tobytes()


def wav_header(sample_rate: int) -> bytes:
    """A RIFF/WAVE header for mono s16le whose sizes say "unknown" (0xFFFFFFFF): the data runs to the
    end of the stream."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", unknown))

