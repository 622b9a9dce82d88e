"""A streamed answer relayed from a held model's service to the client."""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterable

from fastapi.responses import StreamingResponse


class RelayResponse(StreamingResponse):
    """Closes ``held`` (the upstream response, then the model's hold) however the response ends: finished,
    failed, or the client left before the body started, when the body iterator never runs at all."""

    def __init__(self, content: AsyncIterable[bytes], held: contextlib.AsyncExitStack, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._held = held

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        async with self._held:  # an error of the relay passes through the hold (its outcome metric)
            await super().__call__(scope, receive, send)
