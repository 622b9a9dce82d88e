"""Real speech, real models: word error rate and speed of the offline ASR models on real recordings, and the
Whisper defaults against its failure modes, before and after, on ~38 s of two people taking turns.

    .venvs/asr-svc/bin/python bench/asr_real.py [--catalog build/tiny-models/catalog.yaml] [--models a,b]

The recordings ship in pocketsphinx's source distribution (asr-svc/tests/data/speech/README.md: five
LibriVox sentences, public domain, and five playing-card clips): WER with Whisper's English normaliser
(asr-svc/tests/speech_corpus.py). Each model runs in-process through asr-svc's own backend class, as the
service's worker runs it (``load``, ``warmup``, ``infer``).

1. Clips: the ten clips one by one; WER over all their words, and the real-time factor (compute / audio).
2. Conversation: the clips one after another with 0.5 s pauses (38.9 s), and the same followed by 10 s of
   silence (where Whisper is known to invent text). "before" is the service's old behaviour
   (``condition_on_previous_text`` on, no VAD, no repetition check), asked for with the request options;
   "after" is the defaults. Segments, segments dropped as repeats, WER, seconds.

Figures are printed, never asserted (the real tier, asr-svc/tests/test_real_speech.py, asserts its own).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "asr-svc" / "tests"))

import numpy as np  # noqa: E402

from speech_corpus import GAP_S, SAMPLE_RATE, clips, conversation, word_errors  # noqa: E402

BEFORE = {"condition_on_previous_text": True, "vad_filter": False, "drop_repeats": False}
AFTER: dict[str, bool] = {}


def main(argv: list[str] | None = None) -> int:
    from asr_svc.backends import BACKENDS
    from asr_svc.items import TranscribeItem
    from asr_svc.repeats import drop_repeats
    from modelhost.backend import import_backend
    from modelhost.catalog import load_catalog

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--catalog", default=str(ROOT / "build" / "tiny-models" / "catalog.yaml"))
    parser.add_argument("--models", default="whisper-tiny.en,whisper-base,pocketsphinx-en-us")
    args = parser.parse_args(argv)
    catalog = load_catalog(Path(args.catalog))
    audio, reference = conversation()
    tail = np.concatenate([audio, np.zeros(10 * SAMPLE_RATE, np.int16)])
    print(f"clips: {len(clips())}, {sum(len(c.pcm()) for c in clips()) / SAMPLE_RATE:.1f} s; conversation "
          f"{len(audio) / SAMPLE_RATE:.1f} s ({GAP_S} s pauses); CPU threads {os.cpu_count()}")
    rows = []
    for model in args.models.split(","):
        spec = catalog.get(model)
        backend = import_backend(BACKENDS[spec.backend])(spec, cache_dir=str(ROOT / "build" / "cache"))
        t = time.perf_counter()
        backend.load()
        backend.warmup()
        load_s = time.perf_counter() - t
        errors = words = 0
        compute = seconds = 0.0
        for clip in clips():
            pcm = clip.pcm()
            t = time.perf_counter()
            [result] = backend.infer([TranscribeItem(audio=pcm, language="en")])
            compute += time.perf_counter() - t
            seconds += len(pcm) / SAMPLE_RATE
            e, n = word_errors(clip.reference, result["text"])
            errors, words = errors + e, words + n
        print(f"\n{model} ({spec.backend}, {spec.dtype}): loaded and warmed up in {load_s:.1f} s")
        print(f"  clips: WER {errors / words:.3f} ({errors}/{words} words), RTF {compute / seconds:.2f}")
        rows.append((model, "clips", "-", errors / words, compute / seconds))
        if spec.backend == "pocketsphinx":
            backend.close()
            continue
        for name, pcm in (("conversation", audio), ("conversation + 10 s silence", tail)):
            for label, options in (("before", BEFORE), ("after", AFTER)):
                t = time.perf_counter()
                [result] = backend.infer([TranscribeItem(audio=pcm, language="en", **options)])
                took = time.perf_counter() - t
                _, repeats = drop_repeats(result["segments"])  # what the check would still take out
                e, n = word_errors(reference, result["text"])
                print(f"  {name}, {label}: {len(result['segments'])} segments, {repeats} repeated, "
                      f"WER {e / n:.3f} ({e}/{n}), {took:.1f} s; ends: ...{result['text'][-90:]!r}")
                rows.append((model, name, label, e / n, took / (len(pcm) / SAMPLE_RATE)))
        backend.close()
    print("\n| model | audio | defaults | WER | RTF |\n| --- | --- | --- | --- | --- |")
    for model, name, label, w, rtf in rows:
        print(f"| {model} | {name} | {label} | {w:.3f} | {rtf:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
