"""A long run: 2,000 detect requests against the service in-process (the real worker, the tiny
insightface-format pack on CPU), and the worker's memory must not grow beyond a stated bound.

What it guards against: peers that run face models for days see memory grow in steps until an allocation
fails (ONNX Runtime's arenas keep what the largest run needed, memory patterns are cached per input shape,
glibc's heap keeps what large per-request buffers strand, results leak); see backends/_ort.py and
backends/_memory.py for what prevents each. The requests vary what changes shapes and allocations: one to three faces per image (so
recognition runs with batches of many sizes, as concurrent requests fill them), with and without
embeddings and crops, images of several sizes.

The bound: after the warm-up (the first 200 requests), the worker's resident memory, read every 200
requests from /v1/models (worker_memory_bytes), may exceed what it was by at most LEAK_BOUND_BYTES (6 MiB),
at the end and at every sample along the way. Measured on CPU: within -2 to +3 MiB of the baseline (about
112 MiB) over the run. A leak of one image per request (230 KB) would cross the bound within 30 requests;
a leak of 4 KB per request (two embeddings) by the end.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from face_svc.config import FaceSettings
from face_svc.main import create_app

pytestmark = pytest.mark.app

MODEL = "tiny-insightface"
REQUESTS = 2000
WARMUP = 200
THREADS = 8
LEAK_BOUND_BYTES = 6 * 2**20

# Corners on the tiny detector's grid (16i+8) in a 320x240 image, 64 px squares apart from each other.
CORNERS = [(8, 8), (104, 8), (200, 8), (8, 136), (104, 136), (200, 136)]


def image_for(n: int) -> bytes:
    rng = np.random.RandomState(n)
    faces = 1 + n % 3
    scale = [1, 1.5, 2][n % 4 % 3]  # 320x240, 480x360, 640x480: the detector sees each at 320x240
    pixels = np.zeros((int(240 * scale), int(320 * scale), 3), np.uint8)
    for i in rng.choice(len(CORNERS), faces, replace=False):
        x, y = (int(v * scale) for v in CORNERS[i])
        side = int(64 * scale)
        pixels[y:y + side, x:x + side] = (255, 255, 180 + rng.randint(76))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = FaceSettings(catalog=tiny_dir / "catalog.yaml", cache_dir=tmp_path_factory.mktemp("cache"))
    with TestClient(create_app(settings)) as c:
        assert c.post(f"/v1/models/{MODEL}/load").status_code == 200
        yield c


def worker_bytes(client: TestClient) -> int:
    listing = client.get("/v1/models").json()
    assert listing["meter"] == "host" and listing["worker_pid"]
    return int(listing["worker_memory_bytes"])


def test_worker_memory_stays_flat_over_2000_detect_requests(client: TestClient) -> None:
    images = [image_for(n) for n in range(24)]
    pid = client.get("/v1/models").json()["worker_pid"]

    def one(n: int) -> tuple[int, int]:
        form = {"model": MODEL, "embed": str(n % 2 == 0).lower(), "crops": str(n % 5 == 0).lower()}
        r = client.post("/v1/faces/detect", data=form, files={"file": ("image.png", images[n % len(images)], "image/png")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["faces"]) == 1 + n % len(images) % 3  # every face found, every time
        return n, body["recognition_batch"]

    samples: list[int] = []
    batches: set[int] = set()
    with ThreadPoolExecutor(THREADS) as pool:
        for start in range(0, REQUESTS, WARMUP):
            batches.update(b for _, b in pool.map(one, range(start, start + WARMUP)))
            samples.append(worker_bytes(client))
    baseline, end = samples[0], samples[-1]
    growth = [s - baseline for s in samples]
    report = ", ".join(f"{g / 2**20:+.1f}" for g in growth)
    print(f"\nworker memory after warm-up {baseline / 2**20:.1f} MiB; per {WARMUP} requests (MiB): {report}; "
          f"recognition batch sizes seen: {sorted(batches)}")
    assert client.get("/v1/models").json()["worker_pid"] == pid  # one worker served them all
    assert len(batches - {0}) >= 4  # recognition ran with many batch sizes
    assert end - baseline <= LEAK_BOUND_BYTES, report
    assert max(growth) <= LEAK_BOUND_BYTES, report
