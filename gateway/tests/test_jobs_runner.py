"""The job runner against a stand-in for the services (the network boundary), with the real store,
tasks and files: how each kind of failure ends an item, that every item ends exactly once, and how a
job is deleted (its workers stopped first, its uploads removed)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, AsyncIterator, Callable

import pytest
from PIL import Image

from gateway.config import JobSettings
from gateway.coordinator.policy import BULK
from gateway.jobs.inputs import BlobStore, Library
from gateway.jobs.reading import ItemLimits
from gateway.jobs.runner import JobRunner, RunnerParts
from gateway.jobs.store import AsyncStore, NewItem
from gateway.metrics import GatewayMetrics
from modelhost.errors import (DeadlineExceeded, InsufficientMemory, ModelNotFound, Overloaded, ServiceNotConfigured,
                              UpstreamEnvelope)
from modelhost.families.caption import CaptionResponse

pytestmark = pytest.mark.unit


def jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (i * 40 % 256, i * 40 // 256 * 40, 0)).save(buf, "JPEG")  # distinct after JPEG
    return buf.getvalue()


def envelope(status: int, code: str) -> UpstreamEnvelope:
    return UpstreamEnvelope(status, {"src": "caption-svc", "error": {"code": code, "message": code}}, None)


class FakeCoordinator:
    """The coordinator's public view: nothing else is in flight; every model is on the CPU."""

    def requests_active(self, dev: str) -> int:
        return 0

    def model_state(self, model: str) -> Any:
        return SimpleNamespace(ledger_state="ready", queue_depth=0, device_ledger="cpu", charged_bytes=None)


def file_part(body: bytes) -> bytes:
    """The ``file`` part of a multipart body as ``modelhost.client.multipart`` builds it."""
    after = body.split(b'name="file"', 1)[1]
    return after.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]


def caption_reply(text: str) -> dict[str, Any]:
    return CaptionResponse(model="m", caption=text, tokens=2, width=16, height=16,
                           timings={"decode_ms": 1.0, "inference_ms": 1.0}).model_dump()


class FakeAccess:
    """ModelAccess.hold/spec with the service replaced by ``answer(image bytes, attempt) -> reply or raise``
    (or an awaitable of the reply); ``refuse`` is raised by ``hold`` itself, as the catalog or the
    coordinator would."""

    def __init__(self, answer: Callable[[bytes, int], Any], refuse: Exception | None = None) -> None:
        self.answer = answer
        self.refuse = refuse
        self.calls: dict[bytes, int] = {}
        self.lanes: set[str] = set()
        self.known = {"m"}

    def spec(self, model: str, family: str | None = None) -> Any:
        if model not in self.known:
            raise ModelNotFound(f"no {model}", param="model")
        return SimpleNamespace(id=model, family=family, max_batch=4, options={}, backend="blip")

    @contextlib.asynccontextmanager
    async def hold(self, model: str, family: str, *, lane: str, timeout_s: float) -> AsyncIterator[Any]:
        self.lanes.add(lane)
        if self.refuse is not None:
            raise self.refuse
        access = self

        class FakeUpstream:
            async def request(self, method: str, path: str, *, data: bytes, **kwargs: Any) -> Any:
                image = file_part(data)
                n = access.calls[image] = access.calls.get(image, 0) + 1
                await asyncio.sleep(0)
                reply = access.answer(image, n)
                return await reply if inspect.isawaitable(reply) else reply
        yield FakeUpstream()


def make_runner(tmp_path: Path, store: AsyncStore, access: FakeAccess, settings: JobSettings) -> JobRunner:
    parts = RunnerParts(store=store, access=access, coordinator=FakeCoordinator(), metrics=GatewayMetrics(),  # type: ignore[arg-type]
                        library=Library([tmp_path]), blobs=BlobStore(tmp_path / "blobs"), scratch_dir=tmp_path / "tmp")
    limits = ItemLimits(max_image_bytes=1 << 20, max_image_pixels=10**6, max_file_bytes=settings.jobs_max_file_bytes)
    return JobRunner(parts, settings, limits=limits, request_timeout_s=10)


async def wait_ended(store: AsyncStore, job_id: str, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while (job := await store.get_job(job_id))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.02)
    return job


