"""The jobs API's request and response bodies, and the OpenAPI request bodies generated from them.

``POST /v1/jobs`` and ``POST /v1/jobs/{id}/inputs`` take JSON (library paths) or multipart (uploaded
files, and paths too). FastAPI declares one content type per body, so those routes read the body
themselves and their OpenAPI ``requestBody`` is generated here from the same models that validate it
(``request_body``). The JSON models are strict (a number is a number, not a string holding one); the
form models take text, as multipart sends it, and convert it.

Validation answers 400 ``bad_request`` naming the field (``modelhost.families.validated``), and 400
``unknown_task`` for a missing or unknown task. The options carry the limits their family modules declare
(so the document shows them), and each task checks the options it reads again with its family's model
when the job is created (a language Whisper knows, the model's own limits); the options of other tasks
are accepted and ignored.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal, TypeVar

import annotated_types
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, Json, StringConstraints, WithJsonSchema

from modelhost.errors import BadRequest
from modelhost.families import asr, caption, face, validated
from modelhost.languages import LANGUAGES

TaskName = Literal["caption", "embed", "faces", "transcribe"]
JobState = Literal["queued", "running", "completed", "cancelled", "failed"]
ItemState = Literal["done", "error", "cancelled"]

M = TypeVar("M", bound=BaseModel)


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]
PathText = Annotated[str, StringConstraints(min_length=1), AfterValidator(_unicode)]


def _form_bool(value: Any) -> Any:
    """A form's boolean as the document declares it: the text true or false (any case), not the other
    spellings pydantic would take ("0", "yes", "on", ...), which a client of the schema cannot know of."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ValueError("must be true or false")
        return value.lower() == "true"
    return value


FormBool = Annotated[bool, BeforeValidator(_form_bool)]


def _one_input(*fields: str) -> dict[str, Any]:
    """The ``anyOf`` of a new job's body: at least one input in one of ``fields``, or ``open`` (more inputs
    will come). ``Jobs.create`` refuses a body without (400 ``no_inputs``); the document says so, so that a
    body valid by the schema is never refused for it. ``minItems`` leaves a field's single string be."""
    return {"anyOf": [*({"required": [f], "properties": {f: {"minItems": 1}}} for f in fields),
                      {"required": ["open"], "properties": {"open": {"const": True}}}]}


# requests ----------------------------------------------------------------------------------------

def _family_option(model: type[BaseModel], name: str, task: str) -> Any:
    """A family's option as a job option: its type and limits, as the family's own model declares them (the
    task validates it with that model again), and which task reads it."""
    info = model.model_fields[name]
    limits = [m for m in info.metadata if isinstance(m, annotated_types.BaseMetadata)]  # not its form-only validators
    return Annotated[info.annotation, *limits, Field(description=f"{task}: {info.description}")]


MaxNewTokens = _family_option(caption.CaptionOptions, "max_new_tokens", "caption")
MaxFaces = _family_option(face.DetectOptions, "max_faces", "faces")
PROMPT_CHARS = min(caption.MAX_PROMPT_CHARS, asr.MAX_PROMPT_CHARS)
PromptText = Annotated[str, StringConstraints(max_length=PROMPT_CHARS), AfterValidator(_unicode)]
# The codes Whisper knows, as /v1/audio/transcriptions documents them; its English names and a region
# ("en-US") are taken too, and the transcribe task checks the value with the asr family's rule.
LanguageText = Annotated[str, AfterValidator(_unicode), WithJsonSchema({"type": "string", "enum": list(LANGUAGES)})]


class _OptionFields(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)  # a job's options are echoed as JSON, which has no NaN

    prompt: PromptText | None = Field(None, description="caption: the captioner's prompt or caption prefix; "
                                      "transcribe: text that conditions the transcript (spellings, style).")
    max_new_tokens: MaxNewTokens = None
    language: LanguageText | None = Field(None, description="transcribe: the spoken language, ISO-639-1 (a name or a "
                                          "region is taken too); default: detected.")
    cluster: bool | None = Field(None, description="faces: group the faces into people when the job ends (default: true).")
    cluster_threshold: float | None = Field(None, ge=-1.0, le=1.0, description="faces: the cosine similarity at which two "
                                            "faces are one person (default: the model's).")
    max_faces: MaxFaces = None


