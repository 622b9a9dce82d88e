"""The job tasks, by name."""

from __future__ import annotations

from .base import ItemFailed, Task
from .caption import CaptionTask
from .embed import EmbedTask
from .faces import FacesTask
from .transcribe import TranscribeTask

TASKS: dict[str, type[Task]] = {t.name: t for t in (CaptionTask, FacesTask, TranscribeTask, EmbedTask)}

__all__ = ["TASKS", "ItemFailed", "Task"]
