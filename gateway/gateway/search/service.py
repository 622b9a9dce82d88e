"""Search as the route sees it: ``Search.search(options, query)`` validates, embeds the query with the model held
(``ModelAccess.hold``, interactive lane), ranks the model's vectors and adds what other jobs know of each
file.

Keeping the index in step with the jobs (``sync``, at start and before each search, under one lock):

- the jobs database is the truth: an ended embed job (completed, cancelled or failed: an ended job's
  results never change) is indexed once, from its stored results; a job the jobs database no longer has
  (deleted, even while this gateway was down) is dropped. A deletion also calls ``forget`` at once
  (``Jobs.on_deleted``), so its items leave search before ``DELETE /v1/jobs/{id}`` answers.
- each model's vectors are loaded into memory (``ModelMatrix``) on first use, on the index's thread; a job
  indexed or removed afterwards is spliced in or cut out of it (a new matrix, in a thread: a copy of the
  float32 rows, not a reload from SQLite with its float16 conversion, 4.5 s per 100,000 vectors here).

What it costs per search when nothing changed: one small query on the jobs table, no lock held while
the query is embedded or the vectors ranked (a ranking holds its ``ModelMatrix``, which never changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from threadpoolctl import ThreadpoolController

from modelhost.catalog import Catalog
from modelhost.errors import BadRequest, Conflict, NotFound
from modelhost.families import default_model, embed

from ..access import ModelAccess
from ..bodies import Part, decode_base64_field
from ..images import check_image
from ..jobs.store import COMPLETED, AsyncStore
from . import jobs_view
from .matrix import ModelMatrix
from .schemas import CaptionRef, ImageQuery, PersonRef, QueryInfo, SearchHit, SearchOptions, SearchResponse, SearchTimings
from .store import ModelVectors, VectorStore

log = logging.getLogger(__name__)
T = TypeVar("T")


class Search:
    def __init__(self, path: Path, jobs_store: AsyncStore, access: ModelAccess, catalog: Catalog, settings: Any,
                 registry: CollectorRegistry | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search")
        self.vectors: VectorStore = self._pool.submit(VectorStore, path).result()
        self.jobs_store = jobs_store
        self.access = access
        self.catalog = catalog
        self.settings = settings  # GatewaySettings: upload and image limits, the request timeout
        self._lock = asyncio.Lock()
        self._indexed: dict[str, str] = {}  # job id -> model, as the index holds them
        self._matrices: dict[str, ModelMatrix] = {}
        self._blas = ThreadpoolController()  # the ranking's one BLAS thread (matrix.py says why)
        self.seconds = Histogram(
            "roundhouse_gateway_search_seconds", "POST /v1/search: embedding the query, and ranking the vectors.",
            ["phase"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=registry)
        for phase in ("embed", "rank"):
            self.seconds.labels(phase)

    @classmethod
    def build(cls, data_dir: Path, jobs_store: AsyncStore, *, access: ModelAccess, catalog: Catalog, settings: Any,
              registry: CollectorRegistry | None = None) -> Search:
        return cls(data_dir / "search" / "vectors.sqlite3", jobs_store, access, catalog, settings, registry)

    async def _in_index(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(*args))

    async def start(self) -> None:
        self._indexed = await self._in_index(self.vectors.indexed)
        await self.sync()

    async def close(self) -> None:
        await self._in_index(self.vectors.close)
        self._pool.shutdown(wait=True)

    # keeping in step with the jobs ---------------------------------------------------------------

    async def sync(self) -> dict[str, dict[str, Any]]:
        """Index the ended embed jobs not yet in, drop the jobs that are gone; the ended embed jobs."""
        ended = await self.jobs_store.call(jobs_view.ended_embed_jobs, self.jobs_store.sync)
        if ended.keys() == self._indexed.keys():
            return ended
        async with self._lock:
            for job_id in list(self._indexed.keys() - ended.keys()):
                await self._remove(job_id)
            for job_id in ended.keys() - self._indexed.keys():
                rows, dim = await self.jobs_store.call(jobs_view.job_vectors, self.jobs_store.sync, job_id)
                model = ended[job_id]["model"]
                n = await self._in_index(functools.partial(self.vectors.add_job, job_id, model, ended[job_id]["state"],
                                                           rows, dim=dim))
                self._indexed[job_id] = model
                loaded = self._matrices.pop(model, None)
                if loaded is not None and rows:  # add the job's rows to the matrix in memory (no reload)
                    new = ModelVectors.of([(job_id, r.item_seq, r.frame, r.source, r.kind, r.sha256, r.t_s, dim, r.vector)
                                           for r in rows])
                    with contextlib.suppress(ValueError):  # another dimension: the next search reloads
                        self._matrices[model] = await asyncio.to_thread(loaded.with_job, new)
                elif loaded is not None:
                    self._matrices[model] = loaded
                log.info("search: job %s indexed (%d vectors of %s)", job_id, n, model)
        return ended

    async def forget(self, job_id: str) -> None:
        """A deleted job's items leave search (the hook of ``Jobs.delete``)."""
        async with self._lock:
            await self._remove(job_id)

    async def _remove(self, job_id: str) -> None:
        model = await self._in_index(self.vectors.remove_job, job_id)
        self._indexed.pop(job_id, None)
        if model is not None:
            loaded = self._matrices.pop(model, None)
            if loaded is not None:
                self._matrices[model] = await asyncio.to_thread(loaded.without_job, job_id)
            log.info("search: job %s removed from the index", job_id)

    async def matrix(self, model: str) -> ModelMatrix:
        """The model's vectors in memory (loaded on the index's thread on first use after a change)."""
        async with self._lock:
            m = self._matrices.get(model)
            if m is None:
                m = self._matrices[model] = await self._in_index(lambda: ModelMatrix(self.vectors.load_model(model), blas=self._blas))
            return m

    # searching -----------------------------------------------------------------------------------

    def _model(self, req: SearchOptions, ended: dict[str, dict[str, Any]]) -> str:
        if req.model:
            return req.model
        if req.jobs and req.jobs[0] in ended:
            return ended[req.jobs[0]]["model"]
        return default_model(self.catalog.models, embed.FAMILY, self.settings.default_embed_model)

    async def _jobs(self, model: str, names: list[str] | None, ended: dict[str, dict[str, Any]]) -> list[str]:
        """The jobs to search: ``names`` checked (404 unknown, 400 another task's or another model's, 409 not
        ended yet), else every completed embed job of ``model``."""
        if names is None:
            return sorted(j for j, info in ended.items() if info["model"] == model and info["state"] == COMPLETED)
        for name in names:
            info = ended.get(name)
            if info is None:
                job = await self.jobs_store.get_job(name)
                if job is None:
                    raise NotFound(f"no job {name!r}", param="jobs", code="job_not_found")
                if job["task"] != jobs_view.EMBED_TASK:
                    raise BadRequest(f"job {name} is a {job['task']} job; search reads embed jobs", param="jobs",
                                     code="not_an_embed_job")
                raise Conflict(f"job {name} is {job['state']}; it is searchable once it ends", param="jobs",
                               code="job_not_finished")
            if info["model"] != model:
                raise BadRequest(f"job {name} was embedded with {info['model']}, not {model}: one model's vectors "
                                 f"are not comparable with another's", param="jobs", code="model_mismatch")
        return sorted(set(names))

    async def search(self, req: SearchOptions, query: str | ImageQuery | Part,
                     request_id: str | None = None) -> SearchResponse:
        """``query``: a text, or an image: base64 in JSON (``ImageQuery``), or a form's uploaded file (``Part``).
        Checked in this order, whichever way it came: the model (404), the query's modality for it, the image
        (400, 413), the jobs (404, 400, 409)."""
        t0 = time.perf_counter()
        ended = await self.sync()
        model = self._model(req, ended)
        spec = self.access.spec(model, embed.FAMILY)  # 404
        image: bytes | None = None
        embed.check_modality(model, spec.options or {}, "text" if isinstance(query, str) else "image")  # 400
        if not isinstance(query, str):
            param = "query.image" if isinstance(query, ImageQuery) else query.param
            image = decode_base64_field(query.image, param) if isinstance(query, ImageQuery) else query.data
            check_image(image, max_bytes=self.settings.max_upload_bytes, max_pixels=self.settings.max_image_pixels,
                        param=param)
        jobs = await self._jobs(model, req.jobs, ended)
        matrix = await self.matrix(model)
        modality = "text" if image is None else "image"
        selected = set(jobs)
        searched = matrix.count(selected)
        embed_s = rank_s = 0.0
        hits: list = []
        tokens = 0
        if searched:  # nothing to rank: no model is loaded for it
            t1 = time.perf_counter()
            async with self.access.hold(model, embed.FAMILY) as upstream:
                timeout_s = self.settings.request_timeout_s
                if image is None:
                    reply = await embed.embed_texts(upstream, model, [query], timeout_s=timeout_s, request_id=request_id)
                else:
                    reply = await embed.embed_images(upstream, model, [image], timeout_s=timeout_s, request_id=request_id)
            embed_s = time.perf_counter() - t1
            tokens = reply.tokens
            if reply.dim != matrix.dim:
                raise Conflict(f"{model} now answers {reply.dim} dimensions, its jobs hold {matrix.dim}: embed them again",
                               code="dimension_mismatch")
            t2 = time.perf_counter()
            query = np.asarray(reply.embeddings[0], dtype=np.float32)
            hits = await asyncio.to_thread(matrix.rank, query, req.k, jobs=selected, min_score=req.min_score)
            rank_s = time.perf_counter() - t2
            self.seconds.labels("embed").observe(embed_s)
            self.seconds.labels("rank").observe(rank_s)
        data = await self._described(matrix, hits)
        return SearchResponse(model=model, query=QueryInfo(modality=modality, tokens=tokens), jobs=jobs, searched=searched,
                              data=data, timings=SearchTimings(embed_ms=round(embed_s * 1000, 3),
                                                               rank_ms=round(rank_s * 1000, 3),
                                                               total_ms=round((time.perf_counter() - t0) * 1000, 3)))

    async def _described(self, matrix: ModelMatrix, hits: list) -> list[SearchHit]:
        """Each hit with its file and what caption and faces jobs know of the same content."""
        rows = matrix.rows
        shas = sorted({rows.sha256[h.row] for h in hits if rows.sha256[h.row]})
        known = await self.jobs_store.call(jobs_view.related, self.jobs_store.sync, shas) if shas else []
        out = []
        for rank, h in enumerate(hits, 1):
            sha = rows.sha256[h.row]
            t_s = None if np.isnan(rows.t_s[h.row]) else float(rows.t_s[h.row])
            caption, people = None, []
            for other in (o for o in known if o["sha256"] == sha):
                prefix, part = jobs_view.frame_at(other["result"], t_s)
                if part is None:
                    continue
                if other["task"] == "caption" and caption is None and part.get("caption") is not None:
                    caption = CaptionRef(job=other["job"], model=other["model"], text=part["caption"])
                elif other["task"] == "faces":
                    people += _people(other["job"], other["people"], prefix)
            out.append(SearchHit(rank=rank, score=round(h.score, 6), job=rows.jobs[rows.job[h.row]], seq=int(rows.seq[h.row]),
                                 source=rows.source[h.row], kind=rows.kind[h.row], sha256=sha, t_s=t_s,
                                 caption=caption, people=people))
        return out


def _people(job: str, labels: dict[str, int], prefix: str) -> list[PersonRef]:
    """The people of one image (``prefix`` "") or one keyframe ("k.") among a faces job's labels of a file."""
    by_person: dict[int, list[str]] = {}
    for face, person in labels.items():
        if (face.startswith(prefix) and prefix) or (not prefix and "." not in face):
            by_person.setdefault(person, []).append(face)
    return [PersonRef(job=job, person=p, faces=sorted(f)) for p, f in sorted(by_person.items())]
