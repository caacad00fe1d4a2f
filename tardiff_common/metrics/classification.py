"""Binary classification scores as the field reports them: AUROC, AUPRC, minority-class F1.

AUPRC is average precision (sklearn). The F1 of the minority (positive) class needs a
threshold; ``f1_threshold`` picks it on a *validation* split (the F1-maximizing cut), and the
test split only ever sees that fixed threshold.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

__all__ = ["f1_threshold", "binary_scores"]


def f1_threshold(y_val: np.ndarray, p_val: np.ndarray) -> float:
    """Threshold on P(y=1) that maximizes validation F1 of class 1 (0.5 if undefined)."""
    y_val = np.asarray(y_val)
    if y_val.size == 0 or y_val.min() == y_val.max():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y_val, p_val)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def binary_scores(y_true: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """{"auroc", "auprc", "minority_f1"}; AUROC/AUPRC are NaN when y_true has one class."""
    y_true = np.asarray(y_true)
    both = y_true.size > 0 and y_true.min() != y_true.max()
    return {
        "auroc": float(roc_auc_score(y_true, p)) if both else float("nan"),
        "auprc": float(average_precision_score(y_true, p)) if both else float("nan"),
        "minority_f1": float(f1_score(y_true, (p >= threshold).astype(int), zero_division=0)),
    }
