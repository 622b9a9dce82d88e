// The console: the first render reads the views (no key needed when the gateway has none), then the
// events stream keeps them live, with a full read every 10 s for what events do not carry (queues,
// in-flight counts, last use).

import { setupJobForm, jobEvent, renderJobs } from "./jobs.js";
import { connect } from "./live.js";
import { fillModels, setupPlayground } from "./playground.js";
import { addSwap, renderDevices, renderModels, renderSwaps, showModelState } from "./views.js";

let pending = null;

function report(where) {
  return (e) => console.warn(`${where}: ${e.message}`); // shown in the page's console, not thrown
}

async function refreshAll() {
  const models = await renderModels().catch(report("models"));
  if (models) fillModels(models);
  await Promise.all([renderDevices().catch(report("devices")), renderSwaps().catch(report("swaps")),
    renderJobs().catch(report("jobs"))]);
}

/** Models and devices read again soon after a burst of events (one read per burst; a job's progress,
 * which moves the in-flight and queue columns, at most every 2 s). */
function refreshSoon(delayMs = 300) {
  if (pending) return;
  pending = setTimeout(() => {
    pending = null;
    renderModels().catch(report("models"));
    renderDevices().catch(report("devices"));
  }, delayMs);
}

function onEvent(type, data) {
  if (type === "model") {
    showModelState(data.model, data.state);
    refreshSoon();
  } else if (type === "swap") {
    addSwap(data);
    refreshSoon();
  } else if (type === "job") {
    jobEvent(data);
    refreshSoon(2000);
  }
}

function onStatus(up) {
  const live = document.getElementById("live");
  live.textContent = up ? "live" : "reconnecting…";
  live.className = `live ${up ? "on" : "off"}`;
}

setupPlayground();
setupJobForm();
await refreshAll();
document.body.dataset.ready = "true";
connect({ onEvent, onReconnect: refreshAll, onStatus });
setInterval(refreshSoon, 10000);