class JobOptions(_OptionFields):
    """The task's options: each task reads its own and ignores the others'."""

    model_config = ConfigDict(extra="forbid", strict=True)

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class JobRequest(BaseModel):
    """POST /v1/jobs as JSON: library paths, folders and globs (under GATEWAY_LIBRARY_ROOTS); at least one,
    unless the job is open."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_one_input("paths"))

    task: TaskName
    model: Text | None = Field(None, description="A catalog model of the task's family (default: the gateway's).")
    paths: list[PathText] | PathText = Field(default_factory=list, description="Files, folders and globs; a relative "
                                             "path is taken inside the first library root.")
    open: bool = Field(False, description="Take more inputs through POST /v1/jobs/{id}/inputs until one says close.")
    options: JobOptions | None = None

    def path_list(self) -> list[str]:
        return [self.paths] if isinstance(self.paths, str) else list(self.paths)


class JobForm(_OptionFields):
    """POST /v1/jobs as multipart: uploaded files and/or library paths (at least one, unless the job is
    open); the options as fields of their own or as one JSON object (`options`; its own fields win)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_input("file", "path", "paths"))

    task: TaskName
    model: Text | None = Field(None, description="A catalog model of the task's family (default: the gateway's).")
    open: FormBool = Field(False, description="Take more inputs through POST /v1/jobs/{id}/inputs until one says close.")
    file: list[bytes] = Field(default_factory=list, description="An uploaded file (repeat the field for more).")
    path: list[PathText] = Field(default_factory=list, description="A library file, folder or glob (repeat for more).")
    paths: list[PathText] = Field(default_factory=list, description="The same as path.")
    options: Json[JobOptions] | None = Field(None, description="The options as one JSON object.")
    cluster: FormBool | None = Field(None, description=_OptionFields.model_fields["cluster"].description)

    def request(self) -> JobRequest:
        own = self.model_dump(include=set(_OptionFields.model_fields), exclude_none=True)
        options = JobOptions.model_validate({**(self.options.given() if self.options else {}), **own})
        return JobRequest(task=self.task, model=self.model, paths=self.path + self.paths, open=self.open, options=options)


class InputsRequest(BaseModel):
    """POST /v1/jobs/{id}/inputs as JSON: more library paths for an open job."""

    model_config = ConfigDict(extra="forbid", strict=True)

    paths: list[PathText] | PathText = Field(default_factory=list, description="Files, folders and globs, as for a new job.")
    close: bool = Field(False, description="These are the job's last inputs.")

    def path_list(self) -> list[str]:
        return [self.paths] if isinstance(self.paths, str) else list(self.paths)


class InputsForm(BaseModel):
    """POST /v1/jobs/{id}/inputs as multipart: more uploads and/or library paths for an open job."""

    model_config = ConfigDict(extra="forbid")

    file: list[bytes] = Field(default_factory=list, description="An uploaded file (repeat the field for more).")
    path: list[PathText] = Field(default_factory=list, description="A library file, folder or glob (repeat for more).")
    paths: list[PathText] = Field(default_factory=list, description="The same as path.")
    close: FormBool = Field(False, description="These are the job's last inputs.")

    def request(self) -> InputsRequest:
        return InputsRequest(paths=self.path + self.paths, close=self.close)


def parse(model: type[M], values: dict[str, Any]) -> M:
    """``values`` as ``model``; 400 naming the first bad field (``unknown_task`` when it is the task)."""
    try:
        return validated(model, values)
    except BadRequest as e:
        if e.param == "task":
            e.code = "unknown_task"
        raise


# responses ---------------------------------------------------------------------------------------

class JobCounts(BaseModel):
    total: int
    pending: int
    done: int
    error: int
    cancelled: int
    deduplicated: int = Field(description="Done items whose result was already known (the same content).")


class JobWaiting(BaseModel):
    reason: str = Field(description="Why the job is paused: its service is unavailable or overloaded.")
    retry_in_s: float


class ErrorInfo(BaseModel):
    code: str
    message: str


