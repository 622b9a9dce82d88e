"""The model state machine: every legal transition passes, every other pair raises IllegalTransition."""

from __future__ import annotations

import itertools

import pytest

from modelhost.states import TRANSITIONS, IllegalTransition, ModelState, check_transition

pytestmark = pytest.mark.unit

S = ModelState

# Written out by hand from DESIGN.md ("unloaded → loading → ready → unloading → unloaded, and failed"),
# not derived from TRANSITIONS, so a change to the table has to change this test too.
LEGAL = {
    (S.UNLOADED, S.LOADING),
    (S.LOADING, S.READY),
    (S.LOADING, S.FAILED),
    (S.READY, S.UNLOADING),
    (S.READY, S.FAILED),
    (S.UNLOADING, S.UNLOADED),
    (S.UNLOADING, S.FAILED),
    (S.FAILED, S.LOADING),
    (S.FAILED, S.UNLOADED),
    # the parked tier (modelhost.park): ready → parking → parked → loading (un-park) or unloading
    (S.READY, S.PARKING),
    (S.PARKING, S.PARKED),
    (S.PARKING, S.READY),
    (S.PARKING, S.FAILED),
    (S.PARKED, S.LOADING),
    (S.PARKED, S.UNLOADING),
    (S.PARKED, S.FAILED),
}
ALL_PAIRS = list(itertools.product(ModelState, repeat=2))


def _id(pair: tuple[ModelState, ModelState]) -> str:
    return f"{pair[0].value}->{pair[1].value}"


@pytest.mark.parametrize("pair", sorted(LEGAL), ids=_id)
def test_legal_transition_passes(pair: tuple[ModelState, ModelState]) -> None:
    check_transition(*pair)


@pytest.mark.parametrize("pair", [p for p in ALL_PAIRS if p not in LEGAL], ids=_id)
def test_illegal_transition_raises(pair: tuple[ModelState, ModelState]) -> None:
    with pytest.raises(IllegalTransition, match=f"{pair[0].value} -> {pair[1].value}"):
        check_transition(*pair)


def test_table_matches_the_documented_machine() -> None:
    table = {(src, dst) for src, dsts in TRANSITIONS.items() for dst in dsts}
    assert table == LEGAL
    assert set(TRANSITIONS) == set(ModelState)


def test_no_state_transitions_to_itself() -> None:
    # A self-transition would log and count a change that did not happen.
    for state in ModelState:
        with pytest.raises(IllegalTransition):
            check_transition(state, state)
