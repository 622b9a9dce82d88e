"""What an embed backend receives and returns, shared by the HTTP side and the worker.

One item is one text or one image; a request of many inputs submits one item each, so the batcher gathers
them (and those of other requests) up to the model's ``max_batch``, and an out-of-memory batch splits down
to single items. The worker pickles items across the process boundary, so this module imports nothing heavy.

A backend returns one ``Embedded`` per item: the vector L2-normalised, float32, and for a text the tokens the
model read (the text cut to the model's context).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class TextItem:
    text: str


@dataclass(frozen=True)
class ImageItem:
    image: Image.Image
    """RGB, already EXIF-transposed and scaled to the service's ``max_image_side``."""


@dataclass(frozen=True)
class Embedded:
    vector: np.ndarray
    """float32, L2-normalised."""
    tokens: int = 0
