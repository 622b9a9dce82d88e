"""One loaded model of an LLM server stand-in: a process that holds the model's bytes until told to go.

Ollama runs each loaded model in a runner process of its own (``ollama runner``), llama-swap a
``llama-server`` per model; the GPU memory is that process's, and it comes back when the process ends.
This is that process for ``tests/doubles/ollama_server.py`` and ``llama_swap_server.py``: it allocates
``--bytes`` and writes to every page (so the resident set really grows), prints ``ready``, and exits
when its standard input closes (the server unloads it, or the server itself is gone). The fake NVML
of a rehearsal (``fake_nvml_host.py``) counts it as a CUDA process on the GPU it meters.

    python -m tests.doubles.llm_runner --bytes 50000000 --model llama3.1:8b
"""

from __future__ import annotations

import argparse
import sys

PAGE = 4096


def hold(nbytes: int) -> bytearray:
    """``nbytes`` of memory, every page written (a zeroed allocation alone is not resident)."""
    buf = bytearray(nbytes)
    buf[::PAGE] = b"\x01" * len(range(0, nbytes, PAGE))
    return buf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bytes", type=int, required=True, help="the model's memory, held while it runs")
    parser.add_argument("--model", required=True, help="the model's name (for the process table)")
    args = parser.parse_args(argv)
    weights = hold(args.bytes)
    print("ready", flush=True)
    sys.stdin.buffer.read()  # until the server closes it, or goes
    del weights


if __name__ == "__main__":
    main()