async def run_job(tmp_path: Path, answer: Callable[[bytes, int], Any], images: list[bytes], *,
                  refuse: Exception | None = None, **settings: Any) -> tuple[dict, list, FakeAccess]:
    store = AsyncStore(tmp_path / "jobs.sqlite3")
    access = FakeAccess(answer, refuse)
    runner = make_runner(tmp_path, store, access,
                         JobSettings(library_roots=[tmp_path], jobs_yield_s=None, jobs_max_attempts=2, **settings))
    items = []
    for i, data in enumerate(images):
        (tmp_path / f"{i}.jpg").write_bytes(data)
        items.append(NewItem(f"{i}.jpg", str(tmp_path / f"{i}.jpg"), False, "image"))
    await store.create_job("job_t", "caption", "m", {}, items, open_=False)
    await runner.start()
    try:
        job = await wait_ended(store, "job_t")
        rows = await store.results_page("job_t", after_seq=-1, limit=100)
    finally:
        await runner.close()
        store.close()
    return job, rows, access


async def test_every_kind_of_failure_ends_its_item_once(tmp_path: Path) -> None:
    images = [jpeg(i) for i in range(6)]
    ok, flaky, bad, broken, garbled, bug = images

    def answer(image: bytes, n: int) -> Any:
        if image == flaky and n == 1:
            raise envelope(503, "model_not_ready")  # unavailable: the job pauses, the item is tried again
        if image == bad:
            raise envelope(400, "corrupt_image")     # the item's final error at once
        if image == broken:
            raise envelope(500, "inference_failed")  # a server error: tried jobs_max_attempts times
        if image == garbled:
            return {"no": "caption"}                 # an answer off the contract: a 502, tried again
        if image == bug:
            raise RuntimeError("a bug")              # unforeseen: an attempt like a 5xx, never left pending
        return caption_reply("a photo")

    job, rows, access = await run_job(tmp_path, answer, images)
    assert job["state"] == "completed"
    assert [r["state"] for r in rows] == ["done", "done", "error", "error", "error", "error"]
    assert [r["error"]["code"] for r in rows[2:]] == ["corrupt_image", "inference_failed", "bad_upstream_response",
                                                      "internal_error"]
    assert access.calls[flaky] == 2 and access.calls[bad] == 1 and access.calls[broken] == 2
    assert access.calls[garbled] == 2 and access.calls[bug] == 2
    assert (job["n_done"], job["n_error"]) == (2, 4)
    assert access.lanes == {BULK}


async def test_a_transient_error_pauses_the_job_without_counting_an_attempt(tmp_path: Path) -> None:
    image = jpeg(1)

    def answer(data: bytes, n: int) -> Any:
        if n <= 3:  # more transient failures than jobs_max_attempts (2): none of them counts
            raise [Overloaded("queue full"), DeadlineExceeded("slow"), envelope(429, "overloaded")][n - 1]
        return caption_reply("at last")

    job, rows, access = await run_job(tmp_path, answer, [image])
    assert job["state"] == "completed" and rows[0]["result"]["caption"] == "at last"
    assert access.calls[image] == 4


async def test_identical_images_in_flight_together_are_inferred_once(tmp_path: Path) -> None:
    same = jpeg(7)
    job, rows, access = await run_job(tmp_path, lambda image, n: caption_reply("x"), [same] * 6)
    assert access.calls == {same: 1}
    assert job["n_done"] == 6 and job["n_reused"] == 5


@pytest.mark.parametrize("error", [ServiceNotConfigured("no caption service"), InsufficientMemory("never fits"),
                                   ModelNotFound("gone meanwhile")], ids=lambda e: type(e).__name__)
async def test_an_error_no_item_can_get_past_fails_the_job(tmp_path: Path, error: Exception) -> None:
    job, rows, access = await run_job(tmp_path, lambda image, n: caption_reply("x"), [jpeg(1), jpeg(2)], refuse=error)
    assert job["state"] == "failed" and job["error"]["code"] == error.code  # type: ignore[attr-defined]
    assert job["n_cancelled"] == 2 and not access.calls


async def test_a_model_gone_from_the_catalog_fails_the_job(tmp_path: Path) -> None:
    store = AsyncStore(tmp_path / "jobs.sqlite3")
    await store.create_job("job_g", "caption", "gone", {}, [NewItem("a", "/nowhere", False, "image")], open_=False)
    runner = make_runner(tmp_path, store, FakeAccess(lambda i, n: {}), JobSettings(jobs_yield_s=None))
    await runner.start()
    try:
        job = await wait_ended(store, "job_g", timeout_s=10)
    finally:
        await runner.close()
        store.close()
    assert job["state"] == "failed" and job["error"]["code"] == "model_not_found" and job["n_cancelled"] == 1


