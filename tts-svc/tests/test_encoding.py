"""The streaming encoders: every format decodes to the audio that went in, and bytes come out per chunk,
before the stream is finished."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from modelhost.families.tts import RESPONSE_FORMATS
from tts_svc.encoding import FORMATS, OUTPUT_SAMPLE_RATE, Encoder, wav_header

pytestmark = pytest.mark.unit

ENCODED = [f for f in FORMATS if f != "pcm"]


def tone(rate: int, seconds: float, hz: float = 440.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2").tobytes()


def encode_all(fmt: str, parts: list[tuple[bytes, int]]) -> list[bytes]:
    enc = Encoder(fmt)
    return [enc.encode(pcm, rate) for pcm, rate in parts] + [enc.finish()]


@pytest.mark.parametrize("fmt", ENCODED)
def test_every_format_decodes_to_the_duration_encoded(fmt: str, decode) -> None:  # noqa: ANN001
    chunks = encode_all(fmt, [(tone(22050, 1.0), 22050), (tone(22050, 0.5, 660), 22050)])
    samples, rate = decode(b"".join(chunks))
    assert rate in (OUTPUT_SAMPLE_RATE, 48_000)  # Ogg Opus always decodes at 48 kHz
    # Codecs add priming and pad their last frame (aac: 1024 + up to 1023 samples, mp3: 1152 + ...).
    assert 1.5 - 0.01 < len(samples) / rate < 1.5 + 0.1, len(samples) / rate
    assert 0.1 < float(np.abs(samples).max()) < 0.5  # the tone's level, not silence or clipping


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_chunk_gives_bytes_before_the_stream_is_finished(fmt: str) -> None:
    enc = Encoder(fmt)
    first = enc.encode(tone(16000, 1.0), 16000)
    second = enc.encode(tone(16000, 1.0), 16000)
    assert len(first) > 1000 and len(second) > 1000, (len(first), len(second))
    enc.finish()


def test_wav_streams_an_unknown_length_header_that_soundfile_and_pyav_read(decode) -> None:  # noqa: ANN001
    data = b"".join(encode_all("wav", [(tone(24000, 0.5), 24000), (tone(24000, 0.25), 24000)]))
    assert data.startswith(wav_header(OUTPUT_SAMPLE_RATE))
    pcm = np.frombuffer(tone(24000, 0.5) + tone(24000, 0.25), "<i2")
    got, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == OUTPUT_SAMPLE_RATE
    np.testing.assert_array_equal(got, pcm)  # same rate in and out: bit-exact
    assert len(decode(data)[0]) == len(pcm)


def test_pcm_is_raw_s16le_at_the_output_rate_after_resampling() -> None:
    data = b"".join(encode_all("pcm", [(tone(16000, 1.0), 16000)]))
    assert abs(len(data) // 2 - OUTPUT_SAMPLE_RATE) <= 32
    x = np.frombuffer(data, "<i2").astype(np.float32) / 32767
    spectrum = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spectrum) * OUTPUT_SAMPLE_RATE / len(x) - 440) < 5  # the tone survived resampling


def test_mp3_and_opus_are_readable_by_soundfile_too() -> None:
    for fmt in ("mp3", "opus"):
        got, rate = sf.read(io.BytesIO(b"".join(encode_all(fmt, [(tone(22050, 1.0), 22050)]))))
        assert rate == OUTPUT_SAMPLE_RATE and 0.99 < len(got) / rate < 1.1


def test_pause_before_any_audio_and_between_sentences_keeps_one_stream(decode) -> None:  # noqa: ANN001
    enc = Encoder("wav")
    parts = [enc.pause(0.25), enc.encode(tone(22050, 0.5), 22050), enc.pause(0.25), enc.encode(tone(22050, 0.5), 22050)]
    samples, rate = decode(b"".join(parts + [enc.finish()]))
    assert abs(len(samples) / rate - 1.5) < 0.01
    assert float(np.abs(samples[: int(0.2 * rate)]).max()) == 0.0  # the leading pause is silent


def test_empty_pcm_gives_a_valid_empty_stream() -> None:
    for fmt in FORMATS:
        enc = Encoder(fmt)
        enc.encode(b"", 22050)
        enc.finish()  # no exception; nothing to assert beyond a closed stream


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError):
        Encoder("ogg")


def test_every_format_the_family_offers_has_an_encoder() -> None:
    assert set(FORMATS) == set(RESPONSE_FORMATS)
