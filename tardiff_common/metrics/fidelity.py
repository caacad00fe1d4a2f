"""All fidelity and privacy scores of one synthetic set, and their mean / 95 % CI over seeds.

``fidelity_scores(real_train_x, real_test_x, synthetic_x, seed=...)`` returns one flat
{name: float} dict:

* ``discriminative`` (|acc - 0.5|, 0 best) and ``discriminative_accuracy`` — :mod:`.discriminative`
* ``predictive_mae`` (train on synthetic, MAE on real, lower better) — :mod:`.predictive`
* ``context_fid`` (Fréchet distance of fixed random-conv embeddings, 0 best) — :mod:`.context_fid`
* ``mia_auc``, ``mia_auprc``, ``mia_f1``, ``mia_accuracy``, ``mia_threshold``,
  ``dcr_members_median``, ``dcr_members_p5``, ``dcr_nonmembers_median``,
  ``dcr_nonmembers_p5``, ``dcr_ratio`` — :mod:`.membership` (members = ``real_train_x``, the
  generator's training records; non-members = ``real_test_x``, never seen by it).

The fidelity metrics compare the synthetic set with ``real_train_x`` (the distribution the
generator was fitted to, as TimeGAN / Diffusion-TS do) unless ``reference="test"``.
All arrays are [N, C, L] float32 on the model's normalized scale. Each metric's randomness is
derived from ``seed`` (``derive_seed(seed, k)``), so a call is deterministic;
``fidelity_over_seeds`` repeats it per seed and summarizes with ``summary.summarize_runs``.
Every metric uses at most ``max_records`` records per set (seeded subsample) to stay fast.

The flat scalar fields of ``FidelityConfig`` map onto ``RunConfig``'s "section.field" keys if
it is added there as a section.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..pipeline.config import derive_seed
from .context_fid import ContextFIDConfig, context_fid
from .discriminative import DiscriminativeConfig, discriminative_score
from .membership import MembershipConfig, membership_inference
from .predictive import PredictiveConfig, predictive_score
from .summary import summarize_runs

__all__ = ["FidelityConfig", "FIDELITY_METRICS", "fidelity_scores", "fidelity_over_seeds"]

FIDELITY_METRICS = ("discriminative", "predictive", "context_fid", "membership")


@dataclass(frozen=True)
class FidelityConfig:
    """Settings of every fidelity / privacy metric (0 hidden = ``max(C // 2, 4)``)."""

    metrics: tuple[str, ...] = FIDELITY_METRICS
    reference: str = "train"
    max_records: int = 2000
    batch_size: int = 128
    disc_hidden: int = 16
    disc_layers: int = 2
    disc_epochs: int = 10
    disc_min_steps: int = 200
    disc_lr: float = 1e-2
    pred_target: str = "all"
    pred_hidden: int = 16
    pred_layers: int = 2
    pred_epochs: int = 10
    pred_min_steps: int = 200
    pred_lr: float = 5e-3
    fid_kernels: int = 64
    fid_encoder_seed: int = 0
    mia_calibration_fraction: float = 0.5

    def __post_init__(self) -> None:
        unknown = set(self.metrics) - set(FIDELITY_METRICS)
        if unknown:
            raise ValueError(f"unknown fidelity metrics {sorted(unknown)}; choose from {FIDELITY_METRICS}")
        if self.reference not in ("train", "test"):
            raise ValueError(f"reference must be 'train' or 'test', got {self.reference!r}")
        # Building the sub-configs validates the remaining fields.
        self.discriminative(), self.predictive(), self.context_fid(), self.membership()

    @classmethod
    def tiny(cls) -> FidelityConfig:
        """Seconds on tiny data, for tests and smoke runs."""
        return cls(max_records=200, disc_epochs=2, disc_min_steps=0, pred_epochs=2, pred_min_steps=0, fid_kernels=16)

    def discriminative(self) -> DiscriminativeConfig:
        return DiscriminativeConfig(hidden=self.disc_hidden, num_layers=self.disc_layers, epochs=self.disc_epochs,
                                    min_steps=self.disc_min_steps, batch_size=self.batch_size, lr=self.disc_lr,
                                    max_records=self.max_records)

    def predictive(self) -> PredictiveConfig:
        return PredictiveConfig(target=self.pred_target, hidden=self.pred_hidden, num_layers=self.pred_layers,
                                epochs=self.pred_epochs, min_steps=self.pred_min_steps, batch_size=self.batch_size,
                                lr=self.pred_lr, max_records=self.max_records)

    def context_fid(self) -> ContextFIDConfig:
        return ContextFIDConfig(num_kernels=self.fid_kernels, encoder_seed=self.fid_encoder_seed,
                                max_records=self.max_records)

    def membership(self) -> MembershipConfig:
        return MembershipConfig(calibration_fraction=self.mia_calibration_fraction, max_records=self.max_records)

    def to_dict(self) -> dict:
        return asdict(self)


def fidelity_scores(
    real_train_x: np.ndarray,
    real_test_x: np.ndarray,
    synthetic_x: np.ndarray,
    *,
    seed: int,
    config: FidelityConfig = FidelityConfig(),
) -> dict[str, float]:
    """Flat {metric: float} for one (real, synthetic) pair and one seed (see module doc)."""
    real_train_x, real_test_x, synthetic_x = (np.asarray(a, dtype=np.float32) for a in
                                              (real_train_x, real_test_x, synthetic_x))
    shapes = {a.shape[1:] for a in (real_train_x, real_test_x, synthetic_x)}
    if real_train_x.ndim != 3 or len(shapes) != 1:
        raise ValueError(f"need [N, C, L] arrays of equal C, L; got {real_train_x.shape}, {real_test_x.shape}, "
                         f"{synthetic_x.shape}")
    reference = real_train_x if config.reference == "train" else real_test_x
    out: dict[str, float] = {}
    if "discriminative" in config.metrics:
        out.update(discriminative_score(reference, synthetic_x, seed=derive_seed(seed, 1),
                                        config=config.discriminative()))
    if "predictive" in config.metrics:
        out.update(predictive_score(reference, synthetic_x, seed=derive_seed(seed, 2), config=config.predictive()))
    if "context_fid" in config.metrics:
        out.update(context_fid(reference, synthetic_x, seed=derive_seed(seed, 3), config=config.context_fid()))
    if "membership" in config.metrics:
        out.update(membership_inference(real_train_x, real_test_x, synthetic_x, seed=derive_seed(seed, 4),
                                        config=config.membership()))
    return {k: float(v) for k, v in out.items()}


def fidelity_over_seeds(
    real_train_x: np.ndarray,
    real_test_x: np.ndarray,
    synthetic_x: np.ndarray,
    *,
    seeds: tuple[int, ...] | list[int] = (0, 1, 2),
    config: FidelityConfig = FidelityConfig(),
) -> dict[str, object]:
    """``summarize_runs`` of ``fidelity_scores`` per seed: {metric: mean, "ci95": {...}, "values": {...}, "runs"}."""
    if not seeds:
        raise ValueError("need at least one seed")
    return summarize_runs([
        fidelity_scores(real_train_x, real_test_x, synthetic_x, seed=s, config=config) for s in seeds
    ])
