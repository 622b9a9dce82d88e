"""``POST /v1/search``: the request and the answer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag

from modelhost.families.embed import MAX_TEXT_CHARS

MAX_K = 1000
MAX_JOBS = 100


# Not blank, said in the document too (a pattern), so a body valid by the schema is never refused for it.
QueryText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS, pattern=r"\S")]


class ImageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    image: str = Field(min_length=1, description="The image, base64 or a data: URL.")


def _modality(value: Any) -> str:
    return "image" if isinstance(value, dict) else "text"


# Tagged, so that an error names its field as "query.text" or "query.image.image", not pydantic's union members.
Query = Annotated[Annotated[QueryText, Tag("text")] | Annotated["ImageQuery", Tag("image")], Discriminator(_modality)]


class SearchOptions(BaseModel):
    """What a search asks for beside its query, in JSON and in a form alike."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = Field(None, description="An embed model of the catalog; default: the model of `jobs`, else "
                                                "GATEWAY_DEFAULT_EMBED_MODEL, else the catalog's first embed model.")
    k: int = Field(20, ge=1, le=MAX_K, description="How many results.")
    jobs: list[Annotated[str, StringConstraints(min_length=1)]] | None = Field(
        None, min_length=1, max_length=MAX_JOBS,
        description="The embed jobs to search (ended ones, of one model); default: every completed embed job of the model.")
    min_score: float | None = Field(None, ge=-1.0, le=1.0, description="Leave out results below this cosine similarity.")


class SearchRequest(SearchOptions):
    """The JSON body: typed values only (strict)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    query: Query = Field(description='Text ("a dog on a beach"), or {"image": base64} for photos like it.')


class SearchForm(SearchOptions):
    """The multipart form: the query image as ``file``; the other fields are text (``jobs`` repeated)."""

    file: bytes = Field(description="The query image (JPEG, PNG, WebP, GIF, BMP or TIFF): photos like it.")


class CaptionRef(BaseModel):
    job: str
    model: str
    text: str


class PersonRef(BaseModel):
    job: str = Field(description="The faces job that grouped the file's faces into people.")
    person: int
    faces: list[str] = Field(description='The faces of this person in the file ("3", or "2.0" for keyframe 2, face 0).')


class SearchHit(BaseModel):
    rank: int
    score: float = Field(description="Cosine similarity between the query and the image or keyframe, -1..1.")
    job: str
    seq: int = Field(description="The item's number in its job (GET /v1/jobs/{job}/results).")
    source: str = Field(description="The library path, or the uploaded file's name.")
    kind: Literal["image", "video"]
    sha256: str | None
    t_s: float | None = Field(None, description="A video's keyframe: its time in seconds.")
    caption: CaptionRef | None = Field(None, description="The file's caption from a caption job (the keyframe's, for a video).")
    people: list[PersonRef] = Field(default_factory=list, description="The file's people from faces jobs.")


class QueryInfo(BaseModel):
    modality: Literal["text", "image"]
    tokens: int


class SearchTimings(BaseModel):
    embed_ms: float = Field(description="Embedding the query (the model held, the service's answer).")
    rank_ms: float = Field(description="Ranking the vectors.")
    total_ms: float


class SearchResponse(BaseModel):
    object: Literal["search.result"] = "search.result"
    model: str
    query: QueryInfo
    jobs: list[str] = Field(description="The jobs searched.")
    searched: int = Field(description="Vectors searched (images and keyframes).")
    data: list[SearchHit]
    timings: SearchTimings
