"""Pooled AUROC / AUPRC from score histograms: exact on bin-quantized scores, within the
bin-resolution bound otherwise, and additive over sites."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from tardiff_common.metrics.histogram_auc import (
    SCORE_BINS,
    auprc_from_histogram,
    auroc_from_histogram,
    histogram_scores,
    score_histogram,
)


@st.composite
def quantized_data(draw):
    """(y, p, bins): scores at bin centres (k + 0.5) / bins, both classes present, many ties."""
    bins = draw(st.sampled_from([1, 2, 7, 50, SCORE_BINS]))
    n = draw(st.integers(2, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    prevalence = draw(st.floats(0.02, 0.98))
    y = (rng.random(n) < prevalence).astype(np.int64)
    y[:2] = [0, 1]
    k = rng.integers(0, bins, size=n)
    k = np.where(y == 1, np.minimum(k + rng.integers(0, bins // 4 + 1, size=n), bins - 1), k)  # some signal
    return y, (k + 0.5) / bins, bins


@settings(max_examples=60, deadline=None)
@given(quantized_data())
def test_quantized_scores_match_sklearn_exactly(data):
    y, p, bins = data
    counts = score_histogram(y, p, bins)
    assert counts.shape == (2, bins) and counts.dtype == np.int64
    assert counts.sum() == len(y) and counts[1].sum() == y.sum()
    assert abs(auroc_from_histogram(counts) - roc_auc_score(y, p)) < 1e-12
    assert abs(auprc_from_histogram(counts) - average_precision_score(y, p)) < 1e-9


def test_all_scores_in_one_bin_is_chance_and_prevalence():
    y = np.array([0, 1, 1, 0, 0])
    counts = score_histogram(y, np.full(5, 0.3), 10)
    assert auroc_from_histogram(counts) == 0.5
    assert auprc_from_histogram(counts) == pytest.approx(0.4)


@pytest.mark.parametrize("bins", [20, SCORE_BINS])
def test_continuous_scores_within_bin_resolution(bins):
    rng = np.random.default_rng(bins)
    for _ in range(5):
        n = 400
        y = (rng.random(n) < 0.2).astype(np.int64)
        p = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + 1.2 * y - 1.0)))
        counts = score_histogram(y, p, bins)
        exact = roc_auc_score(y, p)
        approx = auroc_from_histogram(counts)
        # pairs in different bins are ranked exactly; a same-bin pair is off by at most 1/2
        same_bin_pairs = float(np.dot(counts[0], counts[1])) / (counts[0].sum() * counts[1].sum())
        assert abs(approx - exact) <= 0.5 * same_bin_pairs + 1e-12
        assert abs(approx - exact) < 2.0 / bins
        assert abs(auprc_from_histogram(counts) - average_precision_score(y, p)) < 0.05


def test_site_histograms_sum_to_the_pooled_histogram():
    rng = np.random.default_rng(3)
    sizes = [12, 35, 7, 240, 20]  # tiny test splits, as at ICU sites
    ys, ps = [], []
    for i, n in enumerate(sizes):
        y = (rng.random(n) < 0.1 + 0.05 * i).astype(np.int64)
        ys.append(y)
        ps.append(rng.beta(2 + 2 * y, 5))
    site_counts = [score_histogram(y, p) for y, p in zip(ys, ps)]
    y_all, p_all = np.concatenate(ys), np.concatenate(ps)
    pooled = score_histogram(y_all, p_all)
    np.testing.assert_array_equal(sum(site_counts), pooled)
    summed = histogram_scores(sum(site_counts))
    assert summed == histogram_scores(pooled)
    assert summed["positives"] == int(y_all.sum()) and summed["negatives"] == int((y_all == 0).sum())
    assert abs(summed["auroc"] - roc_auc_score(y_all, p_all)) < 2.0 / SCORE_BINS


def test_binning_edges_and_clipping():
    bins = 100
    k = np.arange(bins + 1)
    counts = score_histogram(np.zeros(bins + 1, dtype=int), k / bins, bins)  # b / bins opens bin b
    np.testing.assert_array_equal(counts[0], np.r_[np.ones(bins - 1), 2])  # 1.0 joins the last bin
    counts = score_histogram(np.array([1, 1, 0, 0]), np.array([-0.5, 1.5, -np.inf, np.inf]), bins)
    assert counts[1, 0] == 1 and counts[1, -1] == 1 and counts[0, 0] == 1 and counts[0, -1] == 1
    p = np.random.default_rng(0).random(1000)
    np.testing.assert_array_equal(
        score_histogram(np.ones(1000, dtype=bool), p, bins)[1], np.histogram(p, bins=bins, range=(0.0, 1.0))[0]
    )


def test_empty_class_gives_nan():
    only_neg = score_histogram(np.zeros(5, dtype=int), np.linspace(0, 1, 5), 10)
    assert np.isnan(auroc_from_histogram(only_neg)) and np.isnan(auprc_from_histogram(only_neg))
    only_pos = score_histogram(np.ones(5, dtype=int), np.linspace(0, 1, 5), 10)
    assert np.isnan(auroc_from_histogram(only_pos)) and auprc_from_histogram(only_pos) == 1.0
    empty = score_histogram(np.array([], dtype=int), np.array([]), 10)
    assert empty.shape == (2, 10) and empty.sum() == 0
    scores = histogram_scores(empty)
    assert np.isnan(scores["auroc"]) and np.isnan(scores["auprc"])
    assert scores["positives"] == 0 and scores["negatives"] == 0


def test_bad_input_raises_naming_the_problem():
    with pytest.raises(ValueError, match="must be 0 or 1"):
        score_histogram(np.array([0, 2, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="must be 0 or 1"):
        score_histogram(np.array([0, -1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="differ in length"):
        score_histogram(np.array([0, 1, 1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="1-D"):
        score_histogram(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        score_histogram(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        score_histogram(np.array([0, 1]), np.array([0.1, 0.2]), bins=0)
    with pytest.raises(ValueError, match=r"shape \[2, bins\]"):
        auroc_from_histogram(np.zeros((3, 10)))
    with pytest.raises(ValueError, match="non-negative whole numbers"):
        auprc_from_histogram(np.array([[1, -1], [0, 2]]))
    with pytest.raises(ValueError, match="non-negative whole numbers"):
        histogram_scores(np.array([[1.5, 0.0], [0.0, 2.0]]))
