"""Splitting text into the sentences that are synthesised and streamed one by one."""

from __future__ import annotations

import pytest

from tts_svc.sentences import Sentence, split_sentences

pytestmark = pytest.mark.unit


def texts(text: str, **kw) -> list[str]:  # noqa: ANN003
    return [s.text for s in split_sentences(text, **kw)]


def test_splits_at_end_marks_followed_by_space_and_keeps_order() -> None:
    assert texts("Hello there. How are you?  Fine!Thanks… bye") == ["Hello there.", "How are you?", "Fine!Thanks…", "bye"]


def test_line_breaks_end_a_sentence_and_white_space_is_collapsed() -> None:
    assert texts("first line\nsecond\t\tline\n\n third ") == ["first line", "second line", "third"]


def test_decimal_numbers_and_abbreviation_dots_without_space_stay_whole() -> None:
    assert texts("Pi is 3.14159 and e is 2.718. Done.") == ["Pi is 3.14159 and e is 2.718.", "Done."]


def test_closing_quotes_end_with_their_sentence() -> None:
    assert texts('He said "stop." Then he left.') == ['He said "stop.', "Then he left."]


def test_cjk_sentences_split_without_spaces() -> None:
    assert texts("今日は晴れです。明日は雨です。") == ["今日は晴れです。", "明日は雨です。"]


def test_punctuation_only_and_emoji_only_pieces_become_one_pause() -> None:
    got = split_sentences("Hello. ... ?! World. 😀")
    assert got == [Sentence("Hello.", True), Sentence("...", False), Sentence("World.", True), Sentence("😀", False)]
    assert split_sentences("?!...") == [Sentence("?!...", False)]
    assert split_sentences("🎉🎉") == [Sentence("🎉🎉", False)]


def test_digits_and_letters_of_any_script_are_speakable() -> None:
    assert [s.speakable for s in split_sentences("123. Ünïcödé. Привет. 你好。")] == [True, True, True, True]


def test_white_space_only_gives_nothing() -> None:
    assert split_sentences(" \n\t ") == []


def test_a_long_sentence_is_cut_at_clause_marks_then_spaces_within_the_limit() -> None:
    clause = "word " * 15 + "end, "
    long = clause * 6 + "last words here."
    got = texts(long, max_chars=100)
    assert len(got) > 1 and all(len(t) <= 100 for t in got)
    assert all(t.endswith(",") for t in got[:-1])  # cut after a clause mark
    assert " ".join(got) == " ".join(long.split())  # nothing lost or reordered
    unbroken = "x" * 250
    assert texts(unbroken, max_chars=100) == ["x" * 100, "x" * 100, "x" * 50]


def test_max_chars_has_a_floor() -> None:
    with pytest.raises(ValueError):
        split_sentences("text", max_chars=5)
