"""``roundhouse``: the command line for the gateway's bulk jobs and photo search.

    roundhouse jobs submit --task caption ./photos          upload a folder, show progress, print a summary
    roundhouse jobs submit --task faces --path /photos/2023  name a folder on the server (under its library roots)
    roundhouse jobs status JOB [--watch]
    roundhouse jobs results JOB [--format jsonl|csv|json] [-o FILE]
    roundhouse jobs cancel JOB                              stop it; it stays, with its results so far
    roundhouse jobs delete JOB                              remove it, its results and its uploads (cancelled first)
    roundhouse jobs list [--watch]                          --watch: every job's progress, model state and swap, live
    roundhouse search "a dog on a beach" [-k 20] [--model M] [--job JOB] [--min-score S] [--json]
    roundhouse search --image photo.jpg                     photos like this one (embed jobs' files, ranked)
    roundhouse models pull ID | ls | rm ID                  model weights: fetch with a progress bar, list, delete (cli_models)

The gateway is ``--url`` (or ROUNDHOUSE_URL, default http://127.0.0.1:8080); an API key is ``--api-key``
(or ROUNDHOUSE_API_KEY). Local folders are uploaded in pieces of at most ``--chunk-files`` files and
``--chunk-mb`` MiB into one open job, which starts working on the first piece while the rest uploads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import aiohttp

from .events_watch import sse_events
from .jobs.kinds import TASK_KINDS, kind_of

TERMINAL = ("completed", "cancelled", "failed")


class ApiError(Exception):
    pass


class Client:
    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.session = aiohttp.ClientSession(headers=self.headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            async with self.session.request(method, self.url + path, **kw) as r:
                body = await r.read()
                if r.status >= 400:
                    raise ApiError(_error_text(r.status, body))
                return json.loads(body) if body else None
        except aiohttp.ClientConnectionError as e:
            raise ApiError(f"cannot reach the gateway at {self.url}: {e}")


def _error_text(status: int, body: bytes) -> str:
    try:
        err = json.loads(body)["error"]
        return f"{status} {err.get('code')}: {err.get('message')}"
    except (ValueError, KeyError, TypeError):
        return f"{status}: {body[:200]!r}"


async def raise_for_error(r: aiohttp.ClientResponse) -> None:
    """ApiError with the gateway's error envelope when ``r`` is a 4xx or 5xx (a stream read by hand)."""
    if r.status >= 400:
        raise ApiError(_error_text(r.status, await r.read()))


def local_files(paths: list[str], kinds: frozenset[str]) -> list[Path]:
    """Files named, and files of the task's kinds inside named folders (hidden ones skipped), sorted."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith(".") and kind_of(name) in kinds:
                        out.append(Path(dirpath) / name)
        elif path.is_file():
            out.append(path)
        else:
            raise ApiError(f"{p}: no such file or folder")
    return out


def chunks(files: list[Path], max_files: int, max_bytes: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    size = 0
    for f in files:
        n = f.stat().st_size
        if batch and (len(batch) >= max_files or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += n
    if batch:
        yield batch


def _form(fields: list[tuple[str, str]], files: list[Path], base: Path | None) -> tuple[aiohttp.FormData, list[Any]]:
    form = aiohttp.FormData(default_to_multipart=True)
    for k, v in fields:
        form.add_field(k, v)
    handles = []
    for f in files:
        fh = open(f, "rb")
        handles.append(fh)
        name = str(f.relative_to(base)) if base is not None and f.is_relative_to(base) else f.name
        form.add_field("file", fh, filename=name, content_type="application/octet-stream")
    return form, handles


class StatusLine:
    """One line on stderr, redrawn in place on a terminal (otherwise printed when it changes, at most every two
    seconds unless forced). A subclass's ``show`` builds the line and calls ``write``."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last_line = ""
        self.last_print = 0.0

    def write(self, line: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self.last_line)))
            self.stream.flush()
        elif force or (line != self.last_line and now - self.last_print >= 2.0):
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last_print = now
        self.last_line = line

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class Progress(StatusLine):
    """A job's line: a bar, counts, rate and ETA."""

    def show(self, s: dict[str, Any], note: str = "", *, force: bool = False) -> None:
        c = s["counts"]
        total, finished = c["total"], c["total"] - c["pending"]
        frac = finished / total if total else 0.0
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        rate = f"{s['rate_per_s']:.1f}/s" if s.get("rate_per_s") else "-/s"
        eta = f"ETA {_duration(s['eta_s'])}" if s.get("eta_s") else ""
        extra = f" {c['error']} errors" if c["error"] else ""
        wait = f" (waiting: {s['waiting']['reason']})" if s.get("waiting") else ""
        line = f"[{bar}] {finished}/{total}{'+' if s.get('open') else ''} {s['state']} {rate} {eta}{extra}{wait}{note}".rstrip()
        self.write(line, force=force)


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


