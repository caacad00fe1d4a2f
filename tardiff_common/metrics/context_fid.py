"""Context-FID-style distance (Jeha et al., PSA-GAN, ICLR 2022): the Fréchet distance between
Gaussians fitted to embeddings of real and synthetic series.

Encoder. The paper embeds with a TS2Vec model trained on the real data. Here the encoder is a
*fixed, untrained* ROCKET-style random convolutional feature map (Dempster et al., 2020,
"ROCKET: exceptionally fast and accurate time series classification using random
convolutional kernels"), frozen from ``encoder_seed`` so the distance is comparable across
runs, methods and sites for the same (C, L), and needs no training data (so it cannot overfit
to, or leak, the real training split):

* ``num_kernels`` (K) kernels w_k [C, k] (k = ``kernel_size``, 9 as in ROCKET; at most L),
  spanning all C channels, w ~ N(0, 1) rescaled to unit L2 norm; bias b_k ~ U(-1, 1);
  dilation d_k = floor(2^u), u ~ U(0, log2((L - 1) / (k - 1))); "same" zero padding with
  probability 1/2 (else no padding). Unlike ROCKET the weights are *not* mean-centred, so a
  level shift of a channel changes the features (it should count as infidelity).
* z_k = (w_k *_{d_k} x) + b_k (dilated cross-correlation over time). Features per kernel:
  PPV_k = mean_t [z_k(t) > 0] and MAX_k = max_t z_k(t); embedding e(x) in R^{2K}.

Distance. With (mu_r, S_r), (mu_s, S_s) the mean and covariance (ddof = 1) of the
embeddings of real x_r [N, C, L] and synthetic x_s [M, C, L] (float32, normalized scale):

    FD = ||mu_r - mu_s||^2 + Tr(S_r + S_s - 2 (S_r S_s)^{1/2})

with Tr (S_r S_s)^{1/2} computed in the symmetric form Tr((S_r^{1/2} S_s S_r^{1/2})^{1/2})
from two symmetric eigendecompositions (eigenvalues clipped at 0). Singular covariances (a
feature constant over a set) are expected and handled exactly. The result is clipped at 0. Both sets are subsampled (seeded) to the same size
n = min(N, M, ``max_records``) so sample-size bias is the same for every method compared;
use n well above 2K (the default K = 64 gives 128 dimensions) for a stable estimate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .discriminative import subsample

__all__ = ["ContextFIDConfig", "RandomConvEncoder", "frechet_distance", "context_fid"]


@dataclass(frozen=True)
class ContextFIDConfig:
    num_kernels: int = 64
    kernel_size: int = 9
    encoder_seed: int = 0
    max_records: int = 2000
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.num_kernels < 1 or self.kernel_size < 1 or self.max_records < 2:
            raise ValueError("num_kernels >= 1, kernel_size >= 1 and max_records >= 2 are required")

    def to_dict(self) -> dict:
        return asdict(self)


class RandomConvEncoder:
    """Frozen ROCKET-style features: x [N, C, L] float -> e [N, 2K] float64 (see module doc)."""

    def __init__(self, channels: int, length: int, *, num_kernels: int = 64, kernel_size: int = 9, seed: int = 0):
        if channels < 1 or length < 1:
            raise ValueError("channels and length must be positive")
        self.channels, self.length = int(channels), int(length)
        k = max(1, min(int(kernel_size), self.length))
        g = torch.Generator().manual_seed(int(seed))
        w = torch.randn(num_kernels, self.channels, k, generator=g, dtype=torch.float64)
        self.weights = w / w.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
        self.bias = torch.rand(num_kernels, generator=g, dtype=torch.float64) * 2 - 1
        top = np.log2((self.length - 1) / (k - 1)) if k > 1 and self.length > 1 else 0.0
        u = torch.rand(num_kernels, generator=g, dtype=torch.float64) * top
        dilations = torch.floor(2.0**u).long().clamp_min(1)
        pad = torch.rand(num_kernels, generator=g) < 0.5
        # Kernels sharing (dilation, padding) run as one conv1d call.
        self.groups: list[tuple[torch.Tensor, int, int]] = []
        for d in sorted(set(dilations.tolist())):
            for p in (False, True):
                idx = torch.nonzero((dilations == d) & (pad == p)).flatten()
                if len(idx):
                    self.groups.append((idx, int(d), ((k - 1) * int(d)) // 2 if p else 0))
        self.num_kernels = int(num_kernels)

    @property
    def dim(self) -> int:
        return 2 * self.num_kernels

    @torch.no_grad()
    def __call__(self, x: np.ndarray, *, batch_size: int = 2048) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[1:] != (self.channels, self.length):
            raise ValueError(f"expected [N, {self.channels}, {self.length}], got {x.shape}")
        out = np.empty((len(x), self.dim), dtype=np.float64)
        for start in range(0, len(x), batch_size):
            xb = torch.as_tensor(x[start : start + batch_size], dtype=torch.float64)
            ppv = torch.empty(len(xb), self.num_kernels, dtype=torch.float64)
            mx = torch.empty_like(ppv)
            for idx, dilation, padding in self.groups:
                z = F.conv1d(xb, self.weights[idx], self.bias[idx], padding=padding, dilation=dilation)
                ppv[:, idx] = (z > 0).double().mean(dim=-1)
                mx[:, idx] = z.amax(dim=-1)
            out[start : start + len(xb)] = torch.cat([ppv, mx], dim=1).numpy()
        return out


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) for Gaussians N(mu1, S1), N(mu2, S2).

    Tr (S1 S2)^{1/2} = Tr (R S2 R)^{1/2} with R = S1^{1/2} (S1 S2 = R (R S2 R) R^{-1} on the range
    of S1: the same eigenvalues), = sum_i sqrt(lambda_i(R S2 R)) from two symmetric
    eigendecompositions: exact for singular covariances and far faster than a general ``sqrtm``
    of S1 S2 (which took ~0.5 s at 128 dimensions on a small, singular site set). ``eps`` is kept
    for the interface; the symmetric form needs no regularisation.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    root = _psd_sqrt(s1)
    middle = root @ s2 @ root
    trace_covmean = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None))))
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_covmean)
    return max(value, 0.0)


def _gaussian(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return e.mean(axis=0), np.atleast_2d(np.cov(e, rowvar=False))


def context_fid(
    real_x: np.ndarray,
    synthetic_x: np.ndarray,
    *,
    seed: int = 0,
    config: ContextFIDConfig = ContextFIDConfig(),
) -> dict[str, float]:
    """{"context_fid": FD between encoder embeddings}; real_x [N, C, L], synthetic_x [M, C, L].

    ``seed`` only drives the subsample to n = min(N, M, max_records); the encoder is fixed by
    ``config.encoder_seed``.
    """
    real_x, synthetic_x = np.asarray(real_x), np.asarray(synthetic_x)
    if real_x.ndim != 3 or real_x.shape[1:] != synthetic_x.shape[1:]:
        raise ValueError(f"need [N, C, L] arrays of equal C, L; got {real_x.shape}, {synthetic_x.shape}")
    n = min(len(real_x), len(synthetic_x), config.max_records)
    if n < 2:
        raise ValueError("need at least 2 real and 2 synthetic records")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 303]))
    encoder = RandomConvEncoder(
        real_x.shape[1], real_x.shape[2], num_kernels=config.num_kernels, kernel_size=config.kernel_size,
        seed=config.encoder_seed,
    )
    mu_r, s_r = _gaussian(encoder(subsample(real_x, n, rng)))
    mu_s, s_s = _gaussian(encoder(subsample(synthetic_x, n, rng)))
    return {"context_fid": frechet_distance(mu_r, s_r, mu_s, s_s, eps=config.eps)}
