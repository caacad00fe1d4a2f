"""A site's DP schedule for a whole run, and the noise multipliers that meet its budget.

From the run config and the site's record counts (its own; a site plans for itself):

* normalization:      2 entries (sigma_g, q = 1, 1 step), clip 1 -- the noised phase-0 moments and
                      histogram (``privacy.dp_statistics``), whenever any DP mechanism is on
* gradient sum:       1 entry (sigma_g, q = 1, 1 step), clip ``privacy.clip``
* classifier DP-SGD:  per round (sigma_s, q_c = 1 / b_c, epochs_c * b_c steps), b_c = ceil(N_train / B_c)
* diffusion DP-SGD:   per round (sigma_s, q_d = 1 / b_d, epochs_d * b_d steps), b_d = ceil(N_train / B_d)
* selection (3b):     1 entry (sigma_g, q = 1, 1 step), clip sqrt(K_3b) -- the noised tuning-split score
                      counts (``privacy.dp_scores``), whenever any DP mechanism is on and
                      ``guidance.scale = "auto"``
* evaluation (4):     1 entry (sigma_g, q = 1, 1 step), clip sqrt(K_4) -- the noised test-split score
                      counts the phase-4 metrics are computed from, whenever any DP mechanism is on

(b = batches per epoch of the non-private loader, B = min(batch size, N); Opacus' Poisson
loader samples each record with q = 1 / b and runs b steps per epoch.) Over the run that is
``classifier_rounds`` and ``diffusion_rounds`` rounds.

Noise multipliers: explicit ones (``privacy.noise-multiplier`` for the sum,
``privacy.sgd-noise-multiplier`` for DP-SGD) are used as given; the rest are solved for
``privacy.target-epsilon`` as one common sigma so that the composed epsilon of the *planned*
run equals the target (``accounting.solve_noise_multiplier``; with only the gradient sum that
is Opacus' ``get_noise_multiplier(target, delta, sample_rate=1, steps=1)``). The normalization
releases, the selection and the evaluation release take the gradient sum's sigma: solved with
the others when it is free, else ``privacy.noise-multiplier`` when set, else
``privacy.sgd-noise-multiplier``.

**Budget split.** One common sigma for every free entry: each q = 1 release (2 statistics, the
sum, selection, evaluation) gets the same share, alpha / (2 sigma^2) of RDP at every order, and
the DP-SGD rounds the rest; the report's per-phase rows show each phase's epsilon alone and the
``total`` row their composition (= the target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..pipeline.config import RunConfig
from .accounting import Entry, epsilon_of, solve_noise_multiplier
from .dp_scores import evaluation_histograms, score_entry, selection_histograms

__all__ = ["SitePlan", "plan_site", "batches_per_epoch", "validate_privacy_run", "NORMALIZATION_RELEASES"]

NORMALIZATION_RELEASES = 2  # phase 0: the moments, then the value histogram


def batches_per_epoch(num_records: int, batch_size: int) -> int:
    """len(DataLoader) for ``min(batch_size, N)`` without drop_last."""
    if num_records < 1:
        raise ValueError("no training records")
    return math.ceil(num_records / min(batch_size, num_records))


@dataclass(frozen=True)
class SitePlan:
    """One ledger entry per DP operation (None = that mechanism is off) and the round counts."""

    gradient_sum: Entry | None
    classifier_round: Entry | None
    diffusion_round: Entry | None
    classifier_rounds: int
    diffusion_rounds: int
    normalization: Entry | None = None  # each of the NORMALIZATION_RELEASES phase-0 releases
    selection: Entry | None = None  # the phase-3b score counts
    evaluation: Entry | None = None  # the phase-4 score counts

    def entry(self, phase: str) -> Entry | None:
        """The planned entry of one operation of ``phase`` (None when that phase releases without DP)."""
        return {"normalization": self.normalization, "classifier": self.classifier_round,
                "influence": self.gradient_sum, "diffusion": self.diffusion_round,
                "selection": self.selection, "evaluation": self.evaluation}.get(phase)

    def entries(self) -> list[Entry]:
        """One entry per DP phase (the solved schedule without repetitions)."""
        return [e for e in (self.normalization, self.gradient_sum, self.classifier_round, self.diffusion_round,
                            self.selection, self.evaluation) if e is not None]

    def history(self) -> list[Entry]:
        out = [self.normalization] * NORMALIZATION_RELEASES if self.normalization else []
        out += [self.classifier_round] * self.classifier_rounds if self.classifier_round else []
        out += [self.gradient_sum] if self.gradient_sum else []
        out += [self.diffusion_round] * self.diffusion_rounds if self.diffusion_round else []
        out += [e for e in (self.selection, self.evaluation) if e is not None]
        return out

    def epsilon(self, delta: float, accountant: str) -> float:
        return epsilon_of(self.history(), delta, accountant)


def validate_privacy_run(config: RunConfig) -> None:
    """Cross-section checks (raise ``ValueError``): DP-SGD cannot run FedProx's proximal term."""
    p = config.privacy
    if p.dp_sgd and config.federation.strategy == "fedprox":
        raise ValueError("privacy.dp-sgd-* cannot be combined with federation.strategy = 'fedprox' "
                         "(Opacus' per-sample gradients do not include the proximal term)")


