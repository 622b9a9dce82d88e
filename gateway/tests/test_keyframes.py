"""Every scene of a video: the keyframe rule (gateway.jobs.media) on thumbnails, then on generated clips
with known hard cuts between FFmpeg's test sources (two of which move, so the scenes are not still)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from gateway.jobs.media import KeyframePicker, extract_keyframes

pytestmark = pytest.mark.unit

# Cuts between these, in this order, score 0.40-0.52 (testsrc2 and testsrc move: 0.06-0.09 within a scene).
SOURCES = ["testsrc2", "smptebars", "testsrc", "rgbtestsrc", "yuvtestsrc"]


def thumb(v: int) -> np.ndarray:
    return np.full((27, 48, 3), v, dtype=np.uint8)


def run(picker: KeyframePicker, samples: list[tuple[float, int]]) -> list[float]:
    for t, v in samples:
        score = picker.candidate(t, thumb(v))
        if score is None:
            continue
        if picker.wants(t, score):
            picker.keep(t, score, t, thumb(v))
        else:
            picker.skip(thumb(v))
    return [t for t, _, _ in picker.keyframes()]


def cut_clip(path: Path, sources: list[str], *, scene_s: float, fps: int = 25, size: str = "160x120") -> Path:
    """A clip of ``scene_s`` seconds of each lavfi test source in turn (H.264), made with PyAV's FFmpeg."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = (int(x) for x in size.split("x"))
        stream.pix_fmt = "yuv420p"
        for source in sources:
            with av.open(f"{source}=size={size}:rate={fps}:duration={scene_s}", format="lavfi") as src:
                for frame in src.decode(video=0):
                    image = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
                    for packet in stream.encode(image):
                        out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_every_cut_above_the_threshold_is_a_keyframe() -> None:
    picker = KeyframePicker(threshold=0.3, per_minute=12)
    assert run(picker, [(0.0, 0), (0.5, 5), (1.0, 200), (1.5, 205), (2.0, 0)]) == [0.0, 1.0, 2.0]


def test_a_flash_inside_the_spacing_is_not_taken_and_a_quick_second_cut_waits_for_it() -> None:
    picker = KeyframePicker(threshold=0.3, per_minute=12, min_spacing_s=0.5)
    # a cut at 1.0 and a one-sample flash at 1.2; a cut at 2.0 and another at 2.2 that stays (taken at 2.5)
    samples = [(0.0, 0), (1.0, 200), (1.2, 0), (1.3, 200), (1.6, 200), (2.0, 0), (2.2, 120), (2.5, 120), (3.0, 120)]
    assert run(picker, samples) == [0.0, 1.0, 2.0, 2.5]


def test_a_strobe_gives_one_keyframe_per_spacing_at_most() -> None:
    picker = KeyframePicker(threshold=0.3, per_minute=600, floor=1000, min_spacing_s=0.5)
    samples = [(i / 30, 250 * (i % 2)) for i in range(300)]  # 10 s of black/white flicker
    kept = run(picker, samples)
    assert 18 <= len(kept) <= 21 and all(b - a >= 0.5 - 1e-9 for a, b in zip(kept, kept[1:]))


def test_short_clips_do_not_hit_the_cap_floor() -> None:
    picker = KeyframePicker(threshold=0.1, per_minute=12, floor=20, duration_s=10.0)
    samples = [(float(i) / 2, 250 * (i % 2)) for i in range(20)]  # a cut every 0.5 s for 10 s
    assert len(run(picker, samples)) == 20


def test_past_the_cap_the_first_frame_and_the_strongest_cuts_stay() -> None:
    picker = KeyframePicker(threshold=0.1, per_minute=1, floor=3, duration_s=8.0)
    kept = run(picker, [(0.0, 0), (1.0, 60), (2.0, 0), (3.0, 250), (4.0, 0), (5.0, 100), (6.0, 0)])
    assert kept == [0.0, 3.0, 4.0]


def test_the_cap_grows_with_the_length_of_the_video() -> None:
    picker = KeyframePicker(threshold=0.1, per_minute=12, floor=20)
    assert picker.cap(10.0) == 20 and picker.cap(600.0) == 120
    assert KeyframePicker(threshold=0.1, per_minute=12, floor=20, duration_s=300.0).cap(0.0) == 60


def test_a_10_s_clip_with_four_hard_cuts_gets_5_keyframes_at_its_cuts(tmp_path: Path) -> None:
    clip = cut_clip(tmp_path / "cuts.mp4", SOURCES, scene_s=2.0)
    info, frames = extract_keyframes(str(clip), threshold=0.3, per_minute=12)
    assert [round(f.t_s, 2) for f in frames] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert all(f.score >= 0.3 for f in frames[1:])
    assert info.duration_s is not None and abs(info.duration_s - 10.0) < 0.2


def test_scenes_shorter_than_the_spacing_are_merged_and_the_cap_still_holds(tmp_path: Path) -> None:
    clip = cut_clip(tmp_path / "fast.mp4", SOURCES * 2, scene_s=0.4)  # a cut every 0.4 s, 4 s long
    _, frames = extract_keyframes(str(clip), threshold=0.3, per_minute=12, floor=5, min_spacing_s=0.5)
    times = [f.t_s for f in frames]
    assert len(times) == 5 and times[0] == 0.0
    assert all(b - a >= 0.5 - 1e-6 for a, b in zip(times, times[1:]))
