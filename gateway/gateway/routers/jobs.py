"""Bulk jobs: POST /v1/jobs, GET /v1/jobs[/{id}[/results|/events|/people]], POST /v1/jobs/{id}/inputs,
POST /v1/jobs/{id}/cancel, DELETE /v1/jobs/{id}. Routes parse and answer; the work is behind the ``Jobs``
facade (gateway/jobs/).

The two POST routes take JSON or multipart, so they read their body themselves; their OpenAPI request
bodies are generated from the models that validate them (``jobs.schemas.request_body``)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from modelhost.errors import BadRequest, ErrorEnvelope, PayloadTooLarge, RoundhouseError, UnsupportedMediaType, error_responses

from ..bodies import parse_json_object, read_body
from ..jobs import export
from ..jobs.schemas import (InputsForm, InputsRequest, Job, JobForm, JobList, JobRequest, JobState, PeopleList,
                            ResultsPage, event_stream_schema, parse, request_body)
from ..jobs.service import Jobs, Upload

router = APIRouter(tags=["jobs"])

MAX_JSON_BYTES = 16 * 1024 * 1024
LIST_FIELDS = frozenset({"path", "paths"})  # form fields that may repeat
MAX_SEQ = 2**63 - 1  # the largest item number SQLite holds (``after`` beyond it would be a 500)
OUTSIDE_LIBRARY = {403: {"model": ErrorEnvelope, "description": "A path outside the library roots, or no roots set."}}


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


async def _read_form(request: Request, jobs: Jobs) -> tuple[dict[str, Any], list[Upload]]:
    """(text fields, uploads) of a multipart body; an empty field is an absent one, except an empty path
    (refused: the document says a path is not empty, and a job told of one path has one input)."""
    limited = _limited(request, jobs.settings.jobs_max_request_bytes)
    try:
        form = await limited.form(max_files=jobs.settings.jobs_max_items, max_fields=10_000)
    except RoundhouseError:
        raise
    except Exception as e:  # python-multipart's parse errors
        raise BadRequest(f"the multipart body could not be parsed: {e}", code="invalid_multipart")
    fields: dict[str, Any] = {}
    uploads: list[Upload] = []
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key != "file":
                raise BadRequest(f"{key} takes text, not a file", param=key)
            uploads.append(Upload(value.filename or "", value.file))
        elif key == "file":
            raise BadRequest("file takes an uploaded file, not text", param="file")
        elif key in LIST_FIELDS:
            fields.setdefault(key, []).append(value)
        elif value == "":
            continue
        else:
            fields[key] = value
    return fields, uploads


def _content_type(request: Request) -> str:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/json", "multipart/form-data"):
        raise UnsupportedMediaType(f"send multipart/form-data or application/json, not {ctype or 'no Content-Type'}",
                                   code="unsupported_content_type")
    return ctype


@router.post("/v1/jobs", status_code=201, response_model=Job, response_model_exclude_unset=True,
             summary="Create a bulk job",
             description="A task (caption, faces, transcribe, embed), an optional model and options, and inputs: "
             "uploaded files (multipart field `file`, repeated) and/or library paths, folders and globs (`paths` in JSON, "
             "`path` in multipart) under GATEWAY_LIBRARY_ROOTS. With `open=true` the job takes more inputs through "
             "POST /v1/jobs/{id}/inputs until one says `close=true`. A model that cannot run here (the catalog puts "
             "it on a GPU NVML does not see) is 503 `model_unavailable` with the reason, and no job is made.",
             responses={201: {"headers": {"Location": {"description": "The job's URL.", "schema": {"type": "string"}}}},
                        **error_responses(400, 404, 413, 415, 429, 503), **OUTSIDE_LIBRARY},
             openapi_extra=request_body(JobRequest, JobForm))
async def create_job(request: Request, response: Response) -> Any:
    jobs = jobs_of(request)
    if _content_type(request) == "application/json":
        req = parse(JobRequest, parse_json_object(await read_body(request, MAX_JSON_BYTES)))
        uploads: list[Upload] = []
    else:
        fields, uploads = await _read_form(request, jobs)
        req = parse(JobForm, fields).request()
    status = await jobs.submit(req, uploads)
    response.headers["Location"] = f"/v1/jobs/{status['id']}"
    return status


@router.post("/v1/jobs/{job_id}/inputs", response_model=Job, response_model_exclude_unset=True,
             summary="Add inputs to an open job",
             responses={**error_responses(400, 404, 409, 413, 415, 422, 429), **OUTSIDE_LIBRARY},
             openapi_extra=request_body(InputsRequest, InputsForm))
async def add_inputs(request: Request, job_id: str) -> Any:
    jobs = jobs_of(request)
    await jobs.get(job_id)  # 404 before reading uploads
    if _content_type(request) == "application/json":
        req = parse(InputsRequest, parse_json_object(await read_body(request, MAX_JSON_BYTES)))
        uploads: list[Upload] = []
    else:
        fields, uploads = await _read_form(request, jobs)
        req = parse(InputsForm, fields).request()
    return await jobs.add_inputs(job_id, req, uploads)


@router.get("/v1/jobs", response_model=JobList, response_model_exclude_unset=True, summary="List jobs, newest first",
            responses=error_responses(422))
async def list_jobs(request: Request, state: JobState | None = Query(None, description="Only jobs in this state."),
                    limit: int = Query(50, ge=1, le=1000)) -> Any:
    return {"object": "list", "data": await jobs_of(request).list(state, limit)}


@router.get("/v1/jobs/{job_id}", response_model=Job, response_model_exclude_unset=True,
            summary="A job's progress: counts, rate, ETA", responses=error_responses(404, 422))
async def get_job(request: Request, job_id: str) -> Any:
    return await jobs_of(request).status(job_id)


@router.post("/v1/jobs/{job_id}/cancel", response_model=Job, response_model_exclude_unset=True, summary="Cancel a job",
             description="Its items in flight stop and its pending items are recorded as cancelled; the job stays, "
             "with its results so far. Cancelling a cancelled job again changes nothing (200); a job that completed "
             "or failed is 409 `job_finished`.", responses=error_responses(404, 409, 422))
async def cancel_job(request: Request, job_id: str) -> Any:
    return await jobs_of(request).cancel(job_id)


@router.delete("/v1/jobs/{job_id}", status_code=204, response_class=Response, summary="Delete a job",
               description="An active job is cancelled first (its workers stopped). Then the job, its items, its people "
               "and the results no other job holds are removed, with its uploaded files; every route of the job "
               "answers 404 `job_not_found` afterwards. 409 `job_stopping` when its workers have not stopped in time "
               "(the job is left cancelled: delete it again).", responses=error_responses(404, 409, 422))
async def delete_job(request: Request, job_id: str) -> Response:
    await jobs_of(request).delete(job_id)
    return Response(status_code=204)


@router.get("/v1/jobs/{job_id}/results", response_model=ResultsPage, summary="A job's results, in input order",
            description="Paged JSON (`after` = the last `seq` seen, `limit`), or the whole export as `format=jsonl` "
            "or `format=csv`. Face embeddings only with `embeddings=true`.",
            responses={200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}},
                                         "text/csv": {"schema": {"type": "string"}}}},
                       **error_responses(404, 422)})
async def job_results(request: Request, job_id: str, after: int = Query(-1, ge=-1, le=MAX_SEQ), limit: int = Query(100, ge=1, le=1000),
                      format: Literal["json", "jsonl", "csv"] = Query("json"), embeddings: bool = Query(False)) -> Any:
    jobs = jobs_of(request)
    job = await jobs.get(job_id)
    if format == "json":
        rows = await jobs.results(job, after=after, limit=limit + 1, embeddings=embeddings)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"object": "list", "job": job_id, "state": job["state"], "data": rows,
                "has_more": more, "next_after": rows[-1]["seq"] if rows else after}
    if format == "jsonl":
        return StreamingResponse(export.jsonl(jobs, job, after=after, embeddings=embeddings), media_type="application/x-ndjson",
                                 headers={"Content-Disposition": f'attachment; filename="{job_id}.jsonl"'})
    return StreamingResponse(export.csv_table(jobs, job, after=after), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'})


@router.get("/v1/jobs/{job_id}/people", response_model=PeopleList,
            summary="A faces job's people: its faces grouped by person",
            description="409 for a job of another task (it has no people) and for a faces job that has not ended.",
            responses=error_responses(404, 409, 422))
async def job_people(request: Request, job_id: str) -> Any:
    return await jobs_of(request).people(job_id)


@router.get("/v1/jobs/{job_id}/events", response_class=StreamingResponse, summary="A job's progress as server-sent events",
            description="`progress` events (the job's status, as GET /v1/jobs/{id}) whenever it changes, at most "
            "five a second, and one `end` event when the job ends; a comment every 15 s keeps the stream open.",
            responses={200: {"content": {"text/event-stream": {"schema": event_stream_schema()}}}, **error_responses(404, 422)})
async def job_events(request: Request, job_id: str) -> Any:
    jobs = jobs_of(request)
    await jobs.get(job_id)  # 404 before the stream starts
    return StreamingResponse(export.progress_events(jobs, job_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

