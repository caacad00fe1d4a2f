"""DP-SGD through the training hook: Opacus compatibility of the models, hooks, EMA, label dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from tardiff_common.diffusion.ema import EMA
from tardiff_common.diffusion.schedule import NoiseSchedule
from tardiff_common.models.classifier import ClassifierConfig, build_classifier
from tardiff_common.models.unet1d import UNet1D, UNet1DConfig
from tardiff_common.privacy.compat import opacus_ready
from tardiff_common.privacy.dp_sgd import DPTrainingSession
from tardiff_common.serialization import module_to_numpy
from tardiff_common.training.classifier import ClassifierTrainConfig, train_classifier
from tardiff_common.training.diffusion import DiffusionTrainConfig, diffusion_loss, train_diffusion

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

rng = np.random.default_rng(0)
X = rng.normal(size=(40, 3, 16)).astype(np.float32)
Y = (np.arange(40) % 4 == 0).astype(np.int64)


def session(phase="classifier", **kw):
    return DPTrainingSession(phase=phase, noise_multiplier=kw.pop("sigma", 1.0), max_grad_norm=1.0,
                             reproducible=True, **kw)


@pytest.mark.parametrize("config", [UNet1DConfig.tiny(3), UNet1DConfig(in_channels=3)], ids=["tiny", "default"])
def test_unet_is_opacus_compatible_and_per_sample_gradients_are_exact(config):
    torch.manual_seed(0)
    unet = UNet1D(config)
    assert ModuleValidator.validate(unet, strict=False) == []
    x, t, y = torch.randn(4, 3, 16), torch.tensor([1, 5, 9, 15]), torch.tensor([0, 1, 2, 1])
    gsm = GradSampleModule(unet, loss_reduction="sum")
    ((gsm(x, t, y) - x) ** 2).sum().backward()
    per_sample = {n: p.grad_sample.clone() for n, p in unet.named_parameters()}
    gsm._close()
    for i in range(4):
        grads = torch.autograd.grad(((unet(x[i : i + 1], t[i : i + 1], y[i : i + 1]) - x[i : i + 1]) ** 2).sum(),
                                    list(unet.parameters()))
        for (name, _), g in zip(unet.named_parameters(), grads):
            torch.testing.assert_close(per_sample[name][i], g, rtol=1e-4, atol=2e-5, msg=name)


def test_gru_is_switched_to_dpgru_and_back():
    model = build_classifier(3, ClassifierConfig(kind="gru", hidden=8, num_layers=2))
    names = [n for n, _ in model.named_parameters()]
    x = torch.randn(5, 3, 16)
    before = model(x)
    with opacus_ready(model):
        assert type(model.rnn).__name__ == "DPGRU"
        assert sorted(n for n, _ in model.named_parameters()) == sorted(names)
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    assert type(model.rnn) is torch.nn.GRU and [n for n, _ in model.named_parameters()] == names


@pytest.mark.parametrize("kind", ["cnn", "gru"])
def test_dp_training_twice_on_one_model_leaves_no_hooks_and_plain_weights(kind):
    """make_private once per call; the next call (next round, same model object) works the same."""
    model = build_classifier(3, ClassifierConfig(kind=kind, hidden=8, num_layers=1))
    keys = list(model.state_dict())
    start = module_to_numpy(model)
    steps = []
    for r in range(2):
        s = session()
        stats = train_classifier(model, X, Y, ClassifierTrainConfig(epochs=1, batch_size=8), seed=r, privacy=s)
        steps.append(stats["steps"])
        assert s.entries and s.steps == stats["steps"]
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert list(model.state_dict()) == keys and not any(k.startswith("_module.") for k in module_to_numpy(model))
    assert any(not np.allclose(start[k], v) for k, v in module_to_numpy(model).items())
    with pytest.raises(RuntimeError, match="once"):
        s.private(model, lambda p: torch.optim.SGD(p, lr=0.1), None).__enter__()


def test_dp_diffusion_keeps_ema_and_label_dropout(monkeypatch):
    torch.manual_seed(0)
    unet = UNet1D(UNet1DConfig.tiny(3))
    ema = EMA(unet, 0.9)
    shadow = module_to_numpy(ema.shadow)
    calls = []
    original = UNet1D.drop_labels

    def counting(self, y, generator=None):
        calls.append(len(y))
        return original(self, y, generator)

    monkeypatch.setattr(UNet1D, "drop_labels", counting)
    s = session("diffusion", clipping="per_layer")
    stats = train_diffusion(unet, NoiseSchedule.from_name("sqrt_linear", 20), X, Y,
                            DiffusionTrainConfig(epochs=1, batch_size=8), seed=0, ema=ema, privacy=s)
    assert len(calls) == stats["steps"] == s.steps == 5  # label dropout ran on every (Poisson) batch
    moved = [k for k, v in module_to_numpy(ema.shadow).items() if not np.allclose(shadow[k], v)]
    assert moved  # the EMA followed the DP weights
    assert np.isfinite(stats["loss"])


def test_diffusion_loss_unwraps_the_grad_sample_module():
    unet = UNet1D(UNet1DConfig(in_channels=3, dim=8, dim_mults=(1, 2), attention_levels=(1,), heads=2, head_dim=4,
                               groups=4, label_dropout=0.99))
    gsm = GradSampleModule(unet)
    g = torch.Generator().manual_seed(0)
    seen = []
    unet.register_forward_hook(lambda m, args, out: seen.append(args[2].clone()))
    diffusion_loss(gsm, NoiseSchedule.from_name("sqrt_linear", 10), torch.randn(64, 3, 8),
                   torch.zeros(64, dtype=torch.long), generator=g)
    gsm._close()
    assert (seen[0] == unet.null_label).float().mean() > 0.9


def test_empty_poisson_batches_still_step():
    """Three records, batch 1 -> q = 1/3: some Poisson batches are empty; each still steps (noise only)."""
    model = build_classifier(3, ClassifierConfig(kind="gru", hidden=4, num_layers=1))
    s = session()
    stats = train_classifier(model, X[:3], Y[:3], ClassifierTrainConfig(epochs=8, batch_size=1), seed=0, privacy=s)
    assert stats["steps"] == 24 == s.steps
    unet = UNet1D(UNet1DConfig.tiny(3))
    s = session("diffusion")
    stats = train_diffusion(unet, NoiseSchedule.from_name("sqrt_linear", 20), X[:3], Y[:3],
                            DiffusionTrainConfig(epochs=8, batch_size=1), seed=0, privacy=s)
    assert stats["steps"] == 24 == s.steps


def test_plain_path_is_unchanged_and_deterministic():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_classifier(3, ClassifierConfig(kind="cnn", hidden=8, num_layers=2))
        train_classifier(model, X, Y, ClassifierTrainConfig(epochs=2, batch_size=8), seed=3)
        runs.append(module_to_numpy(model))
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])
