"""Mean and 95 % confidence interval over repeated runs (seeds), and site-weighted pooling.

A *summary* is ``{metric: mean, ..., "ci95": {metric: half-width}, "values": {metric: [per
run]}, "runs": n}``. Keeping the per-run values lets sites be pooled run by run (weighted by
test size) before the CI is taken, so a federated CI reflects seed-to-seed variation of the
pooled figure, the same quantity as the centralized CI.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["mean_ci", "summarize_runs", "finite_weighted_mean", "weighted_summary"]


def mean_ci(values: list[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the Student-t CI); half-width is NaN for fewer than 2 finite values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    half = stats.t.ppf(0.5 + level / 2, df=v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(half)


def summarize_runs(runs: list[dict[str, float]]) -> dict[str, object]:
    """[{metric: value} per run] -> summary (see module docstring)."""
    if not runs:
        raise ValueError("no runs to summarize")
    out: dict[str, object] = {}
    ci: dict[str, float] = {}
    values: dict[str, list[float]] = {}
    for metric in runs[0]:
        values[metric] = [float(r[metric]) for r in runs]
        out[metric], ci[metric] = mean_ci(values[metric])
    out["ci95"] = ci
    out["values"] = values
    out["runs"] = len(runs)
    return out


def finite_weighted_mean(values, weights) -> float:
    """sum_k w_k v_k / sum_k w_k over the k whose v_k is finite (None counts as NaN); NaN if no
    finite value carries weight. A site where a score is undefined (e.g. AUROC on a one-class
    test split) is left out of that score's average, the other weights renormalized."""
    vals = np.array([np.nan if v is None else v for v in values], dtype=float)
    w = np.asarray(weights, dtype=float) * np.isfinite(vals)
    return float(np.nansum(vals * w) / w.sum()) if w.sum() > 0 else float("nan")


def weighted_summary(summaries: list[dict], weights: list[float]) -> dict[str, object]:
    """Pool per-site summaries run by run, weighting site k by ``weights[k]`` (its test size).

    Each run's pooled value is ``finite_weighted_mean`` of the sites' values of that run.
    """
    if not summaries or len(summaries) != len(weights):
        raise ValueError("need one weight per summary")
    metrics = list(summaries[0]["values"])
    runs = min(len(s["values"][metrics[0]]) for s in summaries)
    return summarize_runs([{m: finite_weighted_mean([s["values"][m][r] for s in summaries], weights) for m in metrics}
                           for r in range(runs)])
