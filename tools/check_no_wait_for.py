"""Fail when product code (gateway/, modelhost/, the services; tests aside) calls ``asyncio.wait_for``.

On Python 3.11, which every image and environment here runs, ``wait_for`` returns the awaited result when
the caller is cancelled within a few rounds of the event loop after that result arrived: the cancel is
lost, and the caller goes on (gh-86296; fixed in 3.12). A job's worker cancelled just as its model was
granted went on to its next item, its job's cancel waited for it in vain, and no job started after it.
``async with asyncio.timeout(s): await x`` lets the cancel win. Run by `make lint`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIRS = ("gateway", "modelhost", "asr-svc", "caption-svc", "embed-svc", "face-svc", "tts-svc")
CALL = re.compile(r"\basyncio\.wait_for\(|^\s*from asyncio import .*\bwait_for\b")


def offenders() -> list[str]:
    found = []
    for top in DIRS:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT / top).parts
            if "tests" in parts or any(p.startswith(".") for p in parts):
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if CALL.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{n}: asyncio.wait_for can lose a cancel on Python 3.11; "
                                 "use `async with asyncio.timeout(s):`")
    return found


def main() -> int:
    found = offenders()
    for line in found:
        print(line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
