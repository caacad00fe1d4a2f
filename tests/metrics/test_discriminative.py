import numpy as np
import pytest
import torch

from tardiff_common.metrics.discriminative import (
    DiscriminativeConfig,
    default_hidden,
    discriminative_score,
    training_epochs,
)

from .series import ar1, sines, white_noise

FAST = DiscriminativeConfig(epochs=5, min_steps=0, batch_size=64)


def test_identical_sets_score_near_zero():
    # 800 records -> 160 + 160 held out: the sampling s.d. of |acc - 0.5| is about 0.03.
    x = ar1(800, length=16, seed=0)
    res = discriminative_score(x, x.copy(), seed=0, config=DiscriminativeConfig(epochs=2, min_steps=0, batch_size=64))
    assert res["discriminative"] < 0.1
    assert res["discriminative"] == abs(res["discriminative_accuracy"] - 0.5)


def test_noise_vs_smooth_sines_is_near_one_half():
    config = DiscriminativeConfig(epochs=8, min_steps=0, batch_size=32)
    real, fake = sines(300, length=16, seed=0), white_noise(300, length=16, seed=1)
    assert discriminative_score(real, fake, seed=0, config=config)["discriminative"] > 0.4


def test_shifted_by_three_std_is_near_one_half():
    real = ar1(300, length=16, seed=0)
    fake = ar1(300, length=16, seed=1, shift=3.0)
    assert discriminative_score(real, fake, seed=0, config=FAST)["discriminative"] > 0.4


def test_deterministic_under_seed_and_leaves_global_rng_alone():
    real, fake = ar1(60, length=12, seed=0), ar1(80, length=12, seed=1, shift=0.5)
    config = DiscriminativeConfig(epochs=2, min_steps=0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = discriminative_score(real, fake, seed=7, config=config)
    assert torch.equal(state, torch.get_rng_state())
    assert a == discriminative_score(real, fake, seed=7, config=config)


def test_hidden_rule_and_validation():
    assert default_hidden(3, 0) == 4 and default_hidden(14, 0) == 7 and default_hidden(3, 16) == 16
    with pytest.raises(ValueError):
        DiscriminativeConfig(train_fraction=1.0)
    with pytest.raises(ValueError):
        discriminative_score(np.zeros((4, 3, 8), np.float32), np.zeros((4, 2, 8), np.float32), seed=0)


def test_training_budget_is_at_least_min_steps():
    assert training_epochs(10, 0, 1000, 100) == 10
    assert training_epochs(10, 200, 1000, 100) == 20  # 10 steps per epoch
    assert training_epochs(1, 5, 3, 128) == 5  # one (partial) batch per epoch
