"""A hostile client against real processes (issue 13): no bad input is ever a 5xx, every 4xx is the error
envelope, and no input can freeze the gateway or blow up a service's memory.

- The corpus: every operation of the gateway's OpenAPI document, and of each family service's, gets
  hostile bodies (JSON nested past the parser's limit, text/plain, broken JSON, a JSON array, numbers past
  every range), hostile query values and hostile path parameters; then the known cases by name (``1e999`` and ``true`` for integer options, an
  ``after`` past SQLite's integer, ...). The gateway fronts the real caption service (tiny models); its face,
  asr and tts models point at a port where nothing listens, so any bad input that got past the gateway's
  own checks would show as a 503.
- A library with a symlink loop and a FIFO: a ``**`` glob over it is answered at once while /health/live
  keeps answering, and the FIFO is its item's own error.
- Eight lying JPEGs at once (a few KB, headers of 7000x7000) keep face-svc's peak memory under the bound
  its settings document.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tests import procs
from tests.asr_fixtures import asr_catalog, asr_logdir, asr_svc  # noqa: F401 - fixtures
from tests.face_fixtures import face_catalog, face_svc  # noqa: F401 - fixtures
from tests.tts_fixtures import tts_catalog, tts_svc  # noqa: F401 - fixtures
from tests.jobs_fixtures import all_results, start_jobs_gateway, wait_job

pytestmark = pytest.mark.proc

DOWN_MODELS = """\
  - {id: face-down, family: face, backend: insightface, source: ./nowhere, memory_estimate_mb: 64}
  - {id: asr-down, family: asr, backend: whisper, source: ./nowhere, memory_estimate_mb: 64}
  - {id: tts-down, family: tts, backend: piper, source: ./nowhere, memory_estimate_mb: 64}
