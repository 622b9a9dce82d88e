"""Schemathesis hooks for scripts/schemathesis.sh (loaded through SCHEMATHESIS_HOOKS).

One hook, for one blind spot of negative_data_rejection (ST201) on multipart forms. A form has no types:
every field is text. When schemathesis breaks a text field's type (a `prompt` made the object `{}`), it
sends the text "{}", which is a perfectly good prompt, and the route answers 200. Schemathesis knows
this and re-reads the form as it was sent before it reports; but when the form carries a file, it
validates the file's generated *bytes* against the schema, its validator refuses bytes, and the failure
stands (seen once, as POST /v1/images/captions with `prompt={}` and a PNG). This hook repeats that
re-reading with the file as what the server sees, an uploaded string, and drops the failure only when
the form that went over the wire satisfies the schema. Every other failure is kept.
"""
from __future__ import annotations

import json
from email.parser import BytesParser
from email.policy import HTTP

import jsonschema_rs
import schemathesis
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.core.parameters import ParameterLocation


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    if not isinstance(failure, AcceptedNegativeData):
        return True
    media_type = case.media_type or ""
    if not media_type.startswith("multipart/form-data") or not _only_body_is_negative(case):
        return True
    form = _sent_form(response.request)
    body = case.operation.get_body_for_media_type(media_type)
    if form is None or body is None:
        return True
    validator = jsonschema_rs.validator_for(body.optimized_schema)
    sent: dict[str, object] = {}
    for name, texts in form.items():
        readings = [r for text in texts for r in _readings(text)]
        sent[name] = next((r for r in readings if not _errors_at(validator, {**sent, name: r}, name)), readings[0])
    return not validator.is_valid(sent)


def _only_body_is_negative(case) -> bool:
    meta = case.meta
    if meta is None:
        return False
    negative = {location for location, component in meta.components.items() if component.mode.is_negative}
    return negative == {ParameterLocation.BODY}


def _sent_form(request) -> dict[str, list[str]] | None:
    """The form as the server reads it: each text part as text, a file part as an uploaded string."""
    content = request.body
    if isinstance(content, str):
        content = content.encode()
    if not isinstance(content, bytes):
        return None
    content_type = request.headers.get("Content-Type", "")
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + content)
    form: dict[str, list[str]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            return None
        payload = part.get_payload(decode=True) or b""
        form.setdefault(name, []).append(payload.decode(errors="replace"))
    return form


def _readings(text: str) -> list[object]:
    """A field as text, or parsed as JSON (a number, a boolean), the two ways a route may read it."""
    try:
        return [text, json.loads(text)]
    except ValueError:
        return [text]


def _errors_at(validator, instance: dict[str, object], name: str) -> bool:
    return any(error.instance_path[:1] == [name] for error in validator.iter_errors(instance))
