"""The jobs routes in the whole ``create_app()`` (app tier; the caption service is down, so jobs only wait):
the OpenAPI document declares both request bodies and every 4xx answer, bad input of every kind is a 4xx
in the error envelope (never a 500), the answers fit their response models, a cancelled job stays readable
and a deleted one is gone from every route."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, get_args

import httpx
import pytest
from PIL import Image

from gateway.config import CoordinatorSettings, GatewaySettings, JobSettings
from gateway.jobs.schemas import Job, TaskName
from gateway.jobs.tasks import TASKS
from gateway.main import create_app
from tests.doubles.fake_nvml import FakeNvml
from tests.procs import free_port

pytestmark = pytest.mark.app

CATALOG = """\
defaults: {device: cpu}
models:
  - {id: cap-a, family: caption, backend: blip, source: ./nowhere-a, memory_estimate_mb: 64}
  - {id: cap-gpu, family: caption, backend: blip, source: ./nowhere-g, memory_estimate_mb: 64, device: "cuda:0"}
"""
# cap-gpu is on a GPU NVML cannot see (the fake NVML is absent): the coordinator lists it unavailable.
JOB_OPERATIONS = [("post", "/v1/jobs"), ("post", "/v1/jobs/{job_id}/inputs"), ("get", "/v1/jobs"),
                  ("get", "/v1/jobs/{job_id}"), ("post", "/v1/jobs/{job_id}/cancel"), ("delete", "/v1/jobs/{job_id}"),
                  ("get", "/v1/jobs/{job_id}/results"), ("get", "/v1/jobs/{job_id}/people"),
                  ("get", "/v1/jobs/{job_id}/events")]


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
async def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="absent"))
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "a.jpg").write_bytes(jpeg((200, 0, 0)))
    settings = GatewaySettings(catalog=tmp_path / "catalog.yaml", services={"caption": f"http://127.0.0.1:{free_port()}"})
    app = create_app(settings, CoordinatorSettings(data_dir=tmp_path / "data", memory_budget_mb={"cpu": 1024},
                                                   reconcile_interval_s=None),
                     job_settings=JobSettings(library_roots=[tmp_path / "library"]))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            yield c


def test_the_schema_names_every_task() -> None:
    assert set(get_args(TaskName)) == set(TASKS)


async def test_the_openapi_document_declares_both_bodies_and_every_4xx(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    for method, path in JOB_OPERATIONS:
        op = doc["paths"][path][method]
        errors = [s for s in op["responses"] if s.startswith("4")]
        assert errors, (method, path)
        for s in errors:
            content = op["responses"][s]["content"]["application/json"]["schema"]
            assert content == {"$ref": "#/components/schemas/ErrorEnvelope"}, (method, path, s)
    for path in ("/v1/jobs", "/v1/jobs/{job_id}/inputs"):
        body = doc["paths"][path]["post"]["requestBody"]
        assert body["required"] and set(body["content"]) == {"application/json", "multipart/form-data"}
        assert "$defs" not in json.dumps(body)  # every reference resolves inside the document
    create = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert create["application/json"]["schema"]["properties"]["task"]["enum"] == sorted(TASKS)
    form = create["multipart/form-data"]["schema"]["properties"]
    assert form["file"] == {"description": "An uploaded file (repeat the field for more).",
                            "items": {"format": "binary", "type": "string"}, "title": "File", "type": "array"}
    for name, field in form.items():  # a form field is text or absent, never null
        assert "anyOf" not in field and field.get("default", "") is not None, name
    # the options field holds a JSON object: declared as one, its part sent as JSON (not "any text")
    assert form["options"]["type"] == "object" and "prompt" in form["options"]["properties"]
    assert create["multipart/form-data"]["encoding"] == {"options": {"contentType": "application/json"}}
    assert doc["paths"]["/v1/jobs"]["post"]["responses"]["201"]["content"]["application/json"]["schema"] == \
        {"$ref": "#/components/schemas/Job"}


async def test_the_openapi_document_has_cancel_and_delete_as_two_operations(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    cancel = doc["paths"]["/v1/jobs/{job_id}/cancel"]["post"]
    assert cancel["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Job"}
    assert {s for s in cancel["responses"] if s.startswith("4")} == {"404", "409", "422"}
    assert "requestBody" not in cancel
    delete = doc["paths"]["/v1/jobs/{job_id}"]["delete"]
    assert set(delete["responses"]) == {"204", "404", "409", "422"} and "content" not in delete["responses"]["204"]
    assert cancel["operationId"] != delete["operationId"]


async def test_a_new_job_needs_an_input_in_its_body_schema(client: httpx.AsyncClient) -> None:
    content = (await client.get("/openapi.json")).json()["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    open_ = {"required": ["open"], "properties": {"open": {"const": True}}}
    assert content["application/json"]["schema"]["anyOf"] == [
        {"required": ["paths"], "properties": {"paths": {"minItems": 1}}}, open_]
    assert content["multipart/form-data"]["schema"]["anyOf"] == [
        *({"required": [f], "properties": {f: {"minItems": 1}}} for f in ("file", "path", "paths")), open_]


async def test_schemathesis_takes_the_document_and_its_bodies_are_never_refused_for_no_inputs(
        client: httpx.AsyncClient) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_dict((await client.get("/openapi.json")).json())
    schema.validate()  # OpenAPI 3.1, as st checks it before a run
    requests: list[dict[str, Any]] = []

    @given(schema["/v1/jobs"]["POST"].as_strategy())
    @settings(max_examples=40, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    def generate(case: Any) -> None:
        requests.append(case.as_transport_kwargs(base_url="http://t"))
    generate()
    kinds = {"json" if "json" in kw else "multipart" for kw in requests}
    assert kinds == {"json", "multipart"}, kinds
    for kw in requests:
        body = {"json": kw["json"]} if "json" in kw else {"files": kw["files"]}
        r = await client.post("/v1/jobs", **body)
        assert r.status_code < 500, (kw, r.text)
        if r.status_code >= 400:  # a schema-valid body may still name a path that is not there, or no model
            error = r.json()["error"]
            assert error["code"] != "no_inputs" and error["param"] != "options", (kw, r.text)


@pytest.mark.parametrize("kwargs,status,code", [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    ({"json": ["caption"]}, 400, "invalid_json"),
    ({"json": {"paths": ["a.jpg"]}}, 400, "unknown_task"),
    ({"json": {"task": "paint", "paths": ["a.jpg"]}}, 400, "unknown_task"),
    ({"json": {"task": ["caption"], "paths": ["a.jpg"]}}, 400, "unknown_task"),
    ({"json": {"task": "caption", "paths": 7}}, 400, "bad_request"),
    ({"json": {"task": "caption", "paths": ["a.jpg"], "colour": "red"}}, 400, "bad_request"),
    ({"json": {"task": "caption", "paths": ["a.jpg"], "options": {"colour": "red"}}}, 400, "bad_request"),
    ({"json": {"task": "caption", "paths": ["a.jpg"], "options": {"max_new_tokens": "4"}}}, 400, "bad_request"),
    ({"json": {"task": "caption", "paths": ["a.jpg"], "options": {"max_new_tokens": 0}}}, 400, "bad_request"),
    ({"json": {"task": "caption", "paths": ["a.jpg"], "open": "yes"}}, 400, "bad_request"),
    ({"content": b'{"task": "caption", "paths": ["a\\ud800.jpg"]}', "headers": {"content-type": "application/json"}},
     400, "bad_request"),  # a lone surrogate: not a path any file system takes
    ({"json": {"task": "caption", "paths": ["a\x00.jpg"]}}, 400, "bad_request"),
    ({"json": {"task": "caption"}}, 400, "no_inputs"),
    ({"json": {"task": "caption", "paths": []}}, 400, "no_inputs"),
    ({"json": {"task": "caption", "paths": ["*.nothing-matches"]}}, 400, "no_matching_files"),
    ({"json": {"task": "caption", "paths": [""]}}, 400, "bad_request"),
    ({"files": [("task", (None, "caption")), ("open", (None, "false"))]}, 400, "no_inputs"),
    ({"json": {"task": "caption", "paths": ["nowhere.jpg"]}}, 400, "path_not_found"),
    ({"json": {"task": "caption", "paths": ["/etc/passwd"]}}, 403, "outside_library"),
    ({"json": {"task": "caption", "model": "nope", "paths": ["a.jpg"]}}, 404, "model_not_found"),
    ({"json": {"task": "faces", "paths": ["a.jpg"]}}, 400, "no_default_model"),
    ({"content": b"task=caption", "headers": {"content-type": "text/plain"}}, 415, "unsupported_content_type"),
    ({"data": {"task": "caption", "file": "text, not a file"}, "files": {"x": ("x.jpg", b"")}}, 400, "bad_request"),
    ({"data": {"task": "caption", "colour": "red"}, "files": {"file": ("a.jpg", b"x")}}, 400, "bad_request"),
    ({"data": {"task": "caption", "max_new_tokens": "many"}, "files": {"file": ("a.jpg", b"x")}}, 400, "bad_request"),
    ({"data": {"task": "caption", "options": "{not json"}, "files": {"file": ("a.jpg", b"x")}}, 400, "bad_request"),
    ({"data": {"task": "caption", "open": "1"}, "files": {"file": ("a.jpg", b"x")}}, 400, "bad_request"),  # true or false
    ({"data": {"task": "caption", "path": ""}, "files": {"file": ("a.jpg", b"x")}}, 400, "bad_request"),  # not absent
    ({"data": {"task": "caption", "cluster": "on"}, "files": {"file": ("a.jpg", b"x")}}, 400, "bad_request"),
    ({"data": {"task": "caption"}, "files": {"path": ("a.jpg", b"x")}}, 400, "bad_request"),
    ({"data": {"task": "sing"}, "files": {"file": ("a.jpg", b"x")}}, 400, "unknown_task"),
    ({"content": b"--b\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=b"}}, 400, None),
])
async def test_bad_job_requests_are_4xx_in_the_envelope(client: httpx.AsyncClient, kwargs: dict[str, Any],
                                                        status: int, code: str | None) -> None:
    r = await client.post("/v1/jobs", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["src"] == "gateway" and body["request_id"]
    if code is not None:
        assert body["error"]["code"] == code, body


async def test_a_job_for_an_unavailable_model_is_refused_at_creation(client: httpx.AsyncClient) -> None:
    for kwargs in ({"json": {"task": "caption", "model": "cap-gpu", "paths": ["a.jpg"]}},
                   {"data": {"task": "caption", "model": "cap-gpu"}, "files": {"file": ("a.jpg", jpeg((9, 9, 9)))}}):
        r = await client.post("/v1/jobs", **kwargs)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "model_unavailable" and error["param"] == "model"
        assert "cap-gpu" in error["message"] and "cuda:0" in error["message"], error
    assert (await client.get("/v1/jobs")).json()["data"] == []  # nothing stored


@pytest.mark.parametrize("path", ["/v1/jobs?state=bogus", "/v1/jobs?limit=0", "/v1/jobs/job_x/results?format=xml",
                                  "/v1/jobs/job_x/results?after=-2", f"/v1/jobs/job_x/results?after={2**63}"])
async def test_bad_queries_are_422_in_the_envelope(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error", r.text


async def test_a_form_job_takes_typed_options_and_an_open_job_takes_more_inputs(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/jobs", data={"task": "caption", "max_new_tokens": "4", "open": "true", "model": ""},
                          files=[("file", ("one.jpg", jpeg((0, 200, 0)))), ("file", ("two.jpg", jpeg((0, 0, 200))))])
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    Job.model_validate(job)
    assert job["options"] == {"max_new_tokens": 4} and job["model"] == "cap-a" and job["open"]
    assert job["counts"]["total"] == 2 and "error" not in job and "summary" not in job

    more = await client.post(f"/v1/jobs/{job['id']}/inputs", json={"paths": "a.jpg", "close": True})
    assert more.status_code == 200, more.text
    assert more.json()["counts"]["total"] == 3 and not more.json()["open"]
    closed = await client.post(f"/v1/jobs/{job['id']}/inputs", json={"paths": ["a.jpg"]})
    assert closed.status_code == 409 and closed.json()["error"]["code"] == "job_closed"
    extra = await client.post(f"/v1/jobs/{job['id']}/inputs", data={"task": "caption"}, files={"file": ("b.jpg", b"x")})
    assert extra.status_code == 400 and extra.json()["error"]["param"] == "task"
    zero = await client.post(f"/v1/jobs/{job['id']}/inputs", data={"close": "0"}, files={"file": ("b.jpg", b"x")})
    assert zero.status_code == 400 and zero.json()["error"]["param"] == "close"  # a boolean is true or false
    empty = await client.post(f"/v1/jobs/{job['id']}/inputs", files=[("paths", (None, "")), ("close", (None, "false"))])
    assert empty.status_code == 400 and empty.json()["error"]["param"].startswith("paths")  # an empty path is no path

    deadline = time.monotonic() + 20  # the service is down: the job runs, and waits for it
    while "waiting" not in (status := (await client.get(f"/v1/jobs/{job['id']}")).json()):
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)
    assert status["state"] == "running" and status["waiting"]["reason"] and status["counts"]["pending"] == 3

    cancelled = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["counts"]["cancelled"] == 3
    Job.model_validate(cancelled.json())
    again = await client.post(f"/v1/jobs/{job['id']}/cancel")  # again: a no-op
    assert again.status_code == 200 and again.json()["counts"] == cancelled.json()["counts"]
    assert (await client.get(f"/v1/jobs/{job['id']}")).json()["state"] == "cancelled"  # it stays
    page = (await client.get(f"/v1/jobs/{job['id']}/results")).json()
    assert [row["state"] for row in page["data"]] == ["cancelled"] * 3 and not page["has_more"]
    people = await client.get(f"/v1/jobs/{job['id']}/people")
    assert people.status_code == 409 and people.json()["error"]["code"] == "not_a_faces_job"
    listed = (await client.get("/v1/jobs", params={"state": "cancelled"})).json()
    assert [j["id"] for j in listed["data"]] == [job["id"]]
    events = await client.get(f"/v1/jobs/{job['id']}/events")
    assert events.headers["content-type"].startswith("text/event-stream") and "event: end" in events.text

    deleted = await client.delete(f"/v1/jobs/{job['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    await assert_gone(client, job["id"])
    assert (await client.get("/v1/jobs", params={"state": "cancelled"})).json()["data"] == []


async def assert_gone(client: httpx.AsyncClient, job_id: str) -> None:
    """Every route of the job answers 404 job_not_found."""
    for method, path in JOB_OPERATIONS:
        if "{job_id}" not in path:
            continue
        r = await client.request(method.upper(), path.format(job_id=job_id),
                                 **({"json": {"paths": ["a.jpg"]}} if method == "post" else {}))
        assert r.status_code == 404 and r.json()["error"]["code"] == "job_not_found", (method, path, r.text)


async def test_a_running_job_is_deleted_at_once_and_gone_from_every_route(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/jobs", files=[("file", ("one.jpg", jpeg((9, 9, 9)))), ("file", ("two.jpg", jpeg((90, 9, 9))))],
                          data={"task": "caption"})
    job = r.json()
    deadline = time.monotonic() + 20  # running, waiting for its service
    while (await client.get(f"/v1/jobs/{job['id']}")).json()["state"] != "running":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    deleted = await client.delete(f"/v1/jobs/{job['id']}")
    assert deleted.status_code == 204, deleted.text
    await assert_gone(client, job["id"])
    assert job["id"] not in {j["id"] for j in (await client.get("/v1/jobs")).json()["data"]}


async def test_a_completed_job_cannot_be_cancelled_but_can_be_deleted(client: httpx.AsyncClient) -> None:
    job = (await client.post("/v1/jobs", json={"task": "caption", "open": True})).json()
    await client.post(f"/v1/jobs/{job['id']}/inputs", json={"close": True})  # no inputs at all: it completes
    deadline = time.monotonic() + 20
    while (status := (await client.get(f"/v1/jobs/{job['id']}")).json())["state"] != "completed":
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.05)
    r = await client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished", r.text
    assert (await client.delete(f"/v1/jobs/{job['id']}")).status_code == 204
    await assert_gone(client, job["id"])


async def test_unknown_jobs_are_404_on_every_route(client: httpx.AsyncClient) -> None:
    await assert_gone(client, "job_nope")


@pytest.mark.parametrize("method,path,allow", [("PUT", "/v1/jobs", "GET, POST"), ("OPTIONS", "/v1/jobs", "GET, POST"),
                                               ("DELETE", "/v1/jobs", "GET, POST"), ("POST", "/v1/jobs/job_x", "DELETE, GET"),
                                               ("PATCH", "/v1/jobs/job_x", "DELETE, GET"),
                                               ("GET", "/v1/jobs/job_x/cancel", "POST"),
                                               ("DELETE", "/v1/jobs/job_x/cancel", "POST")])
async def test_another_method_is_405_naming_every_method_of_the_path(client: httpx.AsyncClient, method: str, path: str,
                                                                     allow: str) -> None:
    r = await client.request(method, path)
    assert r.status_code == 405 and r.headers["allow"] == allow and r.json()["error"]["code"] == "method_not_allowed"


async def test_each_event_of_the_stream_is_documented_with_the_job_it_carries(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    event = doc["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert event["properties"]["event"]["enum"] == ["progress", "end"]
    assert event["properties"]["data"]["contentSchema"] == {"$ref": "#/components/schemas/Job"}
    assert "Job" in doc["components"]["schemas"]
