"""Dedup: the same content under the same task, model and options is inferred once.

A result's key is ``task:model:options-digest:sha256`` (``Task.key_prefix`` and the content's hash).
``Dedup.once(key, compute)`` answers from, in order: the results table (inferred before, by this job or
any other, before or after a restart), the one computation in flight for that key (two identical files
in flight at once share it), or a new computation that it then offers to the others.

Invariants:

1. While a computation for a key is in flight, every other caller for that key waits for it; it never
   starts a second one.
2. A finished computation stays visible here until its caller says the result is in the store
   (``stored``): otherwise an identical item that looks in the store between the two finds nothing in
   either place and infers again.
3. A computation that fails or is cancelled is forgotten at once; a waiter whose owner was cancelled
   (another job's cancel) computes it itself, while one whose owner failed gets the same error (the
   content is the same, so is the answer).
4. A waiter that is cancelled itself ends, even when its owner was cancelled at the same moment (one
   job's cancel reaches both): it must not take the owner's cancellation for another job's and carry on
   computing, which left a cancelled job's worker running and its cancel waiting for it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from .store import AsyncStore


class Dedup:
    def __init__(self, store: AsyncStore) -> None:
        self.store = store
        self._inflight: dict[str, asyncio.Future] = {}

    async def once(self, key: str, compute: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """The result for ``key``: stored, being computed for another item (shared), or computed now.
        Returns (result, reused). Unless reused, call ``stored(key)`` once the result is in the store."""
        while True:
            body = await self.store.cached_result(key)
            if body is not None:
                return body, True
            fut = self._inflight.get(key)
            if fut is None:
                break
            try:
                return await asyncio.shield(fut), True
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if fut.cancelled() and not (me is not None and me.cancelling()):
                    continue  # its owner was cancelled (another job), not this caller: compute it here
                raise
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no "never retrieved" noise
        self._inflight[key] = fut
        try:
            body = await compute()
        except asyncio.CancelledError:
            self._inflight.pop(key, None)
            fut.cancel()
            raise
        except BaseException as e:
            self._inflight.pop(key, None)
            fut.set_exception(e)
            raise
        fut.set_result(body)  # stays in _inflight until ``stored`` (invariant 2)
        return body, False

    def stored(self, key: str) -> None:
        """The result for ``key`` is in the store now; lookups go there."""
        self._inflight.pop(key, None)

    async def cached(self, key: str, compute: Callable[[], Awaitable[Any]], *, job_id: str | None = None) -> Any:
        """``once``, storing a fresh result at once: for the parts of an item (a video's keyframes), so a
        resumed job need not infer them again. The part is stored as ``job_id``'s (deleting that job
        removes it)."""
        body, reused = await self.once(key, compute)
        if not reused:
            try:
                await self.store.put_result(key, body, part_of_job=job_id)
            finally:
                self.stored(key)
        return body
