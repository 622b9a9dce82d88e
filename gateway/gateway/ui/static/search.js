// Search photos (POST /v1/search, JSON): a text, or a photo sent as a data: URL, against the embed jobs of
// the chosen model. Each result shows its rank, score, source (a video's keyframe time) and what other jobs
// know of the file (caption, people); a thumbnail only where this page holds the file (a job it started):
// the page cannot read the server's paths, so a library file shows its path alone.

import { api, errorText } from "./api.js";
import { uploadedFile } from "./jobs.js";
import { droppable, el } from "./fmt.js";

let urls = []; // the object URLs of the thumbnails shown, revoked when the results are replaced

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function thumb(hit) {
  const file = uploadedFile(hit.job, hit.seq);
  if (!file) return null;
  const url = URL.createObjectURL(file);
  urls.push(url);
  const alt = `${hit.source}${hit.t_s === null ? "" : ` at ${hit.t_s.toFixed(1)} s`}`;
  if (hit.kind === "video") {
    // The keyframe: the video paused at its time (a media fragment); muted, no controls, never played.
    return el("video", { class: "thumb", src: `${url}#t=${hit.t_s ?? 0}`, muted: true, preload: "metadata",
      "aria-label": alt });
  }
  return el("img", { class: "thumb", src: url, alt });
}

function item(hit) {
  const where = hit.t_s === null || hit.t_s === undefined ? "" : ` @ ${hit.t_s.toFixed(1)} s`;
  const people = hit.people.map((p) => `person ${p.person} (face${p.faces.length > 1 ? "s" : ""} ${p.faces.join(", ")})`);
  return el("li", { class: "hit", "data-rank": String(hit.rank), "data-source": hit.source },
    thumb(hit),
    el("div", {},
      el("p", {}, el("strong", {}, `${hit.rank}.`), ` score ${hit.score.toFixed(3)}`),
      el("p", {}, el("code", {}, hit.source), where),
      hit.caption ? el("p", { class: "caption" }, `“${hit.caption.text}”`) : null,
      people.length ? el("p", { class: "people-of" }, people.join("; ")) : null));
}

export function search() {
  const form = document.getElementById("search-form");
  const text = document.getElementById("search-text");
  const input = document.getElementById("search-file");
  const out = document.getElementById("search-out");
  const list = document.getElementById("search-results");
  droppable(input);
  // One query at a time: a photo chosen clears the text, text typed clears the photo.
  input.addEventListener("change", () => { if (input.files[0]) text.value = ""; });
  text.addEventListener("input", () => { if (text.value) input.value = ""; });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const file = input.files[0];
    if (!file && !text.value.trim()) { out.textContent = "type a text or choose a photo"; return; }
    const request = { model: form.elements.model.value, k: Number(form.elements.k.value) || 12 };
    request.query = file ? { image: await dataUrl(file) } : text.value;
    out.textContent = "searching…";
    out.classList.remove("error");
    const res = await api("/v1/search", { method: "POST", body: JSON.stringify(request),
      headers: { "Content-Type": "application/json" } });
    urls.forEach((u) => URL.revokeObjectURL(u));
    urls = [];
    if (!res.ok) {
      out.textContent = await errorText(res);
      out.classList.add("error");
      list.replaceChildren();
      return;
    }
    const body = await res.json();
    list.replaceChildren(...body.data.map(item));
    out.textContent = body.searched
      ? `${body.data.length} of ${body.searched} photo(s) and keyframe(s) in ${body.jobs.length} job(s), ` +
        `${Math.round(body.timings.total_ms)} ms`
      : `nothing to search for ${body.model} yet: start an embed job (Jobs)`;
    out.dataset.model = body.model;
  });
}
