"""Photo search through real processes on loopback: a gateway driving the real embed service (tiny CLIP built
locally by tools/make_tiny_embed_models.py). An embed job over photos and a video, then searches by text and by
image whose results are the k nearest with the scores brute-force cosine gives here; deleting the job takes its
items out of search; the official ``openai`` client's embeddings; bad input answered 4xx; the command line."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import openai
import pytest
import yaml
from PIL import Image

from tests import procs
from tests.jobs_fixtures import all_results, make_video, roundhouse, start_jobs_gateway, wait_job

pytestmark = pytest.mark.proc

EMBED_PY = procs.VENVS / "embed-svc" / "bin" / "python"
MODEL = "tiny-clip"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-embed")
    subprocess.run([str(EMBED_PY), str(procs.ROOT / "tools" / "make_tiny_embed_models.py"), str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=sys.stderr, timeout=600)
    path = out / "catalog.yaml"
    doc = yaml.safe_load(path.read_text())
    # A caption model whose service is down: its jobs wait, and they are jobs of another task for search.
    doc["models"].append({"id": "cap-down", "family": "caption", "backend": "blip", "source": "./nowhere",
                          "memory_estimate_mb": 64})
    path.write_text(yaml.safe_dump(doc))
    return path


def noise_photos(folder: Path, n: int, *, start: int = 0) -> None:
    """Photos far apart for a tiny model (random colours at 8x6, scaled up; ``jobs_fixtures.photos`` differ by
    a pixel, which a 32-pixel CLIP cannot tell apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        cells = np.random.default_rng(i).integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(cells).resize((64, 48), Image.NEAREST).save(folder / f"img{i:04d}.jpg", quality=95)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("library")
    noise_photos(root / "trip", 5)
    make_video(root / "trip" / "clip.mp4", [(230, 20, 20), (20, 20, 230), (20, 200, 20)], scene_s=1.0, tone_hz=None)
    noise_photos(root / "cli", 3, start=50)
    return root


@pytest.fixture(scope="module")
def gw(catalog: Path, library: Path, logdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    port = procs.free_port()
    env = {"EMBED_SVC_CATALOG": str(catalog), "EMBED_SVC_PORT": str(port), "EMBED_SVC_LOG_LEVEL": "INFO"}
    svc = procs.start("embed-svc", [str(EMBED_PY), "-m", "embed_svc"], env, port, logdir, timeout_s=120)
    services = {"embed": svc.url, "caption": f"http://127.0.0.1:{procs.free_port()}"}
    g = start_jobs_gateway(catalog, services, logdir, roots=[library], data_dir=tmp_path_factory.mktemp("search-data"),
                           name="gateway-search", ready_path="/health/live")
    yield g
    g.stop()
    svc.stop()


def post(gw: procs.Proc, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gw.url + path, json=body, timeout=120)


def embedded(gw: procs.Proc, item: str | dict[str, str]) -> np.ndarray:
    r = post(gw, "/v1/embeddings", {"model": MODEL, "input": [item]})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["data"][0]["embedding"], dtype=np.float64)


def indexed(gw: procs.Proc, job_id: str) -> list[tuple[int, float | None, np.ndarray]]:
    """(seq, keyframe time, vector) of every image and keyframe of a job, from its results."""
    out = []
    for row in all_results(gw.url, job_id, embeddings="true"):
        result = row["result"]
        for part in result.get("keyframes", [result]):
            out.append((row["seq"], part.get("t_s"), np.asarray(part["embedding"], dtype=np.float64)))
    return out


def assert_brute_force(hits: list[dict[str, Any]], table: list[tuple[int, float | None, np.ndarray]], query: np.ndarray,
                       k: int) -> None:
    """Each hit's score is the cosine computed here, and the hits are the k best (scores to 1e-3: the index
    holds float16, the results show 5 decimals)."""
    q = query / np.linalg.norm(query)
    scores = {(seq, t): float(v @ q / np.linalg.norm(v)) for seq, t, v in table}
    best = sorted(scores.values(), reverse=True)[:k]
    assert len(hits) == min(k, len(table))
    for hit, expected in zip(hits, best):
        assert abs(hit["score"] - scores[(hit["seq"], hit["t_s"])]) < 1e-3, (hit, scores)
        assert abs(hit["score"] - expected) < 1e-3, (hits, best)
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))


