"""The external-validation table pools the runs of several pipeline runs, keeping them paired."""

from __future__ import annotations

import pytest

from simulations.external_table import group_rows
from tardiff_common.metrics.summary import summarize_runs


def _summary(values: list[float]) -> dict:
    return summarize_runs([{"auroc": v, "auprc": v / 2, "minority_f1": v / 3} for v in values])


def _metrics(base: list[float], shift: float, chosen: str) -> dict:
    sets = {"real": _summary(base), "unguided": _summary([v - 0.1 for v in base]),
            "unguided_2": _summary([v - 0.1 for v in base]), "tardiff": _summary([v - 0.1 + shift for v in base])}
    return {"selection": {"chosen": {"label": chosen}},
            "external": {"cohort": {"records": 10, "positives": 2}, "tstr": sets,
                         "tsrtr": {name: {"1.0": s} for name, s in sets.items() if name != "real"},
                         "baselines": {"gbm": _summary(base)}}}


def test_pooled_differences_stay_paired_across_pipeline_runs():
    lines, rows = group_rows("b", [_metrics([0.7, 0.8], 0.02, "x0:0.05"), _metrics([0.6, 0.9], 0.02, "unguided")])
    diff = rows["TSTR tardiff - unguided"]
    assert diff["runs"] == 4 and diff["auroc"] == pytest.approx(0.02) and diff["ci95"]["auroc"] == pytest.approx(0, abs=1e-9)
    assert rows["TSTR real"]["values"]["auroc"] == [0.7, 0.8, 0.6, 0.9]
    assert rows["TSTR null: unguided_2 - unguided"]["auroc"] == pytest.approx(0)
    assert "chosen on tuning: x0:0.05, unguided" in lines[-1]
