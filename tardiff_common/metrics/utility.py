"""Downstream utility of synthetic data: TSTR and TSRTR (Esteban et al., 2017; TarDiff Sec. 4).

* TSTR  — train the downstream classifier on synthetic records only, test on real test splits.
* TSRTR — train on the real training split plus synthetic records amounting to ``ratio`` x its
          size, test on real test splits.
* real  — the reference: train on the real training split only.

Each training set is fitted ``len(EvaluationConfig.seeds)`` times with fresh classifiers; each
fitted model is scored on every test split in ``tests`` (e.g. the pooled test split and each
site's), giving one summary (mean, 95 % CI, per-run values) per test split. The F1 threshold
is chosen on the real *validation* split; test splits are only scored.
Arrays: x [N, C, L] float32 (normalized scale), y [N] int64.
"""

from __future__ import annotations

import numpy as np
import torch

from ..models.classifier import build_classifier
from ..pipeline.config import EvaluationConfig, derive_seed
from ..training.classifier import predict_proba, train_classifier
from .classification import binary_scores, f1_threshold
from .summary import summarize_runs

__all__ = ["score_training_set", "evaluate_utility", "take_with_label_mix"]

Split = tuple[np.ndarray, np.ndarray]


def score_training_set(
    train: Split,
    validation: Split,
    tests: dict[str, Split],
    config: EvaluationConfig,
    *,
    device: str = "cpu",
    tag: int = 0,
) -> dict[str, dict]:
    """{test name: summary of AUROC, AUPRC, minority F1 over the evaluation seeds}."""
    x_train, y_train = train
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in tests}
    for seed in config.seeds:
        run_seed = derive_seed(seed, tag)
        torch.manual_seed(run_seed)  # fresh weights depend on the run's seed, not on what ran before
        model = build_classifier(x_train.shape[1], config.classifier_config()).to(device)
        train_classifier(model, x_train, y_train, config.train_config(), seed=run_seed)
        threshold = f1_threshold(validation[1], predict_proba(model, validation[0]))
        for name, (x_test, y_test) in tests.items():
            runs[name].append(binary_scores(y_test, predict_proba(model, x_test), threshold))
    return {name: summarize_runs(r) for name, r in runs.items()}


def take_with_label_mix(x: np.ndarray, y: np.ndarray, n: int) -> Split:
    """The first n records, taken from each class in proportion to its share of y."""
    if n >= len(y):
        return x, y
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    n_pos = int(round(n * len(pos) / max(len(y), 1)))
    idx = np.sort(np.concatenate([pos[:n_pos], neg[: n - n_pos]]))
    return x[idx], y[idx]


def evaluate_utility(
    real_train: Split,
    validation: Split,
    tests: dict[str, Split],
    synthetic: dict[str, Split],
    config: EvaluationConfig,
    *,
    device: str = "cpu",
) -> dict[str, dict]:
    """{"tstr": {"real" | name: {test: summary}}, "tsrtr": {name: {"<ratio>": {test: summary}}}}."""
    tstr = {"real": score_training_set(real_train, validation, tests, config, device=device, tag=0)}
    tsrtr: dict[str, dict] = {}
    for k, (name, (xs, ys)) in enumerate(synthetic.items(), start=1):
        tstr[name] = score_training_set((xs, ys), validation, tests, config, device=device, tag=k)
        tsrtr[name] = {}
        for ratio in config.tsrtr_ratios:
            xa, ya = take_with_label_mix(xs, ys, int(round(ratio * len(real_train[1]))))
            mixed = (np.concatenate([real_train[0], xa]), np.concatenate([real_train[1], ya]))
            tsrtr[name][f"{ratio:g}"] = score_training_set(
                mixed, validation, tests, config, device=device, tag=100 * k + int(100 * ratio)
            )
    return {"tstr": tstr, "tsrtr": tsrtr}
