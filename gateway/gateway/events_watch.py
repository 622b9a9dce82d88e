"""``roundhouse jobs list --watch``: the gateway's live events (GET /admin/events) as one line each,
until interrupted: jobs' progress, model state changes, swaps. Heartbeats print nothing."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, AsyncIterator, TextIO


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def format_event(kind: str, e: dict[str, Any]) -> str | None:
    """One line for an event (None for a heartbeat or a kind this version does not know)."""
    at = time.strftime("%H:%M:%S", time.localtime(e.get("at", time.time())))
    if kind == "model":
        why = f" ({e['reason']})" if e.get("reason") else ""
        return f"{at}  model  {e['model']:<20} {e['previous']} -> {e['state']}{why}  [{e['device']}]"
    if kind == "swap":
        evicted = ", ".join(f"{v['model']} ({v['reason']}, released in {_s(v.get('release_s'))})" for v in e["evicted"])
        line = f"{at}  swap   {e['load']:<20} {e['phase']}  [{e['device']}]  evicted: {evicted or 'nothing'}"
        return line + (f"  load {_s(e['load_s'])}" if e["phase"] == "done" else "")
    if kind == "job":
        c = e["counts"]
        rate = f"{e['rate_per_s']:.2f}/s" if e.get("rate_per_s") else "-"
        eta = f"ETA {e['eta_s']:.0f} s" if e.get("eta_s") else ""
        return (f"{at}  job    {e['job']:<20} {e['state']:<9} {e['task']} {c['total'] - c['pending']}/{c['total']}"
                f" ({e['progress'] * 100:.0f}%) {rate} {eta}").rstrip()
    return None


async def sse_events(lines: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(type, data) of each server-sent event in a stream of lines."""
    kind, data = "message", []
    async for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield kind, json.loads("\n".join(data))
            kind, data = "message", []
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


async def watch(client: Any, out: TextIO = sys.stdout) -> int:
    """Print the gateway's events until interrupted; 0 when the gateway ends the stream (it dropped us)."""
    from .cli import raise_for_error

    async with client.session.get(client.url + "/admin/events", headers={"Accept": "text/event-stream"}) as r:
        await raise_for_error(r)
        async for kind, data in sse_events(r.content):
            line = format_event(kind, data)
            if line:
                print(line, file=out, flush=True)
    return 0
