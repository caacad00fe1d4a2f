"""The embedded default: seeded synthetic multi-hospital ICU vitals that need no files.

Each record is 24 hours of heart rate (bpm), respiratory rate (breaths/min) and SpO2 (%)
sampled at ``length`` evenly spaced times (48 by default, 288 = every 5 minutes as in eICU).

Generative story for one patient in hospital h (all draws from a seeded generator):

1. Latent frailty z ~ N(0, 1). Deterioration strength d = exp(0.9 z - 0.6) / 2, starting at
   an onset tau ~ U(4 h, 20 h): HR rises by 9·d bpm/h and RR by 1.2·d /min/h after tau,
   SpO2 drifts down by 0.35·d %/h.
2. Desaturation episodes: K ~ Poisson(0.4 + 2.2 · sigmoid(2 z - 1)) dips of 3-10 % lasting
   0.5-2 h. Short-term variability (AR(1) noise) grows with z.
3. Hospital shift: per-site offsets (HR, SpO2 calibration), sensor-noise level, missingness
   (gaps filled forward, ``mask`` marks them) and size.
4. Outcome: logit = b_h + 1.1 · rise + 0.55 · K + 0.8 · variability + N(0, 0.5²), where
   rise = d · (24 - tau) / 10 is the realised deterioration; b_h is solved so the expected
   prevalence equals the hospital's target (5-20 %). The label therefore depends on the
   series only through their dynamics (trend, dips, variability), never on a hidden flag.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .contract import SiteData, validate_site

__all__ = ["HospitalProfile", "SyntheticICUConfig", "generate_hospitals", "sites_for", "DEFAULT_PROFILES"]

CHANNELS = ("heart_rate", "resp_rate", "spo2")
DEFAULT_LENGTH = 48


@dataclass(frozen=True)
class HospitalProfile:
    """How one synthetic hospital differs from the others."""

    name: str
    num_records: int
    prevalence: float
    hr_offset: float = 0.0
    spo2_offset: float = 0.0
    noise_scale: float = 1.0
    missing_rate: float = 0.05


DEFAULT_PROFILES: tuple[HospitalProfile, ...] = (
    HospitalProfile("hospital_a", 900, 0.07, hr_offset=0.0, spo2_offset=0.0, noise_scale=1.0, missing_rate=0.04),
    HospitalProfile("hospital_b", 550, 0.13, hr_offset=6.0, spo2_offset=-0.5, noise_scale=1.4, missing_rate=0.10),
    HospitalProfile("hospital_c", 300, 0.19, hr_offset=-5.0, spo2_offset=-1.2, noise_scale=1.8, missing_rate=0.18),
)


@dataclass(frozen=True)
class SyntheticICUConfig:
    """Options of the embedded generator. ``profiles=None`` uses ``DEFAULT_PROFILES`` for
    ``num_hospitals <= 3`` and draws further seeded profiles beyond that."""

    num_hospitals: int = 3
    length: int = DEFAULT_LENGTH
    seed: int = 0
    size_scale: float = 1.0
    profiles: tuple[HospitalProfile, ...] | None = field(default=None)

    def resolved_profiles(self) -> tuple[HospitalProfile, ...]:
        if self.num_hospitals < 1:
            raise ValueError(f"num_hospitals must be >= 1, got {self.num_hospitals}")
        if self.length < 8:
            raise ValueError(f"length must be >= 8, got {self.length}")
        if self.profiles is not None:
            profiles = self.profiles
        else:
            profiles = DEFAULT_PROFILES[: self.num_hospitals]
            rng = np.random.default_rng([self.seed, 7919])
            extra = []
            for i in range(len(profiles), self.num_hospitals):
                extra.append(
                    HospitalProfile(
                        name=f"hospital_{i}",
                        num_records=int(rng.integers(200, 900)),
                        prevalence=float(rng.uniform(0.05, 0.20)),
                        hr_offset=float(rng.normal(0, 5)),
                        spo2_offset=float(rng.normal(0, 0.8)),
                        noise_scale=float(rng.uniform(0.8, 2.0)),
                        missing_rate=float(rng.uniform(0.02, 0.2)),
                    )
                )
            profiles = tuple(profiles) + tuple(extra)
        return tuple(
            HospitalProfile(**{**p.__dict__, "num_records": max(20, int(round(p.num_records * self.size_scale)))})
            for p in profiles
        )


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _intercept_for_prevalence(scores: np.ndarray, prevalence: float) -> float:
    """b with mean(sigmoid(b + scores)) == prevalence (bisection; the map is monotone in b)."""
    lo, hi = -30.0, 30.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _sigmoid(mid + scores).mean() < prevalence:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _ar1(rng: np.random.Generator, n: int, length: int, phi: float, std: np.ndarray) -> np.ndarray:
    """AR(1) noise [n, length] with stationary std ``std`` [n]."""
    eps = rng.normal(size=(n, length)) * np.sqrt(1 - phi**2)
    out = np.empty((n, length))
    out[:, 0] = rng.normal(size=n)
    for t in range(1, length):
        out[:, t] = phi * out[:, t - 1] + eps[:, t]
    return out * std[:, None]


def _missing_mask(rng: np.random.Generator, n: int, channels: int, length: int, rate: float) -> np.ndarray:
    """Observed mask [n, C, L] with gaps: runs of mean length L/12 covering ~``rate`` of steps."""
    mean_run = max(1.0, length / 12)
    start_prob = rate / mean_run / max(1e-9, 1 - rate)
    observed = np.ones((n, channels, length), dtype=bool)
    starts = rng.random((n, channels, length)) < start_prob
    runs = rng.geometric(1.0 / mean_run, size=(n, channels, length))
    for i, c, t in zip(*np.nonzero(starts)):
        observed[i, c, t : t + runs[i, c, t]] = False
    observed[:, :, 0] |= ~observed.any(axis=2)  # every channel keeps at least one observation
    return observed


def _fill_forward(x: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Carry the last observation forward; leading gaps take the first observation."""
    n, c, length = x.shape
    idx = np.where(observed, np.arange(length)[None, None, :], -1)
    idx = np.maximum.accumulate(idx, axis=2)
    first = observed.argmax(axis=2)[..., None]
    idx = np.where(idx < 0, first, idx)
    return np.take_along_axis(x, idx, axis=2)


