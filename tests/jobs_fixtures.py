"""Inputs for the bulk-job tests: distinct small photos, and short videos with scene changes made with
PyAV (FFmpeg's encoders ship in its wheel; nothing is downloaded)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
from PIL import Image

from tests import procs


def photo(i: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A JPEG that differs from photo(j) for every j != i (so its content hash does)."""
    im = Image.radial_gradient("L").resize(size).convert("RGB")
    px = im.load()
    px[i % size[0], (i // size[0]) % size[1]] = (255, (i * 37) % 256, (i * 91) % 256)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def photos(folder: Path, n: int, *, start: int = 0, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        p = folder / f"{prefix}{i:04d}.jpg"
        p.write_bytes(photo(i))
        out.append(p)
    return out


def make_video(path: Path, colours: list[Any], *, scene_s: float = 1.0, fps: int = 10,
               size: tuple[int, int] = (96, 64), tone_hz: float | None = 440.0) -> Path:
    """A video of scenes of ``scene_s`` seconds each (a cut at every change): a solid colour (an RGB tuple)
    or a still photo (a path, resized to ``size``) per scene, with a sine tone as its audio track. The
    container follows the suffix: .mp4/.mov/.mkv (H.264 + AAC) or .webm (VP8 + Opus)."""
    import av

    webm = path.suffix == ".webm"
    with av.open(str(path), "w") as out:
        v = out.add_stream("libvpx" if webm else "libx264", rate=fps)
        v.width, v.height = size
        v.pix_fmt = "yuv420p"
        a = None
        if tone_hz is not None:
            a = out.add_stream("libopus" if webm else "aac", rate=48000)
            a.layout = "mono"
        n = int(scene_s * fps)
        for c in colours:
            if isinstance(c, (str, Path)):
                frame_array = np.asarray(Image.open(c).convert("RGB").resize(size))
            else:
                frame_array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
                frame_array[:] = c
            for _ in range(n):
                for packet in v.encode(av.VideoFrame.from_ndarray(frame_array, format="rgb24")):
                    out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
        if a is not None:
            total = int(len(colours) * scene_s * 48000)
            t = np.arange(total) / 48000
            samples = (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            frame_size = a.codec_context.frame_size or 960
            pts = 0
            for i in range(0, total, frame_size):
                chunk = samples[i:i + frame_size]
                frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
                frame.sample_rate = 48000
                frame.pts = pts
                pts += len(chunk)
                for packet in a.encode(frame):
                    out.mux(packet)
            for packet in a.encode():
                out.mux(packet)
    return path


def wait_job(url: str, job_id: str, *, timeout_s: float = 120, states: tuple[str, ...] = ("completed", "cancelled", "failed")) -> dict[str, Any]:
    """Poll a job until it is in one of ``states``."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
        if s["state"] in states:
            return s
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} is still {s['state']} after {timeout_s} s: {s['counts']}")
        time.sleep(0.1)


def all_results(url: str, job_id: str, **params: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = -1
    while True:
        body = httpx.get(f"{url}/v1/jobs/{job_id}/results", params={"after": str(after), "limit": "100", **params}, timeout=30).json()
        rows += body["data"]
        if not body["has_more"]:
            return rows
        after = body["next_after"]


def sse_events(url: str, job_id: str, timeout_s: float = 120) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) from a job's event stream until its ``end`` event; fails if that has not come within
    ``timeout_s`` (the stream's progress events and heartbeats would keep a read timeout from ever firing)."""
    deadline = time.monotonic() + timeout_s
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", timeout=timeout_s) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            assert time.monotonic() < deadline, f"job {job_id}: no end event within {timeout_s} s"
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                yield event or "message", json.loads(line[5:])
                if event == "end":
                    return


def start_jobs_gateway(catalog: Path, services: dict[str, str], logdir: Path, *, roots: list[Path], data_dir: Path,
                       name: str = "gateway-jobs", ready_path: str = "/health/ready", **settings: str) -> procs.Proc:
    """A gateway with library roots and its own data directory. ``ready_path="/health/live"`` for one whose
    services are meant to be down (its readiness would never pass)."""
    settings = {"library_roots": json.dumps([str(r) for r in roots]), "data_dir": str(data_dir), **settings}
    if ready_path == "/health/ready":
        return procs.start_gateway(catalog, services, logdir, name=name, **settings)
    port = procs.free_port()
    env = {"GATEWAY_CATALOG": str(catalog), "GATEWAY_PORT": str(port), "GATEWAY_SERVICES": json.dumps(services),
           **{f"GATEWAY_{k.upper()}": v for k, v in settings.items()}}
    return procs.start(name, [str(procs.GATEWAY_PY), "-m", "gateway"], env, port, logdir, ready_path=ready_path)


def kill9(p: procs.Proc) -> None:
    """SIGKILL the gateway's whole process group, as a crash would, and reap it."""
    os.killpg(p.proc.pid, signal.SIGKILL)
    p.proc.wait(10)


def roundhouse(*args: str, url: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
    """Run the installed ``roundhouse`` command (the gateway environment's console script)."""
    exe = procs.GATEWAY_PY.parent / "roundhouse"
    return subprocess.run([str(exe), "--url", url, *args], capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
