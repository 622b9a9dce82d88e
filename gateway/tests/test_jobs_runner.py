"""The job runner against a stand-in for the services (the network boundary), with the real store,
tasks and files: how each kind of failure ends an item, and that every item ends exactly once."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from PIL import Image

from gateway.config import JobSettings
from gateway.jobs.inputs import BlobStore, Library
from gateway.jobs.runner import JobRunner
from gateway.jobs.store import AsyncStore, NewItem
from gateway.metrics import GatewayMetrics
from modelhost.client import UpstreamEnvelope
from modelhost.errors import ModelNotFound

pytestmark = pytest.mark.unit


def jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (i, 0, 0)).save(buf, "JPEG")
    return buf.getvalue()


def envelope(status: int, code: str) -> UpstreamEnvelope:
    return UpstreamEnvelope(status, {"src": "caption-svc", "error": {"code": code, "message": code}}, None)


class FakeAccess:
    """ModelAccess.use/spec with the service replaced by ``answer(image bytes, attempt) -> dict or raise``."""

    def __init__(self, answer: Callable[[bytes, int], Any]) -> None:
        self.answer = answer
        self.calls: dict[bytes, int] = {}
        self.known = {"m"}

    def spec(self, model: str, family: str | None = None) -> Any:
        if model not in self.known:
            raise ModelNotFound(f"no {model}", param="model")
        return SimpleNamespace(id=model, family=family, max_batch=4, options={}, backend="blip")

    async def use(self, model: str, family: str, call: Callable, *, lane: str, timeout_s: float) -> Any:
        access = self

        class Client:
            async def request(self, method: str, path: str, *, data: Any, timeout_s: float) -> Any:
                image = next(f[2] for f in data._fields if f[0]["name"] == "file")
                n = access.calls[image] = access.calls.get(image, 0) + 1
                await asyncio.sleep(0)
                return access.answer(image, n)
        return await call(Client())


async def run_job(tmp_path: Path, answer: Callable[[bytes, int], Any], images: list[bytes], **settings: Any) -> tuple[dict, list, FakeAccess]:
    store = AsyncStore(tmp_path / "jobs.sqlite3")
    access = FakeAccess(answer)
    js = JobSettings(library_roots=[tmp_path], jobs_yield_s=None, jobs_max_attempts=2, **settings)
    runner = JobRunner(store, access, catalog=None, settings=js, coordinator=SimpleNamespace(cores={}, device_of={}),  # type: ignore[arg-type]
                       metrics=GatewayMetrics(), blobs=BlobStore(tmp_path / "blobs"), library=Library([tmp_path]),
                       scratch_dir=tmp_path / "tmp", request_timeout_s=10, max_image_bytes=1 << 20, max_image_pixels=10**6)
    items = []
    for i, data in enumerate(images):
        (tmp_path / f"{i}.jpg").write_bytes(data)
        items.append(NewItem(f"{i}.jpg", str(tmp_path / f"{i}.jpg"), False, "image"))
    await store.create_job("job_t", "caption", "m", {}, items, open_=False)
    await runner.start()
    try:
        deadline = time.monotonic() + 20
        while (job := await store.get_job("job_t"))["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.02)
        rows = await store.results_page("job_t", after_seq=-1, limit=100)
    finally:
        await runner.close()
        store.close()
    return job, rows, access


async def test_every_kind_of_failure_ends_its_item_once(tmp_path: Path) -> None:
    images = [jpeg(i) for i in range(5)]
    ok, flaky, bad, broken, bug = images

    def answer(image: bytes, n: int) -> Any:
        if image == flaky and n == 1:
            raise envelope(503, "model_not_ready")  # unavailable: the job pauses, the item is tried again
        if image == bad:
            raise envelope(400, "corrupt_image")     # the item's final error at once
        if image == broken:
            raise envelope(500, "inference_failed")  # a server error: tried jobs_max_attempts times
        if image == bug:
            return {"no": "caption"}                 # an answer the adapter cannot read
        return {"caption": "a photo", "tokens": 2, "width": 16, "height": 16}

    job, rows, access = await run_job(tmp_path, answer, images)
    assert job["state"] == "completed"
    assert [r["state"] for r in rows] == ["done", "done", "error", "error", "error"]
    assert [r["error"]["code"] for r in rows[2:]] == ["corrupt_image", "inference_failed", "internal_error"]
    assert access.calls[flaky] == 2 and access.calls[bad] == 1 and access.calls[broken] == 2
    assert (job["n_done"], job["n_error"]) == (2, 3)


async def test_identical_images_in_flight_together_are_inferred_once(tmp_path: Path) -> None:
    same = jpeg(7)
    job, rows, access = await run_job(tmp_path, lambda image, n: {"caption": "x", "tokens": 1}, [same] * 6)
    assert access.calls == {same: 1}
    assert job["n_done"] == 6 and job["n_reused"] == 5


async def test_a_model_gone_from_the_catalog_fails_the_job(tmp_path: Path) -> None:
    store = AsyncStore(tmp_path / "jobs.sqlite3")
    await store.create_job("job_g", "caption", "gone", {}, [NewItem("a", "/nowhere", False, "image")], open_=False)
    runner = JobRunner(store, FakeAccess(lambda i, n: {}), None, JobSettings(jobs_yield_s=None),  # type: ignore[arg-type]
                       coordinator=SimpleNamespace(cores={}, device_of={}), metrics=GatewayMetrics(),
                       blobs=BlobStore(tmp_path / "blobs"), library=Library([]), scratch_dir=tmp_path / "tmp",
                       request_timeout_s=10, max_image_bytes=1 << 20, max_image_pixels=10**6)
    await runner.start()
    try:
        deadline = time.monotonic() + 10
        while (job := await store.get_job("job_g"))["state"] == "queued":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        await runner.close()
        store.close()
    assert job["state"] == "failed" and job["error"]["code"] == "model_not_found" and job["n_cancelled"] == 1
