import math

import numpy as np
import pytest

from tardiff_common.metrics.fidelity import FidelityConfig, fidelity_over_seeds, fidelity_scores
from tardiff_common.pipeline.config import RunConfig

from .series import ar1

KEYS = {"discriminative", "discriminative_accuracy", "predictive_mae", "context_fid", "mia_auc", "mia_auprc",
        "mia_f1", "mia_accuracy", "mia_threshold", "dcr_members_median", "dcr_members_p5",
        "dcr_nonmembers_median", "dcr_nonmembers_p5", "dcr_ratio"}


def data():
    return ar1(80, length=12, seed=0), ar1(40, length=12, seed=1), ar1(60, length=12, seed=2)


def test_flat_float_scores_deterministic_under_seed():
    train, test, synthetic = data()
    a = fidelity_scores(train, test, synthetic, seed=0, config=FidelityConfig.tiny())
    assert set(a) == KEYS and all(isinstance(v, float) and math.isfinite(v) for v in a.values())
    assert a == fidelity_scores(train, test, synthetic, seed=0, config=FidelityConfig.tiny())


def test_metric_selection_and_reference():
    train, test, synthetic = data()
    config = FidelityConfig(metrics=("context_fid",), fid_kernels=8, max_records=50)
    only = fidelity_scores(train, test, synthetic, seed=0, config=config)
    assert set(only) == {"context_fid"}
    on_test = fidelity_scores(train, test, synthetic, seed=0, config=FidelityConfig(
        metrics=("context_fid",), fid_kernels=8, max_records=50, reference="test"))
    assert on_test != only
    with pytest.raises(ValueError):
        FidelityConfig(metrics=("fid",))
    with pytest.raises(ValueError):
        FidelityConfig(disc_epochs=-1)


def test_summary_over_seeds():
    train, test, synthetic = data()
    summary = fidelity_over_seeds(train, test, synthetic, seeds=(0, 1), config=FidelityConfig.tiny())
    assert summary["runs"] == 2 and set(summary["ci95"]) == KEYS
    assert all(len(v) == 2 for v in summary["values"].values())
    assert np.isclose(summary["context_fid"], np.mean(summary["values"]["context_fid"]))


def test_config_fields_are_flat_scalars_or_tuples():
    """So FidelityConfig can become a RunConfig section with "fidelity.<field>" keys."""
    for value in FidelityConfig().to_dict().values():
        assert isinstance(value, (int, float, str, tuple))
    assert not set(FidelityConfig().to_dict()) & set(RunConfig().to_flat())  # no flat key taken already


def test_run_config_fidelity_levels_map_onto_fidelity_configs():
    """evaluation.fidelity = "tiny" is the quick config, "default" the default one, "off" none."""
    from tardiff_common.pipeline.evaluation import fidelity_config

    assert fidelity_config(RunConfig().with_overrides({"evaluation.fidelity": "tiny"})) == FidelityConfig.tiny()
    assert fidelity_config(RunConfig().with_overrides({"evaluation.fidelity": "default"})) == FidelityConfig()
    assert fidelity_config(RunConfig().with_overrides({"evaluation.fidelity": "off"})) is None
