"""Splitting input text into the sentences that are synthesised, and streamed, one at a time.

A sentence ends at ``.``, ``!``, ``?``, ``…`` (and their CJK forms) followed by white space, or at a line
break. A sentence longer than ``max_chars`` is cut at its last clause mark (``,;:``) or space before the
limit, so no single item holds the stream back for long. A piece with no letter or digit in it (``"..."``,
``"?!"``, an emoji) is kept as a pause: it is not sent to a backend, which may choke on it, but becomes a
short silence, so punctuation-only input still gives valid audio.

Pure functions; no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_MAX_SENTENCE_CHARS = 300

# An end mark (with closing quotes/brackets after it) and the white space that follows, or a line break.
_BOUNDARY = re.compile(r"(?<=[.!?…。！？])[\"'”’)\]]*\s+|\s*\n\s*|(?<=[。！？])")
_CLAUSE = re.compile(r"[,;:，；：]\s")


@dataclass(frozen=True)
class Sentence:
    text: str
    speakable: bool
    """False for a piece without a letter or digit: it becomes a pause, not a backend item."""


def is_speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def split_sentences(text: str, *, max_chars: int = DEFAULT_MAX_SENTENCE_CHARS) -> list[Sentence]:
    """The sentences of ``text`` in order; never empty for a text with any non-space character."""
    if max_chars < 20:
        raise ValueError("max_chars must be at least 20")
    pieces: list[str] = []
    for raw in _BOUNDARY.split(text):
        raw = " ".join(raw.split())  # collapse runs of white space (tabs, NBSP ...)
        if raw:
            pieces.extend(_cut(raw, max_chars))
    sentences: list[Sentence] = []
    for piece in pieces:
        speakable = is_speakable(piece)
        if not speakable and sentences and not sentences[-1].speakable:
            continue  # one pause for a run of punctuation
        sentences.append(Sentence(piece, speakable))
    return sentences


def _cut(sentence: str, max_chars: int) -> list[str]:
    out: list[str] = []
    rest = sentence
    while len(rest) > max_chars:
        head = rest[:max_chars]
        clause = max((m.end() for m in _CLAUSE.finditer(head)), default=0)
        space = head.rfind(" ")
        cut = clause if clause >= max_chars // 3 else (space + 1 if space >= max_chars // 3 else max_chars)
        out.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        out.append(rest)
    return out
