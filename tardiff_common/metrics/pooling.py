"""Pooled AUROC / AUPRC over sites from per-site score histograms (metrics only).

A site's evaluation summary may carry, per evaluation run r, the counts of its test split's
predicted scores by label, H^k_r [2, bins] (``metrics.utility`` with ``histogram_bins``; on the
wire flattened run-major). The pooled figure of run r is the metric of sum_k H^k_r: the AUROC /
AUPRC of the pooled test records up to bin resolution, where a test-size-weighted mean of
per-site AUROCs over 10-40-record test splits swings from 0 to 1.
"""

from __future__ import annotations

import numpy as np

from .histogram_auc import auprc_from_histogram, auroc_from_histogram
from .summary import summarize_runs

__all__ = ["run_histograms", "pooled_summary", "strip_histograms"]


def run_histograms(summary: dict, bins: int) -> np.ndarray:
    """A summary's "histograms" (nested or flat) as an int64 array [runs, 2, bins]."""
    values = np.asarray(summary["histograms"], dtype=np.int64).reshape(-1)
    if values.size % (2 * bins):
        raise ValueError(f"score histograms hold {values.size} counts, not a multiple of 2 x {bins}")
    return values.reshape(-1, 2, bins)


def pooled_summary(site_summaries: list[dict], bins: int) -> dict:
    """Summary (mean, ci95, values over runs) of the histogram-pooled AUROC and AUPRC."""
    stacks = [run_histograms(s, bins) for s in site_summaries]
    runs = min(len(h) for h in stacks)
    rows = []
    for r in range(runs):
        total = sum(h[r] for h in stacks)
        rows.append({"auroc": auroc_from_histogram(total), "auprc": auprc_from_histogram(total)})
    return summarize_runs(rows)


def strip_histograms(nested):
    """A copy of nested metrics without any "histograms" entry (for metrics.json)."""
    if isinstance(nested, dict):
        return {k: strip_histograms(v) for k, v in nested.items() if k != "histograms"}
    return nested