"""
BODY_TIMEOUT_S = 2.0
NOT_BAD_INPUT = {("get", "/health/ready")}
"""Operations whose 503 is the truth about a service that is down here, whatever the input."""


def jpeg(size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.radial_gradient("L").resize(size).convert("RGB").save(buf, "JPEG")
    return buf.getvalue()


def lying_jpeg(width: int, height: int) -> bytes:
    """A 48x48 JPEG of a few KB whose header claims ``width`` x ``height``: it decodes, into a canvas that size."""
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(0).rand(48, 48, 3) * 255).astype("uint8")).save(buf, "JPEG", quality=90)
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def assert_envelope(r: httpx.Response, what: str) -> None:
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    if r.status_code < 400:
        return
    body = r.json()
    assert set(body) == {"src", "request_id", "error"}, f"{what}: {body}"
    err = body["error"]
    assert set(err) == {"type", "code", "message", "param"}, f"{what}: {body}"
    assert isinstance(err["code"], str) and err["code"] and isinstance(err["message"], str) and err["message"], what
    assert r.headers["x-request-id"] == body["request_id"], what
    if r.status_code in (429, 503):
        assert "retry-after" in r.headers, what


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile-library")
    (root / "album" / "deeper").mkdir(parents=True)
    (root / "album" / "a.jpg").write_bytes(jpeg())
    (root / "album" / "deeper" / "b.jpg").write_bytes(jpeg((40, 30)))
    (root / "album" / "deeper" / "up").symlink_to("..", target_is_directory=True)  # a loop: album/deeper/up/deeper/up/...
    (root / "album" / "loop").symlink_to(".", target_is_directory=True)
    os.mkfifo(root / "album" / "pipe.jpg")  # no writer, ever: an open() without O_NONBLOCK waits for good
    return root


@pytest.fixture(scope="module")
def hostile_gateway(tiny_catalog: Path, caption_svc: procs.Proc, library: Path, logdir: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[procs.Proc]:
    catalog = tiny_catalog.parent / "hostile-catalog.yaml"  # beside the tiny models: their sources are relative
    catalog.write_text(tiny_catalog.read_text().rstrip("\n") + "\n" + DOWN_MODELS)
    nowhere = f"http://127.0.0.1:{procs.free_port()}"
    p = start_jobs_gateway(catalog, {"caption": caption_svc.url, "face": nowhere, "asr": nowhere, "tts": nowhere},
                           logdir, roots=[library], data_dir=tmp_path_factory.mktemp("hostile-data"),
                           name="gateway-hostile", ready_path="/health/live", max_image_pixels=str(50_000_000),
                           body_read_timeout_s=str(BODY_TIMEOUT_S))
    yield p
    p.stop()


@pytest.fixture(scope="module")
def gw(hostile_gateway: procs.Proc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hostile_gateway.url, timeout=60) as c:
        yield c


DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
NEAR_LIMIT = b"[" * 900 + b"]" * 900  # parses: what the fields' validation makes of it is tested
DEEP_FIELDS = b"{" + b", ".join(b'"%s": %s' % (k.encode(), NEAR_LIMIT) for k in (
    "image", "images", "image_a", "input", "model", "task", "paths", "options", "prompt", "max_new_tokens", "messages",
    "voice", "open", "close")) + b"}"
HOSTILE_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("deep array", {"content": DEEP_ARRAY, "headers": {"content-type": "application/json"}}),
    ("deep object", {"content": DEEP_OBJECT, "headers": {"content-type": "application/json"}}),
    ("fields nested 900 deep", {"content": DEEP_FIELDS, "headers": {"content-type": "application/json"}}),
    ("text/plain JSON", {"content": b'{"input": "hello", "task": "caption"}', "headers": {"content-type": "text/plain"}}),
    ("no content type", {"content": b'{"input": "hello"}', "headers": {"content-type": ""}}),
    ("broken JSON", {"content": b'{"a": ', "headers": {"content-type": "application/json"}}),
    ("not UTF-8", {"content": b'{"a": "\xff\xfe"}', "headers": {"content-type": "application/json"}}),
    ("a JSON array", {"content": b"[1, 2]", "headers": {"content-type": "application/json"}}),
    ("huge numbers", {"content": b'{"max_new_tokens": 1e999, "max_faces": 1e999, "speed": 1e999, "temperature": -1e999,'
                                 b' "limit": 1' + b"0" * 400 + b', "model": 1e999}',
                      "headers": {"content-type": "application/json"}}),
    ("broken multipart", {"content": b"--xx\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
                          "headers": {"content-type": "multipart/form-data; boundary=xx"}}),
    ("multipart without boundary", {"content": b"abc", "headers": {"content-type": "multipart/form-data"}}),
]
HOSTILE_QUERY = ["1e999", "99999999999999999999999", "-99999999999999999999999", "NaN", "true", "%00", "\U0001f600" * 50]
HOSTILE_PATH = ["x" * 2000, "%00", "..%2F..%2Fetc%2Fpasswd", "%ff%fe", "nope", "1e999", "-1"]


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete") and (method, path) not in NOT_BAD_INPUT:
                yield method, path, op


def sweep(client: httpx.Client) -> int:
    """Every operation of ``client``'s OpenAPI document, with the hostile bodies, queries and path values:
    each answer is below 500 and a 4xx is the envelope. Returns how many requests were sent."""
    sent = 0
    for method, path, op in operations(client.get("/openapi.json").json()):
        params = op.get("parameters", [])
        in_path = [p["name"] for p in params if p["in"] == "path"]
        in_query = [p["name"] for p in params if p["in"] == "query"]
        for value in HOSTILE_PATH if in_path else [None]:
            url = path
            for name in in_path:
                url = url.replace("{" + name + "}", value or "")
            if method in ("post", "put", "patch"):
                for what, kwargs in HOSTILE_BODIES:
                    r = client.request(method.upper(), url, **kwargs)
                    assert_envelope(r, f"{method} {url} {what}")
                    if what == "text/plain JSON" and "application/json" in op.get("requestBody", {}).get("content", {}):
                        # Never parsed as JSON: 415 or 422 (a 404 first where the path names nothing).
                        assert r.status_code in ((415, 422) if value is None else (404, 415, 422)), \
                            f"{method} {url}: a text/plain body parsed as JSON: {r.status_code}"
                    sent += 1
            for name in in_query:
                for bad in HOSTILE_QUERY:
                    r = client.request(method.upper(), url, params={name: bad},
                                       **({"content": b"{}", "headers": {"content-type": "application/json"}}
                                          if method == "post" else {}))
                    assert_envelope(r, f"{method} {url}?{name}={bad!r}")
                    sent += 1
    return sent


def assert_options_allow_the_documents_methods(client: httpx.Client) -> int:
    """OPTIONS on every path of the document: 405 in the envelope, its Allow naming every method the path has
    (Starlette named only the first route's)."""
    doc = client.get("/openapi.json").json()
    for path, item in doc["paths"].items():
        url = "/".join("x" if part.startswith("{") else part for part in path.split("/"))
        r = client.options(url)
        assert_envelope(r, f"OPTIONS {url}")
        assert r.status_code == 405, f"OPTIONS {url}: {r.status_code}"
        documented = {m.upper() for m in item if m in ("get", "post", "put", "patch", "delete")}
        assert set(r.headers["allow"].split(", ")) == documented, f"OPTIONS {url}: {r.headers['allow']} vs {documented}"
    return len(doc["paths"])


def test_every_gateway_operation_answers_hostile_input_with_a_4xx_envelope(gw: httpx.Client) -> None:
    ops = {(m, p) for m, p, _ in operations(gw.get("/openapi.json").json())}
    assert {("post", "/v1/images/captions"), ("post", "/v1/faces/detect"), ("post", "/v1/audio/speech"),
            ("post", "/v1/audio/transcriptions"), ("post", "/v1/jobs"), ("get", "/v1/jobs/{job_id}/results")} <= ops
    assert sweep(gw) > 200
    assert assert_options_allow_the_documents_methods(gw) > 10


@pytest.mark.parametrize("service", ["caption_svc", "face_svc", "asr_svc", "tts_svc"])
def test_every_family_service_operation_answers_hostile_input_with_a_4xx_envelope(
        service: str, request: pytest.FixtureRequest) -> None:
    """The same corpus, as the gateway (with the internal credential) would send it; without the credential
    every operation but health and metrics is 401 in the envelope, before any of it is read."""
    svc: procs.Proc = request.getfixturevalue(service)
    with httpx.Client(base_url=svc.url, timeout=60, headers=procs.INTERNAL_HEADERS) as c:
        assert sweep(c) > 50
        assert assert_options_allow_the_documents_methods(c) > 5
        doc = c.get("/openapi.json").json()
    with httpx.Client(base_url=svc.url, timeout=60) as anyone:
        for method, path, _ in operations(doc):
            url = "/".join("x" if part.startswith("{") else part for part in path.split("/"))
            r = anyone.request(method.upper(), url, **jsonb(b'{"model": "x"}'))
            if path in ("/health/live", "/metrics"):
                assert r.status_code == 200, f"{method} {url}: {r.status_code}"
                continue
            assert_envelope(r, f"{method} {url} without the credential")
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_internal_token", f"{method} {url}"


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> dict[str, Any]:
    """A multipart body even without files (httpx sends fields alone as a urlencoded form)."""
    return {"files": [*((k, (None, v)) for k, v in fields.items()),
                      *((k, (f"{k}.jpg", v, "image/jpeg")) for k, v in files.items())]}


def jsonb(body: dict[str, Any] | bytes) -> dict[str, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return {"content": raw, "headers": {"content-type": "application/json"}}


def test_the_known_bad_inputs_are_each_a_4xx(gw: httpx.Client) -> None:
    import base64

    image = base64.b64encode(jpeg()).decode()
    cases: list[tuple[str, str, dict[str, Any], int | None]] = [
        ("/v1/images/captions", "max_new_tokens 1e999",
         jsonb(f'{{"image": "{image}", "model": "tiny-blip", "max_new_tokens": 1e999}}'.encode()), 400),
        ("/v1/images/captions", "max_new_tokens true", jsonb({"image": image, "model": "tiny-blip", "max_new_tokens": True}), 400),
        ("/v1/images/captions", "max_new_tokens 10^400",
         jsonb(f'{{"image": "{image}", "max_new_tokens": 1{"0" * 400}}}'.encode()), 400),
        ("/v1/images/captions", "max_new_tokens form 1e999",
         multipart({"model": "tiny-blip", "max_new_tokens": "1e999"}, {"file": jpeg()}), 400),
        ("/v1/faces/detect", "max_faces 1e999", jsonb(f'{{"image": "{image}", "max_faces": 1e999}}'.encode()), 400),
        ("/v1/faces/detect", "max_faces true", jsonb({"image": image, "max_faces": True}), 400),
        ("/v1/faces/detect", "max_faces form 1e999", multipart({"max_faces": "1e999"}, {"file": jpeg()}), 400),
        ("/v1/faces/verify", "box of 1e999",
         jsonb(f'{{"image_a": "{image}", "image_b": "{image}", "box_a": [0, 0, 1e999, 1]}}'.encode()), 400),
        ("/v1/jobs", "job option 1e999",
         jsonb(b'{"task": "caption", "paths": ["album"], "options": {"max_new_tokens": 1e999}}'), 400),
        ("/v1/jobs", "job option true", jsonb({"task": "caption", "paths": ["album"], "options": {"max_new_tokens": True}}), 400),
        ("/v1/jobs", "faces job cluster_threshold -1e999",
         jsonb(b'{"task": "faces", "paths": ["album"], "options": {"cluster_threshold": -1e999}}'), 400),
        ("/v1/jobs", "form job options 1e999",
         multipart({"task": "caption", "path": "album", "options": '{"max_new_tokens": 1e999}'}, {}), 400),
        ("/v1/audio/speech", "speed 1e999", jsonb(b'{"input": "hi", "speed": 1e999}'), 400),
        ("/v1/audio/speech", "text/plain", {"content": b'{"input": "hi"}', "headers": {"content-type": "text/plain"}}, 415),
        ("/v1/audio/transcriptions", "temperature 1e999", multipart({"temperature": "1e999"}, {"file": b"RIFF0000WAVE"}), 400),
        ("/v1/audio/transcriptions", "JSON", jsonb({"file": "x"}), 415),
    ]
    for path, what, kwargs, status in cases:
        r = gw.post(path, **kwargs)
        assert_envelope(r, f"{path} {what}")
        assert status is None or r.status_code == status, f"{path} {what}: {r.status_code} {r.text[:300]}"
    job = gw.post("/v1/jobs", json={"task": "caption", "paths": ["album/a.jpg"]})
    assert job.status_code == 201, job.text
    for after in ("9223372036854775808", "99999999999999999999999", "1e999", "-2"):
        r = gw.get(f"/v1/jobs/{job.json()['id']}/results", params={"after": after})
        assert_envelope(r, f"results?after={after}")
        assert r.status_code == 422


def test_a_glob_over_a_symlink_loop_and_a_fifo_is_answered_at_once_and_the_gateway_stays_live(
        gw: httpx.Client, hostile_gateway: procs.Proc) -> None:
    live: list[int] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=hostile_gateway.url, timeout=5) as c:
            while not stop.is_set():
                live.append(c.get("/health/live").status_code)
                time.sleep(0.05)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        r = gw.post("/v1/jobs", json={"task": "caption", "model": "tiny-blip", "paths": ["**/*.jpg"]}, timeout=30)
        took = time.monotonic() - t0
        assert r.status_code == 201, r.text
        # Accepted with the files outside the loops, and the answer says what was passed over: album/loop and
        # album/deeper/up, each a symlinked folder (README: Limits and security).
        assert r.json()["links_skipped"] == 2, r.json()
        job = wait_job(hostile_gateway.url, r.json()["id"], timeout_s=120)
    finally:
        stop.set()
        t.join(10)
    assert took < 10, f"the listing took {took:.1f} s"
    assert live and set(live) == {200}
    assert job["counts"]["total"] == 3  # a.jpg, b.jpg and the FIFO; nothing through the loops
    rows = {Path(row["source"]).name: row for row in all_results(hostile_gateway.url, job["id"])}
    assert set(rows) == {"a.jpg", "b.jpg", "pipe.jpg"}
    assert rows["pipe.jpg"]["error"]["code"] == "not_a_regular_file"
    assert rows["a.jpg"]["error"] is None and rows["b.jpg"]["error"] is None
    named = gw.post("/v1/jobs", json={"task": "caption", "model": "tiny-blip", "paths": ["album/pipe.jpg"]})
    assert named.status_code == 201, named.text
    assert "links_skipped" not in named.json()  # nothing passed over: nothing said
    assert "links_skipped" not in gw.get(f"/v1/jobs/{job['id']}").json()  # the listing's answer alone says it
    job = wait_job(hostile_gateway.url, named.json()["id"], timeout_s=60)
    assert job["counts"]["error"] == 1


# face-svc's memory under lying JPEGs ---------------------------------------------------------------

def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_eight_lying_jpegs_at_once_keep_face_svc_under_its_decode_bound(face_catalog: Path, logdir: Path) -> None:  # noqa: F811
    concurrent_decodes, decode_bytes = 2, 200 * 1024 * 1024  # the service's defaults
    svc = procs.start_face_svc(face_catalog, logdir, max_concurrent_decodes=str(concurrent_decodes),
                               max_decode_bytes=str(decode_bytes), max_image_pixels=str(50_000_000))
    try:
        with httpx.Client(base_url=svc.url, timeout=120, headers=procs.INTERNAL_HEADERS) as c:
            loaded = c.post("/v1/models/tiny-insightface/load")
            assert loaded.status_code == 200, loaded.text
            warm = c.post("/v1/faces/detect", data={"model": "tiny-insightface"}, files={"file": ("a.jpg", jpeg())})
            assert warm.status_code == 200, warm.text  # the model is loaded: what follows is decoding
            Path(f"/proc/{svc.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            before = rss_bytes(svc.proc.pid)
            liar = lying_jpeg(7000, 7000)
            assert len(liar) < 5000

            def detect(_: int) -> httpx.Response:
                return c.post("/v1/faces/detect", data={"model": "tiny-insightface"}, files={"file": ("liar.jpg", liar)})

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(detect, range(8)))
        for r in answers:
            assert r.status_code == 200, r.text
            assert (r.json()["width"], r.json()["height"]) == (7000, 7000)
        grew = peak_rss_bytes(svc.proc.pid) - before
        bound = int(concurrent_decodes * 1.25 * decode_bytes)  # README "Limits": decode memory
        assert grew < bound, f"face-svc grew {grew / 2**20:.0f} MiB at its peak; the bound is {bound / 2**20:.0f} MiB"
        kept = rss_bytes(svc.proc.pid) - before
        print(f"face-svc peak growth under 8 lying JPEGs: {grew / 2**20:.0f} MiB (bound {bound / 2**20:.0f} MiB); "
              f"kept afterwards: {kept / 2**20:.0f} MiB")
        assert kept < 128 * 2**20, f"face-svc kept {kept / 2**20:.0f} MiB after the burst"  # 191 MiB without malloc_trim
    finally:
        svc.stop()


def test_a_lone_surrogate_in_speech_input_is_spoken_through_to_the_end(tts_svc: procs.Proc) -> None:  # noqa: F811
    """JSON lets a lone UTF-16 surrogate through (UTF-8 has none): it was a 500, or audio that stopped after the
    first sentence. Read as U+FFFD, the rest of the text is spoken."""
    with httpx.Client(base_url=tts_svc.url, timeout=120, headers=procs.INTERNAL_HEADERS) as c:
        assert c.post("/v1/models/flite/load").status_code == 200
        sizes = []
        for text in ("First sentence here. Second sentence there. Third one now.",
                     "First sentence here. \\ud800 Second sentence there. Third one now.",
                     "First sentence \\udfff here. Second sentence there. Third one now."):
            r = c.post("/v1/audio/speech", content=('{"model": "flite", "input": "%s", "response_format": "pcm"}' % text).encode(),
                       headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            assert r.headers["x-sentences"] == "3"
            sizes.append(len(r.content))
    assert min(sizes) > 0.9 * max(sizes), sizes


# the wire: what uvicorn parses before any route -------------------------------------------------------

def raw_exchange(port: int, data: bytes, *, wait_s: float = 10) -> tuple[int, dict[str, bytes], bytes, float]:
    """Send ``data`` on a fresh connection and read until the server closes it or ``wait_s`` pass: the status,
    the headers (lower-case names, raw values), the body and how long the answer took."""
    import socket

    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        s.sendall(data)
        out = b""
        try:
            while b"\r\n\r\n" not in out or len(out.split(b"\r\n\r\n", 1)[1]) < int(
                    dict(_headers(out)).get(b"content-length", b"-1")):
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except TimeoutError:
            pass
    took = time.monotonic() - t0
    assert out, f"no answer within {wait_s} s to {data[:80]!r}"
    head, _, body = out.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), dict(_headers(out)), body, took


def _headers(raw: bytes) -> list[tuple[bytes, bytes]]:
    head = raw.partition(b"\r\n\r\n")[0]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])]


