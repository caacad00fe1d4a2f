"""Training loops: seeded determinism, learning on separable data, FedProx's proximal term, EMA."""

import numpy as np
import pytest
import torch

from tardiff_common.diffusion.ema import EMA
from tardiff_common.diffusion.schedule import NoiseSchedule
from tardiff_common.models.classifier import ClassifierConfig, build_classifier
from tardiff_common.models.unet1d import UNet1D, UNet1DConfig
from tardiff_common.training.classifier import (
    ClassifierTrainConfig,
    positive_class_weight,
    predict_proba,
    train_classifier,
)
from tardiff_common.training.diffusion import DiffusionTrainConfig, train_diffusion
from tardiff_common.training.proximal import ProximalTerm


def separable(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    x = rng.normal(size=(n, 3, 12)).astype(np.float32)
    x[y == 1, 0] += np.linspace(0, 3, 12, dtype=np.float32)  # a rising trend marks class 1
    return x, y


@pytest.mark.parametrize("kind", ["gru", "cnn"])
def test_classifier_training_is_seeded_and_learns(kind):
    x, y = separable()
    cfg = ClassifierConfig(kind=kind, hidden=8, num_layers=1)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        m = build_classifier(3, cfg)
        train_classifier(m, x, y, ClassifierTrainConfig(epochs=8, batch_size=32, lr=1e-2), seed=5)
        models.append(m)
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(a, b)
    xt, yt = separable(seed=1)
    p = predict_proba(models[0], xt)
    assert p.shape == (200,) and ((p > 0.5) == yt).mean() > 0.85


def test_balanced_class_weight():
    assert positive_class_weight(np.array([0, 0, 0, 1]), "balanced") == 3.0
    assert positive_class_weight(np.array([0, 0, 0]), "balanced") == 1.0
    assert positive_class_weight(np.array([0, 1]), "none") == 1.0
    with pytest.raises(ValueError, match="class_weighting"):
        ClassifierTrainConfig(class_weighting="inverse")


def test_diffusion_training_is_seeded_and_updates_ema():
    x, y = separable(64)
    x = np.tanh(x)
    sched = NoiseSchedule.from_name("sqrt_linear", 20)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        unet = UNet1D(UNet1DConfig.tiny(3))
        ema = EMA(unet, 0.9)
        before = [p.clone() for p in ema.shadow.parameters()]
        stats = train_diffusion(unet, sched, x, y, DiffusionTrainConfig(epochs=2, batch_size=16), seed=3, ema=ema)
        assert stats["steps"] == 8 and np.isfinite(stats["loss"])
        assert any(not torch.equal(a, b) for a, b in zip(before, ema.shadow.parameters()))
        states.append(unet.state_dict())
    for a, b in zip(states[0].values(), states[1].values()):
        assert torch.equal(a, b)


def test_proximal_term_pulls_towards_the_start():
    x, y = separable()
    torch.manual_seed(0)
    start = build_classifier(3, ClassifierConfig(kind="cnn", hidden=8, num_layers=1))
    drift = {}
    for mu in (0.0, 10.0):
        m = build_classifier(3, ClassifierConfig(kind="cnn", hidden=8, num_layers=1))
        m.load_state_dict(start.state_dict())
        train_classifier(m, x, y, ClassifierTrainConfig(epochs=5, lr=1e-2), seed=0, proximal_mu=mu)
        drift[mu] = sum(((p - q) ** 2).sum().item() for p, q in zip(m.parameters(), start.parameters()))
    assert drift[10.0] < drift[0.0]
    term = ProximalTerm(start, 2.0)
    assert float(term(start).detach()) == 0.0
    with pytest.raises(ValueError, match="mu must be"):
        ProximalTerm(start, -1.0)
