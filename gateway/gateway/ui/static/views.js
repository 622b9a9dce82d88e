// Devices, models and swaps: read from GET /admin/gpu, /admin/models and /admin/swaps, kept live by the
// events stream (app.js calls these again on a model or swap event).

import { api, apiJson, errorText } from "./api.js";
import { ago, badge, bytes, clock, el, replaceRows, seconds } from "./fmt.js";
import { readSse } from "./live.js";

// devices ------------------------------------------------------------------------------------------

export async function renderDevices() {
  const gpu = await apiJson("/admin/gpu");
  const cards = Object.entries(gpu.devices).map(([name, d]) => deviceCard(name, d));
  document.getElementById("device-list").replaceChildren(...cards);
}

function deviceCard(name, d) {
  const ours = d.used_bytes;
  const foreign = d.foreign_bytes || 0;
  // The bar's whole: the card's total where it is metered, else the budget.
  const whole = Math.max(d.total_bytes || d.budget_bytes, ours + foreign, 1);
  const free = Math.max(0, (d.total_bytes || d.budget_bytes) - ours - foreign);
  const pct = (n) => `${((100 * n) / whole).toFixed(2)}%`;
  const meter = d.meter ? (d.meter.error ? `meter: ${d.meter.error}` : `${d.meter.kind}: ${bytes(d.meter.used_bytes)} used of ${bytes(d.meter.total_bytes)}`) : "";
  const label = `${name}: ours ${bytes(ours)}, not ours ${bytes(foreign)}, free ${bytes(free)}, budget ${bytes(d.budget_bytes)}`;
  return el("article", { class: "card device", "data-device": name, "aria-label": `Device ${name}` },
    el("h3", {}, name),
    el("div", { class: "bar", role: "img", "aria-label": label },
      el("span", { class: "ours", style: `width:${pct(ours)}`, title: `ours ${bytes(ours)}` }),
      el("span", { class: "foreign", style: `width:${pct(foreign)}`, title: `not ours ${bytes(foreign)}` })),
    el("dl", { class: "legend" },
      el("dt", { class: "k-ours" }, "ours"), el("dd", {}, bytes(ours)),
      el("dt", { class: "k-foreign" }, "not ours"), el("dd", {}, d.foreign_bytes === null ? "not metered" : bytes(foreign)),
      el("dt", { class: "k-free" }, "free"), el("dd", {}, bytes(free)),
      el("dt", { class: "k-budget" }, "budget"), el("dd", {}, bytes(d.budget_bytes))),
    el("p", { class: "muted" }, `resident: ${Object.keys(d.resident).join(", ") || "none"}`,
      d.loading ? ` · loading ${d.loading}` : "", ` · ${d.swaps} swaps`),
    meter ? el("p", { class: "muted" }, meter) : null);
}

// models -------------------------------------------------------------------------------------------

export let catalog = []; // the last GET /admin/models rows (the playground's model lists come from it)

export async function renderModels() {
  const body = await apiJson("/admin/models");
  catalog = body.data;
  const rows = body.data.map((m) => el("tr", { "data-model": m.id },
    el("th", { scope: "row" }, m.id),
    el("td", {}, m.family),
    el("td", { class: "model-state" }, badge(shownState(m))),
    el("td", {}, m.device || m.device_requested),
    el("td", { class: "num" }, bytes(m.charged_bytes ?? m.peak_memory_bytes ?? null)),
    el("td", { class: "num" }, seconds(m.load_s)),
    el("td", {}, ago(m.last_used)),
    el("td", { class: "num" }, m.in_flight),
    el("td", { class: "num" }, m.queue_depth),
    el("td", {},
      el("button", { type: "button", "aria-label": `Load ${m.id}`, onclick: () => act(m.id, "load") }, "Load"),
      el("button", { type: "button", "aria-label": `Unload ${m.id}`, onclick: () => act(m.id, "unload") }, "Unload"),
      el("button", { type: "button", "aria-label": `Pull ${m.id}`, onclick: () => pull(m.id) }, "Pull"))));
  replaceRows(document.querySelector("#model-table tbody"), rows, "The catalog is empty.", 10);
  return body.data;
}

/** The ledger's state where the coordinator holds it, else the service's (failed, unknown). */
function shownState(m) {
  return m.ledger_state !== "unloaded" ? m.ledger_state : m.state;
}

/** A model event: its state shown at once, before the next full read. */
export function showModelState(model, state) {
  const cell = document.querySelector(`#model-table tr[data-model="${CSS.escape(model)}"] .model-state`);
  if (cell) cell.replaceChildren(badge(state));
}

async function act(model, action) {
  const msg = document.getElementById("model-message");
  msg.textContent = `${action === "load" ? "Loading" : "Unloading"} ${model}…`;
  const path = `/admin/models/${encodeURIComponent(model)}/${action}${action === "unload" ? "?drain=true" : ""}`;
  const res = await api(path, { method: "POST" });
  if (!res.ok) {
    msg.textContent = `${model}: ${await errorText(res)}`;
    return;
  }
  const body = await res.json();
  msg.textContent = action === "load"
    ? `${model} is ready on ${body.device} (${bytes(body.peak_memory_bytes)})`
    : `${model} unloaded: ${bytes(body.freed_bytes)} freed in ${seconds(body.seconds)}${body.verified ? ", verified" : ", NOT verified"}`;
  renderModels();
}

/** Fetch a model's weights into its service's cache, with its progress (the pull's own event stream). */
async function pull(model) {
  const msg = document.getElementById("model-message");
  msg.textContent = `Pulling ${model}…`;
  const res = await api(`/admin/models/${encodeURIComponent(model)}/pull?stream=true`,
    { method: "POST", headers: { Accept: "text/event-stream" } });
  if (!res.ok) {
    msg.textContent = `${model}: ${await errorText(res)}`;
    return;
  }
  await readSse(res, (_type, s) => { msg.textContent = pullText(s); });
  renderModels();
}

function pullText(s) {
  if (s.state === "failed") return `${s.model}: the pull failed: ${s.error}`;
  if (s.state === "done") return `${s.model} pulled (${s.kind}): ${bytes(s.size_on_disk_bytes ?? s.bytes_done)} in the cache`;
  const pct = s.bytes_total ? ` ${Math.floor((100 * s.bytes_done) / s.bytes_total)}% of ${bytes(s.bytes_total)}` : ` ${bytes(s.bytes_done)}`;
  const rate = s.rate_bytes_per_s ? `, ${bytes(s.rate_bytes_per_s)}/s` : "";
  const eta = s.eta_s ? `, ETA ${seconds(s.eta_s)}` : "";
  return `pulling ${s.model}:${pct}${rate}${eta}`;
}

// swaps --------------------------------------------------------------------------------------------

let swaps = [];

export async function renderSwaps() {
  swaps = (await apiJson("/admin/swaps")).data;
  drawSwaps();
}

export function addSwap(event) {
  if (event.phase === "started") return;
  swaps = [event, ...swaps].slice(0, 50);
  drawSwaps();
}

function drawSwaps() {
  const rows = swaps.map((s) => el("tr", {},
    el("td", {}, clock(s.started_at)),
    el("td", {}, s.device),
    el("th", { scope: "row" }, s.load),
    el("td", {}, s.evicted.length ? s.evicted.map((v) => `${v.model} (${v.reason}, ${seconds(v.release_s)})`).join(", ") : "nothing"),
    el("td", { class: "num" }, seconds(s.load_s)),
    el("td", {}, badge(s.phase === "done" ? "ready" : "failed"))));
  replaceRows(document.querySelector("#swap-table tbody"), rows, "No swap yet.", 6);
}
