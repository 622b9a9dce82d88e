"""Install, from a folder of wheels, those whose distribution this interpreter lacks or has in
another version, into a target folder (put it first on PYTHONPATH); nothing is fetched.

    python3 tools/gpu_check/install_wheels.py WHEELS_DIR TARGET_DIR
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def needed(wheels: list[Path]) -> tuple[list[Path], list[str]]:
    """(wheels to install, names already present in the same version)."""
    install, present = [], []
    for w in wheels:
        name, version = w.name.split("-")[:2]
        try:
            have = metadata.version(_norm(name))
        except metadata.PackageNotFoundError:
            have = None
        if have == version:
            present.append(f"{name} {version}")
        else:
            install.append(w)
    return install, present


def main(argv: list[str]) -> int:
    folder, target = Path(argv[0]), Path(argv[1])
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        print(f"no wheels in {folder}: build them with tools/gpu_check/build_wheels.sh and carry the folder", file=sys.stderr)
        return 1
    install, present = needed(wheels)
    if present:
        print("already installed:", ", ".join(present))
    if install:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, install)], check=True)
        print(f"installed into {target}:", ", ".join(w.name.split("-")[0] + " " + w.name.split("-")[1] for w in install))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
