// A playground per family: a photo → its caption; a photo → its faces boxed on it; audio (a file or
// the microphone) → its transcript; text → speech played here; a text or a photo → the library's photos
// like it (search.js).

import { api, errorText } from "./api.js";
import { droppable, el } from "./fmt.js";
import { search } from "./search.js";

/** Fill each family's model list from the catalog (GET /admin/models rows). */
export function fillModels(models) {
  for (const select of document.querySelectorAll("select[data-family]")) {
    const ids = models.filter((m) => m.family === select.dataset.family).map((m) => m.id);
    const current = select.value;
    select.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
    if (ids.includes(current)) select.value = current;
    select.closest("form").querySelector("button[type=submit]").disabled = ids.length === 0;
  }
}

async function post(path, body, out, headers = {}) {
  out.textContent = "working…";
  out.classList.remove("error");
  const res = await api(path, { method: "POST", body, headers });
  if (!res.ok) {
    out.textContent = await errorText(res);
    out.classList.add("error");
    return null;
  }
  return res;
}

function caption() {
  const form = document.getElementById("caption-form");
  const input = document.getElementById("caption-file");
  const preview = document.getElementById("caption-preview");
  const out = document.getElementById("caption-out");
  droppable(input);
  input.addEventListener("change", () => {
    if (!input.files[0]) return;
    preview.src = URL.createObjectURL(input.files[0]);
    preview.alt = `the photo ${input.files[0].name}`;
    preview.hidden = false;
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const data = new FormData();
    data.append("file", input.files[0]);
    data.append("model", form.elements.model.value);
    const res = await post("/v1/images/captions", data, out);
    if (res) {
      const body = await res.json();
      out.textContent = body.caption;
      out.dataset.model = body.model;
    }
  });
}

function faces() {
  const form = document.getElementById("faces-form");
  const input = document.getElementById("faces-file");
  const canvas = document.getElementById("faces-canvas");
  const out = document.getElementById("faces-out");
  droppable(input);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = input.files[0];
    const data = new FormData();
    data.append("file", file);
    data.append("model", form.elements.model.value);
    const res = await post("/v1/faces/detect", data, out);
    if (!res) return;
    const body = await res.json();
    const img = await createImageBitmap(file, { imageOrientation: "from-image" });
    const scale = Math.min(1, 480 / img.width);
    canvas.width = Math.round(img.width * scale);
    canvas.height = Math.round(img.height * scale);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    const sx = canvas.width / body.width;
    const sy = canvas.height / body.height;
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#ffbf47";
    ctx.font = "14px system-ui";
    ctx.fillStyle = "#ffbf47";
    body.faces.forEach((f, i) => {
      const [x1, y1, x2, y2] = f.box;
      ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
      ctx.fillText(`${i + 1} (${f.score.toFixed(2)})`, x1 * sx + 2, Math.max(12, y1 * sy - 4));
    });
    canvas.setAttribute("aria-label", `The photo with ${body.faces.length} face(s) boxed`);
    out.textContent = `${body.faces.length} face(s)${body.truncated ? ` of ${body.found}` : ""}`;
  });
}

function transcribe() {
  const form = document.getElementById("asr-form");
  const input = document.getElementById("asr-file");
  const record = document.getElementById("asr-record");
  const out = document.getElementById("asr-out");
  let recorded = null;
  let recorder = null;
  droppable(input);
  input.addEventListener("change", () => { recorded = null; });
  record.addEventListener("click", async () => {
    if (recorder) { recorder.stop(); return; }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const chunks = [];
      recorder = new MediaRecorder(stream);
      recorder.ondataavailable = (e) => chunks.push(e.data);
      recorder.onstop = () => {
        stream.getTracks().forEach((t) => t.stop());
        recorded = new File(chunks, "recording.webm", { type: recorder.mimeType || "audio/webm" });
        recorder = null;
        record.textContent = "Record";
        record.setAttribute("aria-pressed", "false");
        out.textContent = "recorded: press Transcribe";
      };
      recorder.start();
      record.textContent = "Stop";
      record.setAttribute("aria-pressed", "true");
    } catch (e) {
      out.textContent = `no microphone: ${e.message}`;
    }
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = recorded || input.files[0];
    if (!file) { out.textContent = "choose or record audio first"; return; }
    const data = new FormData();
    data.append("file", file, file.name);
    data.append("model", form.elements.model.value);
    const res = await post("/v1/audio/transcriptions", data, out);
    if (res) out.textContent = (await res.json()).text || "(no speech found)";
  });
}

/** The speech as it streams: MP3 chunks appended to a MediaSource, played from the first one. */
async function streamInto(audio, res, t0) {
  const source = new MediaSource();
  audio.src = URL.createObjectURL(source);
  await new Promise((r) => source.addEventListener("sourceopen", r, { once: true }));
  const buffer = source.addSourceBuffer("audio/mpeg");
  const reader = res.body.getReader();
  let total = 0;
  let firstMs = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer.appendBuffer(value);
    await new Promise((r) => buffer.addEventListener("updateend", r, { once: true }));
    if (total === 0) {
      firstMs = Math.round(performance.now() - t0);
      audio.play().catch(() => {}); // a page not yet clicked may not play: the controls are there
    }
    total += value.byteLength;
  }
  source.endOfStream();
  return { total, firstMs };
}

function speak() {
  const form = document.getElementById("tts-form");
  const audio = document.getElementById("tts-audio");
  const out = document.getElementById("tts-out");
  const streaming = Boolean(window.MediaSource && MediaSource.isTypeSupported("audio/mpeg"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const request = { model: form.elements.model.value, input: form.elements.input.value };
    // Streamed MP3 where the browser can play a stream (Media Source Extensions), else the whole WAV.
    Object.assign(request, streaming ? { response_format: "mp3", stream_format: "audio" } : { response_format: "wav" });
    const t0 = performance.now();
    const res = await post("/v1/audio/speech", JSON.stringify(request), out, { "Content-Type": "application/json" });
    if (!res) return;
    audio.hidden = false;
    if (streaming) {
      const { total, firstMs } = await streamInto(audio, res, t0);
      out.textContent = `${(total / 1024).toFixed(0)} KiB of audio, streamed: playing after ${firstMs} ms`;
      out.dataset.streamed = "true";
      return;
    }
    const blob = await res.blob();
    audio.src = URL.createObjectURL(blob);
    out.textContent = `${(blob.size / 1024).toFixed(0)} KiB of audio`;
    audio.play().catch(() => { out.textContent += " (press play)"; });
  });
}

export function setupPlayground() {
  caption();
  faces();
  transcribe();
  speak();
  search();
}
