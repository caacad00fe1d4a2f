"""The one list of phases: every derived list follows it, and no seed id moves (a moved id
changes every number a run produces)."""

from __future__ import annotations

import pytest

from tardiff_common.pipeline.config import FederationConfig, derive_seed
from tardiff_common.pipeline.phase_list import DP_PHASES, INITIAL_WEIGHTS, PHASES, SEED_IDS, TIMEOUT_PHASES, WORKFLOW
from tardiff_common.privacy.ledger_policy import DP_PHASES as LEDGER_PHASES


def test_seed_ids_are_those_every_run_so_far_was_seeded_with():
    assert SEED_IDS == {"classifier": 1, "influence": 2, "diffusion": 3, "generation": 4, "evaluation": 5,
                        "membership": 6, "secagg": 7}
    assert INITIAL_WEIGHTS == 0
    # the values derived before the list existed (literal ids), run seed 0
    assert derive_seed(0, INITIAL_WEIGHTS, SEED_IDS["classifier"]) == 1915600865
    assert derive_seed(0, INITIAL_WEIGHTS, SEED_IDS["diffusion"]) == 99239235
    assert derive_seed(0, SEED_IDS["classifier"], 2, 1) == 231311400
    assert derive_seed(0, SEED_IDS["membership"], 2) == 1835333131
    assert derive_seed(0, SEED_IDS["secagg"], 1) == 331670613


def test_seed_ids_are_distinct_and_names_unique():
    assert len(set(SEED_IDS.values())) == len(SEED_IDS)
    assert len({p.name for p in PHASES}) == len(PHASES)


def test_derived_lists():
    assert WORKFLOW == ("normalization", "classifier", "influence", "diffusion", "selection", "generation")
    assert TIMEOUT_PHASES == WORKFLOW + ("resume",)
    assert DP_PHASES == LEDGER_PHASES == ("normalization", "classifier", "influence", "diffusion", "selection",
                                          "evaluation")


def test_phase_timeouts_accept_exactly_the_timeout_phases():
    assert FederationConfig(phase_timeouts="resume=5,selection=7").phase_timeout_map() == {"resume": 5.0,
                                                                                           "selection": 7.0}
    with pytest.raises(ValueError, match="membership=5"):
        FederationConfig(phase_timeouts="membership=5")


def test_the_server_runs_the_workflow_in_order():
    from server.workflow import PHASES as SERVER_PHASES
    from server.workflow import RUNNERS

    assert [name for name, _ in SERVER_PHASES] == list(WORKFLOW)
    assert set(RUNNERS) == set(WORKFLOW)
