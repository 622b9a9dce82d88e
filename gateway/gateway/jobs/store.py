"""The job database: SQLite in WAL mode, one file in the gateway's data directory.

What makes a job survive ``kill -9`` at any moment:

- A job and all its items are written in one transaction before ``POST /v1/jobs`` answers; uploads are
  already on disk (content-addressed blobs) by then.
- An item leaves ``pending`` exactly once: ``finish_item`` updates it only ``WHERE state = 'pending'``,
  in the same transaction that stores its result (or error) and bumps the job's counters. A crash before
  that commit leaves the item pending, and the restarted runner does it again (inference is at least
  once; the recorded outcome is exactly once).
- Results are keyed by content (task, model, parameters, sha256 of the input), so the same photo is
  inferred once and every item that holds it points at the one stored result.

Deleting a job (``delete_job``) removes, in one transaction, the job, its items, its people rows and the
results no other job's item points at (and the parts of results, a video's keyframes, that it stored).
The results table is a cache shared across jobs, not a record of its own: a result another job holds
stays, and one only the deleted job held goes with it (a deleted faces job leaves no embeddings behind).
Removing a result is always safe: ``finish_item`` writes the body it records in the same transaction
that points the item at it, so no item is ever left pointing at a missing result; a later job that
meets the same content infers it again.

Every method is synchronous and runs on the store's one thread (``AsyncStore`` hands calls to it), so
one connection serves everything and SQLite never sees two writers.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

T = TypeVar("T")

QUEUED, RUNNING, COMPLETED, CANCELLED, FAILED = "queued", "running", "completed", "cancelled", "failed"
ACTIVE_STATES = (QUEUED, RUNNING)
TERMINAL_STATES = (COMPLETED, CANCELLED, FAILED)
PENDING, DONE, ERROR = "pending", "done", "error"  # item states (and CANCELLED)

# Migrations, in order; the database records how many it has applied (PRAGMA user_version).
# Append new ones; never edit an applied one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        id           TEXT PRIMARY KEY,
        task         TEXT NOT NULL,
        model        TEXT NOT NULL,
        params       TEXT NOT NULL,            -- JSON: the task's options
        state        TEXT NOT NULL,            -- queued | running | completed | cancelled | failed
        open         INTEGER NOT NULL,         -- 1 while more inputs may be added
        created_at   REAL NOT NULL,
        started_at   REAL,
        finished_at  REAL,
        n_total      INTEGER NOT NULL DEFAULT 0,
        n_done       INTEGER NOT NULL DEFAULT 0,
        n_error      INTEGER NOT NULL DEFAULT 0,
        n_cancelled  INTEGER NOT NULL DEFAULT 0,
        n_reused     INTEGER NOT NULL DEFAULT 0, -- done items whose result was already known (same content)
        error        TEXT,                       -- JSON {code, message} when the job failed
        summary      TEXT                        -- JSON: what the task adds at the end (people groups)
    );
    CREATE INDEX jobs_by_state ON jobs(state, created_at);
    CREATE TABLE items (
        job_id        TEXT NOT NULL REFERENCES jobs(id),
        seq           INTEGER NOT NULL,
        source        TEXT NOT NULL,            -- the library path, or the upload's file name
        path          TEXT NOT NULL,            -- what is read: the resolved library path, or our blob
        upload        INTEGER NOT NULL,         -- 1: path is an uploaded blob
        kind          TEXT NOT NULL,            -- image | video | audio | other
        state         TEXT NOT NULL,            -- pending | done | error | cancelled
        sha256        TEXT,
        result_key    TEXT,
        reused        INTEGER NOT NULL DEFAULT 0,
        error_code    TEXT,
        error_message TEXT,
        attempts      INTEGER NOT NULL DEFAULT 0,
        seconds       REAL,
        finished_at   REAL,
        PRIMARY KEY (job_id, seq)
    );
    CREATE INDEX items_by_state ON items(job_id, state, seq);
    CREATE TABLE results (
        key        TEXT PRIMARY KEY,            -- task:model:params-digest:sha256
        body       TEXT NOT NULL,               -- JSON
        created_at REAL NOT NULL
    );
    CREATE TABLE people (
        job_id   TEXT NOT NULL,
        item_seq INTEGER NOT NULL,
        face     TEXT NOT NULL,                 -- "3" (face 3 of an image) or "2.0" (keyframe 2, face 0)
        person   INTEGER NOT NULL,
        PRIMARY KEY (job_id, item_seq, face)
    );
    """,
    # 2: what deleting a job needs: which items point at a result, and which job stored a part of one.
    """
    ALTER TABLE results ADD COLUMN part_of_job TEXT;  -- a part of an item's result (a video's keyframe): the job that stored it
    CREATE INDEX items_by_result ON items(result_key) WHERE result_key IS NOT NULL;
    CREATE INDEX results_by_part_of_job ON results(part_of_job) WHERE part_of_job IS NOT NULL;
    """,
]


