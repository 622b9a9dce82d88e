"""Videos for jobs: keyframes at scene changes (the rule itself: test_keyframes.py), and the audio track in pieces."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from gateway.jobs.media import MediaError, extract_audio, extract_keyframes
from tests.jobs_fixtures import make_video

pytestmark = pytest.mark.unit

RGB = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".mkv", ".mov"])
def test_keyframes_of_a_generated_video_fall_on_its_scene_changes(tmp_path: Path, suffix: str) -> None:
    video = make_video(tmp_path / f"clip{suffix}", RGB, scene_s=1.0, fps=10)
    info, frames = extract_keyframes(str(video), threshold=0.3, per_minute=12)
    assert [f.t_s for f in frames] == [0.0, 1.0, 2.0]
    assert info.has_audio and (info.width, info.height) == (96, 64)
    assert all(f.jpeg[:3] == b"\xff\xd8\xff" for f in frames)


def test_audio_track_becomes_16k_mono_wav_pieces_with_offsets(tmp_path: Path) -> None:
    video = make_video(tmp_path / "clip.mp4", RGB, scene_s=1.0)
    pieces = extract_audio(str(video), tmp_path / "out", chunk_s=2.0)
    assert [round(o, 3) for o, _ in pieces][:2] == [0.0, 2.0]
    total = 0
    for _, f in pieces:
        with wave.open(str(f)) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            total += w.getnframes()
    assert abs(total / 16000 - 3.0) < 0.1


def test_a_video_without_audio_has_no_pieces_and_a_non_video_is_an_error(tmp_path: Path) -> None:
    video = make_video(tmp_path / "silent.mp4", RGB, tone_hz=None)
    assert extract_audio(str(video), tmp_path / "out", chunk_s=5) == []
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(MediaError):
        extract_keyframes(str(bad), threshold=0.3, per_minute=12)
