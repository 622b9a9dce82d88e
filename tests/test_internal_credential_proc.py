"""The internal credential (issue 13, item 6): a family service started with one answers nobody but the
gateway, except its health and metrics; the gateway sends it on every call, so the stack works as before.

``tests.procs`` gives every process it starts this run's credential, so the whole proc tier runs with it;
here the service is asked directly: without it, with a wrong one, with a lookalike, and through the gateway.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from PIL import Image

from tests import procs

pytestmark = pytest.mark.proc


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.radial_gradient("L").resize((32, 24)).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def assert_refused(r: httpx.Response, what: str) -> None:
    assert r.status_code == 401, f"{what}: {r.status_code} {r.text[:300]}"
    body = r.json()
    assert set(body) == {"src", "request_id", "error"}, what
    assert body["src"] == "caption-svc" and body["error"]["code"] == "invalid_internal_token", what
    assert body["error"]["type"] == "authentication_error", what
    assert r.headers["x-request-id"] == body["request_id"], what
    assert r.headers["www-authenticate"] == "Bearer", what


# What a caller on the service's network might try: every route that reads, changes or computes.
CALLS = [
    ("GET", "/v1/models", {}),
    ("POST", "/v1/models/tiny-blip/load", {}),
    ("POST", "/v1/models/tiny-blip/unload", {"params": {"drain": "true"}}),
    ("POST", "/v1/captions", {"files": {"file": ("a.jpg", jpeg())}, "data": {"model": "tiny-blip"}}),
    ("GET", "/openapi.json", {}),
    ("GET", "/docs", {}),
    ("GET", "/nope", {}),  # not even a 404 tells what is there
]


@pytest.fixture(scope="module")
def svc(tiny_catalog: Path, logdir: Path) -> Iterator[procs.Proc]:
    p = procs.start_caption_svc(tiny_catalog, logdir, spare_worker="false")
    yield p
    p.stop()


def test_a_service_refuses_callers_without_the_credential_or_with_a_wrong_one(svc: procs.Proc) -> None:
    wrong = {"Authorization": "Bearer " + procs.INTERNAL_TOKEN[:-1] + ("x" if procs.INTERNAL_TOKEN[-1] != "x" else "y")}
    with httpx.Client(base_url=svc.url, timeout=60) as c:
        for method, path, kwargs in CALLS:
            assert_refused(c.request(method, path, **kwargs), f"{method} {path} without a credential")
            assert_refused(c.request(method, path, headers=wrong, **kwargs), f"{method} {path} with a wrong one")
            assert_refused(c.request(method, path, headers={"Authorization": procs.INTERNAL_TOKEN}, **kwargs),
                           f"{method} {path} with the token but no Bearer scheme")
            assert_refused(c.request(method, path, headers={"Authorization": "Bearer " + procs.INTERNAL_TOKEN + "x"},
                                     **kwargs), f"{method} {path} with a longer token")
        # Nothing was done on their behalf: no model was loaded.
        rows = c.get("/v1/models", headers=procs.INTERNAL_HEADERS).json()["data"]
        assert all(row["state"] == "unloaded" for row in rows), rows
        # Health and metrics stay open: orchestrators' probes and Prometheus carry no secret. A wrong one sent
        # there is refused all the same (how a misconfigured gateway learns of it).
        for path in ("/health/live", "/health/ready", "/metrics"):
            assert c.get(path).status_code == 200, path
            assert c.get(path, headers=procs.INTERNAL_HEADERS).status_code == 200, path
            assert_refused(c.get(path, headers=wrong), f"GET {path} with a wrong credential")
        # With it, the service answers as ever.
        assert c.get("/openapi.json", headers=procs.INTERNAL_HEADERS).status_code == 200
        assert c.post("/v1/models/tiny-blip/load", headers=procs.INTERNAL_HEADERS).status_code == 200
        r = c.post("/v1/captions", headers=procs.INTERNAL_HEADERS, files={"file": ("a.jpg", jpeg())},
                   data={"model": "tiny-blip"})
        assert r.status_code == 200, r.text
        assert c.post("/v1/models/tiny-blip/unload", headers=procs.INTERNAL_HEADERS).status_code == 200


def test_the_gateway_sends_the_credential_on_every_call(tiny_catalog: Path, svc: procs.Proc, logdir: Path) -> None:
    gw = procs.start_gateway(tiny_catalog, {"caption": svc.url}, logdir, name="gateway-credential")
    try:
        with httpx.Client(base_url=gw.url, timeout=120) as c:
            r = c.post("/v1/images/captions", files={"file": ("a.jpg", jpeg())}, data={"model": "tiny-blip"})
            assert r.status_code == 200, r.text  # reconcile (/v1/models), load, inference: all with the credential
            assert c.post("/admin/models/tiny-blip/unload").status_code == 200
            assert c.get("/health/ready").json()["services"] == {"caption": "ready"}
    finally:
        gw.stop()


def test_a_gateway_with_a_wrong_credential_gets_nothing_done(tiny_catalog: Path, svc: procs.Proc, logdir: Path) -> None:
    """A gateway configured with another deployment's secret: the service refuses it, and the refusal is an
    error the client can read, not a model loaded or an inference run."""
    port = procs.free_port()
    env = {"GATEWAY_CATALOG": str(tiny_catalog), "GATEWAY_PORT": str(port), "GATEWAY_SERVICES": json.dumps({"caption": svc.url}),
           "GATEWAY_DATA_DIR": str(logdir / f"wrong-credential-{port}"), "GATEWAY_INTERNAL_TOKEN": "not-this-deployments"}
    # Not ready, by design: started on its liveness.
    gw = procs.start("gateway-wrong-credential", [str(procs.GATEWAY_PY), "-m", "gateway"], env, port, logdir,
                     ready_path="/health/live")
    try:
        with httpx.Client(base_url=gw.url, timeout=120) as c:
            r = c.post("/v1/images/captions", files={"file": ("a.jpg", jpeg())}, data={"model": "tiny-blip"})
            assert r.status_code >= 400, r.text
            assert "wrong internal credential" in r.json()["error"]["message"], r.text
            ready = c.get("/health/ready")  # the probe sends the credential too: the operator sees why
            assert ready.status_code == 503 and "wrong internal credential" in ready.json()["services"]["caption"], ready.text
        rows = httpx.get(svc.url + "/v1/models", headers=procs.INTERNAL_HEADERS, timeout=10).json()["data"]
        assert all(row["state"] == "unloaded" for row in rows), rows
    finally:
        gw.stop()
