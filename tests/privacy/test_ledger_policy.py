"""The Flower-free ledger policy: restore, budget check before a step, record, summary."""

from __future__ import annotations

from collections import Counter

import pytest

from tardiff_common.pipeline.config import preset
from tardiff_common.privacy.accounting import BUDGET_MARKER, PrivacyBudgetExceeded, epsilon_of
from tardiff_common.privacy.ledger_policy import SiteLedger
from tardiff_common.privacy.plan import plan_site

DP = {"privacy.gradient-sum-dp": True, "privacy.dp-sgd-classifier": True, "privacy.noise-multiplier": 2.0,
      "privacy.sgd-noise-multiplier": 1.0}


def policy(**overrides) -> SiteLedger:
    return SiteLedger(preset("tiny").with_overrides({**DP, **overrides}), "hospital_a", 60)


def test_restore_adds_what_the_server_dispatched_and_the_ledger_lacks():
    site = policy()
    plan = plan_site(site.config, 60)
    site.record([plan.classifier_round], "classifier")
    added = site.restore(["normalization:1", "normalization:2", "classifier:1", "classifier:2", "influence:0"])
    assert Counter(e.phase for e in added) == {"normalization": 2, "classifier": 1, "influence": 1}
    assert Counter(e.phase for e in site.ledger.entries) == {"normalization": 2, "classifier": 2, "influence": 1}
    assert site.restore(["classifier:1"]) == []  # a ledger that counts more is left as it is
    assert site.ledger.entries[1] == plan.normalization == plan.entry("normalization")


def test_restore_ignores_phases_without_dp_and_runs_without_dp():
    site = policy()
    assert site.restore(["diffusion:1"]) == []  # DP-SGD of the U-Net is off here
    off = SiteLedger(preset("tiny"), "h", 60)
    assert off.restore(["classifier:1"]) == [] and off.planned("classifier") is None


def test_planned_checks_the_budget_with_the_reason_text():
    site = policy(**{"privacy.max-epsilon": 1e3})
    plan = plan_site(site.config, 60)
    assert site.planned("classifier", "classifier round 1") == plan.classifier_round
    tight = epsilon_of(site.ledger.entries + [plan.normalization] * 2, 1e-5) * 1.0001
    site = policy(**{"privacy.max-epsilon": tight})
    site.record([site.planned("normalization")], "normalization")
    site.record([site.planned("normalization")], "normalization")
    with pytest.raises(PrivacyBudgetExceeded) as err:
        site.planned("influence")
    text = str(err.value)
    assert text.startswith(BUDGET_MARKER) and "site 'hospital_a' refuses phase 'influence'" in text
    assert f"privacy.max-epsilon = {tight:g}" in text and "spent so far" in text
    assert len(site.ledger.entries) == 2  # a refused step records nothing


def test_record_returns_the_phase_metrics_and_the_composed_total():
    site = policy()
    entry = site.planned("influence")
    metrics = site.record([entry], "influence")["privacy"]
    assert metrics["epsilon"] == pytest.approx(epsilon_of([entry], 1e-5))
    assert metrics["influence"]["sigma"] == 2.0 and metrics["influence"]["steps"] == 1
    assert site.summary()["epsilon"] == metrics["epsilon"]


def test_the_plan_is_solved_once_and_kept():
    site = SiteLedger(preset("tiny").with_overrides({"privacy.gradient-sum-dp": True, "privacy.target-epsilon": 2.0}),
                      "h", 60)
    assert site.plan_entries is None
    first = site.plan()
    assert site.plan_entries is not None
    again = SiteLedger(site.config, "h", 60, plan_entries=list(site.plan_entries))
    assert again.plan() == first
    with pytest.raises(ValueError, match="unknown DP phase"):
        site.planned("generation")
