"""Fail when a Python source file under gateway/ or modelhost/ (tests aside) is over 400 lines.

A file that long has stopped being about one thing; split it along a seam rather than raise the
limit. Run by `make lint`: python tools/check_file_lengths.py [--max-lines N] [DIR ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIRS = ("gateway", "modelhost")
SKIP_DIRS = {"tests", "__pycache__"}


def too_long(dirs: list[Path], max_lines: int) -> list[tuple[Path, int]]:
    found = []
    for top in dirs:
        for path in sorted(top.rglob("*.py")):
            parts = path.relative_to(top).parts
            if SKIP_DIRS.intersection(parts) or any(p.startswith(".") for p in parts):
                continue
            with path.open("rb") as f:
                lines = sum(1 for _ in f)
            if lines > max_lines:
                found.append((path, lines))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", type=Path, default=[ROOT / d for d in DEFAULT_DIRS])
    parser.add_argument("--max-lines", type=int, default=400)
    args = parser.parse_args(argv)
    found = too_long(args.dirs, args.max_lines)
    for path, lines in found:
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"{shown}: {lines} lines (limit {args.max_lines}): split it along a seam", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
