"""A classifier benchmark for every real-only row: gradient boosting on summary statistics.

The evaluation classifier (a small CNN or GRU on the whole series) is only worth guiding by if it
is competitive on its inputs. This module fits scikit-learn's ``HistGradientBoostingClassifier``
on per-channel summary statistics of the *same* records and splits, so the two real-only rows
can be read side by side (issue 13).

Features, per record and channel c, over the *observed* steps only (``mask`` True; all steps
when there is no mask), NaN when the channel was never observed in the record (the booster
learns a direction for missing values):

    mean_c = average of x[c, t],  min_c,  max_c,  last_c = x[c, t_last]  (t_last: last observed step)

so ``features`` is float64 [N, 4 C], columns grouped by statistic (all means, then all minima,
maxima, last values). Training uses the training split; the F1 threshold is chosen on the tuning
split (as for the evaluation classifier); every test split is only scored. One fit per seed
(``random_state``), summarized like ``metrics.utility.score_training_set``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .classification import binary_scores, f1_threshold
from .summary import summarize_runs

__all__ = ["GBMConfig", "summary_features", "feature_names", "fit_gbm", "score_gbm"]

STATISTICS = ("mean", "min", "max", "last")


@dataclass(frozen=True)
class GBMConfig:
    """``HistGradientBoostingClassifier`` settings (scikit-learn defaults but a smaller learning
    rate, with early stopping on an internal 10 % of the training split)."""

    max_iter: int = 300
    learning_rate: float = 0.05
    max_leaf_nodes: int = 15
    l2_regularization: float = 1.0
    early_stopping: bool = True


def summary_features(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """[N, C, L] values (+ bool observed mask) -> float64 [N, 4 C] (mean, min, max, last per channel)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"summary_features expects x of shape [N, C, L], got {x.shape}")
    observed = np.ones(x.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if observed.shape != x.shape:
        raise ValueError(f"mask shape {observed.shape} differs from x shape {x.shape}")
    n, c, length = x.shape
    count = observed.sum(axis=2)  # [N, C]
    seen = count > 0
    masked = np.where(observed, x, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(seen, np.where(observed, x, 0.0).sum(axis=2) / np.maximum(count, 1), np.nan)
    low = np.where(seen, np.fmin.reduce(masked, axis=2), np.nan)
    high = np.where(seen, np.fmax.reduce(masked, axis=2), np.nan)
    last_index = length - 1 - np.argmax(observed[..., ::-1], axis=2)  # [N, C]
    last = np.where(seen, np.take_along_axis(x, last_index[..., None], axis=2)[..., 0], np.nan)
    return np.concatenate([mean, low, high, last], axis=1)


def feature_names(channels: tuple[str, ...]) -> list[str]:
    return [f"{stat}_{c}" for stat in STATISTICS for c in channels]


def fit_gbm(x: np.ndarray, mask: np.ndarray | None, y: np.ndarray, *, seed: int, config: GBMConfig = GBMConfig()):
    """A fitted ``HistGradientBoostingClassifier`` on ``summary_features(x, mask)`` and labels ``y``."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    y = np.asarray(y, dtype=np.int64)
    if np.unique(y).size < 2:
        raise ValueError("gradient-boosting baseline: the training split holds a single class")
    model = HistGradientBoostingClassifier(
        max_iter=config.max_iter, learning_rate=config.learning_rate, max_leaf_nodes=config.max_leaf_nodes,
        l2_regularization=config.l2_regularization, early_stopping=config.early_stopping, random_state=int(seed),
    )
    return model.fit(summary_features(x, mask), y)


Arrays = tuple[np.ndarray, np.ndarray | None, np.ndarray]  # x [N, C, L], mask [N, C, L] or None, y [N]


def score_gbm(train: Arrays, tuning: Arrays, tests: dict[str, Arrays], seeds: tuple[int, ...],
              config: GBMConfig = GBMConfig()) -> dict[str, dict]:
    """{test name: summary of AUROC, AUPRC, minority F1 over ``seeds``}, the same schema as the
    evaluation classifier's real-only row (``metrics.utility.score_training_set``)."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in tests}
    for seed in seeds:
        model = fit_gbm(*train, seed=seed, config=config)
        threshold = f1_threshold(tuning[2], model.predict_proba(summary_features(tuning[0], tuning[1]))[:, 1])
        for name, (x, mask, y) in tests.items():
            p = model.predict_proba(summary_features(x, mask))[:, 1]
            runs[name].append(binary_scores(y, p, threshold))
    return {name: summarize_runs(r) for name, r in runs.items()}
