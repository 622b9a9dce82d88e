"""Decoding uploads (PyAV, real FFmpeg decoders) and cutting long audio into chunks: every container people
send, and every way an upload can be wrong, each mapped to its 4xx."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from asr_svc.audio import decode_audio
from asr_svc.chunks import chunk_bounds, to_float32
from modelhost.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

pytestmark = pytest.mark.unit

SR = 16000
LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_duration_s": 60.0, "silence_dbfs": -60.0}


def decode(data: bytes, **overrides):  # noqa: ANN201 - DecodedAudio
    return decode_audio(data, **{**LIMITS, **overrides})


def dominant_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float32)))
    return float(np.argmax(spectrum)) * SR / len(pcm)


@pytest.mark.parametrize("container", ["wav", "flac", "mp3", "ogg", "opus", "m4a", "webm"])
def test_every_container_decodes_to_16k_mono_with_its_pitch_and_length(kit, container: str) -> None:
    # Stereo at 22.05 kHz in: 16 kHz mono out, the 440 Hz tone still at 440 Hz, 2 s still about 2 s.
    audio = decode(kit.encode(kit.tone(2.0, rate=22050, channels=2), 22050, container))
    assert audio.pcm.dtype == np.int16 and audio.pcm.ndim == 1
    assert audio.duration_s == pytest.approx(2.0, abs=0.05)
    assert dominant_hz(audio.pcm) == pytest.approx(440, abs=2)
    assert audio.source_channels == 2
    assert audio.peak_dbfs == pytest.approx(-10.5, abs=1.5)  # amplitude 0.3
    assert not audio.silent


def test_container_and_codec_are_reported(kit) -> None:
    audio = decode(kit.encode(kit.tone(0.5), SR, "m4a"))
    assert "mp4" in audio.container.split(",") and audio.codec == "aac" and audio.source_rate == 44100


def test_speech_from_flite_decodes(speech) -> None:
    audio = decode(speech("what time is it"))
    assert (audio.container, audio.codec, audio.source_rate, audio.source_channels) == ("wav", "pcm_s16le", 16000, 1)
    assert 0.5 < audio.duration_s < 3


def test_empty_file_is_400_empty_file() -> None:
    with pytest.raises(BadRequest) as e:
        decode(b"")
    assert e.value.code == "empty_file" and e.value.param == "file"


def test_container_without_samples_is_400_empty_audio() -> None:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(SR)
        w.writeframes(b"")
    with pytest.raises(BadRequest) as e:
        decode(buf.getvalue())
    assert e.value.code == "empty_audio"


def test_truncated_flac_is_400_corrupt_audio(kit) -> None:
    data = kit.encode(kit.tone(3.0, channels=2), SR, "flac")
    with pytest.raises(BadRequest) as e:
        decode(data[: len(data) // 2])
    assert e.value.code == "corrupt_audio"


def test_more_bytes_than_the_limit_is_413_before_decoding(kit) -> None:
    data = kit.encode(kit.tone(1.0), SR, "wav")
    with pytest.raises(PayloadTooLarge) as e:
        decode(data, max_bytes=len(data) - 1)
    assert e.value.code == "payload_too_large"


def test_audio_longer_than_the_limit_is_413_audio_too_long(kit) -> None:
    # 20 s of FLAC is small; the limit is found while decoding, which stops there.
    data = kit.encode(kit.tone(20.0), SR, "flac")
    with pytest.raises(PayloadTooLarge) as e:
        decode(data, max_duration_s=5.0)
    assert e.value.code == "audio_too_long"
    assert decode(data, max_duration_s=20.5).duration_s == pytest.approx(20.0, abs=0.05)


def _png() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = b"".join(b"\x00" + bytes(range(8)) * 3 for _ in range(8))  # 8x8 RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("name, data", [
    ("text", b"this is just some text, not audio\n" * 20),
    ("zeros", b"\x00" * 4096),
    ("png image", _png()),
    ("hls playlist naming a local file", b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n"),
    ("concat script naming a local file", b"ffconcat version 1.0\nfile '/etc/passwd'\n"),
])
def test_not_audio_is_415(name: str, data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType) as e:
        decode(data)
    assert e.value.code == "unsupported_media_type" and e.value.param == "file", name


def test_video_without_an_audio_track_is_415_no_audio_track() -> None:
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=5)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), i * 40, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(UnsupportedMediaType) as e:
        decode(buf.getvalue())
    assert e.value.code == "no_audio_track"


def test_digital_silence_and_faint_noise_are_silent_but_quiet_speech_is_not(kit, speech) -> None:
    silence = decode(kit.encode(np.zeros((1, SR), np.float32), SR, "wav"))
    assert silence.silent and silence.peak_dbfs == -np.inf and silence.duration_s == 1.0
    noise = np.random.RandomState(0).uniform(-1, 1, (1, SR)).astype(np.float32) * 10 ** (-70 / 20)
    assert decode(kit.encode(noise, SR, "flac")).silent  # -70 dBFS is below the -60 dBFS silence level
    quiet = kit.pcm16(speech("what time is it")).astype(np.float32)[None, :] / 32768 * 0.01  # about -40 dBFS
    assert not decode(kit.encode(quiet, SR, "wav")).silent


# chunking ------------------------------------------------------------------------------------------


def test_short_audio_is_one_chunk() -> None:
    audio = np.ones(SR * 5, np.int16)
    assert chunk_bounds(audio, max_chunk_s=10) == [(0, SR * 5)]


def test_long_audio_is_cut_at_its_quiet_places_and_covered_exactly() -> None:
    # 35 s of loud noise with 200 ms gaps of silence at 8.5 s, 17 s and 26 s; chunks of at most 10 s.
    rng = np.random.RandomState(1)
    audio = (rng.uniform(-1, 1, SR * 35) * 8000).astype(np.int16)
    gaps = [8.5, 17.0, 26.0]
    for g in gaps:
        audio[int(g * SR):int((g + 0.2) * SR)] = 0
    bounds = chunk_bounds(audio, max_chunk_s=10, search_s=3)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(audio)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous, no overlap
    assert all(0 < end - start <= 10 * SR for start, end in bounds)
    cuts = [start / SR for start, _ in bounds[1:]]
    assert len(cuts) == len(gaps)
    for cut, gap in zip(cuts, gaps):
        assert gap <= cut <= gap + 0.2  # inside the silent gap


def test_chunks_of_wall_to_wall_sound_still_respect_the_limit() -> None:
    audio = np.full(SR * 25, 1000, np.int16)
    bounds = chunk_bounds(audio, max_chunk_s=4)
    assert sum(end - start for start, end in bounds) == len(audio)
    assert max(end - start for start, end in bounds) <= 4 * SR


def test_pcm_becomes_float32_in_unit_range() -> None:
    x = to_float32(np.array([-32768, 0, 16384, 32767], np.int16))
    assert x.dtype == np.float32 and x[0] == -1.0 and x[1] == 0.0 and x[2] == 0.5 and x[3] < 1.0