class Job(BaseModel):
    """A job's status: counts, rate and ETA; ``waiting`` while paused, ``yielding`` while it runs."""

    id: str
    object: Literal["job"]
    task: str
    model: str
    options: dict[str, Any]
    state: JobState
    open: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    counts: JobCounts
    progress: float = Field(description="Finished items over all items, 0..1.")
    rate_per_s: float | None
    eta_s: float | None
    elapsed_s: float | None
    waiting: JobWaiting | None = None
    yielding: bool | None = Field(None, description="Stepping aside for interactive requests on its device.")
    error: ErrorInfo | None = Field(None, description="Why the job failed.")
    summary: dict[str, Any] | None = Field(None, description="What the task adds at the end (a faces job's people).")
    links_skipped: int | None = Field(
        None, description="In the answer to the request that listed the paths, when some were: how many symlinked "
        "folders its folders and ** globs passed over instead of entering (a link can lead anywhere, or in a loop). "
        "To take a linked folder's files, name it, or a glob through it, in paths.")


class JobList(BaseModel):
    object: Literal["list"]
    data: list[Job]


class ItemResult(BaseModel):
    seq: int
    source: str
    kind: str
    state: ItemState
    sha256: str | None
    reused: bool = Field(description="The result was already known (the same content).")
    seconds: float | None
    result: dict[str, Any] | None
    error: ErrorInfo | None


class ResultsPage(BaseModel):
    object: Literal["list"]
    job: str
    state: JobState
    data: list[ItemResult]
    has_more: bool
    next_after: int = Field(description="Pass as `after` for the next page.")


class PersonFace(BaseModel):
    seq: int
    face: str = Field(description='"3": face 3 of an image; "2.0": keyframe 2, face 0 of a video.')
    source: str


class Person(BaseModel):
    person: int
    faces: list[PersonFace]


class PeopleList(BaseModel):
    object: Literal["list"]
    job: str
    summary: dict[str, Any] | None
    data: list[Person]


class JobEvent(BaseModel):
    """One server-sent event of GET /v1/jobs/{id}/events (comments, the keep-alives, are not events)."""

    event: Literal["progress", "end"]
    id: str = Field(description="Items finished so far.")
    data: Json[Job] = Field(description="The job's status, as GET /v1/jobs/{id} answers it.")


def event_stream_schema() -> dict[str, Any]:
    """The schema of each event of a job's event stream (Open API 3.1: ``schema`` describes one event).
    Its ``Job`` is the document's own component (the routes that answer a ``Job`` put it there)."""
    schema = JobEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return schema


# the OpenAPI request bodies ----------------------------------------------------------------------

def request_body(json_model: type[BaseModel], form_model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring both content types of a route, generated from its two models."""
    form, encoding = _json_parts(_without_null(_inline(form_model.model_json_schema())))
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": _inline(json_model.model_json_schema())},
        "multipart/form-data": {"schema": form, **({"encoding": encoding} if encoding else {})},
    }}}


def _json_parts(schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A form's schema with each field that holds JSON (``Json[...]``) declared as what it holds, its part
    sent as ``application/json`` (the media type's ``encoding``; OpenAPI's default for an object part).
    As a string with ``contentSchema`` it said "any text" to a client of the document, since content
    keywords only annotate, and the text had to be the JSON of an object to be taken."""
    properties = dict(schema.get("properties", {}))
    encoding = {}
    for name, field in properties.items():
        if field.get("contentMediaType") == "application/json" and "contentSchema" in field:
            named = {k: v for k, v in field.items() if k in ("title", "description")}
            properties[name] = {**field["contentSchema"], **named}
            encoding[name] = {"contentType": "application/json"}
    return {**schema, "properties": properties}, encoding


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its ``$defs`` put in place (they would not resolve inside the OpenAPI document)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                rest = {k: walk(v) for k, v in node.items() if k != "$ref"}
                return {**walk(copy.deepcopy(defs[ref.removeprefix("#/$defs/")])), **rest}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node
    return walk(schema)


def _without_null(node: Any) -> Any:
    """A form's schema without ``null``: a multipart field is absent or text, never null. (Inside a field
    that holds JSON, ``contentSchema``, null stays what it is.)"""
    if isinstance(node, dict):
        node = {k: v if k == "contentSchema" else _without_null(v) for k, v in node.items()
                if not (k == "default" and v is None)}
        options = node.get("anyOf")
        if options is not None:
            kept = [o for o in options if o != {"type": "null"}]
            node.pop("anyOf")
            node = {**kept[0], **node} if len(kept) == 1 else {**node, "anyOf": kept}
        return node
    if isinstance(node, list):
        return [_without_null(v) for v in node]
    return node
