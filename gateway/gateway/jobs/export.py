"""The streamed answers of the jobs API: a job's results as JSON lines or CSV, and its progress as
server-sent events. Each is an async iterator of bytes for a ``StreamingResponse``; a client that goes
away ends it at its next ``yield``.

The event stream's contract: a ``progress`` event (the job's status, as GET /v1/jobs/{id}) whenever it
changes, at most one per ``min_interval_s``; one ``end`` event when the job has ended, then the stream
closes; a comment every ``heartbeat_s`` keeps proxies from closing a quiet stream. No change is missed
(``events.JobEvents``): the change event is taken before each read. A job deleted while it is watched
ends the stream without an ``end`` event (the job is gone: a client asking again gets 404).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from typing import Any, AsyncIterator

from modelhost.errors import NotFound

from .service import Jobs
from .store import TERMINAL_STATES

CSV_HEAD = ("seq", "source", "kind", "state", "sha256", "deduplicated", "error_code", "error_message")
PAGE = 500
CSV_FLUSH_BYTES = 64 * 1024


async def jsonl(jobs: Jobs, job: dict[str, Any], *, after: int, embeddings: bool) -> AsyncIterator[bytes]:
    """Every finished item after ``after``, one JSON object a line, as the paged results show it."""
    while True:
        rows = await jobs.results(job, after=after, limit=PAGE, embeddings=embeddings)
        if not rows:
            return
        for row in rows:
            yield (json.dumps(row) + "\n").encode()
        after = rows[-1]["seq"]


async def csv_table(jobs: Jobs, job: dict[str, Any], *, after: int) -> AsyncIterator[bytes]:
    """Every finished item after ``after`` as CSV rows: the item's columns, then the task's (a row per
    keyframe, face or segment where the task has several)."""
    task = jobs.shaper(job)
    columns = list(CSV_HEAD) + list(task.csv_columns if task else ())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    while True:
        rows = await jobs.rows(job, after=after, limit=PAGE)
        if not rows:
            break
        for row in rows:
            error = row["error"] or {}
            head = {"seq": row["seq"], "source": row["source"], "kind": row["kind"], "state": row["state"],
                    "sha256": row["sha256"] or "", "deduplicated": int(row["reused"]),
                    "error_code": error.get("code", ""), "error_message": error.get("message", "")}
            extra = task.csv_rows(row["result"], row["people"]) if (task and row["result"] is not None) else [{}]
            for e in extra:
                w.writerow({**head, **e})
            if buf.tell() > CSV_FLUSH_BYTES:
                yield buf.getvalue().encode()
                buf.seek(0)
                buf.truncate()
        after = rows[-1]["seq"]
    yield buf.getvalue().encode()


async def progress_events(jobs: Jobs, job_id: str, *, heartbeat_s: float = 15.0,
                          min_interval_s: float = 0.2) -> AsyncIterator[bytes]:
    """The job's progress as server-sent events, until it ends (see the module's docstring)."""
    last: Any = None
    while True:
        changed = jobs.change_event(job_id)  # before reading, so no change is missed
        try:
            status = await jobs.status(job_id)
        except NotFound:
            return  # deleted
        key = (status["state"], status["counts"], status.get("waiting"), status["open"])
        finished = status["counts"]["total"] - status["counts"]["pending"]
        if key != last:
            last = key
            yield f"event: progress\nid: {finished}\ndata: {json.dumps(status)}\n\n".encode()
        if status["state"] in TERMINAL_STATES:
            yield f"event: end\nid: {finished}\ndata: {json.dumps(status)}\n\n".encode()
            return
        try:
            async with asyncio.timeout(heartbeat_s):
                await changed.wait()
        except asyncio.TimeoutError:
            yield b": keep-alive\n\n"
        await asyncio.sleep(min_interval_s)
