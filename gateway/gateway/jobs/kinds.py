"""File kinds by extension, and the kinds each task reads. No heavy imports: the CLI uses this too."""

from __future__ import annotations

import os

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
VIDEO_EXTS = frozenset({".mp4", ".mkv", ".mov", ".webm", ".m4v", ".avi"})
AUDIO_EXTS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma"})

TASK_KINDS: dict[str, frozenset[str]] = {
    "caption": frozenset({"image", "video"}),
    "faces": frozenset({"image", "video"}),
    "transcribe": frozenset({"audio", "video"}),
    "embed": frozenset({"image", "video"}),
}


def kind_of(name: str) -> str:
    ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    if ext in AUDIO_EXTS:
        return "audio"
    return "other"