async def follow(client: Client, job_id: str, progress: Progress) -> dict[str, Any]:
    """Show progress from the job's event stream until it ends (reconnecting if the stream drops)."""
    status: dict[str, Any] = await client.call("GET", f"/v1/jobs/{job_id}")
    progress.show(status)
    while status["state"] not in TERMINAL:
        try:
            async with client.session.get(client.url + f"/v1/jobs/{job_id}/events") as r:
                await raise_for_error(r)
                async for event, status in sse_events(r.content):
                    progress.show(status)
                    if event == "end":
                        break
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError):
            await asyncio.sleep(1.0)
            status = await client.call("GET", f"/v1/jobs/{job_id}")
    progress.show(status, force=True)
    progress.done()
    return status


def _options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep:
            raise ApiError(f"--option takes KEY=VALUE, not {p!r}")
        out[k] = v
    return out


async def submit(client: Client, args: argparse.Namespace) -> int:
    kinds = TASK_KINDS[args.task]
    files = local_files(args.inputs, kinds) if args.inputs else []
    if not files and not args.path:
        raise ApiError("nothing to submit: name local files or folders, or server paths with --path")
    base = Path(args.inputs[0]).resolve() if len(args.inputs) == 1 and Path(args.inputs[0]).is_dir() else None
    fields = {"task": args.task, **({"model": args.model} if args.model else {}), **_options(args.option)}
    progress = Progress()
    if not files:  # a form, not JSON: --option values are text, which a form field may be (JSON takes typed values)
        form, _ = _form([*fields.items(), *(("path", p) for p in args.path)], [], None)
        job = await client.call("POST", "/v1/jobs", data=form)
    else:
        pieces = list(chunks([f.resolve() for f in files], args.chunk_files, args.chunk_mb * 2**20))
        job = None
        sent = 0
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            if job is None:
                form_fields = [*fields.items(), ("open", "false" if last else "true"), *(("path", p) for p in args.path)]
                form, handles = _form(form_fields, piece, base)
                try:
                    job = await client.call("POST", "/v1/jobs", data=form)
                finally:
                    for h in handles:
                        h.close()
            else:
                form, handles = _form([("close", "true" if last else "false")], piece, base)
                try:
                    job = await client.call("POST", f"/v1/jobs/{job['id']}/inputs", data=form)
                finally:
                    for h in handles:
                        h.close()
            sent += len(piece)
            progress.show(job, f" (uploaded {sent}/{len(files)})")
    print(f"job {job['id']}: {job['counts']['total']} item(s), {job['task']} with {job['model']}", file=sys.stderr)
    if args.no_wait:
        print(job["id"])
        return 0
    status = await follow(client, job["id"], progress)
    c = status["counts"]
    print(f"job {status['id']} {status['state']}: {c['done']} done ({c['deduplicated']} deduplicated), {c['error']} errors, "
          f"{c['cancelled']} cancelled in {_duration(status.get('elapsed_s') or 0)}", file=sys.stderr)
    if status.get("summary"):
        print(f"summary: {json.dumps(status['summary'])}", file=sys.stderr)
    print(status["id"])
    return 0 if status["state"] == "completed" else 1


async def search(client: Client, args: argparse.Namespace) -> int:
    """Ranked results of POST /v1/search, one line each: rank, score, file (a video's keyframe time), caption, people."""
    if bool(args.query) == bool(args.image):
        raise ApiError("give a text query or --image FILE (one of them)")
    query: Any = args.query
    if args.image:
        import base64

        query = {"image": base64.b64encode(Path(args.image).read_bytes()).decode("ascii")}
    body = {"query": query, "k": args.k, **({"model": args.model} if args.model else {}),
            **({"jobs": args.job} if args.job else {}), **({"min_score": args.min_score} if args.min_score is not None else {})}
    answer = await client.call("POST", "/v1/search", json=body)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    for hit in answer["data"]:
        where = hit["source"] + (f" @{hit['t_s']:.1f}s" if hit.get("t_s") is not None else "")
        extra = f"  \"{hit['caption']['text']}\"" if hit.get("caption") else ""
        if hit.get("people"):
            extra += "  people: " + ", ".join(str(p["person"]) for p in hit["people"])
        print(f"{hit['rank']:>4}  {hit['score']:.4f}  {where}{extra}")
    print(f"{len(answer['data'])} of {answer['searched']} image(s) and keyframe(s) in {len(answer['jobs'])} job(s), "
          f"{answer['model']}, {answer['timings']['total_ms']:.0f} ms", file=sys.stderr)
    return 0


