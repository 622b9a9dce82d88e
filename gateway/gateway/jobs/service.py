"""Jobs as the API sees them: the one object the routes (gateway/routers/jobs.py) talk to. It builds the
store and the runner, creates jobs from validated requests, cancels and deletes them, and shows them (the
status view with counts, rate and ETA; results; people). The routes never reach the store or the runner."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, BinaryIO, Callable

from modelhost.catalog import Catalog
from modelhost.errors import BadRequest, Conflict, NotFound, Overloaded, PayloadTooLarge
from modelhost.families import default_model
from modelhost.states import ModelUnavailable

from ..access import ModelAccess
from .files import LISTING_STALL_S, Lane, LaneFull, Stalled
from .inputs import BlobStore, Library, kind_of, sniff_kind
from .reading import ItemLimits
from .runner import JobRunner, RunnerParts, new_job_id
from .schemas import InputsRequest, JobRequest
from .store import ACTIVE_STATES, CANCELLED, COMPLETED, AsyncStore, NewItem
from .tasks import TASKS, Task


LISTING_THREADS = 4
"""Most requests' paths listed at once (what listings stuck on a hung mount can hold at worst)."""


@dataclass
class Upload:
    filename: str
    file: BinaryIO


class Jobs:
    def __init__(self, store: AsyncStore, runner: JobRunner, library: Library, blobs: BlobStore, catalog: Catalog,
                 access: ModelAccess, settings: Any, gateway_settings: Any) -> None:
        self.store = store
        self.runner = runner
        self.library = library
        self.blobs = blobs
        self.catalog = catalog
        self.access = access
        self.settings = settings
        self.gateway_settings = gateway_settings
        self.listing = Lane("job-listing", threads=LISTING_THREADS, stall_s=LISTING_STALL_S)
        self.on_deleted: list[Callable[[str], Awaitable[None]]] = []
        """Called with a job's id once it is deleted, before DELETE answers (search drops its items)."""

    @classmethod
    def build(cls, data_dir: Path, settings: Any, gateway_settings: Any, *, access: ModelAccess, catalog: Catalog,
              coordinator: Any, metrics: Any) -> "Jobs":
        root = data_dir / "jobs"
        store = AsyncStore(root / "jobs.sqlite3")
        library = Library(list(settings.library_roots))
        blobs = BlobStore(root / "blobs")
        parts = RunnerParts(store=store, access=access, coordinator=coordinator, metrics=metrics, library=library,
                            blobs=blobs, scratch_dir=root / "tmp")
        limits = ItemLimits(max_image_bytes=gateway_settings.max_upload_bytes,
                            max_image_pixels=gateway_settings.max_image_pixels, max_file_bytes=settings.jobs_max_file_bytes)
        runner = JobRunner(parts, settings, limits=limits, request_timeout_s=gateway_settings.request_timeout_s)
        for task in TASKS:
            for outcome in ("inferred", "deduplicated", "error", "cancelled"):
                metrics.items.labels(task, outcome)
        return cls(store, runner, library, blobs, catalog, access, settings, gateway_settings)

    async def start(self) -> None:
        await self.runner.start()

    async def close(self) -> None:
        await self.runner.close()
        await asyncio.to_thread(self.store.close)

    # submitting ----------------------------------------------------------------------------------

    def task_class(self, name: Any) -> type[Task]:
        if not isinstance(name, str) or name not in TASKS:
            raise BadRequest(f"task must be one of {sorted(TASKS)}", param="task", code="unknown_task")
        return TASKS[name]

    def default_model(self, cls: type[Task]) -> str:
        configured = {"caption": self.gateway_settings.default_caption_model,
                      "asr": self.gateway_settings.default_asr_model,
                      "face": self.gateway_settings.default_face_model,
                      "embed": self.gateway_settings.default_embed_model}.get(cls.family)
        return default_model(self.catalog.models, cls.family, configured)

    def prepare(self, task: Any, model: str | None, options: dict[str, Any]) -> tuple[type[Task], str, dict[str, Any]]:
        """Validate task, model and options before anything is read or stored: 400, 404, 503 (its service
        not configured, or the model ``model_unavailable`` here)."""
        cls = self.task_class(task)
        model = model or self.default_model(cls)
        spec = self.access.spec(model, cls.family)  # 404
        self.access.client(spec)  # 503 when its service is not configured
        reason = self.access.coordinator.unavailable.get(model)
        if reason is not None:  # on a GPU NVML cannot see (coordinator.loop): every item would fail, so no job
            raise ModelUnavailable(f"model {model} is unavailable: {reason}", param="model")
        return cls, model, cls.parse_params(options, spec)

    async def resolve_paths(self, cls: type[Task], paths: list[str], already: int = 0,
                            links_skipped: set[str] | None = None) -> list[NewItem]:
        """The items ``paths`` name, listed off the event loop; 4xx when the listing is too big, too slow or
        stuck (a hung mount: 400 ``listing_timeout``; 429 while every listing thread is stuck on one)."""
        try:
            found = await self.listing.run(self.library.expand, paths, cls.kinds,
                                           max_items=self.settings.jobs_max_items - already, links_skipped=links_skipped)
        except LaneFull as e:
            raise Overloaded(f"the library is not answering: {e}", param="paths", code="library_busy",
                             retry_after_s=LISTING_STALL_S) from None
        except Stalled as e:
            raise BadRequest(f"listing the paths stalled: {e}", param="paths", code="listing_timeout") from None
        if paths and not found:  # globs or folders that hold nothing this task reads: say so, not "no input"
            raise BadRequest(f"the paths name no file a {cls.name} job reads (kinds: {', '.join(sorted(cls.kinds))}): "
                             f"a glob that matches nothing, or folders without such files", param="paths",
                             code="no_matching_files")
        return [NewItem(source=src, path=real, upload=False, kind=kind) for src, real, kind in found]

    async def store_uploads(self, uploads: list[Upload]) -> list[NewItem]:
        items = []
        for up in uploads:
            name = Path(up.filename or "upload").name or "upload"
            name = name.encode("utf-8", "replace").decode("utf-8")  # a name is stored and shown: valid text only
            digest, path, size = await asyncio.to_thread(self.blobs.put, up.file, max_bytes=self.settings.jobs_max_file_bytes)
            kind = kind_of(name)
            if kind == "other":
                with open(path, "rb") as f:
                    kind = sniff_kind(f.read(16))
            items.append(NewItem(source=name, path=path, upload=True, kind=kind))
        return items

    async def submit(self, req: JobRequest, uploads: list[Upload]) -> dict[str, Any]:
        """A new job from a validated request: its status (the job is stored before this returns)."""
        cls, model, params = self.prepare(req.task, req.model, req.options.given() if req.options else {})
        paths = req.path_list()
        skipped: set[str] = set()
        items = await self.resolve_paths(cls, paths, links_skipped=skipped) if paths else []
        return _noting(await self.create(cls, model, params, items, uploads, open_=req.open), skipped)

    async def create(self, cls: type[Task], model: str, params: dict[str, Any], paths: list[NewItem],
                     uploads: list[Upload], *, open_: bool) -> dict[str, Any]:
        if len(paths) + len(uploads) > self.settings.jobs_max_items:
            raise PayloadTooLarge(f"a job holds at most {self.settings.jobs_max_items} items", code="too_many_items")
        if not paths and not uploads and not open_:
            raise BadRequest("the job names no input: upload files ('file') or name library paths ('paths')",
                             param="paths", code="no_inputs")
        job_id = new_job_id()
        with self.runner.receiving_uploads():
            items = paths + await self.store_uploads(uploads)
            await self.store.create_job(job_id, cls.name, model, params, items, open_=open_)
        self.runner.kick()
        return await self.status(job_id)

    async def add_inputs(self, job_id: str, req: InputsRequest, uploads: list[Upload]) -> dict[str, Any]:
        job = await self.get(job_id)
        if not job["open"] or job["state"] not in ACTIVE_STATES:
            raise Conflict(f"job {job_id} takes no more inputs (it is {job['state']}{'' if job['open'] else ', closed'})",
                           code="job_closed")
        cls = self.task_class(job["task"])
        paths = req.path_list()
        skipped: set[str] = set()
        items = await self.resolve_paths(cls, paths, job["n_total"], links_skipped=skipped) if paths else []
        if job["n_total"] + len(items) + len(uploads) > self.settings.jobs_max_items:
            raise PayloadTooLarge(f"a job holds at most {self.settings.jobs_max_items} items", code="too_many_items")
        with self.runner.receiving_uploads():
            items += await self.store_uploads(uploads)
            if not await self.store.add_items(job_id, items, close=req.close):
                await self.get(job_id)  # 404 when it was deleted meanwhile
                raise Conflict(f"job {job_id} takes no more inputs", code="job_closed")
        self.runner.wake(job_id)
        self.runner.kick()
        return _noting(await self.status(job_id), skipped)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel an active job: its status, cancelled, with its results so far. Cancelling a cancelled job
        again changes nothing (200); a job that completed or failed cannot become cancelled (409)."""
        job = await self.get(job_id)
        if job["state"] in ACTIVE_STATES:
            await self.runner.cancel(job_id)
        elif job["state"] != CANCELLED:
            raise Conflict(f"job {job_id} already ended ({job['state']})", param="job_id", code="job_finished")
        return await self.status(job_id)

    async def delete(self, job_id: str) -> None:
        """Delete a job, in any state (an active one is cancelled first): afterwards it is 404 everywhere.
        409 ``job_stopping`` when its workers have not stopped in time (it is left cancelled; try again)."""
        await self.get(job_id)
        outcome = await self.runner.delete(job_id)
        if outcome == "absent":
            raise NotFound(f"no job {job_id!r}", param="job_id", code="job_not_found")
        if outcome == "stopping":
            raise Conflict(f"job {job_id} is cancelled, but its workers are still stopping; delete it again shortly",
                           param="job_id", code="job_stopping", retry_after_s=1.0)
        for hook in self.on_deleted:
            await hook(job_id)

    # reading -------------------------------------------------------------------------------------

    async def get(self, job_id: str) -> dict[str, Any]:
        job = await self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}", param="job_id", code="job_not_found")
        return job

    async def status(self, job_id: str) -> dict[str, Any]:
        return self.view(await self.get(job_id))

    def view(self, job: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        finished = job["n_done"] + job["n_error"] + job["n_cancelled"]
        pending = job["n_total"] - finished
        live = self.runner.progress(job["id"])
        rate = live.get("rate_per_s")
        if rate is None and job["started_at"] and job["finished_at"] and job["finished_at"] > job["started_at"]:
            rate = (job["n_done"] + job["n_error"]) / (job["finished_at"] - job["started_at"])
        eta = pending / rate if rate and pending and job["state"] in ACTIVE_STATES else (0.0 if not pending else None)
        out: dict[str, Any] = {
            "id": job["id"], "object": "job", "task": job["task"], "model": job["model"], "options": job["params"],
            "state": job["state"], "open": job["open"],
            "created_at": job["created_at"], "started_at": job["started_at"], "finished_at": job["finished_at"],
            "counts": {"total": job["n_total"], "pending": pending, "done": job["n_done"], "error": job["n_error"],
                       "cancelled": job["n_cancelled"], "deduplicated": job["n_reused"]},
            "progress": round(finished / job["n_total"], 4) if job["n_total"] else (1.0 if not job["open"] else 0.0),
            "rate_per_s": round(rate, 3) if rate is not None else None,
            "eta_s": round(eta, 1) if eta is not None else None,
            "elapsed_s": round((job["finished_at"] or now) - job["started_at"], 3) if job["started_at"] else None,
        }
        if "waiting" in live:
            out["waiting"] = live["waiting"]
        if live:
            out["yielding"] = live["yielding"]  # paused for interactive requests on its device
        if job["error"]:
            out["error"] = job["error"]
        if job["summary"]:
            out["summary"] = job["summary"]
        return out

    async def list(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        return [self.view(j) for j in await self.store.list_jobs(state=state, limit=limit)]

    def shaper(self, job: dict[str, Any]) -> Task | None:
        """The job's task for shaping output (no catalog lookup: the model may have left the catalog)."""
        cls = TASKS.get(job["task"])
        return cls(job["model"], job["params"], None) if cls else None  # type: ignore[arg-type]

    async def results(self, job: dict[str, Any], *, after: int, limit: int, embeddings: bool) -> list[dict[str, Any]]:
        task = self.shaper(job)
        rows = await self.store.results_page(job["id"], after_seq=after, limit=limit)
        out = []
        for r in rows:
            people = r.pop("people")
            if r["result"] is not None and task is not None:
                r["result"] = task.public(r["result"], people, embeddings=embeddings)
            out.append(r)
        return out

    async def rows(self, job: dict[str, Any], *, after: int, limit: int) -> list[dict[str, Any]]:
        """Finished items as stored, with their people labels (for the CSV export)."""
        return await self.store.results_page(job["id"], after_seq=after, limit=limit)

    async def people(self, job_id: str) -> dict[str, Any]:
        """A completed faces job's people: 409 for another task's job (it has none) and for a faces job
        before it has grouped them (the job exists: not a 404)."""
        job = await self.get(job_id)
        if job["task"] != "faces":
            raise Conflict(f"job {job_id} is a {job['task']} job; people come from faces jobs", param="job_id",
                           code="not_a_faces_job")
        if job["state"] != COMPLETED and not job["summary"]:
            raise Conflict(f"job {job_id} is {job['state']}; people are grouped when it completes", code="job_not_finished")
        return {"object": "list", "job": job_id, "summary": job["summary"], "data": await self.store.people(job_id)}

    def change_event(self, job_id: str) -> asyncio.Event:
        """Set at the job's next change: take it before reading the job, then wait on it."""
        return self.runner.events.change_event(job_id)


def _noting(status: dict[str, Any], links_skipped: set[str]) -> dict[str, Any]:
    """The answer to the request that listed ``paths``, saying how many symlinked folders it passed over."""
    return {**status, "links_skipped": len(links_skipped)} if links_skipped else status