@dataclass(frozen=True)
class NewItem:
    source: str
    path: str
    upload: bool
    kind: str


@dataclass(frozen=True)
class Item:
    job_id: str
    seq: int
    source: str
    path: str
    upload: bool
    kind: str
    attempts: int


class JobStore:
    """Synchronous; use through ``AsyncStore``, or directly in tests."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed transaction survives the process being killed at any moment
        # (it is in the WAL file); only an OS crash or power cut can lose the last ones.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    def migrate(self) -> int:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(f"{self.path} has schema version {version}, newer than this gateway knows ({len(MIGRATIONS)})")
        for i in range(version, len(MIGRATIONS)):
            # One transaction per migration, the version bump included: a crash leaves it applied or not.
            self.db.executescript("BEGIN IMMEDIATE;" + MIGRATIONS[i] + f";PRAGMA user_version={i + 1};COMMIT;")
        return len(MIGRATIONS)

    def close(self) -> None:
        self.db.close()

    def _tx(self):  # noqa: ANN202 - a context manager
        return _Transaction(self.db)

    # jobs ----------------------------------------------------------------------------------------

    def create_job(self, job_id: str, task: str, model: str, params: dict[str, Any], items: list[NewItem], *,
                   open_: bool, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx():
            self.db.execute(
                "INSERT INTO jobs (id, task, model, params, state, open, created_at) VALUES (?,?,?,?,?,?,?)",
                (job_id, task, model, json.dumps(params), QUEUED, int(open_), now))
            self._insert_items(job_id, items)

    def add_items(self, job_id: str, items: list[NewItem], *, close: bool) -> bool:
        """Append items to an open job (and close it if asked). False when the job is not open."""
        with self._tx():
            row = self.db.execute("SELECT open, state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or not row["open"] or row["state"] not in ACTIVE_STATES:
                return False
            self._insert_items(job_id, items)
            if close:
                self.db.execute("UPDATE jobs SET open = 0 WHERE id = ?", (job_id,))
        return True

    def _insert_items(self, job_id: str, items: list[NewItem]) -> None:
        start = self.db.execute("SELECT n_total FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        self.db.executemany(
            "INSERT INTO items (job_id, seq, source, path, upload, kind, state) VALUES (?,?,?,?,?,?,?)",
            [(job_id, start + i, it.source, it.path, int(it.upload), it.kind, PENDING) for i, it in enumerate(items)])
        self.db.execute("UPDATE jobs SET n_total = n_total + ? WHERE id = ?", (len(items), job_id))

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list_jobs(self, *, state: str | None = None, limit: int = 50, before: float | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if state:
            sql += " AND state = ?"
            args.append(state)
        if before is not None:
            sql += " AND created_at < ?"
            args.append(before)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(limit)
        return [_job(r) for r in self.db.execute(sql, args)]

    def active_jobs(self) -> list[dict[str, Any]]:
        """Queued and running jobs, oldest first: the runner's work after a restart."""
        return [_job(r) for r in self.db.execute(
            "SELECT * FROM jobs WHERE state IN (?, ?) ORDER BY created_at, id", ACTIVE_STATES)]

    def set_running(self, job_id: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.db.execute("UPDATE jobs SET state = ?, started_at = COALESCE(started_at, ?) WHERE id = ? AND state = ?",
                        (RUNNING, now, job_id, QUEUED))

    def finish_job(self, job_id: str, state: str, *, error: dict[str, str] | None = None,
                   summary: dict[str, Any] | None = None, people: Iterable[tuple[int, str, int]] = (),
                   now: float | None = None) -> bool:
        """Move an active job to a terminal state, with its summary and people groups, in one transaction.
        Pending items (a cancel) are recorded as cancelled. False when the job was not active."""
        now = time.time() if now is None else now
        with self._tx():
            row = self.db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["state"] not in ACTIVE_STATES:
                return False
            n = self.db.execute("UPDATE items SET state = ?, finished_at = ? WHERE job_id = ? AND state = ?",
                                (CANCELLED, now, job_id, PENDING)).rowcount
            self.db.execute("DELETE FROM people WHERE job_id = ?", (job_id,))
            self.db.executemany("INSERT INTO people (job_id, item_seq, face, person) VALUES (?,?,?,?)",
                                [(job_id, s, f, p) for s, f, p in people])
            self.db.execute(
                "UPDATE jobs SET state = ?, open = 0, finished_at = ?, n_cancelled = n_cancelled + ?, error = ?, "
                "summary = COALESCE(?, summary) WHERE id = ?",
                (state, now, n, json.dumps(error) if error else None, json.dumps(summary) if summary else None, job_id))
        return True

    def delete_job(self, job_id: str) -> set[str] | None:
        """Remove a job that is not active, with its items, people and the results only it used (see the
        module's docstring), in one transaction. Returns the paths of its uploaded blobs (for the caller
        to remove those no pending item needs); None when there is no such job. An active job is left as
        it is (``ValueError``): its workers could still record outcomes."""
        with self._tx():
            row = self.db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row["state"] in ACTIVE_STATES:
                raise ValueError(f"job {job_id} is {row['state']}; end it before deleting it")
            blobs = self.job_blobs(job_id)
            keys = [r[0] for r in self.db.execute(
                "SELECT DISTINCT result_key FROM items WHERE job_id = ? AND result_key IS NOT NULL", (job_id,))]
            self.db.execute("DELETE FROM people WHERE job_id = ?", (job_id,))
            self.db.execute("DELETE FROM items WHERE job_id = ?", (job_id,))
            unused = "NOT EXISTS (SELECT 1 FROM items WHERE items.result_key = results.key)"
            self.db.executemany(f"DELETE FROM results WHERE key = ? AND {unused}", [(k,) for k in keys])
            self.db.execute(f"DELETE FROM results WHERE part_of_job = ? AND {unused}", (job_id,))
            self.db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return blobs

    # items ---------------------------------------------------------------------------------------

    def pending_items(self, job_id: str, *, after_seq: int, limit: int) -> list[Item]:
        rows = self.db.execute(
            "SELECT * FROM items WHERE job_id = ? AND state = ? AND seq > ? ORDER BY seq LIMIT ?",
            (job_id, PENDING, after_seq, limit))
        return [Item(r["job_id"], r["seq"], r["source"], r["path"], bool(r["upload"]), r["kind"], r["attempts"]) for r in rows]

    def count_pending(self, job_id: str) -> int:
        return self.db.execute("SELECT COUNT(*) FROM items WHERE job_id = ? AND state = ?", (job_id, PENDING)).fetchone()[0]

    def cached_result(self, key: str) -> Any:
        row = self.db.execute("SELECT body FROM results WHERE key = ?", (key,)).fetchone()
        return json.loads(row["body"]) if row else None

    def put_result(self, key: str, body: Any, *, part_of_job: str | None = None) -> None:
        """Remember a partial result (a video's keyframe) so a resumed job need not infer it again;
        ``part_of_job`` stored it (deleting that job removes it, unless an item points at it)."""
        self.db.execute("INSERT OR IGNORE INTO results (key, body, created_at, part_of_job) VALUES (?,?,?,?)",
                        (key, json.dumps(body), time.time(), part_of_job))

    def finish_item(self, job_id: str, seq: int, *, sha256: str | None, result_key: str | None = None,
                    body: Any = None, reused: bool = False, error: tuple[str, str] | None = None,
                    seconds: float | None = None, now: float | None = None) -> bool:
        """Record an item's one outcome: a result (stored under ``result_key`` unless already there) or an
        error. Only a pending item changes; False means it had already ended (a cancel got there first)."""
        now = time.time() if now is None else now
        with self._tx():
            if error is None:
                self.db.execute("INSERT OR IGNORE INTO results (key, body, created_at) VALUES (?,?,?)",
                                (result_key, json.dumps(body), now))
                cur = self.db.execute(
                    "UPDATE items SET state = ?, sha256 = ?, result_key = ?, reused = ?, seconds = ?, finished_at = ? "
                    "WHERE job_id = ? AND seq = ? AND state = ?",
                    (DONE, sha256, result_key, int(reused), seconds, now, job_id, seq, PENDING))
                if cur.rowcount:
                    self.db.execute("UPDATE jobs SET n_done = n_done + 1, n_reused = n_reused + ? WHERE id = ?",
                                    (int(reused), job_id))
            else:
                cur = self.db.execute(
                    "UPDATE items SET state = ?, sha256 = ?, error_code = ?, error_message = ?, seconds = ?, finished_at = ? "
                    "WHERE job_id = ? AND seq = ? AND state = ?",
                    (ERROR, sha256, error[0], error[1][:2000], seconds, now, job_id, seq, PENDING))
                if cur.rowcount:
                    self.db.execute("UPDATE jobs SET n_error = n_error + 1 WHERE id = ?", (job_id,))
            return bool(cur.rowcount)

    def count_attempt(self, job_id: str, seq: int) -> int:
        self.db.execute("UPDATE items SET attempts = attempts + 1 WHERE job_id = ? AND seq = ?", (job_id, seq))
        return self.db.execute("SELECT attempts FROM items WHERE job_id = ? AND seq = ?", (job_id, seq)).fetchone()[0]

    def results_page(self, job_id: str, *, after_seq: int, limit: int) -> list[dict[str, Any]]:
        """Finished items after ``after_seq`` in order, each with its result body and people labels."""
        rows = self.db.execute(
            "SELECT i.*, r.body FROM items i LEFT JOIN results r ON r.key = i.result_key "
            "WHERE i.job_id = ? AND i.seq > ? AND i.state != ? ORDER BY i.seq LIMIT ?",
            (job_id, after_seq, PENDING, limit)).fetchall()
        people: dict[tuple[int, str], int] = {}
        if rows:
            for p in self.db.execute("SELECT item_seq, face, person FROM people WHERE job_id = ? AND item_seq BETWEEN ? AND ?",
                                     (job_id, rows[0]["seq"], rows[-1]["seq"])):
                people[(p["item_seq"], p["face"])] = p["person"]
        out = []
        for r in rows:
            out.append({
                "seq": r["seq"], "source": r["source"], "kind": r["kind"], "state": r["state"], "sha256": r["sha256"],
                "reused": bool(r["reused"]), "seconds": r["seconds"],
                "result": json.loads(r["body"]) if r["body"] is not None else None,
                "error": {"code": r["error_code"], "message": r["error_message"]} if r["error_code"] else None,
                "people": {face: person for (seq, face), person in people.items() if seq == r["seq"]},
            })
        return out

    def done_results(self, job_id: str) -> Iterable[tuple[int, Any]]:
        """(seq, result body) of every done item, in order (the input of a job's closing step)."""
        for r in self.db.execute(
                "SELECT i.seq, r.body FROM items i JOIN results r ON r.key = i.result_key "
                "WHERE i.job_id = ? AND i.state = ? ORDER BY i.seq", (job_id, DONE)):
            yield r["seq"], json.loads(r["body"])

    def people(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT p.person, p.item_seq, p.face, i.source FROM people p JOIN items i ON i.job_id = p.job_id AND i.seq = p.item_seq "
            "WHERE p.job_id = ? ORDER BY p.person, p.item_seq, p.face", (job_id,))
        groups: dict[int, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(r["person"], []).append({"seq": r["item_seq"], "face": r["face"], "source": r["source"]})
        return [{"person": p, "faces": faces} for p, faces in groups.items()]

    def blobs_in_use(self) -> set[str]:
        """Upload blobs that some pending item still needs."""
        return {r[0] for r in self.db.execute("SELECT DISTINCT path FROM items WHERE upload = 1 AND state = ?", (PENDING,))}

    def job_blobs(self, job_id: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT DISTINCT path FROM items WHERE job_id = ? AND upload = 1", (job_id,))}


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _job(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["params"] = json.loads(d["params"])
    d["open"] = bool(d["open"])
    d["error"] = json.loads(d["error"]) if d["error"] else None
    d["summary"] = json.loads(d["summary"]) if d["summary"] else None
    return d


class AsyncStore:
    """The store on its own thread: ``await store.call(JobStore.method, args...)`` or the shortcuts."""

    def __init__(self, path: Path) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobstore")
        self.sync: JobStore = self._pool.submit(JobStore, path).result()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.sync, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self.call(method, *args, **kwargs)
        return call

    def close(self) -> None:
        self._pool.submit(self.sync.close).result()
        self._pool.shutdown(wait=True)
