"""Every scene of a video: the jobs' keyframe picks (gateway.jobs.media) against FFmpeg's own scene detector,
``select='gt(scene,0.3)'``, on one clip with known cuts, in one run.

    .venvs/gateway/bin/python bench/keyframes.py [--threshold 0.3] [--seconds-per-scene 2,0.3,5,1,...]

No real footage ships in any package we may use (scikit-image's one GIF is 14x25 pixels; imageio, moviepy and
OpenCV fetch their sample videos from the network), so the clip is synthetic: hard cuts between FFmpeg's test
sources (lavfi: testsrc2 and testsrc move, gradients drift, the bars are still), with scenes from 0.3 s to
8 s, made and read with the FFmpeg libraries in PyAV's wheel (FFmpeg's ``select`` filter runs through PyAV's
filter graph; no ffmpeg binary). Both detectors see the same decoded frames.

For each: keyframes, cuts found (a keyframe within 0.25 s after a cut; the first frame counts as scene 1),
cuts missed, picks that match no cut, and the decode time. Our rule takes every change above its threshold,
at most one per 0.5 s (scenes shorter than that merge with the next), under a cap of max(20, 12 per minute).
Figures are printed, never asserted (gateway/tests/test_keyframes.py asserts the rule).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import av

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from gateway.jobs.media import extract_keyframes  # noqa: E402

SOURCES = ["testsrc2", "smptebars", "testsrc", "rgbtestsrc", "yuvtestsrc", "gradients", "pal75bars"]
DEFAULT_SCENES = "2,0.3,5,1,0.4,8,3,2,0.6,4,1.5,6,2,0.3,3,5"
FPS = 25
SIZE = (320, 240)
MATCH_S = 0.25


def make_clip(path: Path, scene_s: list[float]) -> list[float]:
    """The clip (H.264), and the times its scenes start."""
    starts, t = [], 0.0
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for i, seconds in enumerate(scene_s):
            starts.append(round(t, 3))
            source = SOURCES[i % len(SOURCES)]
            frames = round(seconds * FPS)
            with av.open(f"{source}=size={SIZE[0]}x{SIZE[1]}:rate={FPS}:duration={frames / FPS}", format="lavfi") as src:
                for frame in src.decode(video=0):
                    image = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
                    for packet in stream.encode(image):
                        out.mux(packet)
            t += frames / FPS
        for packet in stream.encode():
            out.mux(packet)
    return starts


def ffmpeg_scenes(path: Path, threshold: float) -> list[float]:
    """The times FFmpeg's ``select='gt(scene,THRESHOLD)'`` passes (its scene score compares each frame with the
    one before)."""
    times = [0.0]  # the first frame, as a job takes it
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        graph = av.filter.Graph()
        source = graph.add_buffer(template=stream)
        select = graph.add("select", f"gt(scene\\,{threshold})")
        sink = graph.add("buffersink")
        source.link_to(select)
        select.link_to(sink)
        graph.configure()
        for frame in c.decode(stream):
            graph.push(frame)
            while True:
                try:
                    out = graph.pull()
                except (av.error.BlockingIOError, av.error.EOFError):
                    break
                times.append(round(float(out.time), 3))
    return times


def score(picks: list[float], cuts: list[float]) -> tuple[int, int, int]:
    """(cuts found, cuts missed, picks matching no cut)."""
    found = {c for c in cuts if any(0 <= p - c <= MATCH_S for p in picks)}
    stray = [p for p in picks if not any(0 <= p - c <= MATCH_S for c in cuts)]
    return len(found), len(cuts) - len(found), len(stray)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--seconds-per-scene", default=DEFAULT_SCENES)
    args = parser.parse_args(argv)
    scenes = [float(x) for x in args.seconds_per_scene.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "cuts.mp4"
        cuts = make_clip(clip, scenes)
        long_enough = [c for c, s in zip(cuts, scenes) if s >= 0.5]
        print(f"clip: {sum(scenes):.1f} s, {len(cuts)} scenes ({len(cuts) - len(long_enough)} shorter than 0.5 s), "
              f"{FPS} fps, {SIZE[0]}x{SIZE[1]}; threshold {args.threshold}")
        t = time.perf_counter()
        _, frames = extract_keyframes(str(clip), threshold=args.threshold, per_minute=12)
        ours_s = time.perf_counter() - t
        ours = [f.t_s for f in frames]
        t = time.perf_counter()
        theirs = ffmpeg_scenes(clip, args.threshold)
        theirs_s = time.perf_counter() - t
    print("\n| picker | keyframes | scenes found | of them >= 0.5 s | missed | stray picks | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, picks, took in (("roundhouse (jobs)", ours, ours_s), (f"ffmpeg select gt(scene,{args.threshold})", theirs, theirs_s)):
        found, missed, stray = score(picks, cuts)
        found_long = score(picks, long_enough)[0]
        print(f"| {name} | {len(picks)} | {found}/{len(cuts)} | {found_long}/{len(long_enough)} | {missed} | {stray} | {took:.2f} |")
    print(f"\ncuts:   {cuts}\nours:   {ours}\nffmpeg: {theirs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