async def wait_for(condition: Callable[[], Any], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_a_delete_waits_for_workers_slow_to_stop_and_removes_the_job_only_once_they_have(tmp_path: Path) -> None:
    called, stopped = asyncio.Event(), asyncio.Event()

    async def slow_to_stop() -> Any:
        called.set()
        try:
            await asyncio.Event().wait()  # the service never answers
        except asyncio.CancelledError:
            while not stopped.is_set():  # and the call takes its time to stop, however often it is cancelled
                with contextlib.suppress(asyncio.CancelledError):
                    await stopped.wait()
            raise

    store = AsyncStore(tmp_path / "jobs.sqlite3")
    runner = make_runner(tmp_path, store, FakeAccess(lambda image, n: slow_to_stop()), JobSettings(jobs_yield_s=None))
    runner.stop_timeout_s = 0.2
    (tmp_path / "a.jpg").write_bytes(jpeg(1))
    await store.create_job("job_s", "caption", "m", {}, [NewItem("a.jpg", str(tmp_path / "a.jpg"), False, "image")],
                           open_=False)
    await runner.start()
    try:
        await asyncio.wait_for(called.wait(), 10)
        assert await runner.delete("job_s") == "stopping"  # after stop_timeout_s: the job stays, cancelled
        job = await store.get_job("job_s")
        assert job["state"] == "cancelled" and job["n_cancelled"] == 1
        assert await runner.delete("job_s") == "stopping"  # the worker outlives a second cancel of its main loop
        stopped.set()
        assert await runner.delete("job_s") == "deleted"
        assert await store.get_job("job_s") is None and "job_s" not in runner.runs
        assert await runner.delete("job_s") == "absent"
    finally:
        stopped.set()
        await runner.close()
        store.close()


async def test_a_worker_that_loses_its_cancel_is_cancelled_again_and_the_next_job_runs(tmp_path: Path) -> None:
    # Library code can swallow a cancel (Python 3.11's asyncio.wait_for did, when it came just after the result):
    # the worker then went back to its queue, its job's run never ended, and no job started after it.
    called = asyncio.Event()
    first = jpeg(1)

    async def swallows_one_cancel(image: bytes) -> Any:
        if image == first:
            called.set()
            with contextlib.suppress(asyncio.CancelledError):  # lost, as that wait_for lost it
                await asyncio.Event().wait()
        return caption_reply("a photo")

    store = AsyncStore(tmp_path / "jobs.sqlite3")
    runner = make_runner(tmp_path, store, FakeAccess(lambda image, n: swallows_one_cancel(image)),
                         JobSettings(jobs_yield_s=None))
    for name, data in (("a.jpg", first), ("b.jpg", jpeg(2))):
        (tmp_path / name).write_bytes(data)
        await store.create_job(f"job_{name[0]}", "caption", "m", {}, [NewItem(name, str(tmp_path / name), False, "image")],
                               open_=False)
    await runner.start()
    try:
        await asyncio.wait_for(called.wait(), 10)
        assert await runner.cancel("job_a")
        assert "job_a" not in runner.runs  # its run ended: every worker stopped
        assert (await wait_ended(store, "job_b"))["state"] == "completed"
    finally:
        await runner.close()
        store.close()


async def test_a_deleted_jobs_uploads_are_removed_once_the_uploads_in_progress_are_stored(tmp_path: Path) -> None:
    store = AsyncStore(tmp_path / "jobs.sqlite3")
    runner = make_runner(tmp_path, store, FakeAccess(lambda image, n: caption_reply("x")), JobSettings(jobs_yield_s=None))
    _, blob, _ = runner.parts.blobs.put(io.BytesIO(jpeg(3)), max_bytes=1 << 20)
    await store.create_job("job_u", "caption", "m", {}, [NewItem("a.jpg", blob, True, "image")], open_=False)
    await runner.start()
    try:
        await wait_for(lambda: _ended(store, "job_u"))
        await wait_for(lambda: _gone(Path(blob)))  # a finished job's uploads go; the same content is uploaded again...
        runner.parts.blobs.put(io.BytesIO(jpeg(3)), max_bytes=1 << 20)
        with runner.receiving_uploads():  # ...and is not in the store yet: the deleted job's blob must stay
            assert await runner.delete("job_u") == "deleted"
            assert Path(blob).exists()
        await wait_for(lambda: _gone(Path(blob)))  # no upload in progress: no pending item needs it
    finally:
        await runner.close()
        store.close()


async def _ended(store: AsyncStore, job_id: str) -> bool:
    return (await store.get_job(job_id))["state"] == "completed"


async def _gone(path: Path) -> bool:
    return not path.exists()
