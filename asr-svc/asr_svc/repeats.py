"""Whisper's repetition failure: on long audio, and at its end, Whisper can emit the same sentence again and
again (the previous text conditions the next window into a loop, or the decoder fills trailing silence with
what it just said). ``drop_repeats`` removes a segment whose words repeat what the segments just before it
said; a short repeat ("yes." "yes.") is real speech as often as not, so only segments of at least
``min_words`` words count.

Pure functions over the backends' segment dicts (``items.Segment``); no model, no numpy.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

DEFAULT_WINDOW = 3
"""How many kept segments before a segment it is compared with."""
DEFAULT_MIN_WORDS = 3
"""Segments with fewer words are never dropped."""

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: "Ten of clubs," and "ten of clubs." are one text."""
    return _WORD.findall(text.lower())


def is_repeat(segment_words: Sequence[str], previous: Sequence[Sequence[str]], *, min_words: int = DEFAULT_MIN_WORDS) -> bool:
    """Whether ``segment_words`` (at least ``min_words`` of them) occur, in order and contiguous, inside
    the words of the ``previous`` segments run together: the same sentence again, or a tail of the last ones."""
    n = len(segment_words)
    if n < min_words:
        return False
    said = [w for seg in previous for w in seg]
    target = list(segment_words)
    return any(said[i:i + n] == target for i in range(len(said) - n + 1))


def drop_repeats(segments: list[dict[str, Any]], *, window: int = DEFAULT_WINDOW,
                 min_words: int = DEFAULT_MIN_WORDS) -> tuple[list[dict[str, Any]], int]:
    """``segments`` without the repeats (renumbered from 0), and how many were dropped. Each segment is
    compared with the ``window`` kept segments before it; a dropped one never becomes a reference."""
    kept: list[dict[str, Any]] = []
    recent: list[list[str]] = []
    dropped = 0
    for segment in segments:
        w = words(segment["text"])
        if is_repeat(w, recent[-window:], min_words=min_words):
            dropped += 1
            continue
        kept.append({**segment, "id": len(kept)})
        recent.append(w)
    return kept, dropped
