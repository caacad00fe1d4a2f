"""Epsilon comes from Opacus' accountants: the ledger, the solved sigmas and the budget check."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from tardiff_common.models.classifier import ClassifierConfig, build_classifier
from tardiff_common.pipeline.config import preset
from tardiff_common.privacy.accounting import (
    BUDGET_MARKER,
    Entry,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    epsilon_of,
    solve_noise_multiplier,
)
from tardiff_common.privacy.dp_sgd import DPTrainingSession
from tardiff_common.privacy.plan import batches_per_epoch, plan_site
from tardiff_common.training.classifier import ClassifierTrainConfig, train_classifier

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning", "ignore::FutureWarning")

ACCOUNTANTS = {"rdp": RDPAccountant, "prv": PRVAccountant}


def independent_epsilon(accountant: str, steps: list[tuple[float, float, int]], delta: float) -> float:
    """Opacus' accountant fed step by step, as a PrivacyEngine would."""
    acc = ACCOUNTANTS[accountant]()
    for sigma, q, n in steps:
        for _ in range(n):
            acc.step(noise_multiplier=sigma, sample_rate=q)
    return acc.get_epsilon(delta=delta)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_reported_epsilon_equals_opacus_accountant(accountant):
    """Gradient-sum release (sigma, q=1, 1 step) composed with two rounds of DP-SGD steps."""
    delta = 1e-5
    ledger = PrivacyLedger.empty()
    ledger.add([Entry("classifier", 1.1, 0.1, 30, 1.0), Entry("classifier", 1.1, 0.1, 30, 1.0)])
    ledger.add([Entry("influence", 2.0, 1.0, 1, 0.5)])
    ledger.add([Entry("diffusion", 0.9, 0.05, 40, 1.0)])
    expected = independent_epsilon(accountant, [(1.1, 0.1, 60), (2.0, 1.0, 1), (0.9, 0.05, 40)], delta)
    assert ledger.epsilon(delta, accountant) == pytest.approx(expected, rel=1e-3)
    summary = ledger.summary(delta, accountant)
    assert summary["influence"]["epsilon"] == pytest.approx(independent_epsilon(accountant, [(2.0, 1.0, 1)], delta),
                                                            rel=1e-3)
    assert summary["classifier"]["steps"] == 60 and summary["influence"]["sigma"] == 2.0
    # the column-list form (a Flower ConfigRecord) round-trips
    assert PrivacyLedger.from_lists(ledger.to_lists()) == ledger


def test_gradient_sum_release_is_one_gaussian_mechanism():
    """(sigma, q=1, 1 step) in RDP is the Gaussian mechanism: RDP(alpha) = alpha / (2 sigma^2)."""
    sigma, delta = 2.0, 1e-5
    acc = RDPAccountant()
    acc.history = [(sigma, 1.0, 1)]
    eps, _ = acc.get_privacy_spent(delta=delta)
    assert epsilon_of([Entry("influence", sigma, 1.0, 1, 1.0)], delta) == pytest.approx(eps)
    assert epsilon_of([Entry("influence", 0.0, 1.0, 1, 1.0)], delta) == math.inf
    assert epsilon_of([], delta) == 0.0


def test_dp_sgd_ledger_entries_match_an_opacus_engine_and_the_plan():
    x = np.random.default_rng(0).normal(size=(50, 3, 12)).astype(np.float32)
    y = (np.arange(50) % 5 == 0).astype(np.int64)
    config = ClassifierTrainConfig(epochs=2, batch_size=16)
    session = DPTrainingSession(phase="classifier", noise_multiplier=1.3, max_grad_norm=0.7, reproducible=True)
    stats = train_classifier(build_classifier(3, ClassifierConfig(kind="cnn", hidden=8, num_layers=1)), x, y, config,
                             seed=0, privacy=session)
    b = batches_per_epoch(50, 16)
    assert session.entries == [Entry("classifier", 1.3, 1 / b, 2 * b, 0.7)] and stats["steps"] == 2 * b
    assert PrivacyLedger(session.entries).epsilon(1e-5) == pytest.approx(
        independent_epsilon("rdp", [(1.3, 1 / b, 2 * b)], 1e-5), rel=1e-6)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_single_mechanism_sigma_is_opacus_get_noise_multiplier(accountant):
    sigma = solve_noise_multiplier(2.0, 1e-5, [Entry("influence", 0.0, 1.0, 1, 1.0)], accountant=accountant)
    assert sigma == get_noise_multiplier(target_epsilon=2.0, target_delta=1e-5, sample_rate=1.0, steps=1,
                                         accountant=accountant)


