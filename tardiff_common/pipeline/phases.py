"""The site-level operations of the four TarDiff phases.

The centralized pipeline calls these on the pooled data (as "site 0"); the Flower client
calls them on one hospital's data. Sharing one implementation is what makes one-site FedAvg
reproduce centralized training exactly, and keeps the ClientApp a thin adapter.

Phase 0  normalization : local_moments / local_histogram  -> merged -> make_normalizer
Phase 1  classifier    : classifier_round (local epochs of f_theta from the global weights)
Phase 2  influence     : guidance_sum -> G_k = sum_i grad_theta L(z_i) over the guidance split
Phase 3  diffusion     : diffusion_round (local epochs of eps_phi, EMA carried along)
Phase 3b selection     : ``pipeline.selection`` scores the guidance candidates on the tuning split
Phase 4  generation    : synthesize (unguided, a second unguided draw, the chosen guidance);
                         ``pipeline.evaluation.evaluate_site`` scores the sets (TSTR / TSRTR on the
                         test split, F1 threshold on the tuning split, fidelity, membership)

Privacy (``config.privacy``, see ``tardiff_common.privacy``): ``classifier_round`` and
``diffusion_round`` take an optional ``DPTrainingSession`` (``dp_session``), and
``dp_guidance_sum`` is the DP release of G_k. Without them everything is exactly the plain path.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..data.contract import SiteData, SiteSplits, stratified_split, validate_site
from ..data.impute import fill_splits, impute_splits, normalizer_fill_values
from ..data.normalize import (
    ChannelHistogram,
    ChannelMoments,
    Normalizer,
    histogram_edges_from_moments,
)
from ..diffusion.ema import EMA
from ..diffusion.sampling import sample, synthetic_labels
from ..diffusion.schedule import NoiseSchedule
from ..influence.gradient_sum import GradientSum, guidance_gradient_sum
from ..influence.guidance import GuidanceConfig, InfluenceGuidance
from ..influence.influence_gradient import influence_scores
from ..models.classifier import build_classifier
from ..models.unet1d import UNet1D
from ..serialization import load_module_numpy
from ..training.classifier import train_classifier
from ..training.diffusion import train_diffusion
from .config import RunConfig, derive_seed
from .phase_list import INITIAL_WEIGHTS, SEED_IDS

if TYPE_CHECKING:  # Opacus is imported only when DP is used
    from ..privacy.accounting import Entry
    from ..privacy.dp_gradient_sum import ClippedSum
    from ..privacy.dp_sgd import DPTrainingSession

__all__ = [
    "NormalizedSplits",
    "resolve_device",
    "prepare_splits",
    "impute_after_phase0",
    "local_moments",
    "local_histogram",
    "normalize_splits",
    "new_classifier",
    "new_unet",
    "unet_with_weights",
    "new_schedule",
    "classifier_round",
    "guidance_sum",
    "dp_guidance_sum",
    "dp_session",
    "diffusion_round",
    "synthesize",
    "influence_of",
    "mean_influence",
    "SYNTHETIC_SETS",
    "SamplingModels",
    "generate_synthetic_sets",
]

@dataclass(frozen=True)
class NormalizedSplits:
    """One site's splits on the model scale. x_* [N, C, L] float32, y_* [N] int64."""

    name: str
    channels: tuple[str, ...]
    train_x: np.ndarray
    train_y: np.ndarray
    guidance_x: np.ndarray
    guidance_y: np.ndarray
    tuning_x: np.ndarray
    tuning_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def length(self) -> int:
        return int(self.train_x.shape[2])


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cpu" / "cuda" / "cuda:N" as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine")
    return torch.device(name)


def prepare_splits(site: SiteData, config: RunConfig) -> SiteSplits:
    """Validate the contract (one class is allowed per site) and split it stratified into train /
    guidance / tuning / test (``data.split-fractions``); channels a record never observed are filled
    with the medians of this site's training split only. Under DP (``privacy.any_dp``) they are left
    as the loader set them (phase 0 counts observed entries only) and filled after phase 0 by
    ``impute_after_phase0`` from the DP release (data/impute.py)."""
    site = validate_site(site, require_both_classes=False)
    if site.num_records < config.data.min_site_records:
        raise ValueError(
            f"site {site.name!r}: {site.num_records} records, fewer than "
            f"data.min-site-records = {config.data.min_site_records}"
        )
    splits = stratified_split(site, fractions=config.data.split_fractions, seed=config.data.split_seed)
    if config.privacy.any_dp:
        return splits  # imputed after phase 0 from its DP release: impute_after_phase0
    return impute_splits(splits)  # never-observed channels: the site's training medians (data/impute.py)


