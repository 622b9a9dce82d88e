"""The search index on disk: SQLite in WAL mode, one file in the gateway's data directory
(``<data_dir>/search/vectors.sqlite3``), beside the jobs database it is derived from.

What it holds. One row per searchable thing of an ended embed job: an image, or one keyframe of a video
(``frame`` -1 for an image, k for keyframe k), with its vector as ``dim`` float16 values, little-endian,
L2-normalised at the source (the embed service). ``indexed_jobs`` says which jobs are in; a job is
written once, in one transaction with all its rows, when it has ended (an ended job's results never
change), and removed in one transaction when it is deleted.

It is a derived copy. The jobs database holds every embed result (the vector base64 in the result's
JSON, keyed by content), so this file can be deleted at any time: ``Search`` rebuilds what is missing
from the jobs it finds ended, and drops what belongs to jobs that are gone (``sync``). A crash between a
job's deletion and its rows' removal leaves rows nobody searches (searches name their jobs from the jobs
database), removed at the next sync.

Postgres + pgvector. The same two tables carry over with one column changed, so several gateways can
share one library::

    CREATE TABLE indexed_jobs (job_id text PRIMARY KEY, model text NOT NULL, state text NOT NULL,
                               n_vectors integer NOT NULL, indexed_at double precision NOT NULL);
    CREATE TABLE vectors (job_id text NOT NULL REFERENCES indexed_jobs ON DELETE CASCADE,
                          item_seq integer NOT NULL, frame integer NOT NULL, model text NOT NULL,
                          source text NOT NULL, kind text NOT NULL, sha256 text, t_s real,
                          dim integer NOT NULL, vector halfvec NOT NULL,   -- pgvector >= 0.7: float16
                          PRIMARY KEY (job_id, item_seq, frame));
    CREATE INDEX ON vectors USING hnsw ((vector::halfvec(512)) halfvec_ip_ops) WHERE model = '...';

(the vectors are normalised, so inner product is cosine: ``ORDER BY vector <#> $1 LIMIT k``; one partial
HNSW index per model, since a model fixes the dimension). Until then, brute force in memory
(``matrix``) answers k = 20 over 100,000 vectors within the target (bench/search.py).

Every method is synchronous; ``Search`` runs them on one thread of its own.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .codec import F16

MIGRATIONS: list[str] = [
    """
    CREATE TABLE indexed_jobs (
        job_id     TEXT PRIMARY KEY,
        model      TEXT NOT NULL,
        state      TEXT NOT NULL,              -- the job's state when it was indexed (completed, cancelled, failed)
        n_vectors  INTEGER NOT NULL,
        indexed_at REAL NOT NULL
    );
    CREATE TABLE vectors (
        job_id   TEXT NOT NULL REFERENCES indexed_jobs(job_id) ON DELETE CASCADE,
        item_seq INTEGER NOT NULL,
        frame    INTEGER NOT NULL,             -- -1: an image; k: keyframe k of a video
        model    TEXT NOT NULL,
        source   TEXT NOT NULL,                -- the library path, or the upload's file name
        kind     TEXT NOT NULL,                -- image | video
        sha256   TEXT,                         -- the file's content (what other jobs of the same file share)
        t_s      REAL,                         -- the keyframe's time in the video; NULL for an image
        dim      INTEGER NOT NULL,
        vector   BLOB NOT NULL,                -- dim float16, little-endian, L2-normalised
        PRIMARY KEY (job_id, item_seq, frame)
    );
    CREATE INDEX vectors_by_model ON vectors(model, job_id);
    """,
]


@dataclass(frozen=True)
class VectorRow:
    item_seq: int
    frame: int
    source: str
    kind: str
    sha256: str | None
    t_s: float | None
    vector: bytes  # float16 little-endian


@dataclass
class ModelVectors:
    """Every indexed vector of one model, as ``matrix`` ranks them (row i of each array is one vector)."""

    jobs: list[str]          # the job ids, sorted; ``job`` holds indexes into this list (rows are in job order)
    job: np.ndarray          # int32
    seq: np.ndarray          # int64
    frame: np.ndarray        # int32
    t_s: np.ndarray          # float64, NaN for an image
    source: list[str]
    kind: list[str]
    sha256: list[str | None]
    vectors: np.ndarray      # float16 (n, dim), as stored

    @property
    def dim(self) -> int | None:
        return int(self.vectors.shape[1]) if len(self.vectors) else None

    @classmethod
    def of(cls, rows: list[tuple]) -> "ModelVectors":
        """From rows (job_id, item_seq, frame, source, kind, sha256, t_s, dim, vector) sorted by job, item and
        frame; rows of another dimension than the first are left out."""
        if not rows:
            return cls([], *(np.zeros(0, t) for t in (np.int32, np.int64, np.int32, np.float64)), [], [], [],
                       np.zeros((0, 0), F16))
        dim = rows[0][7]
        if any(r[7] != dim for r in rows):
            rows = [r for r in rows if r[7] == dim]
        job_id, seq, frame, source, kind, sha, t_s, _, blobs = zip(*rows)  # columns, transposed in C
        jobs, job = np.unique(np.asarray(job_id), return_inverse=True)
        vectors = np.frombuffer(b"".join(blobs), dtype=F16).reshape(len(blobs), dim)
        return cls([str(j) for j in jobs], job.astype(np.int32), np.asarray(seq, np.int64), np.asarray(frame, np.int32),
                   np.asarray([np.nan if t is None else t for t in t_s], np.float64), list(source), list(kind), list(sha),
                   vectors)


class VectorStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(f"{path} has schema version {version}, newer than this gateway knows ({len(MIGRATIONS)})")
        for i in range(version, len(MIGRATIONS)):
            self.db.executescript("BEGIN IMMEDIATE;" + MIGRATIONS[i] + f";PRAGMA user_version={i + 1};COMMIT;")

    def close(self) -> None:
        self.db.close()

    def indexed(self) -> dict[str, str]:
        """job id -> model, for every indexed job."""
        return {r[0]: r[1] for r in self.db.execute("SELECT job_id, model FROM indexed_jobs")}

    def add_job(self, job_id: str, model: str, state: str, rows: Iterable[VectorRow], *, dim: int | None) -> int:
        """Index an ended job with its rows, in one transaction (again: replaced). Returns the rows written."""
        rows = list(rows)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM indexed_jobs WHERE job_id = ?", (job_id,))
            self.db.execute("INSERT INTO indexed_jobs (job_id, model, state, n_vectors, indexed_at) VALUES (?,?,?,?,?)",
                            (job_id, model, state, len(rows), time.time()))
            self.db.executemany(
                "INSERT INTO vectors (job_id, item_seq, frame, model, source, kind, sha256, t_s, dim, vector) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(job_id, r.item_seq, r.frame, model, r.source, r.kind, r.sha256, r.t_s, dim, r.vector) for r in rows])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return len(rows)

    def remove_job(self, job_id: str) -> str | None:
        """Remove a job and its rows; its model, or None when it was not indexed."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute("SELECT model FROM indexed_jobs WHERE job_id = ?", (job_id,)).fetchone()
            self.db.execute("DELETE FROM indexed_jobs WHERE job_id = ?", (job_id,))  # its vectors cascade
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return row[0] if row else None

    def count(self, model: str | None = None) -> int:
        if model is None:
            return self.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM vectors WHERE model = ?", (model,)).fetchone()[0]

    def load_model(self, model: str) -> ModelVectors:
        """Every vector of ``model`` (rows of another dimension than the first are skipped: a catalog id
        reused for a model of another size; its jobs should be embedded again)."""
        rows = self.db.execute("SELECT job_id, item_seq, frame, source, kind, sha256, t_s, dim, vector FROM vectors "
                               "WHERE model = ? ORDER BY job_id, item_seq, frame", (model,)).fetchall()
        return ModelVectors.of(rows)
