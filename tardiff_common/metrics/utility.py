"""Downstream utility of synthetic data: TSTR and TSRTR (Esteban et al., 2017; TarDiff Sec. 4).

* TSTR  — train the downstream classifier on synthetic records only, test on real test splits.
* TSRTR — train on the real training split plus synthetic records amounting to ``ratio`` x its
          size, test on real test splits.
* real  — the reference: train on the real training split only.

Each training set is fitted ``len(EvaluationConfig.seeds)`` times with fresh classifiers; each
fitted model is scored on every test split in ``tests`` (e.g. the pooled test split and each
site's), giving one summary (mean, 95 % CI, per-run values) per test split.

Common random numbers: run r of *every* training set uses the same classifier seed
(``derive_seed(seeds[r])``: the same initial weights), so two sets' per-run values are paired
and their difference (``metrics.paired``) is free of the initialization noise that would
otherwise move a single comparison by a few hundredths of AUROC.

The F1 threshold, and the epoch at which each classifier stops (``EvaluationConfig.patience``:
the epoch with the lowest loss on that split, ``training.early_stopping``), are chosen on a real
split that is neither trained on nor reported (the *tuning* split in the pipeline); test splits
are only scored. With ``histogram_bins`` each
test summary also carries, per run, the counts of predicted scores by label
(``metrics.histogram_auc``) so that sites can be pooled without sending a record.
Arrays: x [N, C, L] float32 (normalized scale), y [N] int64.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..models.classifier import build_classifier
from ..pipeline.config import EvaluationConfig, derive_seed
from ..training.classifier import predict_proba, train_classifier
from ..training.early_stopping import train_early_stopped
from .classification import binary_scores, f1_threshold
from .histogram_auc import score_histogram
from .summary import summarize_runs

__all__ = ["fit_evaluation_classifier", "score_training_set", "evaluate_utility", "take_with_label_mix",
           "tsrtr_training_set"]

Split = tuple[np.ndarray, np.ndarray]


def fit_evaluation_classifier(train: Split, config: EvaluationConfig, seed: int, *, validation: Split | None = None,
                              device: str = "cpu") -> nn.Module:
    """A fresh evaluation classifier trained on ``train``; its initial weights and batch order
    depend on ``seed`` only (common random numbers across training sets). With a ``validation``
    split and ``config.patience`` > 0 it stops early on that split's loss and keeps its best
    epoch (``training.early_stopping``); else it trains ``config.epochs`` epochs."""
    x_train, y_train = train
    run_seed = derive_seed(seed)
    torch.manual_seed(run_seed)  # fresh weights depend on the run's seed, not on what ran before
    model = build_classifier(x_train.shape[1], config.classifier_config()).to(device)
    if validation is not None and config.patience > 0:
        train_early_stopped(model, train, validation, config.train_config(), seed=run_seed, patience=config.patience)
    else:
        train_classifier(model, x_train, y_train, config.train_config(), seed=run_seed)
    return model


def score_training_set(
    train: Split,
    validation: Split,
    tests: dict[str, Split],
    config: EvaluationConfig,
    *,
    device: str = "cpu",
    histogram_bins: int | None = None,
) -> dict[str, dict]:
    """{test name: summary of AUROC, AUPRC, minority F1 over the evaluation seeds} (+ "histograms":
    per run, [2, bins] counts of P(y=1) by label, when ``histogram_bins`` is given)."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in tests}
    histograms: dict[str, list[list]] = {name: [] for name in tests}
    for seed in config.seeds:
        model = fit_evaluation_classifier(train, config, seed, validation=validation, device=device)
        threshold = f1_threshold(validation[1], predict_proba(model, validation[0]))
        for name, (x_test, y_test) in tests.items():
            p = predict_proba(model, x_test)
            runs[name].append(binary_scores(y_test, p, threshold))
            if histogram_bins:
                histograms[name].append(score_histogram(y_test, p, histogram_bins).tolist())
    out = {name: summarize_runs(r) for name, r in runs.items()}
    if histogram_bins:
        for name in tests:
            out[name]["histograms"] = histograms[name]
    return out


def take_with_label_mix(x: np.ndarray, y: np.ndarray, n: int) -> Split:
    """The first n records, taken from each class in proportion to its share of y."""
    if n >= len(y):
        return x, y
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    n_pos = int(round(n * len(pos) / max(len(y), 1)))
    idx = np.sort(np.concatenate([pos[:n_pos], neg[: n - n_pos]]))
    return x[idx], y[idx]


def tsrtr_training_set(real_train: Split, synthetic: Split, ratio: float) -> Split:
    """The real training split plus ``ratio`` x its size synthetic records (label mix kept)."""
    xa, ya = take_with_label_mix(*synthetic, int(round(ratio * len(real_train[1]))))
    return np.concatenate([real_train[0], xa]), np.concatenate([real_train[1], ya])


def evaluate_utility(
    real_train: Split | None,
    validation: Split,
    tests: dict[str, Split],
    synthetic: dict[str, Split],
    config: EvaluationConfig,
    *,
    device: str = "cpu",
    histogram_bins: int | None = None,
) -> dict[str, dict]:
    """{"tstr": {"real" | name: {test: summary}}, "tsrtr": {name: {"<ratio>": {test: summary}}}}.
    ``real_train=None`` (under DP): no classifier sees a real training record -- TSTR of the
    synthetic sets only, no "real" row, "tsrtr" {}."""
    kw = dict(device=device, histogram_bins=histogram_bins)
    tstr = {} if real_train is None else {"real": score_training_set(real_train, validation, tests, config, **kw)}
    tsrtr: dict[str, dict] = {}
    done: list[str] = []
    for name, synthetic_set in synthetic.items():
        # a set that *is* an earlier one (e.g. "tardiff" when s = 0 was chosen) has its scores:
        # with common random numbers they would come out identical, so they are copied, not recomputed
        same = next((k for k in done if synthetic[k] is synthetic_set), None)
        done.append(name)
        if same is not None:
            tstr[name] = copy.deepcopy(tstr[same])
            if real_train is not None:
                tsrtr[name] = copy.deepcopy(tsrtr[same])
            continue
        tstr[name] = score_training_set(synthetic_set, validation, tests, config, **kw)
        if real_train is None:
            continue
        tsrtr[name] = {
            f"{ratio:g}": score_training_set(tsrtr_training_set(real_train, synthetic_set, ratio), validation, tests,
                                             config, **kw)
            for ratio in config.tsrtr_ratios
        }
    return {"tstr": tstr, "tsrtr": tsrtr}