def test_an_embed_job_makes_photos_and_keyframes_searchable_by_text_and_image_until_it_is_deleted(
        gw: procs.Proc, library: Path) -> None:
    r = post(gw, "/v1/jobs", {"task": "embed", "model": MODEL, "paths": ["trip"]})
    assert r.status_code == 201, r.text
    job = wait_job(gw.url, r.json()["id"])
    assert job["state"] == "completed" and job["counts"]["done"] == 6, job
    table = indexed(gw, job["id"])
    keyframes = [t for _, t, _ in table if t is not None]
    assert len(table) == 5 + len(keyframes) and len(keyframes) >= 2

    query = embedded(gw, "a red photo")
    r = post(gw, "/v1/search", {"query": "a red photo", "model": MODEL, "k": 4})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"] == MODEL and answer["jobs"] == [job["id"]] and answer["searched"] == len(table)
    assert answer["query"]["modality"] == "text" and answer["query"]["tokens"] > 0
    assert_brute_force(answer["data"], table, query, 4)
    for hit in answer["data"]:
        assert hit["job"] == job["id"] and Path(hit["source"]).parent == library / "trip"
        assert (hit["kind"] == "video") == (hit["t_s"] is not None) == hit["source"].endswith(".mp4")

    # Every result, then above a score: the same ranking, cut.
    every = post(gw, "/v1/search", {"query": "a red photo", "k": 1000}).json()["data"]  # the model: the catalog's first
    assert_brute_force(every, table, query, len(table))
    cut = every[2]["score"] - 1e-6  # the answer's scores are rounded to 6 decimals
    above = post(gw, "/v1/search", {"query": "a red photo", "min_score": cut, "jobs": [job["id"]]}).json()["data"]
    assert [h["score"] for h in above] == [h["score"] for h in every[:3]] and every[3]["score"] < cut

    # By image: the photo itself first, at cosine 1.
    image = (library / "trip" / "img0002.jpg").read_bytes()
    b64 = base64.b64encode(image).decode()
    r = post(gw, "/v1/search", {"query": {"image": "data:image/jpeg;base64," + b64}, "model": MODEL, "k": 3})
    assert r.status_code == 200, r.text
    hits = r.json()["data"]
    assert r.json()["query"]["modality"] == "image"
    assert hits[0]["source"] == str(library / "trip" / "img0002.jpg") and hits[0]["score"] > 0.999
    assert_brute_force(hits, table, embedded(gw, {"image": b64}), 3)

    # The same folder again: nothing embedded twice, and each file is still one result.
    again = wait_job(gw.url, post(gw, "/v1/jobs", {"task": "embed", "model": MODEL, "paths": ["trip"]}).json()["id"])
    assert again["state"] == "completed" and again["counts"]["deduplicated"] == 6, again
    both = post(gw, "/v1/search", {"query": "a red photo", "k": 1000}).json()
    assert both["jobs"] == sorted([job["id"], again["id"]]) and both["searched"] == 2 * len(table)
    assert [(h["score"], h["t_s"]) for h in both["data"]] == [(h["score"], h["t_s"]) for h in every]
    assert httpx.delete(f"{gw.url}/v1/jobs/{again['id']}", timeout=60).status_code == 204
    assert post(gw, "/v1/search", {"query": "a red photo", "k": 1000}).json()["data"] == every

    # Deleted: gone from search at once.
    assert httpx.delete(f"{gw.url}/v1/jobs/{job['id']}", timeout=60).status_code == 204
    gone = post(gw, "/v1/search", {"query": "a red photo", "model": MODEL})
    assert gone.status_code == 200 and gone.json()["data"] == [] and gone.json()["searched"] == 0
    named = post(gw, "/v1/search", {"query": "a red photo", "jobs": [job["id"]]})
    assert named.status_code == 404 and named.json()["error"]["code"] == "job_not_found"


