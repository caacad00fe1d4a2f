"""``PrivacyConfig``: the ``privacy.*`` keys of a run (all DP and secure aggregation off by default).

Three DP mechanisms can be switched on independently, per site:

* ``gradient_sum_dp``   -- the guidance gradient sum G_k is released with per-example clipping
                           to ``clip`` (C) and Gaussian noise of std ``noise_multiplier`` * C.
* ``dp_sgd_classifier`` -- the classifier's local epochs run DP-SGD (Opacus), per-sample
                           gradients clipped to ``sgd_clip``, noise ``sgd_noise_multiplier``.
* ``dp_sgd_diffusion``  -- the same for the U-Net (EMA of DP weights is post-processing).

A noise multiplier left at ``None`` is solved for ``target_epsilon``: one common sigma for all
enabled mechanisms whose noise is not given, such that the site's epsilon composed over the
*whole run* (Opacus accountant ``accountant``, at ``delta``) equals ``target_epsilon``.
``max_epsilon`` is a hard per-site budget: a site refuses any step that would take its epsilon
above it, and the server stops (``on_budget_exceeded="stop"``) or goes on without that site
(``"drop-site"``).

``reproducible_noise`` seeds the DP noise and Poisson sampling from the run seed. That is for
experiments only: the server knows the run seed, so it could regenerate and subtract the noise.
By default each site draws its DP randomness from ``os.urandom`` (a site secret).

``secure_aggregation`` runs the influence phase's sum G = sum_k G_k through Flower's SecAgg+
(see ``server.secagg``): the server learns only the sum. ``secagg_num_shares`` /
``secagg_reconstruction_threshold``: a count (> 1, integral) or a fraction of the sampled sites
/ of the shares, exactly as ``flwr.server.workflow.SecAggPlusWorkflow`` reads them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["PrivacyConfig", "ACCOUNTANTS", "ON_BUDGET_EXCEEDED", "CLIPPING_MODES", "secagg_share_spec"]

ACCOUNTANTS = ("rdp", "prv")
ON_BUDGET_EXCEEDED = ("stop", "drop-site")
CLIPPING_MODES = ("flat", "per_layer")


def secagg_share_spec(value: float) -> int | float:
    """A config number as SecAggPlusWorkflow expects it: an integral value > 1 is a count, else a fraction."""
    return int(value) if value > 1 and float(value).is_integer() else float(value)


@dataclass(frozen=True)
class PrivacyConfig:
    gradient_sum_dp: bool = False
    dp_sgd_classifier: bool = False
    dp_sgd_diffusion: bool = False
    clip: float = 1.0
    noise_multiplier: float | None = None
    sgd_clip: float = 1.0
    sgd_noise_multiplier: float | None = None
    clipping: str = "flat"
    target_epsilon: float | None = None
    delta: float = 1e-5
    accountant: str = "rdp"
    max_epsilon: float | None = None
    on_budget_exceeded: str = "stop"
    reproducible_noise: bool = False
    secure_aggregation: bool = False
    secagg_num_shares: float = 1.0
    secagg_reconstruction_threshold: float = 0.67
    secagg_clipping_range: float = 8.0
    secagg_quantization_range: int = 4194304

    def __post_init__(self) -> None:
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"privacy.accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if self.on_budget_exceeded not in ON_BUDGET_EXCEEDED:
            raise ValueError(f"privacy.on-budget-exceeded must be one of {ON_BUDGET_EXCEEDED}, "
                             f"got {self.on_budget_exceeded!r}")
        if self.clipping not in CLIPPING_MODES:
            raise ValueError(f"privacy.clipping must be one of {CLIPPING_MODES}, got {self.clipping!r}")
        if self.clip <= 0 or self.sgd_clip <= 0:
            raise ValueError("privacy.clip and privacy.sgd-clip must be > 0")
        for name in ("noise_multiplier", "sgd_noise_multiplier", "target_epsilon", "max_epsilon"):
            value = getattr(self, name)
            if value is not None and value <= 0 and not (name.endswith("noise_multiplier") and value == 0):
                raise ValueError(f"privacy.{name.replace('_', '-')} must be > 0 (or none), got {value}")
        if not 0 < self.delta < 1:
            raise ValueError(f"privacy.delta must be in (0, 1), got {self.delta}")
        missing = [m for m, on, sigma in (("gradient-sum-dp", self.gradient_sum_dp, self.noise_multiplier),
                                          ("dp-sgd-classifier", self.dp_sgd_classifier, self.sgd_noise_multiplier),
                                          ("dp-sgd-diffusion", self.dp_sgd_diffusion, self.sgd_noise_multiplier))
                   if on and sigma is None]
        if missing and self.target_epsilon is None:
            raise ValueError(f"privacy.{missing[0]} needs a noise multiplier: set privacy.target-epsilon "
                             "(sigma is then solved with the Opacus accountant) or the noise multiplier")
        if self.target_epsilon is not None and self.any_dp and not missing:
            raise ValueError("privacy.target-epsilon is set but every enabled mechanism has an explicit noise "
                             "multiplier; set the noise multipliers to none to solve them for the target")
        if self.secagg_clipping_range <= 0 or self.secagg_quantization_range < 2:
            raise ValueError("privacy.secagg-clipping-range must be > 0 and secagg-quantization-range >= 2")
        for name in ("secagg_num_shares", "secagg_reconstruction_threshold"):
            if getattr(self, name) <= 0:
                raise ValueError(f"privacy.{name.replace('_', '-')} must be > 0")

    @property
    def any_dp(self) -> bool:
        return self.gradient_sum_dp or self.dp_sgd_classifier or self.dp_sgd_diffusion

    @property
    def dp_sgd(self) -> bool:
        return self.dp_sgd_classifier or self.dp_sgd_diffusion

    def to_dict(self) -> dict:
        return asdict(self)
