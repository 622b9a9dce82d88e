"""Videos for jobs: keyframes at scene changes with a cap per minute, and the audio track in pieces."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from gateway.jobs.media import KeyframePicker, MediaError, extract_audio, extract_keyframes
from tests.jobs_fixtures import make_video

pytestmark = pytest.mark.unit

RGB = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def thumb(v: int) -> np.ndarray:
    return np.full((27, 48, 3), v, dtype=np.uint8)


def test_picker_takes_the_first_frame_and_each_cut() -> None:
    p = KeyframePicker(threshold=0.3, per_minute=10)
    for t, v in [(0.0, 0), (0.5, 5), (1.0, 200), (1.5, 205), (2.0, 0)]:
        score = p.candidate(t, thumb(v))
        if score is not None and p.wants(t, score):
            p.keep(t, score, t)
    assert [t for t, _, _ in p.keyframes()] == [0.0, 1.0, 2.0]


def test_picker_keeps_the_first_frame_and_the_strongest_cuts_within_the_cap() -> None:
    p = KeyframePicker(threshold=0.1, per_minute=3)
    values = [0, 60, 0, 250, 0, 100, 0]  # scores from the last cut: .24 .24 .98 .98 .39 .39
    for i, v in enumerate(values):
        score = p.candidate(float(i), thumb(v))
        if score is not None and p.wants(float(i), score):
            p.keep(float(i), score, i)
    kept = [t for t, _, _ in p.keyframes()]
    assert kept[0] == 0.0 and len(kept) == 3
    assert set(kept[1:]) == {3.0, 4.0}


def test_the_cap_applies_per_minute_of_video() -> None:
    p = KeyframePicker(threshold=0.1, per_minute=1)
    for t, v in [(0.0, 0), (30.0, 250), (61.0, 0), (90.0, 250)]:
        score = p.candidate(t, thumb(v))
        if score is not None and p.wants(t, score):
            p.keep(t, score, t)
    assert [t for t, _, _ in p.keyframes()] == [0.0, 61.0]


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
