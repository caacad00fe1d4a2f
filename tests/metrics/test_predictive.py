import numpy as np
import pytest

from tardiff_common.metrics.predictive import PredictiveConfig, predictive_score

from .series import ar1, white_noise

FAST = PredictiveConfig(epochs=6, min_steps=0, batch_size=32)


@pytest.mark.parametrize("target", ["all", "last_channel"])
def test_training_on_real_like_data_beats_training_on_noise(target):
    config = PredictiveConfig(target=target, epochs=4, min_steps=0, batch_size=32)
    real = ar1(150, length=16, seed=0)
    same = predictive_score(real, real, seed=0, config=config)["predictive_mae"]
    bad = predictive_score(real, white_noise(150, length=16, seed=2), seed=0, config=config)["predictive_mae"]
    assert same < bad


def test_fresh_samples_of_the_real_process_beat_noise():
    real = ar1(150, length=16, seed=0)
    good = predictive_score(real, ar1(150, length=16, seed=1), seed=0, config=FAST)["predictive_mae"]
    bad = predictive_score(real, white_noise(150, length=16, seed=2), seed=0, config=FAST)["predictive_mae"]
    assert good < bad


def test_ar1_predictor_approaches_the_optimal_mae():
    # One-step error of AR(1), phi = 0.8, unit variance: N(0, 0.36); E|e| = 0.6 * sqrt(2 / pi) = 0.479.
    real = ar1(300, length=16, seed=0)
    mae = predictive_score(real, ar1(300, length=16, seed=1), seed=0, config=FAST)["predictive_mae"]
    assert 0.45 < mae < 0.6


def test_deterministic_and_checks_shapes():
    real, fake = ar1(30, length=8, seed=0), ar1(40, length=8, seed=1)
    config = PredictiveConfig(epochs=1, min_steps=0)
    assert predictive_score(real, fake, seed=3, config=config) == predictive_score(real, fake, seed=3, config=config)
    with pytest.raises(ValueError):
        predictive_score(real[:, :1], fake[:, :1], seed=0, config=PredictiveConfig(target="last_channel"))
    with pytest.raises(ValueError):
        PredictiveConfig(target="next")
    assert np.isfinite(predictive_score(real[:, :1], fake[:, :1], seed=0, config=config)["predictive_mae"])
