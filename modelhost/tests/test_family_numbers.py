"""The families' number options are numbers: JSON true is not 1, 1e999 is not a count (400, never a 5xx);
a form's text still converts."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from modelhost.errors import BadRequest
from modelhost.families import asr, caption, face, validated

pytestmark = pytest.mark.unit

FIELDS = [(caption.CaptionOptions, "max_new_tokens", 7), (face.DetectOptions, "max_faces", 7),
          (asr.TranscriptionOptions, "temperature", 0.5)]


@pytest.mark.parametrize("model,field,good", FIELDS)
@pytest.mark.parametrize("bad", [True, False, float("inf"), float("-inf"), float("nan"), 10**400, "1e999", "true"])
def test_a_bool_or_an_impossible_number_is_400_naming_the_field(model: type[BaseModel], field: str, good: Any,
                                                                 bad: Any) -> None:
    with pytest.raises(BadRequest) as e:
        validated(model, {field: bad})
    assert e.value.status == 400 and e.value.param == field


@pytest.mark.parametrize("model,field,good", FIELDS)
def test_numbers_and_their_form_text_are_taken(model: type[BaseModel], field: str, good: Any) -> None:
    assert getattr(validated(model, {field: good}), field) == good
    assert getattr(validated(model, {field: str(good)}), field) == good
