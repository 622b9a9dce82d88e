"""The voices each catalog model offers, read without loading the model (the HTTP process lists them
for ``GET /v1/audio/voices`` and checks a request's voice before any synthesis).

Per backend:

* ``flite``: the voices compiled into the flite binary (``flite -lv``), less ``awb_time`` (it speaks
  only clock times); slt first.
* ``espeak``: every language voice in the espeak-ng data that ships with ``espeakng-loader``; the id is
  the voice file's name, lower-cased (``en-us``, ``de``, ``cmn``).
* ``piper``: the speakers of a multi-speaker voice (``speaker_id_map`` in its ``.onnx.json``), else one
  voice named by the ``voice`` option (default ``default``).
* ``coqui``: the ``voices`` option (XTTS-v2's studio speakers, a VCTK model's speakers), else one
  voice named by the ``voice`` option (default ``default``).

A catalog ``voices`` option (a list of ids) always wins: it restricts a long list, or names voices of a
model that is not downloaded yet.

OpenAI's voice names (``alloy``, ``ash``, ...) are aliases of these, as ``modelhost.families.tts.voice_aliases``
maps them: the catalog's ``voice_aliases`` option (``{alloy: slt}``) first, the rest spread over the voices.

``missing()`` says what a backend needs that this machine lacks (flite's binary): such a model lists no
voices, with that reason, and shows ``unavailable`` in ``GET /v1/models``.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelhost.catalog import ModelSpec
from modelhost.families.tts import ModelVoices, VoiceCard, voice_aliases

FLITE_SKIP = {"awb_time"}


@dataclass(frozen=True)
class Voice:
    id: str
    language: str | None = None
    name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def missing(spec: ModelSpec) -> str | None:
    """What ``spec``'s backend needs that this machine lacks, or None: read at every look (a few ``stat``s),
    so installing the program makes the model available without a restart."""
    if spec.backend == "flite" and shutil.which(spec.source) is None:
        if "/" in spec.source:
            return f"the flite binary {spec.source} does not exist (Debian/Ubuntu: apt-get install flite)"
        return f"{spec.source} is not installed: apt-get install flite"
    return None


def model_voices(spec: ModelSpec, cache_dir: str | Path | None = None) -> ModelVoices:
    """The voices of ``spec`` with OpenAI's names as aliases (none, with the reason, where it is unavailable)."""
    languages = spec.options.get("languages")
    reason = missing(spec)
    voices = [] if reason else [VoiceCard(**v.as_dict()) for v in voices_for(spec, cache_dir)]
    aliases = voice_aliases(voices, declared=spec.options.get("voice_aliases"), language=spec.options.get("language"))
    return ModelVoices(model=spec.id, backend=spec.backend, voices=voices, aliases=aliases, reason=reason,
                       languages=[str(x) for x in languages] if languages else None)


def voices_for(spec: ModelSpec, cache_dir: str | Path | None = None) -> list[Voice]:
    """The voices of ``spec``; ``cache_dir`` is where downloaded weights are kept (a Piper voice named
    by its id is read from there once downloaded)."""
    declared = spec.options.get("voices")
    if declared:
        language = spec.options.get("language")
        return [Voice(id=str(v), language=language) for v in declared]
    if spec.backend == "piper":
        return _piper(spec, cache_dir)
    lister = {"flite": _flite, "espeak": _espeak}.get(spec.backend, _single)
    return lister(spec)


def _single(spec: ModelSpec) -> list[Voice]:
    return [Voice(id=str(spec.options.get("voice", "default")), language=spec.options.get("language"))]


# The 16 kHz clustergen voices first (the first voice is the default), the 8 kHz diphone voice last.
FLITE_ORDER = ("slt", "rms", "awb", "kal16", "kal")


def _flite(spec: ModelSpec) -> list[Voice]:
    names = flite_voices(spec.source)
    ordered = [n for n in FLITE_ORDER if n in names] + [n for n in names if n not in FLITE_ORDER]
    return [Voice(id=v, language="en") for v in ordered]


@functools.lru_cache(maxsize=8)
def flite_voices(binary: str = "flite") -> tuple[str, ...]:
    """The voices compiled into ``binary``; empty when it is not installed."""
    path = shutil.which(binary)
    if path is None:
        return ()
    out = subprocess.run([path, "-lv"], capture_output=True, text=True, timeout=10).stdout
    # "Voices available: kal awb_time kal16 awb rms slt "
    names = out.split(":", 1)[1].split() if ":" in out else []
    return tuple(n for n in names if n not in FLITE_SKIP)


def _espeak(spec: ModelSpec) -> list[Voice]:
    data = spec.options.get("data_path") or espeak_data_path()
    return [Voice(id=vid, language=lang, name=name) for vid, lang, name in espeak_voices(str(data))]


def espeak_data_path() -> str:
    import espeakng_loader  # a path lookup only: loads no library

    return str(espeakng_loader.get_data_path())


@functools.lru_cache(maxsize=4)
def espeak_voices(data_path: str) -> tuple[tuple[str, str, str], ...]:
    """(id, language, name) for each language voice file under ``data_path/lang`` whose dictionary
    ships in ``data_path`` (a few test voices name a dictionary that does not)."""
    found: dict[str, tuple[str, str, str]] = {}
    for f in sorted(Path(data_path, "lang").rglob("*")):
        if not f.is_file():
            continue
        name, language, dictionary = f.name, None, None
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.strip().partition(" ")
            value = value.strip()
            if key == "name" and value:
                name = value
            elif key == "language" and value and language is None:
                language = value.split()[0]
            elif key == "dictionary" and value:
                dictionary = value.split()[0]
        language = language or f.name.lower()
        dictionary = dictionary or language.split("-")[0]
        if not Path(data_path, f"{dictionary}_dict").exists():
            continue
        found.setdefault(f.name.lower(), (f.name.lower(), language, name))
    return tuple(sorted(found.values()))


def _piper(spec: ModelSpec, cache_dir: str | Path | None) -> list[Voice]:
    config = Path(str(piper_model_path(spec.source, cache_dir or "")) + ".json")
    language = spec.options.get("language")
    if config.exists():
        cfg = json.loads(config.read_text(encoding="utf-8"))
        language = language or (cfg.get("language") or {}).get("code") or (cfg.get("espeak") or {}).get("voice")
        speakers = cfg.get("speaker_id_map") or {}
        if len(speakers) > 1:
            return [Voice(id=s, language=language) for s in sorted(speakers, key=speakers.get)]
    return [Voice(id=str(spec.options.get("voice", "default")), language=language)]


def piper_model_path(source: str, cache_dir: str | Path) -> Path:
    """A local ``.onnx`` as it is; a voice id (``en_US-lessac-medium``) in ``cache_dir/piper``."""
    if source.endswith(".onnx"):
        return Path(source)
    return Path(cache_dir, "piper", f"{source}.onnx")
