// Bulk jobs: GET /v1/jobs, live by the events stream's job events; start one from files, cancel one,
// download its results, show a faces job's people (with face crops cut here from the photos this page
// uploaded: the API keeps no crops).

import { api, apiJson, errorText } from "./api.js";
import { badge, el, replaceRows, seconds } from "./fmt.js";

const jobs = new Map(); // id -> the job as GET /v1/jobs/{id} (or a job event) shows it
const uploaded = new Map(); // job id -> the File objects it was started with, in order (for face crops)
const ACTIVE = new Set(["queued", "running", "paused"]);

export async function renderJobs() {
  const body = await apiJson("/v1/jobs?limit=20");
  jobs.clear();
  for (const j of body.data) jobs.set(j.id, j);
  draw();
}

/** A job event: update its row (or read the list again for a job this page has not seen). */
export function jobEvent(e) {
  const known = jobs.get(e.job);
  if (!known) { renderJobs(); return; }
  jobs.set(e.job, { ...known, state: e.state, progress: e.progress, counts: e.counts, rate_per_s: e.rate_per_s, eta_s: e.eta_s });
  draw();
}

/** The File this page started job ``id`` with, as its item ``seq`` (null when another client started it). */
export function uploadedFile(id, seq) {
  const files = uploaded.get(id);
  return (files && files[seq]) || null;
}

function draw() {
  const list = [...jobs.values()].sort((a, b) => b.created_at - a.created_at);
  const rows = list.map((j) => el("tr", { "data-job": j.id },
    el("th", { scope: "row" }, el("code", {}, j.id)),
    el("td", {}, `${j.task} · ${j.model}`),
    el("td", {}, badge(j.state)),
    el("td", {},
      el("progress", { max: "1", value: String(j.progress), "aria-label": `Job ${j.id} progress` }),
      ` ${j.counts.total - j.counts.pending}/${j.counts.total}`,
      j.counts.error ? ` (${j.counts.error} failed)` : ""),
    el("td", { class: "num" }, j.rate_per_s ? `${j.rate_per_s.toFixed(2)}/s` : "—"),
    el("td", { class: "num" }, ACTIVE.has(j.state) ? seconds(j.eta_s) : "—"),
    el("td", {},
      ACTIVE.has(j.state) ? el("button", { type: "button", "aria-label": `Cancel job ${j.id}`, onclick: () => cancel(j.id) }, "Cancel") : null,
      el("button", { type: "button", "aria-label": `Download results of job ${j.id} as JSON lines`, onclick: () => download(j.id, "jsonl") }, "JSONL"),
      el("button", { type: "button", "aria-label": `Download results of job ${j.id} as CSV`, onclick: () => download(j.id, "csv") }, "CSV"),
      j.task === "faces" && j.state === "completed"
        ? el("button", { type: "button", "aria-label": `People of job ${j.id}`, onclick: () => people(j.id) }, "People") : null)));
  replaceRows(document.querySelector("#job-table tbody"), rows, "No job yet.", 7);
}

async function cancel(id) {
  const res = await api(`/v1/jobs/${id}/cancel`, { method: "POST" });
  message(res.ok ? `job ${id} cancelled` : `${id}: ${await errorText(res)}`);
  if (res.ok) { jobs.set(id, await res.json()); draw(); }
}

async function download(id, format) {
  const res = await api(`/v1/jobs/${id}/results?format=${format}`);
  if (!res.ok) { message(`${id}: ${await errorText(res)}`); return; }
  const url = URL.createObjectURL(await res.blob());
  const a = el("a", { href: url, download: `${id}.${format}` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function message(text) {
  document.getElementById("job-message").textContent = text;
}

export function setupJobForm() {
  document.getElementById("job-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const form = ev.target;
    const files = [...form.elements.file.files];
    const data = new FormData();
    data.append("task", form.elements.task.value);
    for (const f of files) data.append("file", f, f.name);
    message("starting…");
    const res = await api("/v1/jobs", { method: "POST", body: data });
    if (!res.ok) { message(await errorText(res)); return; }
    const job = await res.json();
    uploaded.set(job.id, files);
    jobs.set(job.id, job);
    draw();
    message(`job ${job.id} started: ${job.counts.total} file(s)`);
  });
}

async function people(id) {
  const box = document.getElementById("people");
  box.replaceChildren(el("p", { class: "muted" }, "Reading people…"));
  try {
    const [list, results] = await Promise.all([apiJson(`/v1/jobs/${id}/people`), apiJson(`/v1/jobs/${id}/results?limit=1000`)]);
    const bySeq = new Map(results.data.map((r) => [r.seq, r]));
    const files = uploaded.get(id) || [];
    const cards = list.data.map((p) => el("article", { class: "person", "aria-label": `Person ${p.person}` },
      el("h3", {}, `Person ${p.person}`),
      el("p", { class: "muted" }, `${p.faces.length} face(s)`),
      ...p.faces.slice(0, 12).map((f) => faceCrop(f, bySeq.get(f.seq), files))));
    box.replaceChildren(el("h3", {}, `People of job ${id}: ${list.data.length}`), el("div", { class: "people" }, cards));
  } catch (e) {
    box.replaceChildren(el("p", { class: "error" }, e.message));
  }
}

/** A face of a person: its crop when this page holds the photo, else its source and face number. */
function faceCrop(face, row, files) {
  const index = row ? row.seq : -1;
  const file = files[index];
  const faces = row && row.result && row.result.faces;
  const box = faces && faces[Number(face.face)] && faces[Number(face.face)].box;
  if (!file || !box) return el("p", {}, `${face.source} #${face.face}`);
  const canvas = el("canvas", { width: "64", height: "64", role: "img", "aria-label": `face ${face.face} of ${face.source}` });
  createImageBitmap(file).then((img) => {
    const [x1, y1, x2, y2] = box;
    canvas.getContext("2d").drawImage(img, x1, y1, x2 - x1, y2 - y1, 0, 0, 64, 64);
  });
  return canvas;
}