async def run(args: argparse.Namespace) -> int:
    client = Client(args.url, args.api_key)
    try:
        if args.area == "search":
            return await search(client, args)
        if args.area == "models":
            from . import cli_models

            return await cli_models.run(client, args)
        if args.command == "submit":
            return await submit(client, args)
        if args.command == "status":
            if args.watch:
                status = await follow(client, args.job, Progress())
            else:
                status = await client.call("GET", f"/v1/jobs/{args.job}")
            print(json.dumps(status, indent=2))
            return 0
        if args.command == "cancel":
            status = await client.call("POST", f"/v1/jobs/{args.job}/cancel")
            print(f"job {args.job} {status['state']}", file=sys.stderr)
            return 0
        if args.command == "delete":
            await client.call("DELETE", f"/v1/jobs/{args.job}")
            print(f"job {args.job} deleted", file=sys.stderr)
            return 0
        if args.command == "list":
            if args.watch:
                from .events_watch import watch

                return await watch(client)
            for j in (await client.call("GET", "/v1/jobs", params={"limit": str(args.limit)}))["data"]:
                c = j["counts"]
                print(f"{j['id']}  {j['state']:<9}  {j['task']:<10}  {j['model']:<20}  {c['total'] - c['pending']}/{c['total']}")
            return 0
        if args.command == "results":
            out = open(args.output, "wb") if args.output else sys.stdout.buffer
            try:
                async with client.session.get(client.url + f"/v1/jobs/{args.job}/results",
                                              params={"format": args.format, **({"embeddings": "true"} if args.embeddings else {}),
                                                      **({"limit": "1000"} if args.format == "json" else {})}) as r:
                    await raise_for_error(r)
                    async for chunk in r.content.iter_chunked(1 << 16):
                        out.write(chunk)
            finally:
                if args.output:
                    out.close()
                else:
                    out.flush()
            return 0
    finally:
        await client.close()
    raise AssertionError(args.command)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roundhouse", description="Roundhouse from the command line.")
    p.add_argument("--url", default=os.environ.get("ROUNDHOUSE_URL", "http://127.0.0.1:8080"), help="the gateway (ROUNDHOUSE_URL)")
    p.add_argument("--api-key", default=os.environ.get("ROUNDHOUSE_API_KEY"), help="API key (ROUNDHOUSE_API_KEY)")
    sub = p.add_subparsers(dest="area", required=True)
    jobs = sub.add_parser("jobs", help="bulk jobs").add_subparsers(dest="command", required=True)
    s = jobs.add_parser("submit", help="start a job and follow it")
    s.add_argument("inputs", nargs="*", help="local files or folders to upload")
    s.add_argument("--task", required=True, choices=sorted(TASK_KINDS))
    s.add_argument("--model", help="catalog model id (default: the gateway's default for the task)")
    s.add_argument("--path", action="append", default=[], help="a path, folder or glob on the server, under its library roots (repeat)")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="task option: prompt, max_new_tokens (caption); cluster, cluster_threshold, max_faces (faces); language, prompt "
                        "(transcribe); embed takes none")
    s.add_argument("--no-wait", action="store_true", help="print the job id and return at once")
    s.add_argument("--chunk-files", type=int, default=256, help="most files per upload request")
    s.add_argument("--chunk-mb", type=int, default=256, help="most MiB per upload request")
    st = jobs.add_parser("status", help="a job's progress")
    st.add_argument("job")
    st.add_argument("--watch", action="store_true", help="follow it with a progress bar until it ends")
    r = jobs.add_parser("results", help="a job's results")
    r.add_argument("job")
    r.add_argument("--format", choices=("jsonl", "csv", "json"), default="jsonl")
    r.add_argument("--embeddings", action="store_true", help="include the embeddings (faces, embed)")
    r.add_argument("-o", "--output", help="write to this file instead of standard output")
    c = jobs.add_parser("cancel", help="cancel a job (it stays, with its results so far)")
    c.add_argument("job")
    d = jobs.add_parser("delete", help="delete a job with its results and uploads (cancelled first if it runs)")
    d.add_argument("job")
    ls = jobs.add_parser("list", help="recent jobs")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--watch", action="store_true",
                    help="instead, follow the gateway's live events (GET /admin/events): every job's progress, model "
                         "state changes and swaps, a line each, until interrupted")
    q = sub.add_parser("search", help="photos and video keyframes of the embed jobs, ranked by a text or an image")
    q.add_argument("query", nargs="?", help="what to look for, in words")
    q.add_argument("--image", help="an image file: look for photos like it")
    q.add_argument("-k", type=int, default=20, help="how many results (1..1000)")
    q.add_argument("--model", help="embed model (default: the jobs' or the gateway's)")
    q.add_argument("--job", action="append", default=[], help="search this embed job only (repeat; default: every completed one)")
    q.add_argument("--min-score", type=float, help="leave out results below this cosine similarity")
    q.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    from . import cli_models

    cli_models.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except ApiError as e:
        print(f"roundhouse: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
