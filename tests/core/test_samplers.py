import numpy as np
import pytest
import torch

from tardiff_common.diffusion.samplers import DDIMSampler, DDPMSampler, build_sampler
from tardiff_common.diffusion.sampling import SamplingConfig, sample, synthetic_labels
from tardiff_common.diffusion.schedule import SCHEDULES, NoiseSchedule
from tardiff_common.models.unet1d import UNet1D, UNet1DConfig


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedules_are_valid(name):
    s = NoiseSchedule.from_name(name, 100)
    assert s.betas.shape == (100,) and s.betas.dtype == torch.float64
    assert torch.all(s.betas > 0) and torch.all(s.betas < 1)
    assert torch.all(torch.diff(s.alphas_cumprod) < 0)


def test_sqrt_linear_matches_public_code_definition():
    s = NoiseSchedule.from_name("sqrt_linear", 200)
    assert s.betas[0].item() == pytest.approx(5e-4) and s.betas[-1].item() == pytest.approx(0.1)


def test_unknown_names_fail():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        NoiseSchedule.from_name("quadratic", 10)
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler("euler", NoiseSchedule.from_name("linear", 10))


def test_ddim_with_all_steps_and_eta_one_is_ddpm():
    """DDIM(eta=1) on every timestep has DDPM's posterior mean and variance (Song et al., 2021)."""
    sched = NoiseSchedule.from_name("linear", 50)
    ddpm, ddim = DDPMSampler(sched, clip_x0=None), DDIMSampler(sched, num_inference_steps=50, eta=1.0, clip_x0=None)
    assert ddpm.timesteps == ddim.timesteps
    x, eps = torch.randn(4, 3, 8, dtype=torch.float64), torch.randn(4, 3, 8, dtype=torch.float64)
    for i in (0, 10, 30, 48, 49):
        a, b = ddpm.moments(eps, i, x), ddim.moments(eps, i, x)
        torch.testing.assert_close(a.mean, b.mean)
        assert a.variance == pytest.approx(b.variance, rel=1e-9, abs=1e-15)


def test_ddim_eta_zero_is_deterministic_and_timesteps_trailing():
    sched = NoiseSchedule.from_name("sqrt_linear", 200)
    ddim = DDIMSampler(sched, num_inference_steps=20, eta=0.0)
    assert ddim.timesteps[0] == 199 and len(ddim.timesteps) == 20
    assert all(ddim.moments(torch.zeros(1, 1, 4), i, torch.ones(1, 1, 4)).variance == 0 for i in range(20))


def test_x0_hat_inverts_forward_process():
    sched = NoiseSchedule.from_name("cosine", 100)
    x0, eps = torch.rand(2, 3, 8, dtype=torch.float64) * 2 - 1, torch.randn(2, 3, 8, dtype=torch.float64)
    t = torch.tensor([40, 40])
    xt = sched.add_noise(x0, eps, t)
    ddim = DDIMSampler(sched, num_inference_steps=100, clip_x0=None)
    i = ddim.timesteps.index(40)
    torch.testing.assert_close(ddim.moments(eps, i, xt).x0_hat, x0)


def test_sampling_is_seeded_and_labelled():
    torch.manual_seed(0)
    model = UNet1D(UNet1DConfig.tiny(3))
    sched = NoiseSchedule.from_name("sqrt_linear", 20)
    labels = synthetic_labels(10, 0.3)
    assert labels.tolist() == [1, 1, 1] + [0] * 7
    cfg = SamplingConfig(num_inference_steps=5, batch_size=4)
    a = sample(model, sched, labels, 16, cfg, seed=1)
    b = sample(model, sched, labels, 16, cfg, seed=1)
    c = sample(model, sched, labels, 16, cfg, seed=2)
    assert a.shape == (10, 3, 16) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    ddpm = sample(model, sched, labels[:2], 16, SamplingConfig(sampler="ddpm", cfg_scale=1.0), seed=1)
    assert ddpm.shape == (2, 3, 16) and np.isfinite(ddpm).all()