def impute_after_phase0(splits: SiteSplits, config: RunConfig, normalizer: Normalizer) -> SiteSplits:
    """The splits the models see: under DP, never-observed channels filled with
    ``normalizer_fill_values`` (a post-processing of the phase-0 DP release); without DP
    ``prepare_splits`` already imputed them, and ``splits`` is returned as it is."""
    if not config.privacy.any_dp:
        return splits
    return fill_splits(splits, normalizer_fill_values(normalizer, splits.train.num_channels))


def local_moments(splits: SiteSplits) -> ChannelMoments:
    """Phase 0a: per-channel count / sum / sum of squares of observed training values."""
    return ChannelMoments.from_data(splits.train.x, splits.train.mask)


def local_histogram(splits: SiteSplits, global_moments: ChannelMoments) -> ChannelHistogram:
    """Phase 0b: counts of observed training values on the grid fixed by the global moments."""
    return ChannelHistogram.from_data(splits.train.x, histogram_edges_from_moments(global_moments), splits.train.mask)


def normalize_splits(splits: SiteSplits, normalizer: Normalizer) -> NormalizedSplits:
    return NormalizedSplits(
        name=splits.name,
        channels=splits.train.channels,
        train_x=normalizer.transform(splits.train.x),
        train_y=splits.train.y,
        guidance_x=normalizer.transform(splits.guidance.x),
        guidance_y=splits.guidance.y,
        tuning_x=normalizer.transform(splits.tuning.x),
        tuning_y=splits.tuning.y,
        test_x=normalizer.transform(splits.test.x),
        test_y=splits.test.y,
    )


def proximal_mu(config: RunConfig) -> float:
    """FedProx's mu when the strategy is "fedprox", else 0 (plain FedAvg local training)."""
    return config.federation.proximal_mu if config.federation.strategy == "fedprox" else 0.0


def new_classifier(config: RunConfig, in_channels: int, device: torch.device) -> nn.Module:
    torch.manual_seed(derive_seed(config.seed, INITIAL_WEIGHTS, SEED_IDS["classifier"]))
    return build_classifier(in_channels, config.classifier).to(device)


def new_unet(config: RunConfig, in_channels: int, device: torch.device) -> UNet1D:
    torch.manual_seed(derive_seed(config.seed, INITIAL_WEIGHTS, SEED_IDS["diffusion"]))
    return UNet1D(replace(config.unet, in_channels=in_channels)).to(device)


def unet_with_weights(config: RunConfig, in_channels: int, device: torch.device, arrays: dict[str, np.ndarray], *,
                      what: str = "U-Net") -> UNet1D:
    """The U-Net of ``config`` holding ``arrays`` (``load_module_numpy``: every name and shape
    checked), built on the meta device so that no initial weight is drawn only to be overwritten
    (a site builds one per message; with many small sites that initialization was a fixed cost
    per site). The network it returns equals ``new_unet`` + ``load_module_numpy`` (tested)."""
    with torch.device("meta"):
        net = UNet1D(replace(config.unet, in_channels=in_channels))
    net = net.to_empty(device=device)
    load_module_numpy(net, arrays, what=what)
    return net


def new_schedule(config: RunConfig) -> NoiseSchedule:
    return NoiseSchedule.from_name(config.diffusion.schedule, config.diffusion.num_steps)


def classifier_round(
    model: nn.Module,
    data: NormalizedSplits,
    config: RunConfig,
    *,
    server_round: int,
    site_index: int,
    pos_weight: float | None = None,
    progress: bool = False,
    privacy: DPTrainingSession | None = None,
) -> dict:
    """Phase 1: ``classifier_train.epochs`` local epochs on the site's training split (DP-SGD
    when ``privacy`` is given)."""
    seed = derive_seed(config.seed, SEED_IDS["classifier"], server_round, site_index)
    return train_classifier(
        model, data.train_x, data.train_y, config.classifier_train, seed=seed, pos_weight=pos_weight,
        proximal_mu=proximal_mu(config), progress=progress, desc=f"classifier r{server_round}", privacy=privacy,
    )


