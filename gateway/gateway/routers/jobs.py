"""Bulk jobs: POST /v1/jobs, GET /v1/jobs[/{id}[/results|/events|/people]], POST /v1/jobs/{id}/inputs,
DELETE /v1/jobs/{id}. The work itself is in gateway/jobs/."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from typing import Any, AsyncIterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.datastructures import UploadFile

from modelhost.errors import BadRequest, Conflict, PayloadTooLarge, RoundhouseError, UnsupportedMediaType

from ..bodies import parse_json_object, read_body
from ..jobs.service import Jobs, Upload
from ..jobs.store import ACTIVE_STATES, COMPLETED, TERMINAL_STATES

router = APIRouter(tags=["jobs"])

OPTION_FIELDS = ("prompt", "max_new_tokens", "language", "cluster", "cluster_threshold", "max_faces")
MAX_JSON_BYTES = 16 * 1024 * 1024
SSE_HEARTBEAT_S = 15.0
SSE_MIN_INTERVAL_S = 0.2


def jobs_of(request: Request) -> Jobs:
    return request.app.state.jobs


def _limited(request: Request, limit: int) -> Request:
    """The request with a body that raises 413 as soon as more than ``limit`` bytes arrive (streamed
    uploads are counted as they come; nothing is buffered whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body has {declared} bytes; the limit is {limit}")
    received = 0

    async def receive() -> Any:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
        return message
    return Request(request.scope, receive)


async def _read_inputs(request: Request, jobs: Jobs) -> tuple[dict[str, Any], list[str], list[UploadFile]]:
    """(fields, paths, uploads) from a JSON or multipart body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        body = parse_json_object(await read_body(request, MAX_JSON_BYTES))
        paths = body.get("paths", [])
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise BadRequest("paths must be a list of strings", param="paths")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise BadRequest("options must be an object", param="options")
        fields = {k: v for k, v in body.items() if k not in ("paths", "options")}
        fields["options"] = options
        return fields, paths, []
    if ctype == "multipart/form-data":
        limited = _limited(request, jobs.settings.jobs_max_request_bytes)
        try:
            form = await limited.form(max_files=jobs.settings.jobs_max_items, max_fields=10_000)
        except RoundhouseError:
            raise
        except Exception as e:  # python-multipart's parse errors
            raise BadRequest(f"the multipart body could not be parsed: {e}", code="invalid_multipart")
        uploads = [v for v in form.getlist("file") if isinstance(v, UploadFile)]
        paths = [v for v in form.getlist("path") + form.getlist("paths") if isinstance(v, str) and v]
        fields: dict[str, Any] = {k: form.get(k) for k in ("task", "model", "open", "close") if isinstance(form.get(k), str)}
        options: dict[str, Any] = {}
        if isinstance(form.get("options"), str) and form.get("options"):
            try:
                options = json.loads(form.get("options"))  # type: ignore[arg-type]
            except ValueError:
                raise BadRequest("options must be a JSON object", param="options")
            if not isinstance(options, dict):
                raise BadRequest("options must be a JSON object", param="options")
        for k in OPTION_FIELDS:
            if isinstance(form.get(k), str) and form.get(k) != "":
                options[k] = form.get(k)
        fields["options"] = options
        return fields, paths, uploads
    raise UnsupportedMediaType(f"send multipart/form-data or application/json, not {ctype or 'no Content-Type'}",
                               code="unsupported_content_type")


def _flag(value: Any, param: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise BadRequest(f"{param} must be true or false", param=param)


@router.post("/v1/jobs", status_code=201, summary="Create a bulk job",
             description="A task (caption, faces, transcribe), an optional model and options, and inputs: uploaded "
             "files (multipart field `file`, repeated) and/or library paths, folders and globs (`paths` in JSON, `path` "
             "in multipart) under GATEWAY_LIBRARY_ROOTS. With `open=true` the job takes more inputs through "
             "POST /v1/jobs/{id}/inputs until one says `close=true`.")
async def create_job(request: Request) -> Any:
    jobs = jobs_of(request)
    fields, paths, uploads = await _read_inputs(request, jobs)
    extra = set(fields) - {"task", "model", "open", "options"}
    if extra:
        raise BadRequest(f"unknown field(s): {sorted(extra)}", param=sorted(extra)[0])
    unknown = set(fields["options"]) - set(OPTION_FIELDS)
    if unknown:
        raise BadRequest(f"unknown option(s): {sorted(unknown)}; known: {list(OPTION_FIELDS)}", param="options")
    cls, model, params = jobs.prepare(fields.get("task"), fields.get("model"), fields["options"])
    open_ = _flag(fields.get("open"), "open")
    items = jobs.resolve_paths(cls, paths) if paths else []
    status = await jobs.create(cls, model, params, items, [Upload(u.filename or "", u.file) for u in uploads], open_=open_)
    return JSONResponse(status, status_code=201, headers={"Location": f"/v1/jobs/{status['id']}"})


@router.post("/v1/jobs/{job_id}/inputs", summary="Add inputs to an open job")
async def add_inputs(request: Request, job_id: str) -> Any:
    jobs = jobs_of(request)
    await jobs.get(job_id)  # 404 before reading uploads
    fields, paths, uploads = await _read_inputs(request, jobs)
    extra = set(fields) - {"close", "options"}
    if extra or fields["options"]:
        raise BadRequest("inputs take only files, paths and close", param=sorted(extra)[0] if extra else "options")
    return await jobs.add_inputs(job_id, paths, [Upload(u.filename or "", u.file) for u in uploads],
                                 close=_flag(fields.get("close"), "close"))


@router.get("/v1/jobs", summary="List jobs, newest first")
async def list_jobs(request: Request, state: str | None = Query(None, description="queued, running, completed, cancelled or failed"),
                    limit: int = Query(50, ge=1, le=1000)) -> Any:
    return {"object": "list", "data": await jobs_of(request).list(state, limit)}


@router.get("/v1/jobs/{job_id}", summary="A job's progress: counts, rate, ETA")
async def get_job(request: Request, job_id: str) -> Any:
    return await jobs_of(request).status(job_id)


@router.delete("/v1/jobs/{job_id}", summary="Cancel a job")
async def cancel_job(request: Request, job_id: str) -> Any:
    jobs = jobs_of(request)
    job = await jobs.get(job_id)
    if job["state"] in ACTIVE_STATES:
        await jobs.runner.cancel(job_id)
    elif job["state"] != "cancelled":
        raise Conflict(f"job {job_id} already ended ({job['state']})", code="job_finished")
    return await jobs.status(job_id)


@router.get("/v1/jobs/{job_id}/results", summary="A job's results, in input order",
            description="Paged JSON (`after` = the last `seq` seen, `limit`), or the whole export as `format=jsonl` "
            "or `format=csv`. Face embeddings only with `embeddings=true`.")
async def job_results(request: Request, job_id: str, after: int = Query(-1, ge=-1), limit: int = Query(100, ge=1, le=1000),
                      format: str = Query("json", pattern="^(json|jsonl|csv)$"), embeddings: bool = Query(False)) -> Any:
    jobs = jobs_of(request)
    job = await jobs.get(job_id)
    if format == "json":
        rows = await jobs.results(job, after=after, limit=limit + 1, embeddings=embeddings)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"object": "list", "job": job_id, "state": job["state"], "data": rows,
                "has_more": more, "next_after": rows[-1]["seq"] if rows else after}
    if format == "jsonl":
        async def lines() -> AsyncIterator[bytes]:
            async for row in _all_rows(jobs, job, after, embeddings):
                yield (json.dumps(row) + "\n").encode()
        return StreamingResponse(lines(), media_type="application/x-ndjson",
                                 headers={"Content-Disposition": f'attachment; filename="{job_id}.jsonl"'})
    task = jobs.shaper(job)
    base = ["seq", "source", "kind", "state", "sha256", "deduplicated", "error_code", "error_message"]
    columns = base + list(task.csv_columns if task else ())

    async def rows_csv() -> AsyncIterator[bytes]:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        async for row in _all_rows(jobs, job, after, False, shaped=False):
            head = {"seq": row["seq"], "source": row["source"], "kind": row["kind"], "state": row["state"],
                    "sha256": row["sha256"] or "", "deduplicated": int(row["reused"]),
                    "error_code": (row["error"] or {}).get("code", ""), "error_message": (row["error"] or {}).get("message", "")}
            extra = task.csv_rows(row["result"], row["people"]) if (task and row["result"] is not None) else [{}]
            for e in extra:
                w.writerow({**head, **e})
            if buf.tell() > 64 * 1024:
                yield buf.getvalue().encode()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue().encode()
    return StreamingResponse(rows_csv(), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'})


async def _all_rows(jobs: Jobs, job: dict[str, Any], after: int, embeddings: bool, *, shaped: bool = True) -> AsyncIterator[dict[str, Any]]:
    while True:
        if shaped:
            rows = await jobs.results(job, after=after, limit=500, embeddings=embeddings)
        else:
            rows = await jobs.store.results_page(job["id"], after_seq=after, limit=500)
        if not rows:
            return
        for r in rows:
            yield r
        after = rows[-1]["seq"]


@router.get("/v1/jobs/{job_id}/people", summary="A faces job's people: its faces grouped by person")
async def job_people(request: Request, job_id: str) -> Any:
    jobs = jobs_of(request)
    job = await jobs.get(job_id)
    if job["task"] != "faces":
        raise BadRequest(f"job {job_id} is a {job['task']} job; people come from faces jobs", code="not_a_faces_job")
    if job["state"] != COMPLETED and not job["summary"]:
        raise Conflict(f"job {job_id} is {job['state']}; people are grouped when it completes", code="job_not_finished")
    data = await jobs.store.people(job_id)
    return {"object": "list", "job": job_id, "summary": job["summary"], "data": data}


@router.get("/v1/jobs/{job_id}/events", summary="A job's progress as server-sent events",
            description="`progress` events (the job's status, as GET /v1/jobs/{id}) whenever it changes, at most "
            "five a second, and one `end` event when the job ends; a comment every 15 s keeps the stream open.")
async def job_events(request: Request, job_id: str) -> Any:
    jobs = jobs_of(request)
    await jobs.get(job_id)  # 404 before the stream starts

    async def stream() -> AsyncIterator[bytes]:
        last: Any = None
        while True:
            changed = jobs.runner.events.change_event(job_id)  # before reading, so no change is missed
            status = await jobs.status(job_id)
            key = (status["state"], status["counts"], status.get("waiting"), status["open"])
            finished = status["counts"]["total"] - status["counts"]["pending"]
            if key != last:
                last = key
                yield f"event: progress\nid: {finished}\ndata: {json.dumps(status)}\n\n".encode()
            if status["state"] in TERMINAL_STATES:
                yield f"event: end\nid: {finished}\ndata: {json.dumps(status)}\n\n".encode()
                return
            try:
                await asyncio.wait_for(changed.wait(), SSE_HEARTBEAT_S)
            except asyncio.TimeoutError:
                yield b": keep-alive\n\n"
            await asyncio.sleep(SSE_MIN_INTERVAL_S)
    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
