"""Pacing: a failed service call is judged by its error's class (never its code), and a pause is one
pause however many calls were in flight when it began."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

import pytest

from gateway.jobs.pacing import InteractiveGate, Pace, Verdict, verdict
from modelhost.errors import (BadRequest, DeadlineExceeded, InsufficientMemory, ModelLoadFailed, ModelNotFound,
                              ModelNotReady, NotFound, OutOfMemory, Overloaded, PayloadTooLarge, RoundhouseError,
                              ServiceNotConfigured, ServiceUnreachable, UnsupportedMediaType, UpstreamEnvelope,
                              UpstreamError)

pytestmark = pytest.mark.unit


def envelope(status: int, code: str) -> UpstreamEnvelope:
    return UpstreamEnvelope(status, {"src": "caption-svc", "error": {"code": code, "message": code}}, None)


@pytest.mark.parametrize("error,expected", [
    (ModelNotFound("gone"), Verdict.FAIL_JOB),
    (ServiceNotConfigured("no URL"), Verdict.FAIL_JOB),
    (InsufficientMemory("never fits"), Verdict.FAIL_JOB),
    (Overloaded("queue full"), Verdict.PAUSE),
    (ModelNotReady("loading"), Verdict.PAUSE),
    (OutOfMemory("this one did not fit"), Verdict.PAUSE),
    (ServiceUnreachable("down"), Verdict.PAUSE),
    (DeadlineExceeded("slow"), Verdict.PAUSE),
    (envelope(429, "overloaded"), Verdict.PAUSE),
    (envelope(503, "model_not_ready"), Verdict.PAUSE),
    (envelope(504, "deadline_exceeded"), Verdict.PAUSE),
    (ModelLoadFailed("bad weights"), Verdict.RETRY),
    (UpstreamError("garbled"), Verdict.RETRY),
    (envelope(500, "inference_failed"), Verdict.RETRY),
    (BadRequest("corrupt"), Verdict.FAIL_ITEM),
    (NotFound("no such voice"), Verdict.FAIL_ITEM),
    (PayloadTooLarge("too big"), Verdict.FAIL_ITEM),
    (UnsupportedMediaType("not an image"), Verdict.FAIL_ITEM),
    (envelope(400, "corrupt_image"), Verdict.FAIL_ITEM),
], ids=lambda v: getattr(v, "code", None) or str(v))
def test_each_error_class_has_its_verdict(error: RoundhouseError, expected: Verdict) -> None:
    assert verdict(error) is expected


def test_a_code_alone_does_not_fail_the_job() -> None:
    """The service's envelope saying model_not_found is that request's 404, not the catalog's verdict."""
    assert verdict(envelope(404, "model_not_found")) is Verdict.FAIL_ITEM
    assert verdict(Overloaded("busy", code="insufficient_memory")) is Verdict.PAUSE


class Quiet:
    def requests_active(self, dev: str) -> int:
        return 0


class FlakyAccess:
    """Every call's first try is refused as overloaded; the second one answers."""

    def __init__(self) -> None:
        self.tries: dict[int, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, model: str, family: str, *, lane: str, timeout_s: float) -> AsyncIterator[Any]:
        yield self

    async def request(self, n: int) -> int:
        self.tries[n] = self.tries.get(n, 0) + 1
        await asyncio.sleep(0.01)
        if self.tries[n] == 1:
            raise Overloaded("queue full", retry_after_s=0.1)
        return n


async def test_calls_in_flight_when_a_pause_begins_do_not_stretch_it() -> None:
    pauses: list[str] = []
    task: Any = type("T", (), {"model": "m", "family": "caption"})()
    pace = Pace("job_p", task, access=FlakyAccess(), gate=InteractiveGate(Quiet(), None), device="cpu",  # type: ignore[arg-type]
                concurrency=4, request_timeout_s=5, on_pause=pauses.append)
    results = await asyncio.wait_for(asyncio.gather(*(pace.call(lambda up, n=n: up.request(n)) for n in range(4))), 5)
    assert results == [0, 1, 2, 3]
    assert pauses == ["job_p"]  # one pause for four refusals
    assert pace.waiting is None and pace.backoff_s == 0.0  # a success ends it
