"""A stand-in for the Hugging Face Hub: a real process that serves model repos made of local folders over the
hub's HTTP API, as much of it as ``huggingface_hub.snapshot_download`` and ``from_pretrained`` use, so a pull
exercises the real download path (and its progress) with nothing leaving the machine.

    python -m tests.doubles.hf_hub_server --port 8999 --repo roundhouse-test/tiny-blip=build/tiny-models/tiny-blip \
        --rate 100000

What it answers (the shapes of huggingface_hub's ``HfApi`` and ``file_download``):

- ``GET /api/models/{org}/{name}[/revision/{rev}]``: the repo's info (``id``, ``sha``: one commit per repo,
  ``siblings``);
- ``GET /api/models/{org}/{name}/tree/{rev}``: every file (``type``, ``oid``, ``size``, ``path``);
- ``HEAD|GET /{org}/{name}/resolve/{rev}/{file}``: the file, with ``X-Repo-Commit``, ``ETag`` and
  ``Content-Length``; the body is sent at ``--rate`` bytes a second (in 8 KiB pieces), so a download lasts
  long enough to be watched. Unknown repos and files are 404 with the hub's ``X-Error-Code``.
- ``GET /test/requests``: how many file bodies it has sent (a test's proof that the download was real).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
from pathlib import Path

from aiohttp import web

PIECE = 8192


class Repo:
    def __init__(self, repo_id: str, folder: Path) -> None:
        self.repo_id = repo_id
        self.files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        self.sha = hashlib.sha1(repo_id.encode() + b"".join(self.files.values())).hexdigest()

    def oid(self, name: str) -> str:
        return hashlib.sha1(self.files[name]).hexdigest()


def app(repos: dict[str, Repo], rate_bytes_per_s: float | None) -> web.Application:
    sent = {"bodies": 0}

    def repo_of(request: web.Request) -> Repo:
        repo = repos.get(f"{request.match_info['org']}/{request.match_info['name']}")
        if repo is None:
            raise web.HTTPNotFound(headers={"X-Error-Code": "RepoNotFound"}, text='{"error": "Repository not found"}',
                                   content_type="application/json")
        return repo

    async def info(request: web.Request) -> web.Response:
        repo = repo_of(request)
        return web.json_response({"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha, "private": False,
                                  "siblings": [{"rfilename": f} for f in repo.files]})

    async def tree(request: web.Request) -> web.Response:
        repo = repo_of(request)
        return web.json_response([{"type": "file", "oid": repo.oid(f), "size": len(data), "path": f}
                                  for f, data in repo.files.items()])

    async def resolve(request: web.Request) -> web.StreamResponse:
        repo = repo_of(request)
        name = request.match_info["file"]
        if name not in repo.files:
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound"}, text='{"error": "Entry not found"}',
                                   content_type="application/json")
        data = repo.files[name]
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{repo.oid(name)}"', "Content-Length": str(len(data)),
                   "Accept-Ranges": "bytes"}
        if request.method == "HEAD":
            return web.Response(headers=headers)
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        sent["bodies"] += 1
        for i in range(0, len(data), PIECE):
            await resp.write(data[i:i + PIECE])
            if rate_bytes_per_s:
                await asyncio.sleep(PIECE / rate_bytes_per_s)
        await resp.write_eof()
        return resp

    async def requests(request: web.Request) -> web.Response:
        return web.json_response(sent)

    a = web.Application()
    a.router.add_get("/api/models/{org}/{name}", info)
    a.router.add_get("/api/models/{org}/{name}/revision/{rev}", info)
    a.router.add_get("/api/models/{org}/{name}/tree/{rev}", tree)
    a.router.add_route("HEAD", "/{org}/{name}/resolve/{rev}/{file:.+}", resolve)
    a.router.add_get("/{org}/{name}/resolve/{rev}/{file:.+}", resolve, allow_head=False)
    a.router.add_get("/test/requests", requests)
    a.router.add_get("/health", health)
    return a


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--repo", action="append", default=[], metavar="ORG/NAME=FOLDER")
    p.add_argument("--rate", type=float, default=None, help="bytes a second per file body (default: unthrottled)")
    args = p.parse_args()
    repos = {}
    for spec in args.repo:
        repo_id, _, folder = spec.partition("=")
        repos[repo_id] = Repo(repo_id, Path(folder))
    web.run_app(app(repos, args.rate), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
