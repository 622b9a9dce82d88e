"""The inference path of a READY model: a lease's item → the model's batcher → one ``infer`` call
to the worker → one outcome per item.

It holds no state of its own; ``ModelRuntime`` creates a model's batcher when the model becomes
READY and closes it when it leaves READY.

* A batch runs on the worker that is current when the batch runs (``current_worker()``), never on
  one captured at load time: a batch after the worker ended answers 503 instead of writing to a
  dead pipe.
* A worker that dies mid-batch fails the batch with a retryable 503 ``worker_died``; the runtime
  fails the models it held. A batch past ``infer_timeout_s`` means a hung worker: it is killed
  (through the runtime, which fails its models) and the batch answers 503 ``inference_timeout``.
* Each item gets its own outcome: an item that failed (alone, after the child's retries) is that
  item's error, never its batch-mates'.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from .batching import Batcher
from .catalog import ModelSpec
from .errors import InferenceFailed, ModelNotReady, OutOfMemory, Unavailable
from .metrics import HostMetrics
from .model_entry import ModelEntry
from .settings import HostSettings
from .worker import ItemOutcome, WorkerDied, WorkerProcess

log = logging.getLogger(__name__)


class Lease:
    """Held for the duration of one request on a READY model (``ModelRuntime.lease`` counts it)."""

    def __init__(self, entry: ModelEntry) -> None:
        self._entry = entry

    @property
    def spec(self) -> ModelSpec:
        return self._entry.spec

    async def infer(self, item: Any) -> Any:
        batcher = self._entry.batcher
        if batcher is None:  # pragma: no cover - a leased model is READY and has a batcher
            raise ModelNotReady(f"model {self.spec.id} is not ready", retry_after_s=1)
        return await batcher.submit(item)


def make_batcher(
    entry: ModelEntry,
    *,
    family: str,
    settings: HostSettings,
    metrics: HostMetrics,
    current_worker: Callable[[], WorkerProcess | None],
    kill_worker: Callable[[str], Awaitable[None]],
) -> Batcher:
    name = entry.spec.id
    labels = (family, name)

    async def run_batch(items: list[Any]) -> list[Any]:
        worker = current_worker()
        if worker is None:
            raise ModelNotReady(f"model {name} is not loaded", retry_after_s=1)
        metrics.queue_depth.labels(*labels).set(entry.batcher.depth if entry.batcher else 0)
        try:
            reply = await worker.call("infer", {"model": name, "items": items}, timeout_s=settings.infer_timeout_s)
        except WorkerDied as e:
            raise Unavailable(f"the {family} worker died during inference; retry", retry_after_s=1, code="worker_died") from e
        except asyncio.TimeoutError as e:
            await kill_worker(f"inference on {name} exceeded {settings.infer_timeout_s:.0f} s")
            raise Unavailable(f"inference on {name} timed out", retry_after_s=1, code="inference_timeout") from e
        if reply["oom_events"]:
            metrics.oom_events.labels(*labels).inc(reply["oom_events"])
        return [_outcome(metrics, family, name, o) for o in reply["outcomes"]]

    def on_batch(size: int, seconds: float) -> None:
        metrics.batch_size.labels(*labels).observe(size)
        metrics.inference_seconds.labels(*labels).observe(seconds)
        metrics.queue_depth.labels(*labels).set(entry.batcher.depth if entry.batcher else 0)

    spec = entry.spec
    return Batcher(name, run_batch, max_batch=spec.max_batch, max_wait_ms=spec.max_wait_ms,
                   max_queue=settings.max_queue, on_batch=on_batch)


def _outcome(metrics: HostMetrics, family: str, name: str, o: ItemOutcome) -> Any:
    """One item's result, or the error its caller gets (the batcher raises an Exception value)."""
    if o.ok:
        metrics.requests.labels(family, name, "ok").inc()
        return o.value
    metrics.requests.labels(family, name, o.kind or "error").inc()
    if o.kind == "out_of_memory":
        return OutOfMemory(f"the input does not fit in {name}'s device memory even alone", retry_after_s=5)
    # The cause (a backend's exception text) is the operator's, in this service's log; the client gets no
    # internals, only the envelope's request id to quote.
    log.warning("inference on %s failed: %s", name, o.message)
    return InferenceFailed(f"inference on {name} failed; the {family} service's log has the cause")
