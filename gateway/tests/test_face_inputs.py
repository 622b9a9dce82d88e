"""Unit tests of the face routes' input checks: flags, counts and boxes, before anything is forwarded."""

from __future__ import annotations

import pytest

from gateway.routers.faces import _box, _count, _flag
from modelhost.errors import BadRequest

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value,expected", [
    (None, False), (True, True), (False, False), ("true", True), ("1", True), ("on", True), ("FALSE", False), ("0", False),
])
def test_flags_read_form_strings_and_json_booleans(value, expected: bool) -> None:
    assert _flag(value, "embed") is expected


@pytest.mark.parametrize("value", ["maybe", "", 2, 1.0, []])
def test_anything_else_is_not_a_flag(value) -> None:
    with pytest.raises(BadRequest) as e:
        _flag(value, "embed")
    assert e.value.param == "embed"


@pytest.mark.parametrize("value,expected", [(None, None), ("3", 3), (3, 3), (7.0, 7)])
def test_counts_are_positive_integers(value, expected) -> None:
    assert _count(value, "max_faces") == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", 1.5, True, [1]])
def test_bad_counts_are_400(value) -> None:
    with pytest.raises(BadRequest) as e:
        _count(value, "max_faces")
    assert e.value.param == "max_faces"


@pytest.mark.parametrize("value,expected", [
    (None, None),
    ("1,2,30,40", "1.0,2.0,30.0,40.0"),
    (" 1.5, 2 ,3,4", "1.5,2.0,3.0,4.0"),
    ([0, 0, 10.25, 10], "0.0,0.0,10.25,10.0"),
])
def test_boxes_from_forms_and_json_are_forwarded_as_four_numbers(value, expected) -> None:
    assert _box(value, "box_a") == expected


@pytest.mark.parametrize("value", ["1,2,3", "a,b,c,d", "1,2,3,4,5", "5,2,3,4", "1,4,3,4", "nan,1,2,3", "1,1,inf,5",
                                   [1, 2, 3], [True, 0, 2, 2], {"x": 1}, 5, ""])
def test_bad_boxes_are_400_invalid_box(value) -> None:
    with pytest.raises(BadRequest) as e:
        _box(value, "box_b")
    assert e.value.code == "invalid_box" and e.value.param == "box_b"