def test_the_openai_client_embeds_texts_and_images_share_the_space(gw: procs.Proc, library: Path) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    reply = client.embeddings.create(model=MODEL, input=["a dog on a beach", "a cat"])  # base64 under the hood
    assert [d.index for d in reply.data] == [0, 1] and reply.model == MODEL
    assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens == reply.usage.prompt_tokens
    plain = post(gw, "/v1/embeddings", {"model": MODEL, "input": ["a dog on a beach", "a cat"]}).json()
    for got, want in zip(reply.data, plain["data"]):
        assert len(got.embedding) == 16 and np.allclose(got.embedding, want["embedding"], atol=1e-6)
        assert abs(np.linalg.norm(got.embedding) - 1) < 1e-4
    one = client.embeddings.create(model=MODEL, input="a cat", encoding_format="float")
    assert np.allclose(one.data[0].embedding, plain["data"][1]["embedding"], atol=1e-6)

    # Images: a JSON item and a multipart upload give the same vector; mixed with a text, in input order.
    image = (library / "trip" / "img0001.jpg").read_bytes()
    mixed = post(gw, "/v1/embeddings", {"model": MODEL, "input": ["a cat", {"image": base64.b64encode(image).decode()}]})
    assert mixed.status_code == 200, mixed.text
    form = httpx.post(gw.url + "/v1/embeddings", data={"model": MODEL}, files=[("file", ("a.jpg", image))], timeout=60)
    assert form.status_code == 200, form.text
    assert np.allclose(mixed.json()["data"][1]["embedding"], form.json()["data"][0]["embedding"], atol=1e-6)
    assert np.allclose(mixed.json()["data"][0]["embedding"], plain["data"][1]["embedding"], atol=1e-6)


def test_bad_input_is_a_4xx_in_the_envelope_before_any_work(gw: procs.Proc, library: Path) -> None:
    caption_job = post(gw, "/v1/jobs", {"task": "caption", "model": "cap-down", "paths": ["cli"]})
    assert caption_job.status_code == 201, caption_job.text
    image = base64.b64encode((library / "trip" / "img0000.jpg").read_bytes()).decode()
    cases = [
        ("/v1/search", {"query": ""}, 400, "bad_request"),
        ("/v1/search", {"query": "   "}, 400, "bad_request"),
        ("/v1/search", {"query": "x" * 10_000_000}, 400, "bad_request"),
        ("/v1/search", {"query": {"image": image}, "model": "tiny-clip-multilingual"}, 400, "unsupported_input"),
        ("/v1/search", {"query": {"image": "bm90IGFuIGltYWdl"}, "model": MODEL}, 415, None),
        ("/v1/search", {"query": "x", "jobs": ["job_nope"]}, 404, "job_not_found"),
        ("/v1/search", {"query": "x", "jobs": [caption_job.json()["id"]]}, 400, "not_an_embed_job"),
        ("/v1/search", {"query": "x", "k": 0}, 400, "bad_request"),
        ("/v1/search", {"query": "x", "k": 1001}, 400, "bad_request"),
        ("/v1/search", {"query": "x", "model": "cap-down"}, 404, "model_not_found"),
        ("/v1/embeddings", {"model": "tiny-clip-multilingual", "input": [{"image": image}]}, 400, "unsupported_input"),
        ("/v1/embeddings", {"model": MODEL, "input": []}, 400, "empty_input"),
        ("/v1/embeddings", {"model": MODEL, "input": ["ok", " "]}, 400, "empty_input"),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": 8}, 400, "unsupported_dimensions"),
        ("/v1/embeddings", {"model": "cap-down", "input": "x"}, 404, "model_not_found"),
        ("/v1/jobs", {"task": "embed", "model": "tiny-clip-multilingual", "paths": ["trip"]}, 400, "unsupported_input"),
    ]
    for path, body, status, code in cases:
        r = post(gw, path, body)
        assert r.status_code == status, (path, str(body)[:80], r.text[:300])
        err = r.json()["error"]
        assert err["message"] and (code is None or err["code"] == code), (path, str(body)[:80], err)
    assert post(gw, "/v1/search", {"query": "x", "jobs": ["job_nope"]}).json()["error"]["param"] == "jobs"
    assert httpx.delete(f"{gw.url}/v1/jobs/{caption_job.json()['id']}", timeout=60).status_code == 204


def test_the_command_line_submits_an_embed_job_and_searches_it(gw: procs.Proc, library: Path) -> None:
    done = roundhouse("jobs", "submit", "--task", "embed", "--model", MODEL, str(library / "cli"), url=gw.url)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip().splitlines()[-1]
    found = roundhouse("search", "a photo", "--model", MODEL, "-k", "2", "--job", job_id, url=gw.url)
    assert found.returncode == 0, found.stderr
    lines = found.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "1" and lines[1].split()[0] == "2"
    assert all(line.split()[2].endswith(".jpg") for line in lines)
    assert "of 3 image(s) and keyframe(s) in 1 job(s)" in found.stderr
    by_image = roundhouse("search", "--image", str(library / "cli" / "img0051.jpg"), "--model", MODEL, "-k", "1",
                          "--job", job_id, url=gw.url)
    assert by_image.returncode == 0 and by_image.stdout.split()[2] == "img0051.jpg", by_image.stdout + by_image.stderr
