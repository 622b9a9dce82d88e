"""Real recordings for the real tier and bench/asr_real.py (asr-svc/tests/data/speech/README.md says where
each comes from and under which licence), their reference texts, and word error rate with Whisper's English
normaliser (openai-whisper's ``EnglishTextNormalizer``: "8" and "eight" are one word, "Mr." is "mister").

Imported by path (``sys.path``) from the tests and the bench; it needs numpy and openai-whisper, both in the
asr environment.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "speech"
SAMPLE_RATE = 16000
GAP_S = 0.5
"""Silence between the clips of the long recording: a pause between two speakers' turns."""


@dataclass(frozen=True)
class Clip:
    name: str
    path: Path
    reference: str

    def pcm(self) -> np.ndarray:
        """16 kHz mono int16, as asr-svc hands audio to its backends."""
        with wave.open(str(self.path)) as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
                raise ValueError(f"{self.path} is not 16 kHz mono 16-bit")
            return np.frombuffer(w.readframes(w.getnframes()), np.int16)


def _references(path: Path) -> dict[str, str]:
    """pocketsphinx's transcription files: ``<s> words </s> (name)`` per line."""
    refs = {}
    for line in path.read_text().splitlines():
        text, _, name = line.strip().rpartition("(")
        if text:
            refs[name.rstrip(")")] = text.replace("<s>", "").replace("</s>", "").strip()
    return refs


def clips() -> list[Clip]:
    """The five LibriVox sentences (one reader), then the five card clips (another speaker): 34.4 s."""
    books = [Clip(n, DATA / f"{n}.wav", r) for n, r in _references(DATA / "librivox.transcription").items()]
    cards = [Clip(f"cards-{n}", DATA / "cards" / f"{n}.wav", r)
             for n, r in _references(DATA / "cards" / "cards.transcription").items()]
    return books + cards


def conversation() -> tuple[np.ndarray, str]:
    """All the clips, one after another with ``GAP_S`` of silence between: about 39 s of two people taking
    turns, and its reference text."""
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), np.int16)
    parts = []
    for clip in clips():
        parts += [clip.pcm(), gap]
    return np.concatenate(parts[:-1]), " ".join(c.reference for c in clips())


@lru_cache(maxsize=1)
def _normalizer():  # noqa: ANN202 - whisper's normaliser
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalized_words(text: str) -> list[str]:
    return _normalizer()(text).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, words in the reference), both texts normalised."""
    ref, hyp = normalized_words(reference), normalized_words(hypothesis)
    row = list(range(len(hyp) + 1))  # Levenshtein distance over words, one row at a time
    for i, r in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (r != h))
    return row[len(hyp)], len(ref)


def wer(reference: str, hypothesis: str) -> float:
    errors, words = word_errors(reference, hypothesis)
    return errors / max(1, words)
