"""Faces into people: average-linkage clustering over cosine similarity, as a pure function."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.jobs.cluster import cluster_faces, connected_components, normalise

pytestmark = pytest.mark.unit


def people(n_people: int, per_person: int, dim: int = 64, noise: float = 0.15, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(n_people, dim)))
    vecs, truth = [], []
    for p in range(n_people):
        for _ in range(per_person):
            vecs.append(centres[p] + noise * rng.normal(size=dim) / np.sqrt(dim))
            truth.append(p)
    order = rng.permutation(len(vecs))
    return np.asarray(vecs)[order], [truth[i] for i in order]


def same_partition(a: list[int], b: list[int]) -> bool:
    pairs = {}
    for x, y in zip(a, b):
        if pairs.setdefault(x, y) != y:
            return False
    return len(set(pairs.values())) == len(pairs)


def test_faces_of_distinct_people_group_by_person() -> None:
    vecs, truth = people(5, 8)
    labels = cluster_faces(vecs, threshold=0.5)
    assert same_partition(labels, truth)
    assert len(set(labels)) == 5


def test_labels_are_numbered_by_each_groups_first_face() -> None:
    labels = cluster_faces([[1, 0], [0, 1], [1, 0.01], [0, 1]], threshold=0.9)
    assert labels == [0, 1, 0, 1]


def test_no_faces_and_one_face() -> None:
    assert cluster_faces(np.zeros((0, 8)), threshold=0.5) == []
    assert cluster_faces([[0.3, 0.4]], threshold=0.5) == [0]


def test_a_high_threshold_splits_everyone_and_a_low_one_merges_everyone() -> None:
    vecs, _ = people(3, 4, noise=0.4)
    assert len(set(cluster_faces(vecs, threshold=0.9999))) == 12
    assert len(set(cluster_faces(vecs, threshold=-1.0))) == 1


def test_average_linkage_does_not_chain_two_people_through_one_ambiguous_face() -> None:
    # Two tight groups 90 degrees apart and one face halfway: single linkage (connected components at the
    # threshold) joins all of them through it; average linkage keeps two people.
    a = [[1.0, 0.0]] * 4
    b = [[0.0, 1.0]] * 4
    mid = [[1.0, 1.0]]
    vecs = np.asarray(a + mid + b)
    comps = connected_components(normalise(vecs), 0.7)
    assert len(set(comps.tolist())) == 1
    labels = cluster_faces(vecs, threshold=0.7)
    assert len(set(labels)) == 2
    assert len(set(labels[:4])) == 1 and len(set(labels[5:])) == 1 and labels[0] != labels[5]


def test_result_matches_the_brute_force_average_linkage() -> None:
    rng = np.random.default_rng(3)
    vecs = normalise(rng.normal(size=(40, 6)))
    threshold = 0.3
    # brute force: merge the pair of groups with the highest average similarity while it is >= threshold
    groups = [[i] for i in range(len(vecs))]
    sim = vecs @ vecs.T
    while True:
        best, pair = -2.0, None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                s = sim[np.ix_(groups[i], groups[j])].mean()
                if s > best:
                    best, pair = s, (i, j)
        if pair is None or best < threshold:
            break
        i, j = pair
        groups[i] += groups.pop(j)
    expected = [0] * len(vecs)
    for g, members in enumerate(groups):
        for m in members:
            expected[m] = g
    assert same_partition(cluster_faces(vecs, threshold), expected)


def test_an_oversized_component_is_kept_whole() -> None:
    vecs, _ = people(1, 30, noise=0.05)
    assert set(cluster_faces(vecs, threshold=0.5, max_exact=10)) == {0}
