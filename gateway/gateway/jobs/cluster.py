"""Faces into people: average-linkage agglomerative clustering over cosine similarity.

The algorithm. Every face embedding starts as its own group. The two groups whose *average* pairwise
cosine similarity is highest merge, again and again, until no two groups have an average similarity of at
least ``threshold``. Average linkage (not single linkage, which is the same as connected components over
"similarity >= threshold") resists chaining: one blurry face similar to two people does not glue them
into one person.

How it is computed without an N x N matrix of all faces:

1. Connected components of the graph "similarity >= threshold" (union-find over blocks of the
   similarity matrix, so memory stays at ``block`` x N). Two groups in different components can never
   reach an average of ``threshold`` (no pair between them does), so average linkage never merges across
   components and each component is clustered on its own, exactly.
2. Inside a component: the nearest-neighbour-chain algorithm, exact for average linkage because that
   linkage is reducible; a group whose best partner is below ``threshold`` can never merge again (average
   similarity to a merged group never exceeds the better of its parts), so it is set aside.

A component bigger than ``max_exact`` faces (its similarity matrix would not fit comfortably in memory)
is kept whole as one group and reported in the summary; at the defaults that takes 6,000 faces of one
look-alike chain, far beyond one person's photos in a family library.

The threshold is the face model's: the similarity at which its verify route says "same person" (catalog
option ``cluster_threshold``, else ``verify_threshold``, else 0.5), overridable per job.
"""

from __future__ import annotations

import numpy as np


def normalise(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError("embeddings must be a 2-D array (faces x dimensions)")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms == 0, 1.0, norms)


def connected_components(v: np.ndarray, threshold: float, *, block: int = 2048) -> np.ndarray:
    """Component id per row of unit vectors ``v``, over edges with cosine similarity >= threshold."""
    n = len(v)
    parent = np.arange(n)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    for start in range(0, n, block):
        sims = v[start:start + block] @ v.T
        rows, cols = np.nonzero(sims >= threshold)
        upper = cols > rows + start  # each edge once
        rows, cols = rows[upper], cols[upper]
        for r, c in zip(rows.tolist(), cols.tolist()):
            a, b = find(start + r), find(c)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)])


def _average_linkage(v: np.ndarray, threshold: float) -> list[list[int]]:
    """Exact average-linkage groups of the rows of ``v`` (unit vectors), cut at ``threshold``."""
    n = len(v)
    if n == 1:
        return [[0]]
    sim = (v @ v.T).astype(np.float64)
    np.fill_diagonal(sim, -np.inf)
    size = np.ones(n)
    active = np.ones(n, dtype=bool)
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    done: list[list[int]] = []
    chain: list[int] = []
    while active.any():
        if not chain:
            chain.append(int(np.flatnonzero(active)[0]))
        a = chain[-1]
        row = np.where(active, sim[a], -np.inf)
        row[a] = -np.inf
        b = int(np.argmax(row))
        best = row[b]
        if not np.isfinite(best) or best < threshold:
            # a can never merge again: set it aside as a final group.
            active[a] = False
            done.append(members.pop(a))
            chain.pop()
            continue
        if len(chain) >= 2 and chain[-2] == b or (len(chain) >= 2 and sim[a, chain[-2]] >= best):
            b = chain[-2]
            chain.pop()
            chain.pop()
            # merge b into a (Lance-Williams update for average linkage)
            new = (size[a] * sim[a] + size[b] * sim[b]) / (size[a] + size[b])
            sim[a, :] = new
            sim[:, a] = new
            sim[a, a] = -np.inf
            size[a] += size[b]
            active[b] = False
            sim[b, :] = -np.inf
            sim[:, b] = -np.inf
            members[a].extend(members.pop(b))
        else:
            chain.append(b)
    return done


MAX_EXACT = 6000


def cluster_faces(embeddings: np.ndarray | list[list[float]], threshold: float, *, max_exact: int = MAX_EXACT) -> list[int]:
    """A person label per face: 0, 1, 2, ... numbered by each group's first face, so the labels are stable
    for the same input. ``embeddings`` need not be normalised."""
    v = normalise(np.asarray(embeddings, dtype=np.float32)) if len(embeddings) else np.zeros((0, 1), np.float32)
    n = len(v)
    labels = np.full(n, -1)
    if n == 0:
        return []
    comps = connected_components(v, threshold)
    groups: list[list[int]] = []
    for comp in np.unique(comps):
        idx = np.flatnonzero(comps == comp)
        if len(idx) > max_exact:
            groups.append(idx.tolist())
            continue
        for g in _average_linkage(v[idx], threshold):
            groups.append(sorted(int(idx[i]) for i in g))
    groups.sort(key=lambda g: g[0])
    for label, g in enumerate(groups):
        labels[g] = label
    return labels.tolist()
