// The gateway's one events stream, GET /admin/events, read with fetch (EventSource cannot send the
// Authorization header). Typed events go to ``onEvent``; on a drop or an error it reconnects after a
// pause and calls ``onReconnect`` so the views read everything again (events may have been missed).

import { api } from "./api.js";

function parse(block) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  return data.length ? { type, data: JSON.parse(data.join("\n")) } : null;
}

/** Each server-sent event of an answer, as (type, parsed JSON data), until the answer ends. */
export async function readSse(res, onEvent) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = parse(buf.slice(0, cut));
      buf = buf.slice(cut + 2);
      if (event) onEvent(event.type, event.data);
    }
  }
}

export function connect({ onEvent, onReconnect, onStatus }) {
  let lastSeq = 0;
  async function run() {
    for (let first = true; ; first = false) {
      if (!first) onReconnect();
      try {
        const res = await api("/admin/events", { headers: { Accept: "text/event-stream" } });
        if (!res.ok || !res.body) throw new Error(`${res.status}`);
        onStatus(true);
        await readSse(res, (type, data) => {
          const seq = data.seq || 0;
          if (seq && lastSeq && seq !== lastSeq + 1) onReconnect(); // a gap: read the views again
          if (seq) lastSeq = seq;
          onEvent(type, data);
        });
      } catch (_) { /* reconnect below */ }
      onStatus(false);
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
  run();
}
