"""Influence-guided reverse step (TarDiff), in four forms, plus selection from a pool.

Given the sampler's Gaussian N(mu_phi(x_t, t, y), Sigma_t), x0_hat(x_t) and d mu / d x0_hat
(``ReverseMoments``), and grad = grad_x I(x0_hat) (the influence gradient), one guided step is

paper form  (``form="paper"``; Deng et al. 2025, Sec. 3.2):
    mu' = mu_phi + s * Sigma_t * grad;  x_{t-1} = mu' + sqrt(Sigma_t) z
    (no effect where Sigma_t = 0, e.g. the last DDIM step)

public-code form (``form="code"``; microsoft/TimeCraft, TarDiff/):
    x~ = mu_phi + sqrt(Sigma_t) z;  x_{t-1} = (1 - s) x~ + s * grad

scale-free form (``form="normalized"``): the shift is s noise standard deviations along the
influence gradient, whatever the gradient's magnitude (RMS over the sample's C x L values):
    mu' = mu_phi + s * sqrt(Sigma_t) * grad / rms(grad)

manifold-preserving form (``form="x0"``; after MPGD, He et al. 2024): correct the *predicted
clean sample* by a step of RMS s on the data scale, clip it to the data range, and take the
ordinary DDIM / DDPM update from the corrected x0 with the same noise estimate:
    x0' = clip(x0_hat + s * grad / rms(grad));  mu' = mu_phi + (d mu / d x0_hat) (x0' - x0_hat)
The update never leaves what the denoiser would produce from *some* clean sample, and it
acts on every step, the last one included (d mu / d x0_hat = 1 there).

selection (``form="filter"``, ``pipeline.phases.synthesize``): no step changes; an unguided pool
of n / (1 - s) records per label is drawn and the fraction s with the lowest influence I(x) is
dropped (s in [0, 1)).

Like the public code we differentiate I with respect to x0_hat, not through the U-Net to x_t.
With s = 0 every form returns exactly the unguided sample: the noise z is drawn by the caller
whether or not guidance is on, 0 * grad adds exact zeros, and a zero x0 correction is skipped.

``GuidanceConfig.method`` picks the influence gradient (see ``influence_gradient``):
"jvp" / "central_difference" (fast), "double_backprop" (reference), "batch_normalized"
(the public code's batch-coupled objective). With "central_difference" the step is chosen
once per ``InfluenceGuidance``, on the first guided batch (``choose_fd_step``: 10, 3, 1, 1/3
and 1/10 times ``fd_eps`` checked against jvp); a classifier with kinks, or one where no step
meets relative error 1e-3, falls back to jvp with a warning (``fd_note`` says what happened).

``scale = "auto"`` (the default) is not a step: the run picks (form, s) from
``candidates`` on the tuning split (``pipeline.selection``), s = 0 always among them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from ..diffusion.samplers import ReverseMoments
from .influence_gradient import (
    FdStepChoice,
    choose_fd_step,
    get_influence_grad,
    influence_grad_central_difference,
)

FD_CHECK_BATCH = 8  # samples of the first guided batch the central-difference step is checked on

__all__ = ["GuidanceConfig", "InfluenceGuidance", "GUIDANCE_FORMS", "STEP_FORMS", "Candidate", "parse_candidates"]

STEP_FORMS = ("paper", "code", "normalized", "x0")
GUIDANCE_FORMS = (*STEP_FORMS, "filter")
AUTO = "auto"


@dataclass(frozen=True, order=True)
class Candidate:
    """One guidance setting scored on the tuning split: (form, scale); scale 0 = unguided."""

    form: str
    scale: float

    @property
    def label(self) -> str:
        return "unguided" if self.scale == 0 else f"{self.form}:{self.scale:g}"


def parse_candidates(text: str) -> tuple[Candidate, ...]:
    """"paper:10,x0:0.1,filter:0.25" -> Candidates, with (paper, 0) = unguided always first."""
    out = [Candidate("paper", 0.0)]
    for item in filter(None, (part.strip() for part in str(text).split(","))):
        form, sep, value = item.partition(":")
        try:
            scale = float(value)
        except ValueError:
            scale = float("nan")
        if not sep or form not in GUIDANCE_FORMS or not scale >= 0:
            raise ValueError(f"guidance.candidates: {item!r} is not <form>:<scale >= 0> with a form in "
                             f"{list(GUIDANCE_FORMS)}")
        if form == "filter" and scale >= 1:
            raise ValueError(f"guidance.candidates: {item!r}: a filter drops a fraction in [0, 1)")
        if scale > 0 and Candidate(form, scale) not in out:
            out.append(Candidate(form, scale))
    return tuple(out)


@dataclass(frozen=True)
class GuidanceConfig:
    """scale s (a number, or "auto": chosen from ``candidates`` on the tuning split); form (see
    the module docstring); method of the influence gradient; target_class for class-specific
    guidance (None = all guidance records); guided_fraction of the reverse steps that are guided
    (the last, least noisy ones among the steps where the form acts; 1.0 = every such step).

    Selection (``scale = "auto"``): ``candidates`` "<form>:<s>,..." (s = 0 is always added),
    each sampled at ``tuning_ratio`` x the training size and scored on the tuning split by
    ``select_on`` ("tsrtr" = real + the candidate set, "tstr" = the set only) AUPRC with the
    evaluation classifier at ``tuning_seeds``; the best guided candidate wins if it beats
    unguided by more than a second unguided draw differs from the first plus ``tie_tolerance``,
    among the candidates whose Context-FID (against the training records) is at most
    ``max_fid_ratio`` x unguided's (0 = no fidelity constraint) (``pipeline.selection``);
    that Context-FID is measured on a pilot draw of ``fid_pilot`` records per candidate (0 = on
    the candidate sets themselves), and only the candidates it admits are sampled in full."""

    scale: float | str = AUTO
    form: str = "paper"
    method: str = "jvp"
    target_class: int | None = None
    guided_fraction: float = 1.0
    fd_eps: float = 1e-2
    candidates: str = "paper:10,paper:30,normalized:0.3,x0:0.05,x0:0.2,filter:0.25"
    tuning_ratio: float = 0.5
    tuning_seeds: tuple[int, ...] = (0, 1)
    select_on: str = "tsrtr"
    tie_tolerance: float = 0.0
    max_fid_ratio: float = 2.0
    fid_pilot: int = 256

    def __post_init__(self) -> None:
        if self.form not in GUIDANCE_FORMS:
            raise ValueError(f"unknown guidance form {self.form!r}; choose one of {GUIDANCE_FORMS}")
        get_influence_grad(self.method)
        if not 0.0 <= self.guided_fraction <= 1.0:
            raise ValueError(f"guided_fraction must be in [0, 1], got {self.guided_fraction}")
        if self.target_class not in (None, 0, 1):
            raise ValueError(f"target_class must be None, 0 or 1, got {self.target_class}")
        if isinstance(self.scale, str):
            if self.scale.strip().lower() != AUTO:
                try:
                    object.__setattr__(self, "scale", float(self.scale))
                except ValueError:
                    raise ValueError(f"guidance.scale must be a number >= 0 or 'auto', got {self.scale!r}") from None
            else:
                object.__setattr__(self, "scale", AUTO)
        if not self.auto and not float(self.scale) >= 0:
            raise ValueError(f"guidance.scale must be >= 0 or 'auto', got {self.scale}")
        if self.form == "filter" and not self.auto and self.scale >= 1:
            raise ValueError(f"form 'filter' drops a fraction s in [0, 1) of its pool, got s = {self.scale}")
        parse_candidates(self.candidates)
        if self.select_on not in ("tsrtr", "tstr"):
            raise ValueError(f"guidance.select-on must be 'tsrtr' or 'tstr', got {self.select_on!r}")
        if self.tuning_ratio <= 0 or self.tie_tolerance < 0 or self.max_fid_ratio < 0:
            raise ValueError("guidance.tuning-ratio must be > 0, guidance.tie-tolerance and guidance.max-fid-ratio >= 0")
        if self.fid_pilot < 0:
            raise ValueError(f"guidance.fid-pilot must be >= 0 (0 = no pilot), got {self.fid_pilot}")
        if not self.tuning_seeds:
            raise ValueError("guidance.tuning-seeds needs at least one evaluation seed")

    @property
    def auto(self) -> bool:
        return self.scale == AUTO

    def with_candidate(self, candidate: Candidate) -> GuidanceConfig:
        """This config with (form, scale) fixed to ``candidate``."""
        return replace(self, form=candidate.form, scale=float(candidate.scale))

    def candidate_list(self) -> tuple[Candidate, ...]:
        return parse_candidates(self.candidates)

    @classmethod
    def public_code(cls, **overrides) -> GuidanceConfig:
        """The public code's settings: (1 - s) x + s grad with s = 1e-5 and its batch objective."""
        return cls(**{"scale": 1e-5, "form": "code", "method": "batch_normalized", **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


def _per_sample_rms(t: torch.Tensor) -> torch.Tensor:
    """RMS over every axis but the first, shaped to broadcast: [B, 1, ..., 1]."""
    return t.pow(2).mean(dim=tuple(range(1, t.ndim)), keepdim=True).sqrt().clamp_min(1e-12)


class InfluenceGuidance:
    """Applies one guided reverse step. ``direction`` is g = G / ||G|| ([P], classifier order)."""

    def __init__(self, classifier: nn.Module, direction: torch.Tensor, config: GuidanceConfig):
        if config.auto:
            raise ValueError("guidance.scale = 'auto' must be resolved to a candidate (pipeline.selection) "
                             "before sampling")
        if config.form not in STEP_FORMS:
            raise ValueError(f"form {config.form!r} selects from a pool; it has no guided step")
        self.classifier = classifier
        self.config = config
        device = next(classifier.parameters()).device
        self.direction = direction.to(device=device, dtype=torch.float32)
        self._grad_fn: Callable[..., torch.Tensor] | None = get_influence_grad(config.method)
        self.fd_choice: FdStepChoice | None = None  # the central difference's step, once chosen
        if self._grad_fn is influence_grad_central_difference:
            self._grad_fn = None  # chosen on the first batch

    def influence_grad(self, x0_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """grad_x I at x0_hat [B, C, L] for labels y [B]."""
        if self._grad_fn is None:
            k = min(FD_CHECK_BATCH, x0_hat.shape[0])
            choice = choose_fd_step(self.classifier, x0_hat[:k], y[:k], self.direction, eps=self.config.fd_eps)
            self._grad_fn, self.fd_choice = choice.grad_fn(), choice
            if choice.eps is None:
                warnings.warn(choice.message, RuntimeWarning, stacklevel=2)
        return self._grad_fn(self.classifier, x0_hat, y, self.direction)

    @property
    def fd_note(self) -> str:
        """What the central difference's one-time check decided ("" before it ran / for other methods)."""
        return self.fd_choice.message if self.fd_choice else ""

    def acts_on(self, variance: float) -> bool:
        """Whether this form changes a step of variance Sigma_t (paper / normalized need Sigma_t > 0)."""
        return self.config.form in ("code", "x0") or variance > 0

    def guided_steps(self, variances: list[float]) -> set[int]:
        """Indices (0 = noisiest) of the guided steps: the last ``guided_fraction`` of the steps
        this form acts on (``variances``: Sigma_t of each step), so a fraction f guides
        round(f x that many) steps that all change the sample."""
        active = [i for i, v in enumerate(variances) if self.acts_on(v)]
        k = round(self.config.guided_fraction * len(active))
        return set(active[len(active) - k :]) if k else set()

    def step(self, moments: ReverseMoments, noise: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_{t-1} from the sampler's moments, the step's noise z [B, C, L] and labels y [B]."""
        s = float(self.config.scale)
        form = self.config.form
        grad = self.influence_grad(moments.x0_hat, y)
        if form == "paper":
            return moments.mean + (s * moments.variance) * grad + moments.std * noise
        if form == "code":
            return (1.0 - s) * (moments.mean + moments.std * noise) + s * grad
        unit = grad / _per_sample_rms(grad)
        if form == "normalized":
            return moments.mean + (s * moments.std) * unit + moments.std * noise
        # form == "x0"
        x0 = moments.x0_hat + s * unit
        if moments.x0_clip is not None:
            x0 = x0.clamp(-moments.x0_clip, moments.x0_clip)
        shift = moments.x0_coef * (x0 - moments.x0_hat) if s else 0.0
        return moments.mean + shift + moments.std * noise
