"""The web console (/ui) in a real browser: Debian's chromium, driven by Playwright (its own browser
download is never used), against real processes on loopback: a gateway and caption-svc on the tiny
models (and embed-svc on the tiny CLIP, for the search card). Every view is read from the page as a person sees it; screenshots go to
build/test-results/screenshots/ (CI keeps build/test-results)."""

from __future__ import annotations

import io
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests import procs
from tests.embed_fixtures import build_tiny_embed_models, start_embed_svc
from tests.face_fixtures import face_photos  # noqa: F401 - a fixture

pytestmark = pytest.mark.proc

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = procs.ROOT / "build" / "test-results" / "screenshots"
KEY = "console-test-key"
# Chromium refuses to run as root without it (CI and this machine run as root).
ROOT_ARGS = ["--no-sandbox"] if os.geteuid() == 0 else []
SPOKEN = "Please turn on the kitchen lights."


# Beside the tiny caption models: a real face model, a real voice and a real speech model that ship in their
# environments' packages.
EXTRA_MODELS = [
    {"id": "dlib-resnet", "family": "face", "backend": "dlib", "source": "face_recognition_models", "device": "cpu",
     "memory_estimate_mb": 400, "max_batch": 8, "max_wait_ms": 5,
     "options": {"detector": "hog", "upsample": 1, "det_thresh": 0.3, "verify_threshold": 0.92}},
    {"id": "flite", "family": "tts", "backend": "flite", "source": "flite", "device": "cpu", "memory_estimate_mb": 16,
     "max_batch": 1, "max_wait_ms": 0},
    {"id": "pocketsphinx-en-us", "family": "asr", "backend": "pocketsphinx", "source": "en-us", "device": "cpu",
     "memory_estimate_mb": 64, "max_batch": 4, "max_wait_ms": 5},
]


@pytest.fixture(scope="module")
def console_catalog(tiny_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    doc = yaml.safe_load(tiny_catalog.read_text())
    doc["models"] += EXTRA_MODELS
    # The tiny CLIP (5 s to build), by its absolute path: the search card's model.
    embed_dir = tmp_path_factory.mktemp("console-embed")
    clip = next(m for m in yaml.safe_load(build_tiny_embed_models(embed_dir).read_text())["models"] if m["id"] == "tiny-clip")
    doc["models"].append({**clip, "source": str((embed_dir / clip["source"]).resolve())})
    path = tiny_catalog.parent / "console-catalog.yaml"  # beside the tiny models: their sources are relative
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(console_catalog: Path, logdir: Path) -> Iterator[tuple[procs.Proc, procs.Proc]]:
    started: list[procs.Proc] = []
    try:
        cap = procs.start_caption_svc(console_catalog, logdir)
        started.append(cap)
        started.append(procs.start_face_svc(console_catalog, logdir))
        started.append(procs.start_tts_svc(console_catalog, logdir, spare_worker="false"))
        started.append(start_embed_svc(console_catalog, logdir))
        started.append(procs.start_asr_svc(console_catalog, logdir, spare_worker="false"))
        services = {"caption": cap.url, "face": started[1].url, "tts": started[2].url, "embed": started[3].url,
                    "asr": started[4].url}
        gw = procs.start_gateway(console_catalog, services, logdir, name="console-gateway")
        started.append(gw)
        yield gw, cap
    finally:
        for p in reversed(started):
            p.stop()


@pytest.fixture(scope="module")
def gateway(stack: tuple[procs.Proc, procs.Proc]) -> procs.Proc:
    return stack[0]


@pytest.fixture(scope="module")
def catalog_ids(console_catalog: Path) -> list[str]:
    return [m["id"] for m in yaml.safe_load(console_catalog.read_text())["models"]]


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SPOKEN as speech, a 16 kHz WAV from Debian's flite (its slt voice, which pocketsphinx transcribes)."""
    assert shutil.which("flite"), "Debian's flite is not installed (apt-get install flite; .ci/run does)"
    path = tmp_path_factory.mktemp("speech") / "spoken.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", SPOKEN, "-o", str(path)], check=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def browser(spoken: Path) -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is not installed (apt-get install chromium; .ci/run does)"
    # A fake microphone that plays the spoken WAV (in a loop), granted without a prompt: the Record button's path.
    mic = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
           f"--use-file-for-fake-audio-capture={spoken}"]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ROOT_ARGS + mic)
        yield b
        b.close()


