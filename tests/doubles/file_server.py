"""A folder served over HTTP on loopback: the stand-in for a remote file host in tests that download (an
insightface pack, an openai-whisper checkpoint, a Piper voice). ``requests`` lists the paths asked for, in order."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator


@dataclass
class FileServer:
    url: str  # http://127.0.0.1:<port>, no trailing slash
    requests: list[str] = field(default_factory=list)


@contextlib.contextmanager
def serve_folder(root: Path) -> Iterator[FileServer]:
    """``root`` served until the block ends (then nothing answers on the port)."""
    served = FileServer(url="")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            served.requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