@pytest.fixture(scope="module")
def quick_svc(tiny_catalog: Path, logdir: Path) -> Iterator[procs.Proc]:
    """A caption service whose body read timeout is short enough to wait for."""
    p = procs.start_caption_svc(tiny_catalog, logdir, spare_worker="false", body_read_timeout_s=str(BODY_TIMEOUT_S))
    yield p
    p.stop()


@pytest.mark.parametrize("target", ["hostile_gateway", "quick_svc"])
def test_the_wire_answers_bad_http_a_stalled_body_and_odd_request_ids_in_the_envelope(
        target: str, request: pytest.FixtureRequest) -> None:
    p: procs.Proc = request.getfixturevalue(target)
    src = "gateway" if target == "hostile_gateway" else "caption-svc"
    auth = b"" if src == "gateway" else f"Authorization: Bearer {procs.INTERNAL_TOKEN}\r\n".encode()

    def envelope_of(status: int, headers: dict[str, bytes], body: bytes, what: str) -> dict:
        assert headers.get(b"content-type") == b"application/json", f"{what}: {headers} {body[:200]!r}"
        doc = json.loads(body)
        assert set(doc) == {"src", "request_id", "error"} and doc["src"] == src, f"{what}: {doc}"
        assert headers[b"x-request-id"].decode() == doc["request_id"], what
        return doc

    # Requests HTTP cannot parse: uvicorn answers them itself (plain text before), now in the envelope.
    for what, data in [
        ("a header without a colon", b"GET /health/live HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"),
        ("a broken request line", b"GARBAGE\r\n\r\n"),
        ("a control byte in a header", b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n"),
        ("bad chunked framing", b"POST /v1/models/x/load HTTP/1.1\r\nHost: x\r\n" + auth +
         b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n"),
    ]:
        status, headers, body, _ = raw_exchange(p.port, data)
        assert status == 400, f"{what}: {status} {body[:200]!r}"
        assert envelope_of(status, headers, body, what)["error"]["code"] == "bad_http_request", what
        assert headers.get(b"connection") == b"close", what

    # A body shorter than its Content-Length: 408 once BODY_TIMEOUT_S pass without a byte, not a wait for good.
    path, ctype, part = (b"/v1/jobs", b"application/json", b'{"a": ') if src == "gateway" else \
        (b"/v1/captions", b"multipart/form-data; boundary=xx", b'--xx\r\nContent-Disposition: form-data; name="file"')
    status, headers, body, took = raw_exchange(p.port, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + auth +
                                               b"Content-Type: " + ctype + b"\r\nContent-Length: 1000\r\n\r\n" + part,
                                               wait_s=BODY_TIMEOUT_S + 20)
    assert status == 408, f"short body: {status} {body[:200]!r}"
    assert envelope_of(status, headers, body, "short body")["error"]["code"] == "body_timeout"
    assert BODY_TIMEOUT_S - 0.5 <= took < BODY_TIMEOUT_S + 10, took

    # Request ids: printable ASCII is echoed as sent; anything else (UTF-8 bytes, which a header carries as
    # Latin-1 and an echo turned to mojibake) is replaced by one of ours, never echoed mangled.
    for sent, echoed_as_sent in [("abc-123_DEF.4", True), ("café-☃", False), ("x" * 129, False), ("a\tb", False)]:
        data = b"GET /nope HTTP/1.1\r\nHost: x\r\n" + auth + b"X-Request-ID: " + sent.encode() + b"\r\n\r\n"
        status, headers, body, _ = raw_exchange(p.port, data)
        assert status == 404, f"{sent!r}: {status}"
        rid = envelope_of(status, headers, body, f"request id {sent!r}")["request_id"]
        if echoed_as_sent:
            assert rid == sent
        else:
            assert rid != sent and rid.isascii() and rid.isalnum(), rid
    with httpx.Client(base_url=p.url, timeout=10) as c:
        assert c.get("/health/live").status_code == 200  # and the server lives on
