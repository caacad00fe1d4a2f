"""The reverse-diffusion loop: label-conditioned, optionally influence-guided sampling.

For each batch of labels y [B]:

    x_T ~ N(0, I)
    for i, t in enumerate(sampler.timesteps):                 # noisiest first
        eps   = eps_phi(x_t, t, y)                            # + classifier-free mix if w > 0
        m     = sampler.moments(eps, i, x_t)                  # N(mean, Sigma_t), x0_hat
        z     ~ N(0, I)                                       # drawn whether guided or not
        x_t-1 = guidance.step(m, z, y)  if guided step  else  m.mean + sqrt(Sigma_t) z

All noise comes from one CPU generator seeded by ``seed`` and is moved to the model's device,
so CPU and GPU runs draw the same numbers, and guidance with s = 0 reproduces unguided
sampling exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .samplers import build_sampler
from .schedule import NoiseSchedule

__all__ = ["SamplingConfig", "sample", "synthetic_labels"]


@dataclass(frozen=True)
class SamplingConfig:
    """sampler "ddim" | "ddpm"; steps and eta for DDIM; clip of x0_hat (PIT data lie in
    [-1, 1]; None = no clip); cfg_scale w: eps = (1 + w) eps(y) - w eps(null), 0 = conditional."""

    sampler: str = "ddim"
    num_inference_steps: int = 25
    eta: float = 1.0
    clip_x0: float | None = 1.0
    cfg_scale: float = 0.0
    batch_size: int = 256

    def to_dict(self) -> dict:
        return asdict(self)


def synthetic_labels(num_samples: int, positive_fraction: float) -> np.ndarray:
    """Exactly round(num_samples * positive_fraction) ones, then zeros; [num_samples] int64."""
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    n_pos = int(round(num_samples * positive_fraction))
    return np.concatenate([np.ones(n_pos, dtype=np.int64), np.zeros(num_samples - n_pos, dtype=np.int64)])


def _predict_eps(model: nn.Module, x: torch.Tensor, t: int, y: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    eps = model(x, tt, y)
    if cfg_scale:
        eps = (1.0 + cfg_scale) * eps - cfg_scale * model(x, tt, None)
    return eps


def sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    labels: np.ndarray | torch.Tensor,
    length: int,
    config: SamplingConfig = SamplingConfig(),
    *,
    seed: int,
    guidance=None,
    progress: bool = False,
    desc: str = "sampling",
) -> np.ndarray:
    """Draw one series per label. Returns float32 [N, C, L] on the CPU.

    ``guidance`` is an ``InfluenceGuidance`` (or None); it is applied on the steps it says
    are guided (``guided_steps``), every other step is the plain ancestral / DDIM update.
    """
    sampler = build_sampler(
        config.sampler,
        schedule,
        num_inference_steps=config.num_inference_steps,
        eta=config.eta,
        clip_x0=config.clip_x0,
    )
    device = next(model.parameters()).device
    channels = model.config.in_channels
    labels = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    num_steps = len(sampler.timesteps)
    guided = guidance.guided_steps([sampler.step_variance(i) for i in range(num_steps)]) if guidance else set()
    was_training = model.training
    model.eval()
    out = []
    batches = range(0, len(labels), config.batch_size)
    bar = tqdm(total=len(batches) * num_steps, desc=desc, disable=not progress, leave=False)
    for start in batches:
        y = labels[start : start + config.batch_size].to(device)
        x = torch.randn((len(y), channels, length), generator=generator).to(device)
        for i, t in enumerate(sampler.timesteps):
            with torch.no_grad():
                moments = sampler.moments(_predict_eps(model, x, t, y, config.cfg_scale), i, x)
            noise = torch.randn(x.shape, generator=generator).to(device)
            if i in guided:
                x = guidance.step(moments, noise, y).detach()
            else:
                x = moments.mean + moments.std * noise
            bar.update(1)
        out.append(x.float().cpu())
    bar.close()
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, channels, length), dtype=np.float32)
