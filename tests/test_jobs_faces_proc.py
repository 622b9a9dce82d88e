"""A faces job through a real gateway driving the real face service with dlib's real models (weights
shipped in face_recognition_models) on real photos: every face with its embedding, video keyframes
face-indexed, and the faces grouped into people at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests import procs
from tests.face_fixtures import face_catalog, face_photos, face_svc  # noqa: F401 - fixtures
from tests.jobs_fixtures import all_results, make_video, start_jobs_gateway, wait_job

pytestmark = pytest.mark.proc

DLIB = "dlib-resnet"


@pytest.fixture(scope="module")
def faces_gateway(face_catalog: Path, face_svc: procs.Proc, face_photos: Path, logdir: Path,  # noqa: F811
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    p = start_jobs_gateway(face_catalog, {"face": face_svc.url}, logdir, roots=[face_photos],
                           data_dir=tmp_path_factory.mktemp("faces-jobs-data"), name="gateway-faces-jobs")
    yield p
    p.stop()


def test_faces_job_indexes_photos_and_a_video_and_groups_the_same_person(faces_gateway: procs.Proc, face_photos: Path) -> None:  # noqa: F811
    video = make_video(face_photos / "visit.mp4", [face_photos / "astronaut.jpg", (0, 0, 0)], size=(512, 512), scene_s=1.0)
    r = httpx.post(faces_gateway.url + "/v1/jobs", json={"task": "faces", "model": DLIB, "paths": [str(face_photos)]}, timeout=60)
    assert r.status_code == 201, r.text
    assert r.json()["options"] == {"cluster": True, "cluster_threshold": 0.92}
    job = wait_job(faces_gateway.url, r.json()["id"], timeout_s=180)
    assert job["state"] == "completed", job
    assert job["counts"]["done"] == 4 and job["counts"]["error"] == 0
    summary = job["summary"]
    assert summary["faces"] >= 4 and summary["people"] >= 3 and summary["cluster_threshold"] == 0.92

    rows = {Path(r["source"]).name: r for r in all_results(faces_gateway.url, job["id"])}
    astronaut = rows["astronaut.jpg"]["result"]["faces"]
    flipped = rows["astronaut-flipped.jpg"]["result"]["faces"]
    assert len(astronaut) == 1 and len(flipped) == 1 and "embedding" not in astronaut[0]
    frames = rows["visit.mp4"]["result"]["keyframes"]
    assert [k["t_s"] for k in frames] == [0.0, 1.0] and len(frames[0]["faces"]) == 1 and frames[1]["faces"] == []
    person = astronaut[0]["person"]
    assert flipped[0]["person"] == person and frames[0]["faces"][0]["person"] == person
    others = [f["person"] for f in rows["t1.jpg"]["result"]["faces"]]
    assert others and person not in others

    people = httpx.get(f"{faces_gateway.url}/v1/jobs/{job['id']}/people").json()
    group = next(g for g in people["data"] if g["person"] == person)
    assert sorted(Path(f["source"]).name for f in group["faces"]) == ["astronaut-flipped.jpg", "astronaut.jpg", "visit.mp4"]
    with_vectors = all_results(faces_gateway.url, job["id"], embeddings="true")
    assert len(next(r for r in with_vectors if r["source"].endswith("astronaut.jpg"))["result"]["faces"][0]["embedding"]) == 128
