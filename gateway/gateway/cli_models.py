"""``roundhouse models``: model weights from the command line (like ``ollama pull | ls | rm``).

    roundhouse models pull ID      fetch its weights into its service's cache, with a progress bar (bytes, rate, ETA)
    roundhouse models ls           every catalog model: family, state, whether its weights are cached, size on disk
    roundhouse models rm ID        delete its downloaded weights (refused while it is loaded)

``pull`` reads the server-sent events of ``POST /admin/models/{id}/pull?stream=true``; a stream that drops is
followed by polling ``GET`` on the same path.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import aiohttp

from .cli import ApiError, Client, StatusLine, _duration, raise_for_error
from .events_watch import sse_events


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


class PullBar(StatusLine):
    """A pull's line: a bar, bytes, rate and ETA."""

    def show(self, s: dict[str, Any], *, force: bool = False) -> None:
        done, total = s.get("bytes_done") or 0, s.get("bytes_total")
        width = 30
        filled = int(width * min(1.0, done / total)) if total else 0
        bar = "#" * filled + "-" * (width - filled)
        rate = f"{size(s['rate_bytes_per_s'])}/s" if s.get("rate_bytes_per_s") else "-/s"
        eta = f"ETA {_duration(s['eta_s'])}" if s.get("eta_s") and s.get("state") == "pulling" else ""
        amount = f"{size(done)} / {size(total)}" if total else size(done)
        line = f"{s['model']} [{bar}] {amount} {rate} {eta} {s.get('state', '')}".rstrip()
        self.write(line, force=force)


async def pull(client: Client, model: str, bar: PullBar) -> dict[str, Any]:
    """The pull's last status, shown on ``bar`` as its events arrive."""
    status: dict[str, Any] | None = None
    try:
        async with client.session.post(client.url + f"/admin/models/{model}/pull", params={"stream": "true"},
                                       headers={"Accept": "text/event-stream"}) as r:
            await raise_for_error(r)
            async for event, data in sse_events(r.content):
                if event == "error":
                    raise ApiError(f"{data.get('code')}: {data.get('message')}")
                status = data
                bar.show(status)
                if event == "end":
                    break
    except aiohttp.ClientConnectionError as e:
        if status is None:
            raise ApiError(f"cannot reach the gateway at {client.url}: {e}") from None
    while status is None or status.get("state") not in ("done", "failed"):  # the stream dropped: poll
        await asyncio.sleep(1.0)
        status = await client.call("GET", f"/admin/models/{model}/pull")
        if status.get("state") == "idle":
            raise ApiError(f"the service no longer knows the pull of {model} (did it restart?); pull again")
        bar.show(status)
    bar.show(status, force=True)
    bar.done()
    return status


async def run(client: Client, args: argparse.Namespace) -> int:
    if args.command == "pull":
        t0 = time.monotonic()
        s = await pull(client, args.model, PullBar())
        if s["state"] == "failed":
            print(f"pull of {args.model} failed: {s.get('error')}", file=sys.stderr)
            return 1
        what = "verified" if s.get("kind") == "local" else "pulled"
        print(f"{args.model}: {what}, {size(s.get('size_on_disk_bytes') or s.get('bytes_done'))} on disk "
              f"in {_duration(time.monotonic() - t0)}", file=sys.stderr)
        return 0
    if args.command == "ls":
        body = await client.call("GET", "/admin/models")
        rows = [(m["id"], m["family"], m["state"], {True: "yes", False: "no"}.get(m.get("cached"), "-"),
                 size(m.get("size_on_disk_bytes"))) for m in body["data"]]
        head = ("ID", "FAMILY", "STATE", "CACHED", "SIZE")
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        for r in [head, *rows]:
            print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
        return 0
    if args.command == "rm":
        gone = await client.call("DELETE", f"/admin/models/{args.model}/cache")
        print(f"{args.model}: deleted {size(gone['freed_bytes'])} ({gone.get('path')})", file=sys.stderr)
        return 0
    raise AssertionError(args.command)


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="model weights: pull, list, remove").add_subparsers(dest="command", required=True)
    p = models.add_parser("pull", help="fetch a model's weights into its service's cache, with a progress bar")
    p.add_argument("model")
    models.add_parser("ls", help="every model: family, state, cached, size on disk")
    r = models.add_parser("rm", help="delete a model's downloaded weights (refused while it is loaded)")
    r.add_argument("model")