def guidance_sum(model: nn.Module, data: NormalizedSplits, config: RunConfig) -> GradientSum:
    """Phase 2: G_k over the site's guidance split (restricted to ``guidance.target_class``)."""
    return guidance_gradient_sum(model, data.guidance_x, data.guidance_y, target_class=config.guidance.target_class)


def dp_guidance_sum(model: nn.Module, data: NormalizedSplits, config: RunConfig, *, noise_multiplier: float,
                    site_index: int) -> tuple[GradientSum, ClippedSum]:
    """Phase 2 under DP: G~_k = sum of per-example gradients clipped to ``privacy.clip`` + N(0, (sigma C)^2)
    (``tardiff_common.privacy.dp_gradient_sum``); the noise is a site secret unless
    ``privacy.reproducible-noise``."""
    from ..privacy.dp_gradient_sum import dp_gradient_sum
    from ..privacy.randomness import dp_generator

    generator = dp_generator(config.privacy.reproducible_noise, config.seed, SEED_IDS["influence"], site_index)
    return dp_gradient_sum(model, data.guidance_x, data.guidance_y, clip=config.privacy.clip,
                           noise_multiplier=noise_multiplier, generator=generator,
                           target_class=config.guidance.target_class)


def dp_session(config: RunConfig, planned: Entry, *, server_round: int, site_index: int) -> DPTrainingSession:
    """A DP-SGD session for one training round of ``planned.phase`` ("classifier" / "diffusion")
    with the planned noise multiplier and ``privacy.sgd-clip``."""
    from ..privacy.dp_sgd import DPTrainingSession

    p = config.privacy
    return DPTrainingSession(phase=planned.phase, noise_multiplier=planned.noise_multiplier,
                             max_grad_norm=p.sgd_clip, clipping=p.clipping, accountant=p.accountant,
                             reproducible=p.reproducible_noise,
                             seed_parts=(config.seed, SEED_IDS[planned.phase], server_round, site_index))


def diffusion_round(
    unet: UNet1D,
    ema: EMA,
    data: NormalizedSplits,
    config: RunConfig,
    *,
    server_round: int,
    site_index: int,
    progress: bool = False,
    privacy: DPTrainingSession | None = None,
) -> dict:
    """Phase 3: ``diffusion_train.epochs`` local epochs of eps-prediction, updating ``ema``
    (DP-SGD when ``privacy`` is given)."""
    seed = derive_seed(config.seed, SEED_IDS["diffusion"], server_round, site_index)
    return train_diffusion(
        unet, new_schedule(config), data.train_x, data.train_y, config.diffusion_train, seed=seed, ema=ema,
        proximal_mu=proximal_mu(config), progress=progress, desc=f"diffusion r{server_round}", privacy=privacy,
    )


