"""ASR backends: one module per engine, each with one ``modelhost.backend.Backend``.

The HTTP process imports this module to validate the catalog and the requests, so it names the classes by
import path and imports nothing heavy; the worker process imports the one it needs.

``capabilities(spec)`` is what the HTTP process checks before any work: which languages a model takes,
whether it translates. Whisper models ending in ``.en`` (``small.en``, ``distil-medium.en``) and models
with ``options: {english_only: true}`` are English-only, like pocketsphinx.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelhost.catalog import ModelSpec
from modelhost.languages import LANGUAGES

BACKENDS: dict[str, str] = {
    "whisper": "asr_svc.backends.whisper:WhisperTranscriber",
    "faster_whisper": "asr_svc.backends.faster_whisper:FasterWhisperTranscriber",
    "pocketsphinx": "asr_svc.backends.pocketsphinx:PocketsphinxTranscriber",
}


@dataclass(frozen=True)
class Capabilities:
    languages: frozenset[str]
    """ISO-639-1 codes the model transcribes."""
    translate: bool
    """Whether the model translates speech into English."""
    detects_language: bool
    """Whether ``language`` may be left out (the model finds it)."""


_ENGLISH = frozenset({"en"})


def capabilities(spec: ModelSpec) -> Capabilities:
    if spec.backend == "pocketsphinx":
        return Capabilities(languages=_ENGLISH, translate=False, detects_language=False)
    name = spec.source.rstrip("/").rsplit("/", 1)[-1].lower()
    if spec.options.get("english_only", name.endswith(".en") or name.endswith(".en.pt")):
        return Capabilities(languages=_ENGLISH, translate=False, detects_language=False)
    return Capabilities(languages=frozenset(LANGUAGES), translate=True, detects_language=True)
