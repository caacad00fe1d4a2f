"""The server's typed global state: its array groups are the checkpoint format's, and a
checkpoint round-trips without guessing types."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from server.state import ARRAY_GROUPS, GlobalState
from tardiff_common.checkpoint import GROUPS


def test_array_groups_are_the_checkpoint_groups_and_fields_of_the_state():
    assert ARRAY_GROUPS == GROUPS
    assert set(GROUPS) <= {f.name for f in fields(GlobalState)}


def test_checkpoint_round_trip_and_unknown_entries():
    state = GlobalState(classifier={"w": np.arange(3.0)}, direction={"g": np.ones(2, np.float32)},
                        guidance_records=7, selection={"chosen": "paper:1"})
    arrays, progress = state.arrays(), state.json_fields()
    assert set(arrays) == {"classifier/w", "direction/g"}
    assert progress == {"guidance_records": 7, "selection": {"chosen": "paper:1"}}
    again = GlobalState.from_checkpoint(arrays, progress)
    assert np.array_equal(again.classifier["w"], np.arange(3.0)) and again.guidance_records == 7
    with pytest.raises(ValueError, match="'weights/w'"):
        GlobalState.from_checkpoint({"weights/w": np.zeros(1)}, {})
    with pytest.raises(KeyError, match="'colour'"):
        state["colour"] = 1
