"""Paired differences between training sets scored with the same evaluation runs.

Every training set is fitted with the same evaluation seeds (common random numbers,
``metrics.utility``), and guided and unguided sets come from the same trained generator and
the same sampling noise, so the honest comparison of two sets is the distribution of their
*per-run differences*, not two overlapping intervals:

    d_r = m(A, run r) - m(B, run r),   mean(d) +/- t_{0.975, n-1} sd(d) / sqrt(n)

The same function serves across pipeline seeds (one d per seed) in the studies.
"""

from __future__ import annotations

import numpy as np

from .summary import summarize_runs

__all__ = ["paired_difference", "PAIRS"]

# (name, minuend, subtrahend): what every report compares
PAIRS = (
    ("tardiff - unguided", "tardiff", "unguided"),
    ("unguided_2 - unguided (null)", "unguided_2", "unguided"),
    ("tardiff - real", "tardiff", "real"),
)


def paired_difference(a: dict, b: dict) -> dict:
    """Summary (mean, ci95, values, runs) of the per-run differences a - b of two summaries with
    aligned runs (``summarize_runs``' "values"); raises ValueError if the runs do not align."""
    va, vb = a["values"], b["values"]
    if set(va) != set(vb):
        raise ValueError(f"paired_difference: metrics differ ({sorted(va)} vs {sorted(vb)})")
    runs = []
    for metric in va:
        if len(va[metric]) != len(vb[metric]):
            raise ValueError(f"paired_difference: {metric} has {len(va[metric])} vs {len(vb[metric])} runs")
    n = len(next(iter(va.values())))
    for r in range(n):
        runs.append({m: float(np.float64(va[m][r]) - np.float64(vb[m][r])) for m in va})
    return summarize_runs(runs)


def paired_tables(tstr: dict[str, dict], tsrtr: dict[str, dict[str, dict]]) -> dict:
    """{"tstr": {pair: difference}, "tsrtr": {ratio: {pair: difference}}} for the ``PAIRS`` whose
    sets are present; TSRTR's "real" is the real-only reference (the TSTR "real" row)."""
    out: dict = {"tstr": {}, "tsrtr": {}}
    for name, a, b in PAIRS:
        if a in tstr and b in tstr:
            out["tstr"][name] = paired_difference(tstr[a], tstr[b])
    ratios = sorted({r for by_ratio in tsrtr.values() for r in by_ratio}, key=float)
    for ratio in ratios:
        rows = {s: by_ratio[ratio] for s, by_ratio in tsrtr.items() if ratio in by_ratio}
        if "real" in tstr:
            rows["real"] = tstr["real"]
        out["tsrtr"][ratio] = {name: paired_difference(rows[a], rows[b]) for name, a, b in PAIRS
                               if a in rows and b in rows}
    return out
