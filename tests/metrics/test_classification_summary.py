"""AUROC of trivial scorers and the behaviour of the seed-level confidence interval."""

import numpy as np

from tardiff_common.metrics.classification import binary_scores, f1_threshold
from tardiff_common.metrics.summary import mean_ci, summarize_runs


def labels():
    return np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 0])


def test_perfect_scorer_has_auroc_one():
    y = labels()
    scores = binary_scores(y, y.astype(float), threshold=0.5)
    assert scores["auroc"] == 1.0 and scores["auprc"] == 1.0 and scores["minority_f1"] == 1.0


def test_constant_scorer_has_auroc_one_half():
    y = labels()
    assert binary_scores(y, np.full(len(y), 0.3), threshold=0.5)["auroc"] == 0.5


def test_reversed_scorer_has_auroc_zero():
    y = labels()
    assert binary_scores(y, 1.0 - y, threshold=0.5)["auroc"] == 0.0


def test_f1_threshold_separates_separable_validation_scores():
    y = labels()
    p = np.where(y == 1, 0.8, 0.2) + np.linspace(0, 0.01, len(y))
    t = f1_threshold(y, p)
    assert p[y == 0].max() < t <= p[y == 1].min() and binary_scores(y, p, t)["minority_f1"] == 1.0


def test_ci_half_width_shrinks_with_more_seeds():
    values = np.random.default_rng(0).normal(loc=0.7, scale=0.05, size=30)
    mean3, half3 = mean_ci(values[:3])
    mean30, half30 = mean_ci(values)
    assert np.isfinite(half3) and half30 < half3
    assert abs(mean30 - 0.7) < half30 * 2


def test_ci_half_width_matches_student_t():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    # t_{0.975, 2} = 4.302652729911275, std = 1, sqrt(3)
    assert mean == 2.0 and np.isclose(half, 4.302652729911275 / np.sqrt(3))


def test_single_value_has_no_ci_and_summary_keeps_values():
    assert np.isnan(mean_ci([0.5])[1])
    summary = summarize_runs([{"a": 1.0}, {"a": 3.0}])
    assert summary["a"] == 2.0 and summary["values"]["a"] == [1.0, 3.0] and summary["runs"] == 2
