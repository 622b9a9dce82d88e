"""A transcribe job through a real gateway driving the real speech-to-text service (the tiny
faster-whisper built locally, which says "hello" to any audio): audio files and videos' audio tracks, cut
into pieces whose segment times are shifted back onto the whole file's clock."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from tests import procs
from tests.jobs_fixtures import all_results, make_video, photo, start_jobs_gateway, wait_job

pytestmark = pytest.mark.proc

MODEL = "tiny-faster-whisper"


@pytest.fixture(scope="module")
def asr_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-asr-models")
    subprocess.run([str(procs.ASR_PY), str(procs.ROOT / "tools" / "make_tiny_asr_models.py"), str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=sys.stderr, timeout=300)
    return out / "catalog.yaml"


@pytest.fixture(scope="module")
def asr_svc(asr_catalog: Path, logdir: Path) -> Iterator[procs.Proc]:
    p = procs.start_asr_svc(asr_catalog, logdir)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    make_video(root / "birthday.mkv", [(255, 0, 0), (0, 0, 255), (0, 255, 0)], scene_s=1.0, tone_hz=330.0)
    make_video(root / "mute.mp4", [(0, 0, 0)], tone_hz=None)
    t = np.arange(16000 * 2) / 16000
    with wave.open(str(root / "memo.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((0.3 * 32767 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes())
    (root / "photo.jpg").write_bytes(photo(1))
    return root


@pytest.fixture(scope="module")
def asr_gateway(asr_catalog: Path, asr_svc: procs.Proc, media: Path, logdir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    p = start_jobs_gateway(asr_catalog, {"asr": asr_svc.url}, logdir, roots=[media], name="gateway-asr-jobs",
                           data_dir=tmp_path_factory.mktemp("asr-jobs-data"), jobs_audio_chunk_s="2")
    yield p
    p.stop()


def test_transcribe_job_transcribes_audio_files_and_video_soundtracks(asr_gateway: procs.Proc, media: Path) -> None:
    r = httpx.post(asr_gateway.url + "/v1/jobs", data={"task": "transcribe", "model": MODEL, "path": str(media), "language": "en"},
                   files=[("file", ("snapshot.jpg", photo(2)))], timeout=60)
    assert r.status_code == 201, r.text
    job = wait_job(asr_gateway.url, r.json()["id"], timeout_s=180)
    assert job["state"] == "completed", job
    rows = {Path(r["source"]).name: r for r in all_results(asr_gateway.url, job["id"])}
    assert sorted(rows) == ["birthday.mkv", "memo.wav", "mute.mp4", "snapshot.jpg"]  # the folder's photo.jpg is not audio

    birthday = rows["birthday.mkv"]["result"]
    assert "hello" in birthday["text"] and birthday["language"] == "en" and birthday["audio"] is True
    assert abs(birthday["duration_s"] - 3.0) < 0.2
    starts = [s["start_s"] for s in birthday["segments"]]
    assert starts == sorted(starts) and any(s >= 2.0 for s in starts), birthday["segments"]  # the second piece's clock
    assert "hello" in rows["memo.wav"]["result"]["text"]
    assert rows["mute.mp4"]["result"] == {"duration_s": 0.0, "language": None, "text": "", "segments": [], "audio": False}
    assert rows["snapshot.jpg"]["state"] == "error" and rows["snapshot.jpg"]["error"]["code"] == "unsupported_input"