def test_composed_sigma_reaches_the_target():
    free = [Entry("influence", 0.0, 1.0, 1, 1.0), Entry("classifier", 0.0, 0.2, 20, 1.0)]
    fixed = [Entry("diffusion", 3.0, 0.1, 30, 1.0)]
    sigma = solve_noise_multiplier(4.0, 1e-5, free, fixed=fixed)
    eps = epsilon_of([Entry(e.phase, sigma, e.sample_rate, e.steps, 1.0) for e in free] + fixed, 1e-5)
    assert 4.0 - 0.011 <= eps <= 4.0
    with pytest.raises(ValueError, match="alone exceed"):
        solve_noise_multiplier(0.1, 1e-5, free, fixed=fixed)


def test_plan_solves_one_sigma_for_the_whole_run():
    config = preset("tiny").with_overrides({
        "privacy.gradient-sum-dp": True, "privacy.dp-sgd-classifier": True, "privacy.dp-sgd-diffusion": True,
        "privacy.target-epsilon": 3.0})
    plan = plan_site(config, 80)
    assert plan.gradient_sum.noise_multiplier == plan.classifier_round.noise_multiplier > 0
    # normalization, classifier rounds, the sum, diffusion rounds, the selection and evaluation counts
    assert [e.phase for e in plan.history()] == ["normalization"] * 2 + ["classifier"] * 2 + ["influence"] + \
        ["diffusion"] * 2 + ["selection", "evaluation"]
    assert plan.selection.noise_multiplier == plan.evaluation.noise_multiplier == plan.gradient_sum.noise_multiplier
    assert 2.98 <= plan.epsilon(1e-5, "rdp") <= 3.0
    assert plan.classifier_round.sample_rate == 1 / batches_per_epoch(80, 32)


def test_budget_check_refuses_with_site_phase_and_epsilon():
    ledger = PrivacyLedger([Entry("classifier", 1.0, 0.2, 10, 1.0)])
    ok = ledger.check_budget([Entry("influence", 5.0, 1.0, 1, 1.0)], site="h1", phase="influence", delta=1e-5,
                             accountant="rdp", max_epsilon=100.0)
    assert ok > ledger.epsilon(1e-5)
    with pytest.raises(PrivacyBudgetExceeded) as err:
        ledger.check_budget([Entry("diffusion", 0.5, 0.5, 50, 1.0)], site="h1", phase="diffusion round 2",
                            delta=1e-5, accountant="rdp", max_epsilon=3.0)
    message = str(err.value)
    assert message.startswith(BUDGET_MARKER) and "'h1'" in message and "diffusion round 2" in message
    assert "max-epsilon = 3" in message


def test_config_requires_a_noise_source():
    with pytest.raises(ValueError, match="needs a noise multiplier"):
        preset("tiny").with_overrides({"privacy.gradient-sum-dp": True})
    with pytest.raises(ValueError, match="accountant"):
        preset("tiny").with_overrides({"privacy.accountant": "gdp"})
    with pytest.raises(ValueError, match="fedprox"):
        plan_site(preset("tiny").with_overrides({
            "privacy.dp-sgd-classifier": True, "privacy.sgd-noise-multiplier": 1.0,
            "federation.strategy": "fedprox", "federation.proximal-mu": 0.1}), 50)
