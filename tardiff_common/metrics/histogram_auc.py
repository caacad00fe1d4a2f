"""Pooled AUROC / AUPRC from per-site score histograms: metrics only, no record leaves a site.

Why: a federated evaluation scores one classifier on every site's test split. The usual
summary, a test-size-weighted mean of per-site AUROCs, is unstable on ICU data: a site's test
split holds 10-40 records with a handful of positives, so its AUROC swings from 0 to 1 with
one record, and the mean of such values is not the AUROC of the pooled test records (AUROC is
a pairwise statistic; positives of one site are never ranked against negatives of another).
Sending the (y, p) pairs would give the pooled value but moves records off the site.

Instead each site sends, per evaluation run, the counts of its predicted scores P(y=1) by label
in ``bins`` fixed equal-width bins on [0, 1]: H^k [2, bins] int64 (row 0 label 0, row 1
label 1). Counts are additive, so the histogram of the pooled test records is exactly
H = sum_k H^k, and the server computes the pooled metrics from H alone. Treating the scores
within a bin as tied, the result equals the pooled AUROC / AUPRC of scores replaced by their
bin centres. For any scores, pairs in different bins are ranked exactly and a pair sharing a bin gets
half credit instead of 0, 1/2 or 1, so the AUROC differs from the exact pooled one by at most
half the fraction of (positive, negative) pairs sharing a bin: about int f_1 f_0 / (2 bins) for
smooth score densities f_1, f_0 (well under 1/bins unless the scores pile up in a few bins).

Notation for a histogram ``counts`` [2, B]: n_b = counts[0, b] negatives and p_b = counts[1, b]
positives in bin b (bin b covers [b/B, (b+1)/B), the last bin also holds 1.0); N = sum n_b,
P = sum p_b.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SCORE_BINS", "score_histogram", "auroc_from_histogram", "auprc_from_histogram", "histogram_scores"]

SCORE_BINS = 200
"""Default number of equal-width score bins on [0, 1] (resolution 0.005)."""


def _bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    """Index of the bin [b/bins, (b+1)/bins) holding each p in [0, 1]; 1.0 goes in the last bin.

    floor(p * bins) can be off by one at an edge (0.29 * 100 = 28.999...), so the index is
    corrected against the edges b / bins (correctly rounded, so p = b / bins opens bin b).
    """
    edges = np.arange(bins + 1, dtype=np.float64) / bins
    idx = np.clip(np.floor(p * bins).astype(np.int64), 0, bins - 1)
    idx -= p < edges[idx]
    idx += (p >= edges[idx + 1]) & (idx < bins - 1)
    return idx


def score_histogram(y: np.ndarray, p: np.ndarray, bins: int = SCORE_BINS) -> np.ndarray:
    """Counts of predicted scores by label: int64 [2, bins], row 0 label 0, row 1 label 1.

    y [N] labels in {0, 1} (bool, int or float); p [N] scores P(y=1), clipped into [0, 1].
    Bin b counts the scores in [b/bins, (b+1)/bins); p == 1 is counted in the last bin.
    Raises ``ValueError`` for a bad ``bins``, non-1-D or mismatched inputs, labels outside
    {0, 1} or NaN scores. ``counts.sum() == N``.
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    bins = int(bins)
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1:
        raise ValueError(f"labels y and scores p must be 1-D, got shapes {y.shape} and {p.shape}")
    if y.shape != p.shape:
        raise ValueError(f"labels y and scores p differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size:
        if y.dtype == bool:
            y = y.astype(np.int64)
        elif not np.issubdtype(y.dtype, np.number):
            raise ValueError(f"labels y must be numeric 0/1, got dtype {y.dtype}")
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            raise ValueError(f"labels y must be 0 or 1; found {np.unique(y[bad])[:5].tolist()}")
        if np.isnan(p).any():
            raise ValueError(f"scores p contain {int(np.isnan(p).sum())} NaN value(s)")
    counts = np.zeros((2, bins), dtype=np.int64)
    if y.size:
        idx = _bin_index(np.clip(p, 0.0, 1.0), bins)
        np.add.at(counts, (y.astype(np.int64), idx), 1)
    return counts


def _as_counts(counts) -> np.ndarray:
    """``counts`` as a validated float64 [2, B] array of non-negative whole numbers."""
    arr = np.asarray(counts)
    if arr.ndim != 2 or arr.shape[0] != 2 or arr.shape[1] < 1:
        raise ValueError(f"score histogram must have shape [2, bins], got {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr != np.round(arr)).any():
        raise ValueError("score histogram counts must be finite non-negative whole numbers")
    return arr


def auroc_from_histogram(counts) -> float:
    """Mann-Whitney AUROC of a score histogram ``counts`` [2, B], scores in one bin tied.

        AUROC = sum_b n_b (sum_{c > b} p_c + p_b / 2) / (P N)

    the probability that a random positive outscores a random negative, with half credit for
    a tie (same bin). This is what ``sklearn.metrics.roc_auc_score`` (trapezoidal ROC, tied
    scores grouped into one threshold) returns on scores replaced by their bin centres. NaN when
    either class is empty.
    """
    arr = _as_counts(counts)
    neg, pos = arr
    total_neg, total_pos = neg.sum(), pos.sum()
    if total_neg == 0 or total_pos == 0:
        return float("nan")
    pos_above = np.cumsum(pos[::-1])[::-1] - pos  # positives in strictly higher bins
    # integer-valued float64 sums: exact below 2**53, so the only rounding is the division
    wins2 = 2.0 * float(np.dot(neg, pos_above)) + float(np.dot(neg, pos))
    return wins2 / (2.0 * total_pos * total_neg)


def auprc_from_histogram(counts) -> float:
    """Average precision of a score histogram ``counts`` [2, B], thresholds at bin edges.

    Thresholds t_b = b/B taken in descending order b = B-1, ..., 0; at t_b everything in bins
    >= b is called positive: TP_b = sum_{c >= b} p_c, FP_b = sum_{c >= b} n_c,
    R_b = TP_b / P, P_b = TP_b / (TP_b + FP_b), and (sklearn's definition, no interpolation)

        AP = sum_b (R_b - R_{b+1}) P_b = sum_b (p_b / P) TP_b / (TP_b + FP_b),

    summed over bins with p_b > 0 (the others add nothing). Equals
    ``sklearn.metrics.average_precision_score`` on scores replaced by their bin centres (sklearn groups
    tied scores into one threshold). NaN when there are no positives.
    """
    arr = _as_counts(counts)
    neg, pos = arr
    total_pos = pos.sum()
    if total_pos == 0:
        return float("nan")
    tp = np.cumsum(pos[::-1])[::-1]
    fp = np.cumsum(neg[::-1])[::-1]
    hit = pos > 0  # then tp > 0, so the precision is defined
    return float(np.sum(pos[hit] / total_pos * tp[hit] / (tp[hit] + fp[hit])))


def histogram_scores(counts) -> dict:
    """{"auroc", "auprc", "positives", "negatives"} of a score histogram ``counts`` [2, B]
    (metrics NaN as in ``auroc_from_histogram`` / ``auprc_from_histogram``; counts as int)."""
    arr = _as_counts(counts)
    return {
        "auroc": auroc_from_histogram(arr),
        "auprc": auprc_from_histogram(arr),
        "positives": int(arr[1].sum()),
        "negatives": int(arr[0].sum()),
    }