def _generate_site(profile: HospitalProfile, length: int, rng: np.random.Generator) -> SiteData:
    n = profile.num_records
    hours = np.linspace(0.0, 24.0, length)
    z = rng.normal(size=n)
    strength = np.exp(0.9 * z - 0.6) / 2.0
    onset = rng.uniform(4.0, 20.0, size=n)
    ramp = np.maximum(hours[None, :] - onset[:, None], 0.0)  # [n, L] hours since onset
    variability = 0.7 + 0.5 * _sigmoid(2.0 * z) + rng.gamma(2.0, 0.1, size=n)

    circadian = np.sin(2 * np.pi * (hours[None, :] - rng.uniform(0, 24, size=(n, 1))) / 24.0)
    hr = (
        rng.normal(82 + profile.hr_offset, 9, size=(n, 1))
        + 3.0 * circadian
        + 9.0 * strength[:, None] * ramp / 4.0
        + _ar1(rng, n, length, 0.8, 3.5 * variability)
    )
    rr = (
        rng.normal(16.5, 2.5, size=(n, 1))
        + 1.2 * strength[:, None] * ramp / 4.0
        + _ar1(rng, n, length, 0.6, 1.2 * variability)
    )
    spo2 = rng.normal(97.2 + profile.spo2_offset, 1.0, size=(n, 1)) - 0.35 * strength[:, None] * ramp / 4.0
    episodes = rng.poisson(0.4 + 2.2 * _sigmoid(2 * z - 1))
    for i in np.flatnonzero(episodes):
        centers = rng.uniform(0, 24, size=episodes[i])
        depths = rng.uniform(3, 10, size=episodes[i])
        widths = rng.uniform(0.5, 2.0, size=episodes[i])
        spo2[i] -= (depths[:, None] * np.exp(-0.5 * ((hours[None, :] - centers[:, None]) / (widths[:, None] / 2)) ** 2)).sum(0)
    spo2 = spo2 + _ar1(rng, n, length, 0.5, 0.6 * variability)

    noise = profile.noise_scale
    hr = hr + rng.normal(0, 1.5 * noise, size=hr.shape)
    rr = rr + rng.normal(0, 0.8 * noise, size=rr.shape)
    spo2 = np.clip(spo2 + rng.normal(0, 0.5 * noise, size=spo2.shape), 60.0, 100.0)
    x = np.stack([np.clip(hr, 25, 230), np.clip(rr, 4, 60), spo2], axis=1)

    rise = strength * (24.0 - onset) / 10.0
    score = 1.1 * rise + 0.55 * episodes + 0.8 * (variability - 1.0) + rng.normal(0, 0.5, size=n)
    b = _intercept_for_prevalence(score, profile.prevalence)
    y = (rng.random(n) < _sigmoid(b + score)).astype(np.int64)

    observed = _missing_mask(rng, n, x.shape[1], length, profile.missing_rate)
    x = _fill_forward(x, observed).astype(np.float32)
    site = SiteData(
        name=profile.name,
        x=x,
        y=y,
        channels=CHANNELS,
        mask=observed,
        meta={"source": "synthetic", "profile": profile.__dict__.copy()},
    )
    return validate_site(site, require_both_classes=False)


def generate_hospitals(config: SyntheticICUConfig = SyntheticICUConfig()) -> list[SiteData]:
    """One ``SiteData`` per hospital, deterministic in ``config.seed``.

    The result of the last few configs is kept (arrays read-only): every message of a simulated
    federation loads its site from this, and regenerating all K sites per message made a run's
    data cost grow as K^2 (benchmarks/site_scaling.py)."""
    return list(_generate_hospitals(config))


@functools.lru_cache(maxsize=2)
def _generate_hospitals(config: SyntheticICUConfig) -> tuple[SiteData, ...]:
    profiles = config.resolved_profiles()
    seeds = np.random.SeedSequence(config.seed).spawn(len(profiles))
    sites = tuple(_generate_site(p, config.length, np.random.default_rng(s)) for p, s in zip(profiles, seeds))
    for site in sites:
        for value in vars(site).values():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
    return sites


def sites_for(data_config) -> list[SiteData]:
    """The registered load of ``"synthetic"`` (``data.registry``): the hospitals a
    ``DataConfig`` asks for (``num_hospitals``, ``data_seed``, ``size_scale``, ``length``; 0 =
    ``DEFAULT_LENGTH``). ``data.channels`` other than ``CHANNELS`` is refused by name."""
    from .loading import parse_channels

    channels = parse_channels(getattr(data_config, "channels", ""))
    if channels is not None and channels != CHANNELS:
        raise ValueError(
            f"data.channels={','.join(channels)!r} cannot be honoured by the synthetic source: it generates "
            f"exactly {','.join(CHANNELS)!r} (leave data.channels empty)"
        )
    return generate_hospitals(
        SyntheticICUConfig(
            num_hospitals=data_config.num_hospitals,
            length=int(data_config.length) or DEFAULT_LENGTH,
            seed=data_config.data_seed,
            size_scale=data_config.size_scale,
        )
    )