def plan_site(config: RunConfig, num_train: int) -> SitePlan:
    """The site's full DP schedule with every noise multiplier resolved (see module doc)."""
    p = config.privacy
    validate_privacy_run(config)
    zero = 0.0  # placeholder sigma for entries still to be solved
    grad = Entry("influence", p.noise_multiplier if p.noise_multiplier is not None else zero, 1.0, 1, p.clip) \
        if p.gradient_sum_dp else None
    cls_round = diff_round = None
    if p.dp_sgd_classifier:
        b = batches_per_epoch(num_train, config.classifier_train.batch_size)
        cls_round = Entry("classifier", p.sgd_noise_multiplier or zero, 1.0 / b, config.classifier_train.epochs * b,
                          p.sgd_clip)
    if p.dp_sgd_diffusion:
        b = batches_per_epoch(num_train, config.diffusion_train.batch_size)
        diff_round = Entry("diffusion", p.sgd_noise_multiplier or zero, 1.0 / b, config.diffusion_train.epochs * b,
                           p.sgd_clip)
    free_grad = p.gradient_sum_dp and p.noise_multiplier is None
    free_sgd = p.dp_sgd and p.sgd_noise_multiplier is None
    stats = select = evaluate = None
    if p.any_dp:
        explicit = p.noise_multiplier if p.gradient_sum_dp else p.sgd_noise_multiplier
        sigma0 = zero if explicit is None else explicit
        stats = Entry("normalization", sigma0, 1.0, 1, 1.0)
        if config.guidance.auto:
            select = score_entry("selection", sigma0, selection_histograms(config))
        evaluate = score_entry("evaluation", sigma0, evaluation_histograms(config))
    free_stats = stats is not None and explicit is None
    plan = SitePlan(grad, cls_round, diff_round, config.federation.classifier_rounds,
                    config.federation.diffusion_rounds, stats, select, evaluate)
    if not (free_grad or free_sgd):
        return plan
    free, fixed = [], []
    for entry, is_free in ((stats, free_stats), (grad, free_grad), (cls_round, free_sgd), (diff_round, free_sgd),
                           (select, free_stats), (evaluate, free_stats)):
        if entry is None:
            continue
        repeats = {"classifier": plan.classifier_rounds, "diffusion": plan.diffusion_rounds,
                   "normalization": NORMALIZATION_RELEASES}.get(entry.phase, 1)
        (free if is_free else fixed).append(replace(entry, steps=entry.steps * repeats))
    sigma = solve_noise_multiplier(p.target_epsilon, p.delta, free, fixed=fixed, accountant=p.accountant)
    return SitePlan(
        replace(grad, noise_multiplier=sigma) if grad and free_grad else grad,
        replace(cls_round, noise_multiplier=sigma) if cls_round and free_sgd else cls_round,
        replace(diff_round, noise_multiplier=sigma) if diff_round and free_sgd else diff_round,
        plan.classifier_rounds, plan.diffusion_rounds,
        replace(stats, noise_multiplier=sigma) if stats and free_stats else stats,
        replace(select, noise_multiplier=sigma) if select and free_stats else select,
        replace(evaluate, noise_multiplier=sigma) if evaluate and free_stats else evaluate,
    )
