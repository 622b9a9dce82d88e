"""Print the `uv pip install` options that match this machine's pip configuration, one a line.

uv reads no pip configuration, so without these it would ignore the machine's find-links, extra
indexes and constraints: where pip takes torch 2.13.0+cpu from a local wheel, uv would download a
CUDA build of several GB from PyPI. The Makefile runs this once per make (`pip config list`, which
covers pip's configuration files and PIP_* variables, with pip's own precedence: a later file, the
install section and the environment override). On a machine with no pip configuration it prints only
`--index-strategy=unsafe-best-match`, which makes uv weigh every index as pip does (uv's default stops
at the first index that has a package).

Each option is one word (`--find-links=/opt/wheels`), so that make can filter some out: a `--require-hashes`
install drops the constraints, which uv would want pinned and hashed too. A line `SSL_CERT_FILE=...`
(pip's `cert`) is meant for uv's environment, not its arguments.
Usage: python3 scripts/pip_to_uv.py
"""

from __future__ import annotations

import ast
import subprocess
import sys

# pip option -> uv option; a value holding several entries (whitespace-separated) gives one each.
LISTS = {"extra-index-url": "--extra-index-url", "find-links": "--find-links", "constraint": "--constraint"}
SINGLE = {"index-url": "--index-url"}


def pip_config() -> dict[str, str]:
    """pip's effective settings: for each key, the value pip would use for `pip install`."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         check=False).stdout
    by_section: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        section, dot, name = key.rpartition(".")
        if not sep or not dot:
            continue
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        # Later lines come from later (overriding) configuration files; the environment comes last.
        by_section.setdefault(section, {})[name] = str(value)
    merged: dict[str, str] = {}
    for section in ("global", "install", ":env:"):
        merged.update(by_section.get(section, {}))
    return merged


def main() -> None:
    conf = pip_config()
    args = ["--index-strategy=unsafe-best-match"]
    for name, flag in SINGLE.items():
        if conf.get(name):
            args.append(f"{flag}={conf[name]}")
    for name, flag in LISTS.items():
        for value in conf.get(name, "").split():
            args.append(f"{flag}={value}")
    if conf.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    for host in conf.get("trusted-host", "").split():
        args.append(f"--allow-insecure-host={host}")
    if conf.get("cert"):
        args.append(f"SSL_CERT_FILE={conf['cert']}")
    print("\n".join(args))


if __name__ == "__main__":
    main()
