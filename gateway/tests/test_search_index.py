"""The search index (unit tier): the vector store's float16 rows, brute-force ranking against numpy's own
cosine, and the index kept in step with a real jobs database (an ended embed job indexed once, a deleted
one dropped, the jobs a search may name checked)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.jobs.store import COMPLETED, AsyncStore, NewItem
from gateway.jobs.tasks import TASKS
from gateway.search.codec import F16, from_f16_b64, to_f16_b64, to_f16_bytes
from gateway.search.matrix import ModelMatrix
from gateway.search.schemas import SearchRequest
from gateway.search.service import Search
from gateway.search.store import VectorRow, VectorStore
from modelhost.catalog import Catalog, ModelSpec
from modelhost.errors import BadRequest, Conflict, NotFound

pytestmark = pytest.mark.unit

DIM = 16


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def rows(vectors: np.ndarray, start: int = 0) -> list[VectorRow]:
    return [VectorRow(start + i, -1, f"p{start + i}.jpg", "image", f"sha{start + i}", None, to_f16_bytes(v))
            for i, v in enumerate(vectors)]


def test_a_vector_survives_the_float16_codec_to_about_1e3() -> None:
    v = unit_vectors(1)[0]
    assert np.allclose(from_f16_b64(to_f16_b64(v)), v, atol=1e-3)
    assert len(to_f16_bytes(v)) == 2 * DIM


def test_the_store_keeps_a_jobs_rows_as_float16_and_removes_them_with_the_job(tmp_path: Path) -> None:
    store = VectorStore(tmp_path / "v.sqlite3")
    a, b = unit_vectors(3, seed=1), unit_vectors(2, seed=2)
    store.add_job("job_a", "clip", "completed", rows(a), dim=DIM)
    store.add_job("job_b", "clip", "cancelled", rows(b, 10), dim=DIM)
    store.add_job("job_c", "siglip", "completed", rows(unit_vectors(4, seed=3)), dim=DIM)
    loaded = store.load_model("clip")
    assert loaded.jobs == ["job_a", "job_b"] and loaded.vectors.dtype == F16 and loaded.vectors.shape == (5, DIM)
    assert list(loaded.seq) == [0, 1, 2, 10, 11] and loaded.source[3] == "p10.jpg"
    assert np.array_equal(loaded.vectors, np.vstack([a, b]).astype(F16))
    assert store.remove_job("job_a") == "clip" and store.remove_job("job_a") is None
    assert store.count("clip") == 2 and store.count() == 6 and set(store.indexed()) == {"job_b", "job_c"}
    store.close()
    reopened = VectorStore(tmp_path / "v.sqlite3")  # the schema is not applied twice
    assert reopened.count() == 6


def brute_force(vectors: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    m = vectors.astype(F16).astype(np.float64)
    scores = m @ (query / np.linalg.norm(query))
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
    return [(i, float(scores[i])) for i in order]


def matrix_of(tmp_path: Path, groups: dict[str, np.ndarray]) -> ModelMatrix:
    store = VectorStore(tmp_path / "v.sqlite3")
    start = 0
    for job, vectors in groups.items():
        store.add_job(job, "clip", "completed", rows(vectors, start), dim=DIM)
        start += len(vectors)
    return ModelMatrix(store.load_model("clip"))


def test_ranking_returns_the_k_nearest_with_numpys_cosine(tmp_path: Path) -> None:
    vectors = unit_vectors(500)
    m = matrix_of(tmp_path, {"job_a": vectors})
    query = np.random.default_rng(9).standard_normal(DIM).astype(np.float32) * 3  # not normalised: rank does it
    hits = m.rank(query, 20)
    expected = brute_force(vectors, query, 20)
    assert [h.row for h in hits] == [i for i, _ in expected]
    assert np.allclose([h.score for h in hits], [s for _, s in expected], atol=1e-5)
    assert len(m.rank(query, 1000)) == 500  # k past the size: everything, ranked


def test_ranking_keeps_to_the_named_jobs_and_the_minimum_score(tmp_path: Path) -> None:
    a, b = unit_vectors(50, seed=1), unit_vectors(50, seed=2)
    m = matrix_of(tmp_path, {"job_a": a, "job_b": b})
    query = b[7]
    only_a = m.rank(query, 10, jobs={"job_a"})
    assert all(h.row < 50 for h in only_a) and [h.row for h in only_a] == [i for i, _ in brute_force(a, query, 10)]
    assert m.rank(query, 1, jobs={"job_b", "job_gone"})[0].row == 57  # itself; a job with no vectors adds nothing
    assert m.rank(query, 5, jobs={"job_gone"}) == []
    above = m.rank(query, 100, min_score=0.3)
    assert above and all(h.score >= 0.3 for h in above)
    assert len(above) == int(((np.vstack([a, b]).astype(F16).astype(np.float32) @ query) >= 0.3).sum())
    with pytest.raises(ValueError):
        m.rank(np.ones(DIM + 1), 5)


def test_the_same_file_in_two_jobs_is_one_result(tmp_path: Path) -> None:
    store = VectorStore(tmp_path / "v.sqlite3")
    vectors = unit_vectors(30)
    store.add_job("job_a", "clip", "completed", rows(vectors), dim=DIM)
    store.add_job("job_b", "clip", "completed", rows(vectors[:20]), dim=DIM)  # the same files (same sha256) again
    m = ModelMatrix(store.load_model("clip"))
    hits = m.rank(vectors[3], 25)
    assert len(hits) == 25 and len({m.rows.sha256[h.row] for h in hits}) == 25
    assert all(m.rows.job[h.row] == 0 for h in hits)  # the first job's rows
    assert [h.row for h in hits] == [i for i, _ in brute_force(vectors, vectors[3], 25)]
    assert len(m.rank(vectors[3], 1000)) == 30
    assert [h.row for h in m.rank(vectors[3], 5, jobs={"job_b"})] == [30 + i for i, _ in brute_force(vectors[:20], vectors[3], 5)]


# the index beside a real jobs database ----------------------------------------------------------

CATALOG = Catalog(models=[ModelSpec(id="clip", family="embed", backend="clip", source="x"),
                          ModelSpec(id="clip-2", family="embed", backend="clip", source="y")])


class Settings:
    max_upload_bytes = 1 << 20
    max_image_pixels = 1 << 20
    request_timeout_s = 5.0
    default_embed_model = None


def image_result(v: np.ndarray) -> dict[str, Any]:
    return {"dim": DIM, "vector": to_f16_b64(v)}


async def ended_job(store: AsyncStore, job_id: str, task: str, model: str, results: list[dict[str, Any]],
                    state: str = COMPLETED, shas: list[str] | None = None, people: list[tuple[int, str, int]] = ()) -> None:
    items = [NewItem(f"lib/{job_id}-{i}.jpg", f"/x/{i}", False, "video" if "keyframes" in r else "image")
             for i, r in enumerate(results)]
    await store.create_job(job_id, task, model, {}, items, open_=False)
    for i, r in enumerate(results):
        sha = shas[i] if shas else f"sha-{job_id}-{i}"
        key = f"{TASKS[task](model, {}, None).key_prefix()}:{sha}"  # as the runner keys it (dedup)
        await store.finish_item(job_id, i, sha256=sha, result_key=key, body=r)
    await store.finish_job(job_id, state, people=people)


@pytest.fixture
async def search(tmp_path: Path):
    jobs = AsyncStore(tmp_path / "jobs.sqlite3")
    s = Search(tmp_path / "search" / "vectors.sqlite3", jobs, None, CATALOG, Settings())  # type: ignore[arg-type]
    await s.start()
    yield s
    await s.close()
    await asyncio.to_thread(jobs.close)


async def test_an_ended_embed_job_is_indexed_once_with_its_keyframes_and_a_deleted_one_leaves(search: Search) -> None:
    v = unit_vectors(4)
    video = {"duration_s": 9.0, "keyframes": [{"t_s": 0.0, **image_result(v[2])}, {"t_s": 4.5, **image_result(v[3])}]}
    await ended_job(search.jobs_store, "job_e", "embed", "clip", [image_result(v[0]), image_result(v[1]), video])
    await ended_job(search.jobs_store, "job_c", "caption", "blip", [{"caption": "a dog"}])
    ended = await search.sync()
    assert set(ended) == {"job_e"}
    m = await search.matrix("clip")
    assert len(m) == 4 and list(m.rows.frame) == [-1, -1, 0, 1] and list(m.rows.t_s[2:]) == [0.0, 4.5]
    assert m.rank(v[3], 1)[0].row == 3
    assert await search.matrix("clip") is m  # nothing changed: the same matrix
    await search.jobs_store.delete_job("job_e")  # behind the index's back (a crash before forget)
    await search.sync()
    assert len(await search.matrix("clip")) == 0 and search.vectors.count() == 0


async def test_a_hit_carries_the_caption_and_people_other_jobs_found_in_the_same_file(search: Search) -> None:
    v = unit_vectors(3)
    video = {"keyframes": [{"t_s": 0.0, **image_result(v[1])}, {"t_s": 4.5, **image_result(v[2])}]}
    store = search.jobs_store
    await ended_job(store, "job_e", "embed", "clip", [image_result(v[0]), video], shas=["A", "V"])
    await ended_job(store, "job_c", "caption", "blip", [
        {"caption": "a dog"}, {"keyframes": [{"t_s": 0.0, "caption": "red"}, {"t_s": 4.5, "caption": "blue"}]}],
        shas=["A", "V"])
    face = {"box": [0, 0, 1, 1], "score": 0.9}
    await ended_job(store, "job_f", "faces", "arc", [
        {"faces": [face, face]}, {"keyframes": [{"t_s": 0.0, "faces": []}, {"t_s": 4.5, "faces": [face]}]}],
        shas=["A", "V"], people=[(0, "0", 3), (0, "1", 5), (1, "1.0", 7)])
    await ended_job(store, "job_o", "caption", "blip", [{"caption": "another file"}], shas=["B"])
    await search.sync()
    m = await search.matrix("clip")
    hits = await search._described(m, m.rank(v[0], 3))
    by_time = {h.t_s: h for h in hits}
    image, first, second = by_time[None], by_time[0.0], by_time[4.5]
    assert image.caption.text == "a dog" and image.caption.job == "job_c" and image.kind == "image"
    assert [(p.job, p.person, p.faces) for p in image.people] == [("job_f", 3, ["0"]), ("job_f", 5, ["1"])]
    assert first.caption.text == "red" and first.people == [] and first.kind == "video" and first.seq == 1
    assert second.caption.text == "blue" and [(p.person, p.faces) for p in second.people] == [(7, ["1.0"])]
    assert image.rank == 1 and abs(image.score - 1) < 1e-3


async def test_jobs_indexed_or_removed_after_the_load_change_the_matrix_as_a_reload_would(search: Search) -> None:
    store = search.jobs_store
    v = unit_vectors(9)
    video = {"keyframes": [{"t_s": 0.0, **image_result(v[3])}, {"t_s": 2.0, **image_result(v[4])}]}
    assert len(await search.matrix("clip")) == 0  # loaded empty: the first job is spliced into nothing
    await ended_job(store, "job_b", "embed", "clip", [image_result(v[0]), image_result(v[1])], shas=["A", "B"])
    await search.sync()
    first = await search.matrix("clip")
    await ended_job(store, "job_a", "embed", "clip", [image_result(v[2]), video], shas=["C", "V"])  # before job_b
    await ended_job(store, "job_c", "embed", "clip", [image_result(v[0]), image_result(v[5])], shas=["A", "D"])
    await search.sync()
    grown = await search.matrix("clip")
    fresh = ModelMatrix(search.vectors.load_model("clip"))
    for m in (grown, fresh):
        assert m.rows.jobs == ["job_a", "job_b", "job_c"] and len(m) == 7
    assert grown is not first and np.array_equal(grown.matrix, fresh.matrix)
    for field in ("job", "seq", "frame", "source", "kind", "sha256"):
        assert list(getattr(grown.rows, field)) == list(getattr(fresh.rows, field)), field
    assert np.array_equal(grown.rows.t_s, fresh.rows.t_s, equal_nan=True) and np.array_equal(grown.content, fresh.content)
    assert [(h.row, h.score) for h in grown.rank(v[0], 7)] == [(h.row, h.score) for h in fresh.rank(v[0], 7)]
    await search.forget("job_b")
    cut = await search.matrix("clip")
    fresh = ModelMatrix(search.vectors.load_model("clip"))
    assert cut.rows.jobs == fresh.rows.jobs == ["job_a", "job_c"] and np.array_equal(cut.matrix, fresh.matrix)
    assert list(cut.rows.job) == list(fresh.rows.job) and cut.rows.sha256 == fresh.rows.sha256


async def test_forget_drops_a_job_at_once(search: Search) -> None:
    await ended_job(search.jobs_store, "job_e", "embed", "clip", [image_result(unit_vectors(1)[0])])
    await search.sync()
    assert len(await search.matrix("clip")) == 1
    await search.forget("job_e")
    assert len(await search.matrix("clip")) == 0


async def test_the_jobs_a_search_names_are_checked(search: Search) -> None:
    store = search.jobs_store
    await ended_job(store, "job_a", "embed", "clip", [image_result(unit_vectors(1)[0])])
    await ended_job(store, "job_x", "embed", "clip", [image_result(unit_vectors(1)[0])], state="cancelled")
    await ended_job(store, "job_b", "embed", "clip-2", [image_result(unit_vectors(1)[0])])
    await ended_job(store, "job_c", "caption", "blip", [{"caption": "a dog"}])
    await store.create_job("job_r", "embed", "clip", {}, [NewItem("a.jpg", "/a", False, "image")], open_=False)
    ended = await search.sync()
    assert await search._jobs("clip", None, ended) == ["job_a"]  # the default: completed ones only
    assert await search._jobs("clip", ["job_x", "job_a", "job_x"], ended) == ["job_a", "job_x"]
    for names, error, code in ((["job_nope"], NotFound, "job_not_found"), (["job_c"], BadRequest, "not_an_embed_job"),
                               (["job_r"], Conflict, "job_not_finished"), (["job_b"], BadRequest, "model_mismatch")):
        with pytest.raises(error) as e:
            await search._jobs("clip", names, ended)
        assert e.value.code == code and e.value.param == "jobs"
    assert search._model(SearchRequest(query="x", jobs=["job_b"]), ended) == "clip-2"  # the jobs' model
    assert search._model(SearchRequest(query="x"), ended) == "clip"  # the catalog's first


@pytest.mark.parametrize("body, param", [
    ({"query": ""}, "query"), ({"query": "   "}, "query"), ({"query": "x" * 10_000_000}, "query"),
    ({"query": "x", "k": 0}, "k"), ({"query": "x", "k": 1001}, "k"), ({"query": "x", "k": "5"}, "k"),
    ({"query": "x", "jobs": []}, "jobs"), ({"query": "x", "min_score": 2}, "min_score"),
    ({"query": {"image": ""}}, "query"), ({"query": {"url": "http://x"}}, "query"), ({"query": "x", "n": 1}, "n"),
])
def test_bad_requests_name_their_field(body: dict[str, Any], param: str) -> None:
    from modelhost.families import validated

    with pytest.raises(BadRequest) as e:
        validated(SearchRequest, body)
    assert (e.value.param or "").split(".")[0] == param