def synthesize(
    unet: UNet1D,
    classifier: nn.Module | None,
    direction: torch.Tensor | None,
    *,
    num_samples: int,
    positive_fraction: float,
    length: int,
    config: RunConfig,
    site_index: int,
    guidance: GuidanceConfig | None,
    draw: int = 0,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Phase 4: ``num_samples`` series with the requested label mix, guided by ``guidance`` (a
    resolved ``GuidanceConfig``; None or scale 0 = unguided). Every setting of the same ``draw``
    uses the same seed, so guided and unguided sets share their noise and differ only by the
    guidance; ``draw`` = 1, 2, ... are independent draws (e.g. the null row's second unguided set).

    ``form = "filter"``: an unguided pool of ceil(n_c / (1 - s)) records per label c, of which
    the n_c with the highest influence I(x) are kept (s = 0 keeps the whole pool: unguided)."""
    labels = synthetic_labels(num_samples, positive_fraction)
    seed = derive_seed(config.generation.seed, SEED_IDS["generation"], site_index, *((draw,) if draw else ()))
    desc = "unguided sampling" if guidance is None or not guidance.scale else f"sampling {guidance.form}:{guidance.scale:g}"

    def draw_set(y: np.ndarray, step: GuidanceConfig | None) -> np.ndarray:
        step_guidance = InfluenceGuidance(classifier, direction, step) if step is not None else None
        return sample(unet, new_schedule(config), y, length, config.sampling, seed=seed, guidance=step_guidance,
                      progress=progress, desc=desc)

    if guidance is None or not guidance.scale:
        return draw_set(labels, None), labels
    if guidance.form != "filter":
        return draw_set(labels, guidance), labels
    n_pos = int(labels.sum())
    sizes = {1: n_pos, 0: len(labels) - n_pos}
    pool_sizes = {c: int(np.ceil(n / (1.0 - guidance.scale))) for c, n in sizes.items()}
    pool_y = np.concatenate([np.ones(pool_sizes[1], dtype=np.int64), np.zeros(pool_sizes[0], dtype=np.int64)])
    pool_x = draw_set(pool_y, None)
    scores = influence_of(classifier, direction, pool_x, pool_y)
    keep = []
    for c in (1, 0):
        idx = np.flatnonzero(pool_y == c)
        best = idx[np.argsort(-scores[idx], kind="stable")[: sizes[c]]]
        keep.append(np.sort(best))
    keep = np.concatenate(keep)
    return pool_x[keep], pool_y[keep]


def influence_of(classifier: nn.Module, direction: torch.Tensor, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-record influence I(x_i) = <grad_theta L(x_i, y_i), g>, [N] float64 (higher = more useful)."""
    device = next(classifier.parameters()).device
    scores = []
    for start in range(0, len(y), 512):
        xb = torch.as_tensor(x[start : start + 512], device=device)
        yb = torch.as_tensor(y[start : start + 512], device=device)
        scores.append(influence_scores(classifier, xb, yb, direction.to(device)).double().cpu())
    return torch.cat(scores).numpy() if scores else np.zeros(0)


def mean_influence(classifier: nn.Module, direction: torch.Tensor, x: np.ndarray, y: np.ndarray) -> float:
    """Average I(x_i) over a synthetic set (higher = more useful)."""
    scores = influence_of(classifier, direction, x, y)
    return float(scores.mean()) if scores.size else float("nan")


def positive_fraction(config: RunConfig, train_y: np.ndarray) -> float:
    """Label mix of the synthetic set: 0.5 ("balanced") or the real training prevalence."""
    return 0.5 if config.generation.label_mode == "balanced" else float(np.mean(train_y))


SYNTHETIC_SETS = ("unguided", "unguided_2", "tardiff")


@dataclass(frozen=True)
class SamplingModels:
    """What phases 3b and 4 sample and score with: the (EMA) U-Net eps_phi, the classifier
    theta* and the influence direction g = G / ||G|| ([P] float32)."""

    unet: UNet1D
    classifier: nn.Module
    direction: torch.Tensor


def generate_synthetic_sets(models: SamplingModels, data: NormalizedSplits, config: RunConfig, *, site_index: int,
                            progress: bool = False) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, float]]:
    """Phase 4a: ``generation.ratio`` x the training size records in each of

    * "unguided"   — plain conditional sampling;
    * "unguided_2" — a second, independent unguided draw: the null row, whose difference from
                     "unguided" shows the noise floor of every comparison;
    * "tardiff"    — the guidance setting in ``config.guidance`` (resolved: a number, not "auto"),
                     with the same labels and noise as "unguided";

    and the mean influence of each, and of the real training split (not under DP)."""
    if config.guidance.auto:
        raise ValueError("guidance.scale = 'auto' must be resolved (pipeline.selection) before generation")
    unet, classifier, direction = models.unet, models.classifier, models.direction
    common = dict(
        num_samples=max(2, int(round(config.generation.ratio * len(data.train_y)))),
        positive_fraction=positive_fraction(config, data.train_y),
        length=data.length,
        config=config,
        site_index=site_index,
        progress=progress,
    )
    unguided = synthesize(unet, classifier, direction, guidance=None, **common)
    synthetic = {
        "unguided": unguided,
        "unguided_2": synthesize(unet, classifier, direction, guidance=None, draw=1, **common),
        # s = 0 reproduces unguided sampling exactly (tested); the same object lets evaluation reuse its scores
        "tardiff": unguided if not config.guidance.scale else synthesize(unet, classifier, direction,
                                                                          guidance=config.guidance, **common),
    }
    influence = {name: mean_influence(classifier, direction, x, y) for name, (x, y) in synthetic.items()}
    if not config.privacy.any_dp:  # a function of the raw training records: not computed under DP
        influence["real_train"] = mean_influence(classifier, direction, data.train_x, data.train_y)
    return synthetic, influence
