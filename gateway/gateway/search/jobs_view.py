"""What search reads of the jobs database: the ended embed jobs, an embed job's vectors, and what other jobs
know of the same files. Each function runs on the jobs store's thread (``AsyncStore.call``) and reads
through its one connection, so it never meets a half-written transaction.

The lookup of other jobs' items by content (``related``) goes through their result keys, which end with the
content's sha256 (``task:model:options-digest:sha256``, ``dedup``): one key per hit and per distinct
(task, model, options) of the caption and faces jobs, looked up in ``items_by_result``. The jobs schema has
no index on ``items.sha256``; scanning for it took 65-110 ms per search over 100,000 items here, the keys
0.2-0.8 ms.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from typing import Any

from ..jobs.store import DONE, TERMINAL_STATES, JobStore
from ..jobs.tasks import TASKS
from .store import VectorRow

EMBED_TASK = "embed"
PAGE = 1000


def ended_embed_jobs(js: JobStore) -> dict[str, dict[str, Any]]:
    """job id -> {model, state, finished_at} of every embed job that has ended."""
    marks = ",".join("?" * len(TERMINAL_STATES))
    rows = js.db.execute(f"SELECT id, model, state, finished_at FROM jobs WHERE task = ? AND state IN ({marks})",
                         (EMBED_TASK, *TERMINAL_STATES))
    return {r[0]: {"model": r[1], "state": r[2], "finished_at": r[3]} for r in rows}


def job_vectors(js: JobStore, job_id: str) -> tuple[list[VectorRow], int | None]:
    """The rows to index of an embed job's done items (an image: one; a video: one per keyframe), and their
    dimension. Vectors are the job's results as stored (float16 base64), unconverted."""
    rows: list[VectorRow] = []
    dim: int | None = None
    after = -1
    while True:
        page = js.results_page(job_id, after_seq=after, limit=PAGE)
        if not page:
            return rows, dim
        for item in page:
            after = item["seq"]
            if item["state"] != DONE or not item["result"]:
                continue
            for frame, t_s, vec in _vectors(item["result"]):
                dim = dim or len(vec) // 2
                if len(vec) != 2 * dim:  # never expected: one model answers one size; such a row is left out
                    continue
                rows.append(VectorRow(item["seq"], frame, item["source"], item["kind"], item["sha256"], t_s, vec))


def _vectors(result: dict[str, Any]) -> Iterator[tuple[int, float | None, bytes]]:
    if "keyframes" in result:
        for k, frame in enumerate(result["keyframes"]):
            if frame.get("vector"):
                yield k, float(frame["t_s"]), base64.b64decode(frame["vector"])
    elif result.get("vector"):
        yield -1, None, base64.b64decode(result["vector"])


def related(js: JobStore, shas: list[str]) -> list[dict[str, Any]]:
    """Done items of caption and faces jobs holding any of ``shas``, newest job first, each with its result
    and (faces) its people labels {face: person}."""
    if not shas:
        return []
    prefixes = set()
    for task, model, params in js.db.execute(
            "SELECT DISTINCT task, model, params FROM jobs WHERE task IN ('caption', 'faces')"):
        prefixes.add(TASKS[task](model, json.loads(params), None).key_prefix())  # type: ignore[arg-type]
    keys = [f"{prefix}:{sha}" for prefix in sorted(prefixes) for sha in shas]
    rows = []
    for i in range(0, len(keys), 500):  # well under SQLite's limit of bound parameters
        chunk = keys[i:i + 500]
        rows += js.db.execute(
            "SELECT i.job_id, j.task, j.model, i.seq, i.sha256, r.body, j.created_at FROM items i "
            "JOIN jobs j ON j.id = i.job_id JOIN results r ON r.key = i.result_key "
            f"WHERE i.result_key IN ({','.join('?' * len(chunk))}) AND i.state = ?", (*chunk, DONE)).fetchall()
    rows.sort(key=lambda r: (-r[6], r[0], r[3]))
    out = []
    for job_id, task, model, seq, sha, body, _ in rows:
        people = {}
        if task == "faces":
            people = {r[0]: r[1] for r in js.db.execute(
                "SELECT face, person FROM people WHERE job_id = ? AND item_seq = ?", (job_id, seq))}
        out.append({"job": job_id, "task": task, "model": model, "seq": seq, "sha256": sha, "result": json.loads(body),
                    "people": people})
    return out


def frame_at(result: dict[str, Any], t_s: float | None) -> tuple[str, dict[str, Any] | None]:
    """The part of an image task's result that matches a hit: ("", the result) for an image; for a video
    keyframe the same keyframe of the other job (same time: keyframes are cut the same way for every task),
    as ("k.", keyframe k), or ("", None) when it has none at that time."""
    if t_s is None:
        return "", result
    for k, frame in enumerate(result.get("keyframes", [])):
        if math.isclose(float(frame.get("t_s", -1)), t_s, abs_tol=1e-3):
            return f"{k}.", frame
    return "", None

