"""Gradient-boosting benchmark: summary features over observed steps only, and the same summary
schema as the evaluation classifier's real-only row."""

from __future__ import annotations

import numpy as np
import pytest

from tardiff_common.metrics.gbm_baseline import feature_names, score_gbm, summary_features


def test_features_use_observed_steps_only_and_nan_when_never_observed():
    x = np.array([[[1.0, 5.0, 3.0, 99.0], [7.0, 7.0, 7.0, 7.0]]])  # [1, 2, 4]
    mask = np.array([[[True, True, True, False], [False, False, False, False]]])
    f = summary_features(x, mask)
    assert f.shape == (1, 8)
    np.testing.assert_allclose(f[0, [0, 2, 4, 6]], [3.0, 1.0, 5.0, 3.0])  # mean, min, max, last of channel 0
    assert np.isnan(f[0, [1, 3, 5, 7]]).all()  # channel 1 never observed
    np.testing.assert_allclose(summary_features(x)[0, :2], [27.0, 7.0])  # no mask: every step counts
    assert feature_names(("a", "b"))[:3] == ["mean_a", "mean_b", "min_a"]


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"\[N, C, L\]"):
        summary_features(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="mask shape"):
        summary_features(np.zeros((2, 1, 3)), np.ones((2, 1, 4), dtype=bool))


def _split(n, seed, signal):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.int64)
    x = rng.normal(size=(n, 2, 12)) + signal * y[:, None, None]
    return x, rng.random(x.shape) > 0.3, y


def test_scores_follow_the_signal_and_have_the_real_row_schema():
    strong = score_gbm(_split(200, 0, 1.0), _split(60, 1, 1.0), {"test": _split(100, 2, 1.0)}, (0, 1))["test"]
    noise = score_gbm(_split(200, 0, 0.0), _split(60, 1, 0.0), {"test": _split(100, 2, 0.0)}, (0,))["test"]
    assert {"auroc", "auprc", "minority_f1", "ci95", "values", "runs"} <= set(strong)
    assert strong["runs"] == 2 and strong["auroc"] > 0.9
    assert abs(noise["auroc"] - 0.5) < 0.2
