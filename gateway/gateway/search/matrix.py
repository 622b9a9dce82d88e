"""Brute-force nearest neighbours over one model's vectors, in memory.

The vectors are stored as float16 (``store``) and held here as float32: numpy has no BLAS kernel for
float16, and its own half-precision loop, or a conversion per query, took 300-450 ms for 100,000 x 512
on this machine against 20 ms for one float32 matrix-vector product (measured while writing this; the
bench prints the figures again). So the conversion is paid once, when a model's vectors are loaded (off
the event loop), at twice the memory: 200 MB per 100,000 vectors of 512 dimensions.

The product runs on one BLAS thread (``blas``: threadpoolctl's limit, 10 µs to take): it reads the whole
matrix once, so it is bound by memory bandwidth, which one core nearly fills, and OpenBLAS's threads
waiting on each other on a busy machine made it 2-3x slower (46 ms against 120 ms at 100,000 with the load
average at 8 on 2 cores; bench/search.py measures both). The gateway's event loop and the family services
share those cores.

Every vector is L2-normalised at the source, and the query too (``rank`` normalises it again), so the
inner product is the cosine similarity. Top k by ``argpartition`` then a sort of those k: O(n + k log k).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from .store import ModelVectors


@dataclass(frozen=True)
class Hit:
    row: int
    score: float


class ModelMatrix:
    """One model's vectors, ranked by cosine similarity to a query (pure: no I/O, no locks)."""

    def __init__(self, rows: ModelVectors, *, blas: ThreadpoolController | None = None) -> None:
        """``blas``: take the product on one BLAS thread through this controller (None: as many as BLAS uses)."""
        self.rows = rows
        self.blas = blas
        self.matrix = np.ascontiguousarray(rows.vectors, dtype=np.float32)
        rows.vectors = rows.vectors[:0]  # the float16 copy is not needed any more
        self.job_ids = {job: i for i, job in enumerate(rows.jobs)}
        self.per_job = np.bincount(rows.job, minlength=len(rows.jobs)) if len(rows.jobs) else np.zeros(0, np.int64)
        # One number per content: a file's image, or one of its keyframes (a file without a hash is its own).
        keys = [f"{sha}:{frame}" if sha else f"row:{i}" for i, (sha, frame) in enumerate(zip(rows.sha256, rows.frame.tolist()))]
        self.content = np.unique(np.asarray(keys), return_inverse=True)[1] if keys else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.matrix)

    @property
    def dim(self) -> int | None:
        return int(self.matrix.shape[1]) if len(self.matrix) else None

    def count(self, jobs: set[str]) -> int:
        """The vectors of ``jobs`` (a job without any counts none)."""
        return int(sum(self.per_job[self.job_ids[j]] for j in jobs if j in self.job_ids))

    def rank(self, query: np.ndarray, k: int, *, jobs: set[str] | None = None, min_score: float | None = None) -> list[Hit]:
        """The ``k`` rows most similar to ``query``, best first; only rows of ``jobs`` when given, only scores
        of at least ``min_score`` when given. One row per content: the same file in several jobs (the same
        vector) is one result, its first job's. Ties are broken by row order (stable)."""
        if not len(self.matrix):
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.matrix.shape[1]:
            raise ValueError(f"the query has {q.shape[0]} dimensions; the index has {self.matrix.shape[1]}")
        norm = float(np.linalg.norm(q))
        if norm > 0:
            q = q / norm
        scores = self._product(q)
        candidates: np.ndarray | None = None
        if jobs is not None:
            wanted = [self.job_ids[j] for j in jobs if j in self.job_ids]
            if len(wanted) < len(self.job_ids):
                candidates = np.flatnonzero(np.isin(self.rows.job, np.asarray(wanted, dtype=np.int32)))
        if min_score is not None:
            above = np.flatnonzero(scores >= min_score)
            candidates = above if candidates is None else np.intersect1d(candidates, above, assume_unique=True)
        if candidates is None:
            return _top(scores, np.arange(len(scores)), k, self.content)
        return _top(scores[candidates], candidates, k, self.content)

    def with_job(self, new: ModelVectors) -> "ModelMatrix":
        """A new matrix: these rows and one more job's (``new``), placed in job order as a reload would place
        them (which job's row stands for a file held twice does not depend on how the matrix was built)."""
        if not len(new.vectors):
            return self
        if not len(self.matrix):
            return ModelMatrix(new, blas=self.blas)
        if new.dim != self.dim:
            raise ValueError(f"job {new.jobs[0]} has {new.dim} dimensions; the index has {self.dim}")
        r, (job_id,) = self.rows, new.jobs
        at = sum(j < job_id for j in r.jobs)  # the new job's index; rows are in job order
        cut = int(np.searchsorted(r.job, at))
        job = np.concatenate([r.job[:cut], np.full(len(new.job), at, np.int32), r.job[cut:] + 1])

        def spliced(a, b):  # noqa: ANN001, ANN202 - arrays or lists alike
            return np.concatenate([a[:cut], b, a[cut:]]) if isinstance(a, np.ndarray) else a[:cut] + b + a[cut:]

        vectors = np.concatenate([self.matrix[:cut], np.asarray(new.vectors, np.float32), self.matrix[cut:]])
        rows = ModelVectors(r.jobs[:at] + [job_id] + r.jobs[at:], job, spliced(r.seq, new.seq), spliced(r.frame, new.frame),
                            spliced(r.t_s, new.t_s), spliced(r.source, new.source), spliced(r.kind, new.kind),
                            spliced(r.sha256, new.sha256), vectors)
        return ModelMatrix(rows, blas=self.blas)

    def without_job(self, job_id: str) -> "ModelMatrix":
        """A new matrix without the rows of ``job_id`` (this one when it has none)."""
        at = self.job_ids.get(job_id)
        if at is None:
            return self
        r = self.rows
        keep = r.job != at
        kept = np.flatnonzero(keep).tolist()
        rows = ModelVectors(r.jobs[:at] + r.jobs[at + 1:], (r.job[keep] - (r.job[keep] > at)).astype(np.int32),
                            r.seq[keep], r.frame[keep], r.t_s[keep], [r.source[i] for i in kept],
                            [r.kind[i] for i in kept], [r.sha256[i] for i in kept], self.matrix[keep])
        return ModelMatrix(rows, blas=self.blas)

    def _product(self, q: np.ndarray) -> np.ndarray:
        if self.blas is None:
            return self.matrix @ q
        with self.blas.limit(limits=1, user_api="blas"):
            return self.matrix @ q


def _top(scores: np.ndarray, rows: np.ndarray, k: int, content: np.ndarray) -> list[Hit]:
    """The best ``k`` of distinct content: a partial sort of the best ``want`` rows, ``want`` grown (x4) only
    while duplicates leave fewer than ``k``."""
    want = k
    while True:
        m = min(want, len(scores))
        if m == 0:
            return []
        part = np.argpartition(-scores, m - 1)[:m] if m < len(scores) else np.arange(len(scores))
        order = part[np.lexsort((rows[part], -scores[part]))]
        hits: list[Hit] = []
        seen: set[int] = set()
        for i in order:
            c = int(content[rows[i]])
            if c not in seen:
                seen.add(c)
                hits.append(Hit(int(rows[i]), float(scores[i])))
                if len(hits) == k:
                    return hits
        if m == len(scores):
            return hits
        want *= 4
