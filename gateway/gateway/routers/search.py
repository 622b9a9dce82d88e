"""POST /v1/search: photos and video keyframes of the library's embed jobs, ranked by similarity to a text or
an image (``gateway.search``). The body is JSON; everything in it is checked before the model is asked
for (``Search.search``)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from modelhost.errors import error_responses, request_id_of
from modelhost.families import validated

from ..bodies import FORM_OVERHEAD_BYTES, json_request_body, read_json_object
from ..search.schemas import SearchRequest, SearchResponse
from ..search.service import Search
from ..state import gw

router = APIRouter(tags=["search"])


def search_of(request: Request) -> Search:
    return request.app.state.search


@router.post("/v1/search", response_model=SearchResponse, summary="Search the library's photos by text or by image",
             description='`{"query": "a dog on a beach"}` or `{"query": {"image": base64}}`, with `model`, `k` (1..1000, '
                         'default 20), `jobs` (default: every completed embed job of the model) and `min_score`. Each '
                         "result names its file, its score (cosine), a video keyframe's time, and the file's caption "
                         "and people from caption and faces jobs of the same content.",
             responses=error_responses(400, 401, 404, 409, 413, 415, 429, 502, 503, 504),
             openapi_extra=json_request_body(SearchRequest))
async def search(request: Request) -> SearchResponse:
    limit = gw(request).settings.max_upload_bytes * 4 // 3 + FORM_OVERHEAD_BYTES  # one image, base64
    req = validated(SearchRequest, await read_json_object(request, limit))
    return await search_of(request).search(req, request_id_of(request))
