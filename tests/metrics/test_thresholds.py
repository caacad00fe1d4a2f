"""Decision thresholds are fitted on validation / calibration records, never on test records.

Each test is built so that it fails if the code were changed to choose the threshold from the
test (evaluation) labels or records: the threshold must not move when those are permuted,
flipped or replaced, and the fitting function must only ever see the validation labels.
"""

import numpy as np
import torch

from tardiff_common.metrics import classification, utility
from tardiff_common.metrics.membership import calibration_split, membership_attack, select_threshold
from tardiff_common.pipeline.config import EvaluationConfig

from .series import ar1


def _split(n, seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    x = ar1(n, channels=2, length=8, seed=seed)
    x[y == 1] += 0.5  # weakly informative
    return x, y


def _run(monkeypatch, tests, validation=None):
    """score_training_set on fixed train / validation; returns (thresholds used, labels fitted on)."""
    thresholds, fitted_on = [], []
    real_fit, real_scores = classification.f1_threshold, classification.binary_scores

    def fit_spy(y, p):
        fitted_on.append(y)
        return real_fit(y, p)

    def scores_spy(y, p, threshold):
        thresholds.append(threshold)
        return real_scores(y, p, threshold)

    monkeypatch.setattr(utility, "f1_threshold", fit_spy)
    monkeypatch.setattr(utility, "binary_scores", scores_spy)
    config = EvaluationConfig(classifier="cnn", hidden=4, num_layers=1, epochs=2, seeds=(0,))
    torch.manual_seed(0)  # build_classifier initializes from the global torch RNG
    utility.score_training_set(TRAIN, validation or VALIDATION, tests, config)
    return thresholds, fitted_on


TRAIN, VALIDATION, TEST = _split(96, 1), _split(48, 2), _split(48, 3)


def test_utility_threshold_ignores_test_labels(monkeypatch):
    x_test, y_test = TEST
    rng = np.random.default_rng(0)
    variants = [y_test, rng.permutation(y_test), 1 - y_test, np.ones_like(y_test)]
    results = [_run(monkeypatch, {"test": (x_test, y)}) for y in variants]
    thresholds = [t for ts, _ in results for t in ts]
    assert len(thresholds) == len(variants) and len(set(thresholds)) == 1
    for _, fitted_on in results:
        assert fitted_on and all(y is VALIDATION[1] for y in fitted_on)


def test_utility_threshold_moves_with_validation_labels(monkeypatch):
    """Control: the spy does see the threshold depend on the validation split."""
    before, _ = _run(monkeypatch, {"test": TEST})
    flipped = (VALIDATION[0], 1 - VALIDATION[1])
    after, fitted_on = _run(monkeypatch, {"test": TEST}, validation=flipped)
    assert before != after and all(y is flipped[1] for y in fitted_on)


def _distances(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return rng.gamma(4.0, 1.0, size=n), rng.gamma(5.0, 1.0, size=n)


def test_mia_threshold_ignores_evaluation_records():
    dm, dn = _distances()
    base = membership_attack(dm, dn, seed=0)
    cal_m, cal_n = calibration_split(len(dm), len(dn), seed=0, fraction=0.5)
    # The evaluation halves are made perfectly separable one way, then the other way round.
    for member_value, nonmember_value in ((0.0, 1e6), (1e6, 0.0)):
        dm2, dn2 = dm.copy(), dn.copy()
        dm2[~cal_m], dn2[~cal_n] = member_value, nonmember_value
        res = membership_attack(dm2, dn2, seed=0)
        assert res["mia_threshold"] == base["mia_threshold"]
        assert res["mia_auc"] == (1.0 if member_value == 0.0 else 0.0)


def test_mia_threshold_is_the_calibration_fit():
    dm, dn = _distances(seed=1)
    cal_m, cal_n = calibration_split(len(dm), len(dn), seed=3, fraction=0.5)
    expected = select_threshold(np.concatenate([dm[cal_m], dn[cal_n]]),
                                np.r_[np.ones(cal_m.sum()), np.zeros(cal_n.sum())])
    assert membership_attack(dm, dn, seed=3)["mia_threshold"] == expected
    assert 0 < cal_m.sum() < len(dm) and 0 < cal_n.sum() < len(dn)


def test_select_threshold_rule_is_distance_at_most_tau():
    d = np.array([0.1, 0.2, 0.3, 5.0, 6.0, 7.0])
    member = np.array([1, 1, 1, 0, 0, 0])
    tau = select_threshold(d, member)
    assert 0.3 <= tau < 5.0
    assert np.array_equal((d <= tau).astype(int), member)


def test_common_random_numbers_make_an_identical_set_score_identically():
    """Every training set is fitted with the same evaluation seeds, so a copy of a set scores
    exactly like the set, and a set passed twice (the same object) is scored once and copied."""
    import numpy as np

    from tardiff_common.metrics.utility import evaluate_utility
    from tardiff_common.pipeline.config import EvaluationConfig

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2, 8)).astype(np.float32)
    y = (np.arange(60) % 3 == 0).astype(np.int64)
    x[y == 1] += 0.7
    config = EvaluationConfig(classifier="cnn", hidden=4, num_layers=1, epochs=2, seeds=(0, 1),
                              tsrtr_ratios=(1.0,))
    synthetic = (x[::-1].copy(), y[::-1].copy())
    shared = evaluate_utility((x, y), (x, y), {"t": (x, y)}, {"a": synthetic, "b": synthetic}, config)
    copied = evaluate_utility((x, y), (x, y), {"t": (x, y)},
                              {"a": synthetic, "b": (synthetic[0].copy(), synthetic[1].copy())}, config)
    assert copied["tstr"]["a"] == copied["tstr"]["b"] == shared["tstr"]["b"]
    assert copied["tsrtr"]["b"] == shared["tsrtr"]["b"]