class Console:
    """A page of the console with its console errors recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def state_of(self, model: str):  # noqa: ANN201 - a Locator
        return self.page.locator(f'#model-table tr[data-model="{model}"] .model-state [data-state]')

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def console(browser: Browser, gateway: procs.Proc) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    c = Console(page)
    page.goto(gateway.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#live")).to_have_text("live")
    yield c
    context.close()


def photo(seed: int = 0) -> bytes:
    """A small JPEG, different for each seed (a job deduplicates identical files)."""
    img = Image.radial_gradient("L").resize((64, 48)).convert("RGB")
    img.putpixel((seed % 64, (seed // 64) % 48), (seed % 256, 255 - seed % 256, 7))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_the_page_lists_every_catalog_model_with_its_state_and_logs_no_error(
        console: Console, gateway: procs.Proc, catalog_ids: list[str]) -> None:
    page = console.page
    assert page.url.endswith("/ui/")  # / redirects to the console
    rows = page.locator("#model-table tbody tr[data-model]")
    expect(rows).to_have_count(len(catalog_ids))
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.model)") == catalog_ids
    admin = {m["id"]: m for m in httpx.get(gateway.url + "/admin/models", timeout=30).json()["data"]}
    for model in catalog_ids:
        shown = console.state_of(model).get_attribute("data-state")
        m = admin[model]
        assert shown == (m["ledger_state"] if m["ledger_state"] != "unloaded" else m["state"]), model
    expect(page.locator("#device-list [data-device=cpu] .bar")).to_be_visible()
    for select, family in (("#caption-model", "caption"), ("#faces-model", "face")):
        options = page.locator(f"{select} option").all_inner_texts()
        assert options == [m for m in catalog_ids if admin[m]["family"] == family]
    console.shot("console-loaded")
    assert console.errors == []


def test_a_caption_from_the_playground_appears(console: Console, tmp_path: Path) -> None:
    page = console.page
    (tmp_path / "photo.jpg").write_bytes(photo())
    page.select_option("#caption-model", "tiny-blip")
    page.set_input_files("#caption-file", str(tmp_path / "photo.jpg"))
    expect(page.locator("#caption-preview")).to_be_visible()
    page.get_by_role("button", name="Caption", exact=True).click()
    out = page.locator("#caption-out")
    expect(out).to_have_attribute("data-model", "tiny-blip", timeout=120_000)
    assert out.inner_text().strip() and out.inner_text() != "working…"
    # The load it took shows live: tiny-blip ready, and a swap that loaded it.
    expect(console.state_of("tiny-blip")).to_have_attribute("data-state", "ready")
    expect(page.locator("#swap-table tbody th", has_text="tiny-blip").first).to_be_visible()
    console.shot("console-caption")
    assert console.errors == []


def test_faces_are_boxed_on_the_photo(console: Console, face_photos: Path) -> None:  # noqa: F811 - the fixture
    page = console.page
    page.select_option("#faces-model", "dlib-resnet")
    page.set_input_files("#faces-file", str(face_photos / "astronaut.jpg"))
    with page.expect_response("**/v1/faces/detect", timeout=120_000) as answer:
        page.get_by_role("button", name="Detect", exact=True).click()
    body = answer.value.json()
    assert len(body["faces"]) == 1, body
    expect(page.locator("#faces-out")).to_have_text("1 face(s)")
    # The box is drawn where the API put it: the middle of its left edge is the stroke's colour.
    x1, y1, x2, y2 = body["faces"][0]["box"]
    pixel = page.evaluate("""([bx, by, w, h]) => {
        const c = document.getElementById('faces-canvas');
        const x = Math.round(bx * c.width / w), y = Math.round(by * c.height / h);
        return Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data);
    }""", [x1, (y1 + y2) / 2, body["width"], body["height"]])
    assert pixel[:3] == [255, 191, 71], pixel
    console.shot("console-faces")
    assert console.errors == []


def test_typed_text_comes_back_as_speech_to_play(console: Console) -> None:
    page = console.page
    page.select_option("#tts-model", "flite")
    page.get_by_role("textbox", name="Text").fill("The roundhouse turns.")
    page.get_by_role("button", name="Speak", exact=True).click()
    expect(page.locator("#tts-out")).to_contain_text("KiB of audio", timeout=120_000)
    duration = page.evaluate("""() => new Promise((ok) => {
        const a = document.getElementById('tts-audio');
        if (a.readyState >= 1) ok(a.duration); else a.addEventListener('loadedmetadata', () => ok(a.duration));
    })""")
    assert 0.5 < duration < 10, duration
    assert page.locator("#tts-out").get_attribute("data-streamed") == "true"  # MP3 chunks through Media Source Extensions
    assert console.errors == []


def heard(text: str) -> set[str]:
    return set(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


def test_an_audio_file_comes_back_as_its_transcript(console: Console, spoken: Path) -> None:
    page = console.page
    page.select_option("#asr-model", "pocketsphinx-en-us")
    page.set_input_files("#asr-file", str(spoken))
    with page.expect_response("**/v1/audio/transcriptions", timeout=120_000) as answer:
        page.get_by_role("button", name="Transcribe", exact=True).click()
    assert answer.value.status == 200, answer.value.text()
    out = page.locator("#asr-out")
    expect(out).to_have_text(answer.value.json()["text"])
    assert {"turn", "kitchen", "lights"} <= heard(out.inner_text()), out.inner_text()
    assert console.errors == []


def test_speech_recorded_from_the_microphone_is_transcribed(console: Console) -> None:
    page = console.page
    page.select_option("#asr-model", "pocketsphinx-en-us")
    record = page.locator("#asr-record")
    record.click()
    expect(record).to_have_attribute("aria-pressed", "true")
    page.wait_for_timeout(3_000)  # the fake microphone plays the sentence (2 s) in a loop
    record.click()
    expect(page.locator("#asr-out")).to_have_text("recorded: press Transcribe")
    with page.expect_response("**/v1/audio/transcriptions", timeout=120_000) as answer:
        page.get_by_role("button", name="Transcribe", exact=True).click()
    assert answer.value.status == 200, answer.value.text()  # the browser's WebM/Opus, decoded by the service
    assert {"kitchen", "lights"} <= heard(answer.value.json()["text"]), answer.value.json()
    expect(page.locator("#asr-out")).to_have_text(answer.value.json()["text"])
    console.shot("console-asr")
    assert console.errors == []


def test_a_jobs_progress_moves_live(console: Console, tmp_path: Path) -> None:
    page = console.page
    files = []
    for i in range(160):  # several of the console's 0.2 s progress intervals even on a quick machine (40 once took one)
        f = tmp_path / f"p{i:03d}.jpg"
        f.write_bytes(photo(i + 1))
        files.append(str(f))
    # Record every progress value the page shows for the job, as it shows it.
    page.evaluate("""() => {
        window.seen = [];
        new MutationObserver(() => {
            for (const p of document.querySelectorAll('#job-table progress')) window.seen.push(Number(p.value));
        }).observe(document.querySelector('#job-table tbody'), {subtree: true, childList: true, attributes: true});
    }""")
    page.select_option("#job-task", "caption")
    page.set_input_files("#job-files", files)
    page.get_by_role("button", name="Start job").click()
    expect(page.locator("#job-message")).to_contain_text("started: 160 file(s)")
    row = page.locator("#job-table tbody tr[data-job]").first
    expect(row.locator("[data-state]")).to_have_attribute("data-state", "completed", timeout=120_000)
    expect(row.locator("progress")).to_have_attribute("value", "1")
    seen = page.evaluate("window.seen")
    assert any(0 < v < 1 for v in seen), seen  # it moved through the middle, live
    assert seen == sorted(seen), seen
    expect(row.get_by_role("button", name="CSV", exact=False)).to_be_visible()
    console.shot("console-job")
    assert console.errors == []


def test_a_faces_jobs_people_show_with_face_crops(console: Console, face_photos: Path) -> None:  # noqa: F811
    page = console.page
    page.select_option("#job-task", "faces")
    page.set_input_files("#job-files", [str(face_photos / n) for n in ("astronaut.jpg", "astronaut-flipped.jpg")])
    page.get_by_role("button", name="Start job").click()
    expect(page.locator("#job-message")).to_contain_text("started: 2 file(s)")
    job = page.locator("#job-message").inner_text().split()[1]
    row = page.locator(f'#job-table tr[data-job="{job}"]')
    expect(row.locator("[data-state]")).to_have_attribute("data-state", "completed", timeout=120_000)
    row.get_by_role("button", name=f"People of job {job}").click()
    # The same astronaut, mirrored and cropped: one person with two faces, each cut from the uploaded photo.
    person = page.locator("#people .person")
    expect(person).to_have_count(1)
    crops = person.locator("canvas")
    expect(crops).to_have_count(2)
    # Each crop is drawn once its photo is decoded (createImageBitmap): wait until both hold pixels.
    page.wait_for_function("""() => [...document.querySelectorAll('#people .person canvas')].every(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 0) return true;
        return false;
    })""", timeout=10_000)
    console.shot("console-people")
    assert console.errors == []


def noise_photo(path: Path, seed: int) -> None:
    """A photo a tiny CLIP tells from the others (random colours at 8x6, scaled up)."""
    cells = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(cells).resize((64, 48), Image.NEAREST).save(path, quality=95)


def test_photos_of_an_embed_job_are_found_from_the_search_card_by_text_and_by_photo(
        console: Console, tmp_path: Path) -> None:
    page = console.page
    files = []
    for i in range(5):
        noise_photo(tmp_path / f"s{i}.jpg", 700 + i)
        files.append(str(tmp_path / f"s{i}.jpg"))
    page.select_option("#job-task", "embed")
    page.set_input_files("#job-files", files)
    page.get_by_role("button", name="Start job").click()
    expect(page.locator("#job-message")).to_contain_text("started: 5 file(s)")
    job = page.locator("#job-message").inner_text().split()[1]
    row = page.locator(f'#job-table tr[data-job="{job}"]')
    expect(row.locator("[data-state]")).to_have_attribute("data-state", "completed", timeout=120_000)
    expect(row).to_contain_text("embed · tiny-clip")
    # A caption job over the same photos: search shows each file's caption beside it.
    page.select_option("#job-task", "caption")
    page.set_input_files("#job-files", files)
    page.get_by_role("button", name="Start job").click()
    expect(page.locator("#job-message")).to_contain_text("started: 5 file(s)")
    captions = page.locator("#job-message").inner_text().split()[1]
    expect(page.locator(f'#job-table tr[data-job="{captions}"] [data-state]')).to_have_attribute(
        "data-state", "completed", timeout=120_000)

    card = page.get_by_role("form", name="Search photos")
    page.select_option("#search-model", "tiny-clip")
    card.get_by_role("searchbox", name="Text").fill("a red photo")
    card.get_by_role("spinbutton", name="Results").fill("3")
    with page.expect_response("**/v1/search") as answer:
        card.get_by_role("button", name="Search", exact=True).click()
    body = answer.value.json()
    assert answer.value.status == 200 and body["query"]["modality"] == "text", body
    hits = page.get_by_role("list", name="Search results").get_by_role("listitem")
    expect(hits).to_have_count(3)
    # As the API ranked them: source, score; a thumbnail of each (this page uploaded the files).
    for li, hit in zip(hits.all(), body["data"]):
        assert hit["source"] in li.inner_text() and f"score {hit['score']:.3f}" in li.inner_text(), (li.inner_text(), hit)
        expect(li.get_by_role("img", name=hit["source"])).to_be_visible()
        shown = " ".join(li.inner_text().split())  # as rendered: runs of white space are one
        assert hit["caption"]["job"] == captions and f"“{' '.join(hit['caption']['text'].split())}”" in shown, (shown, hit)
    assert {h["source"] for h in body["data"]} <= {f"s{i}.jpg" for i in range(5)}
    expect(page.locator("#search-out")).to_contain_text(f"3 of {body['searched']} photo(s)")
    page.wait_for_function("""() => [...document.querySelectorAll('#search-results img')].every(i => i.complete && i.naturalWidth > 0)""")

    # By photo: the third photo of the job finds itself first.
    page.set_input_files("#search-file", files[2])
    expect(card.get_by_role("searchbox", name="Text")).to_have_value("")  # one query at a time
    with page.expect_response("**/v1/search") as answer:
        card.get_by_role("button", name="Search", exact=True).click()
    body = answer.value.json()
    assert body["query"]["modality"] == "image" and body["data"][0]["source"] == "s2.jpg", body
    expect(hits.first).to_contain_text("s2.jpg")
    expect(hits.first).to_contain_text(f"score {body['data'][0]['score']:.3f}")
    assert body["data"][0]["score"] > 0.999  # itself (float16 in the index)
    page.locator("#search-title").scroll_into_view_if_needed()
    console.shot("console-search")
    assert console.errors == []


def test_a_load_and_an_unload_show_in_the_models_view(console: Console, gateway: procs.Proc) -> None:
    page = console.page
    # Another client loads a model: the page shows it from the events stream (its full read is every 10 s).
    r = httpx.post(gateway.url + "/admin/models/tiny-blip2/load", timeout=120)
    assert r.status_code == 200, r.text
    expect(console.state_of("tiny-blip2")).to_have_attribute("data-state", "ready", timeout=5_000)
    # The page's own Unload button.
    page.get_by_role("button", name="Unload tiny-blip2").click()
    expect(page.locator("#model-message")).to_contain_text("tiny-blip2 unloaded", timeout=60_000)
    expect(console.state_of("tiny-blip2")).to_have_attribute("data-state", "unloaded")
    rows = {m["id"]: m for m in httpx.get(gateway.url + "/admin/models", timeout=30).json()["data"]}
    assert rows["tiny-blip2"]["ledger_state"] == "unloaded"
    console.shot("console-unload")
    assert console.errors == []


def test_a_pull_shows_its_outcome(console: Console, gateway: procs.Proc) -> None:
    page = console.page
    page.get_by_role("button", name="Pull tiny-blip2").click()
    # A local source is verified in place (the tiny models are files built by the test); the page shows the
    # pull's last event, as GET /admin/models/{id}/pull reports it.
    expect(page.locator("#model-message")).to_contain_text("tiny-blip2 pulled", timeout=60_000)
    status = httpx.get(gateway.url + "/admin/models/tiny-blip2/pull", timeout=30).json()
    assert status["state"] == "done" and status["kind"] in page.locator("#model-message").inner_text()
    assert console.errors == []


def test_the_main_controls_are_reached_by_tab_with_a_visible_focus(console: Console, gateway: procs.Proc) -> None:
    page = console.page
    page.locator("body").focus()
    reached: list[str] = []
    outlines: set[str] = set()
    for _ in range(120):
        page.keyboard.press("Tab")
        who = page.evaluate("""() => {
            const e = document.activeElement;
            const own = e.tagName === 'BUTTON' || e.tagName === 'A' ? e.textContent : e.id;
            return {name: (e.getAttribute('aria-label') || own || '').trim(), id: e.id,
                    tag: e.tagName, outline: getComputedStyle(e).outlineStyle};
        }""")
        reached.append(who["name"] or who["id"])
        if who["tag"] in ("BUTTON", "A"):
            outlines.add(who["outline"])
    families = {m["family"] for m in httpx.get(gateway.url + "/admin/models", timeout=30).json()["data"]}
    # A family without models in the catalog has its playground button disabled (not in the tab order).
    buttons = {"caption": "Caption", "face": "Detect", "asr": "Transcribe", "tts": "Speak", "embed": "Search"}
    for name in ("Skip to content", "Models", "Jobs", "Playground", "Load tiny-blip", "Unload tiny-blip", "Start job",
                 *(b for f, b in buttons.items() if f in families)):
        assert name in reached, (name, reached)
    for control in ("caption-file", "job-files", "tts-text", "caption-model", "job-task", "search-model", "search-text",
                    "search-k", "search-file"):
        assert control in reached, (control, reached)
    assert outlines == {"solid"}, outlines  # :focus-visible draws an outline on every focused control


def test_dump_dom_prints_the_model_ids_and_states(gateway: procs.Proc, catalog_ids: list[str]) -> None:
    out = subprocess.run([CHROMIUM, "--headless", *ROOT_ARGS, "--virtual-time-budget=10000", "--dump-dom",
                          gateway.url + "/ui"], capture_output=True, text=True, timeout=90, check=True).stdout
    states = dict(re.findall(r'<tr data-model="([^"]+)">.*?data-state="([a-z]+)"', out, flags=re.S))
    assert list(states) == catalog_ids, out[:2000]
    assert set(states.values()) <= {"unloaded", "loading", "ready", "draining", "unloading", "failed", "unknown"}, states
    assert states["tiny-blip"] == "ready" and states["tiny-blip2"] == "unloaded"  # as the tests before left them


def test_with_api_keys_the_page_asks_for_one_and_then_shows_the_models(
        browser: Browser, stack: tuple[procs.Proc, procs.Proc], console_catalog: Path, logdir: Path,
        catalog_ids: list[str]) -> None:
    gw = procs.start_gateway(console_catalog, {"caption": stack[1].url}, logdir, name="console-gateway-keys",
                             api_keys=json.dumps([KEY]))
    try:
        assert httpx.get(gw.url + "/admin/models", timeout=30).status_code == 401
        assert httpx.get(gw.url + "/ui/", timeout=30).status_code == 200  # the shell itself is public
        context = browser.new_context()
        page = context.new_page()
        c = Console(page)
        page.goto(gw.url + "/ui")
        expect(page.get_by_role("textbox", name="Key")).to_be_visible()
        page.get_by_role("textbox", name="Key").fill("wrong")
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#key-error")).to_have_text("That key was refused.")
        page.get_by_role("textbox", name="Key").fill(KEY)
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#model-table tbody tr[data-model]")).to_have_count(len(catalog_ids))
        expect(page.locator("#live")).to_have_text("live")  # the events stream took the key too
        assert page.evaluate("sessionStorage.getItem('roundhouse.apiKey')") == KEY
        # The refused calls are the browser's own network errors (401s), nothing the page threw.
        assert all("401" in e for e in c.errors), c.errors
        context.close()
    finally:
        gw.stop()


def test_the_cli_watch_prints_model_changes_from_the_same_stream(gateway: procs.Proc) -> None:
    watcher = subprocess.Popen([str(procs.GATEWAY_PY), "-m", "gateway.cli", "--url", gateway.url, "jobs", "list", "--watch"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in watcher.stdout], daemon=True).start()  # type: ignore[union-attr]
    seen: list[str] = []
    try:
        # Nothing says when it has subscribed: load and unload until its lines show a load (at most 5 tries).
        for _ in range(5):
            assert httpx.post(gateway.url + "/admin/models/tiny-qwen25vl/load", timeout=120).status_code == 200
            try:
                while True:
                    seen.append(lines.get(timeout=3))
                    if "tiny-qwen25vl" in seen[-1] and "loading -> ready" in seen[-1]:
                        break
            except queue.Empty:
                assert httpx.post(gateway.url + "/admin/models/tiny-qwen25vl/unload?drain=true", timeout=120).status_code == 200
                continue
            break
        assert any("loading -> ready" in ln for ln in seen), seen
        assert any(" swap " in ln and "tiny-qwen25vl" in ln for ln in seen), seen
    finally:
        watcher.terminate()
        watcher.wait(10)


def test_the_gateway_stops_promptly_with_an_events_stream_open(stack: tuple[procs.Proc, procs.Proc],
                                                               console_catalog: Path, logdir: Path) -> None:
    # A stream never ends by itself: uvicorn's graceful shutdown waited for it for ever (SIGTERM did nothing).
    gw = procs.start_gateway(console_catalog, {"caption": stack[1].url}, logdir, name="console-gateway-stop")
    try:
        with httpx.stream("GET", gw.url + "/admin/events", timeout=30) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            assert next(r.iter_lines()) == "retry: 2000"
            t0 = time.monotonic()
            gw.proc.terminate()
            gw.proc.wait(20)
            assert time.monotonic() - t0 < 10
    finally:
        gw.stop()
