"""POST /v1/search: photos and video keyframes of the library's embed jobs, ranked by similarity to a text or
an image (``gateway.search``). The body is JSON (the query a text or a base64 image), or a multipart form
whose ``file`` is the query image, with the same other fields as text (``jobs`` repeated). Everything in it
is checked before the model is asked for (``Search.search``), by the same rules either way."""

from __future__ import annotations

from fastapi import APIRouter, Request

from modelhost.errors import UnsupportedMediaType, error_responses, request_id_of
from modelhost.families import validated

from ..bodies import FORM_OVERHEAD_BYTES, json_request_body, parse_json_object, read_body, read_upload
from ..search.schemas import MAX_JOBS, SearchForm, SearchOptions, SearchRequest, SearchResponse
from ..search.service import Search
from ..state import gw

router = APIRouter(tags=["search"])

_BODY = json_request_body(SearchRequest)
_BODY["requestBody"]["content"]["multipart/form-data"] = {"schema": SearchForm.model_json_schema()}


def search_of(request: Request) -> Search:
    return request.app.state.search


@router.post("/v1/search", response_model=SearchResponse, summary="Search the library's photos by text or by image",
             description='`{"query": "a dog on a beach"}` or `{"query": {"image": base64}}`, with `model`, `k` (1..1000, '
                         'default 20), `jobs` (default: every completed embed job of the model) and `min_score`; or a '
                         "multipart form with the image as `file` and the same fields. Each result names its file, its "
                         "score (cosine), a video keyframe's time, and the file's caption and people from caption and "
                         "faces jobs of the same content.",
             responses=error_responses(400, 401, 404, 409, 413, 415, 429, 502, 503, 504), openapi_extra=_BODY)
async def search(request: Request) -> SearchResponse:
    max_upload_bytes = gw(request).settings.max_upload_bytes
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        upload = await read_upload(request, images={"file": "file"}, fields=SearchOptions.model_fields,
                                   max_image_bytes=max_upload_bytes,
                                   max_fields=MAX_JOBS + len(SearchOptions.model_fields))  # jobs repeated
        fields = dict(upload.fields)
        if isinstance(fields.get("jobs"), str):  # the field sent once
            fields["jobs"] = [fields["jobs"]]
        options: SearchOptions = validated(SearchOptions, fields)
        return await search_of(request).search(options, upload.images["file"][0], request_id_of(request))
    if ctype != "application/json":
        raise UnsupportedMediaType(f"send application/json or multipart/form-data, not {ctype or 'no Content-Type'}",
                                   code="unsupported_content_type")
    limit = max_upload_bytes * 4 // 3 + FORM_OVERHEAD_BYTES  # one image, base64
    req = validated(SearchRequest, parse_json_object(await read_body(request, limit)))
    return await search_of(request).search(req, req.query, request_id_of(request))
