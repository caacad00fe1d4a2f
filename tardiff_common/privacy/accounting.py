"""A site's privacy ledger and its epsilon, from Opacus' accountants only.

Every Gaussian mechanism a site runs is one ledger ``Entry`` (phase, sigma, q, steps, C):

* the DP guidance-sum release: sum of per-example gradients clipped to C plus N(0, sigma^2 C^2)
  per coordinate is *one* step of the Gaussian mechanism on the full guidance split, i.e. an
  Opacus history entry ``(noise_multiplier=sigma, sample_rate=1.0, num_steps=1)`` (for q = 1
  the RDP accountant uses the plain Gaussian mechanism, alpha / (2 sigma^2));
* one local-training call with DP-SGD: the entries of that call's Opacus accountant history,
  ``(sigma, q = 1 / batches per epoch, steps)`` (Poisson sampling).

The site's epsilon at ``delta`` is that of the *composition* of all its entries: an Opacus
accountant (``create_accountant("rdp" | "prv")``) whose ``history`` is the ledger, queried with
``get_epsilon(delta)``. Nothing here re-implements an accountant. Epsilons are per site and are
never added across sites (each site's records are protected by its own mechanisms).

``solve_noise_multiplier`` finds the sigma that makes a planned history reach a target epsilon:
Opacus' ``get_noise_multiplier`` when the plan is one (q, steps) entry, otherwise the same
doubling + bisection over the composed history (still evaluated by the Opacus accountant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

__all__ = [
    "Entry",
    "PrivacyLedger",
    "PrivacyBudgetExceeded",
    "BUDGET_MARKER",
    "epsilon_of",
    "solve_noise_multiplier",
]

BUDGET_MARKER = "privacy budget exceeded"
MAX_SIGMA = 1e6


class PrivacyBudgetExceeded(RuntimeError):
    """A site refuses a DP step that would take its epsilon above ``privacy.max-epsilon``."""


@dataclass(frozen=True)
class Entry:
    """``steps`` compositions of a (Poisson-subsampled) Gaussian mechanism: noise std
    ``noise_multiplier`` * ``clip``, sampling rate ``sample_rate``, in phase ``phase``."""

    phase: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip: float

    def history(self) -> tuple[float, float, int]:
        """The Opacus accountant history entry (noise_multiplier, sample_rate, num_steps)."""
        return (float(self.noise_multiplier), float(self.sample_rate), int(self.steps))


def epsilon_of(entries: list[Entry], delta: float, accountant: str = "rdp") -> float:
    """Epsilon of the composition of ``entries`` at ``delta`` (0 for none, inf if any sigma is 0)."""
    entries = [e for e in entries if e.steps > 0]
    if not entries:
        return 0.0
    if any(e.noise_multiplier <= 0 for e in entries):
        return math.inf
    merged: dict[tuple[float, float], int] = {}  # equal (sigma, q) compose by adding steps (exact)
    for e in entries:
        key = (float(e.noise_multiplier), float(e.sample_rate))
        merged[key] = merged.get(key, 0) + int(e.steps)
    acc = create_accountant(mechanism=accountant)
    acc.history = [(sigma, q, steps) for (sigma, q), steps in merged.items()]
    return float(acc.get_epsilon(delta=delta))


@dataclass
class PrivacyLedger:
    """Everything one site has released under DP, in order (kept across rounds and messages)."""

    entries: list[Entry]

    @classmethod
    def empty(cls) -> PrivacyLedger:
        return cls([])

    def add(self, entries: list[Entry]) -> None:
        self.entries.extend(entries)

    def epsilon(self, delta: float, accountant: str = "rdp", *, phase: str | None = None) -> float:
        """Composed epsilon of all entries (of ``phase`` only, when given)."""
        chosen = [e for e in self.entries if phase is None or e.phase == phase]
        return epsilon_of(chosen, delta, accountant)

    def phases(self) -> list[str]:
        return list(dict.fromkeys(e.phase for e in self.entries))

    def check_budget(self, planned: list[Entry], *, site: str, phase: str, delta: float, accountant: str,
                     max_epsilon: float | None) -> float:
        """Epsilon after ``planned``; raises ``PrivacyBudgetExceeded`` if it would exceed ``max_epsilon``."""
        after = epsilon_of(self.entries + planned, delta, accountant)
        if max_epsilon is not None and after > max_epsilon:
            raise PrivacyBudgetExceeded(
                f"{BUDGET_MARKER}: site {site!r} refuses phase {phase!r}: its epsilon would reach {after:.4g} "
                f"> privacy.max-epsilon = {max_epsilon:g} (delta = {delta:g}, accountant {accountant}; "
                f"spent so far {epsilon_of(self.entries, delta, accountant):.4g})"
            )
        return after

    def summary(self, delta: float, accountant: str) -> dict:
        """{"epsilon": total, "delta", "<phase>": {"epsilon", "sigma", "clip", "sample_rate", "steps"}}."""
        out: dict = {"epsilon": self.epsilon(delta, accountant), "delta": delta}
        for phase in self.phases():
            chosen = [e for e in self.entries if e.phase == phase]
            out[phase] = {
                "epsilon": epsilon_of(chosen, delta, accountant),
                "sigma": chosen[-1].noise_multiplier,
                "clip": chosen[-1].clip,
                "sample_rate": chosen[-1].sample_rate,
                "steps": int(sum(e.steps for e in chosen)),
            }
        return out

    # ---------------------------------------------------------------- plain-list form

    def to_lists(self) -> dict[str, list]:
        """Column lists (phase, noise-multiplier, sample-rate, steps, clip) for a Flower ConfigRecord."""
        return {
            "phase": [e.phase for e in self.entries],
            "noise-multiplier": [float(e.noise_multiplier) for e in self.entries],
            "sample-rate": [float(e.sample_rate) for e in self.entries],
            "steps": [int(e.steps) for e in self.entries],
            "clip": [float(e.clip) for e in self.entries],
        }

    @classmethod
    def from_lists(cls, columns: dict) -> PrivacyLedger:
        if not columns or not columns.get("phase"):
            return cls.empty()
        rows = zip(columns["phase"], columns["noise-multiplier"], columns["sample-rate"], columns["steps"],
                   columns["clip"], strict=True)
        return cls([Entry(str(p), float(s), float(q), int(n), float(c)) for p, s, q, n, c in rows])


def solve_noise_multiplier(
    target_epsilon: float,
    delta: float,
    free: list[Entry],
    *,
    fixed: list[Entry] | None = None,
    accountant: str = "rdp",
    epsilon_tolerance: float = 0.01,
) -> float:
    """The sigma for all ``free`` entries (their own noise multiplier is ignored) such that the
    composition of ``fixed`` + ``free`` reaches ``target_epsilon`` at ``delta`` (within the
    tolerance, from below). Raises ``ValueError`` when the fixed part alone exceeds the target."""
    fixed = list(fixed or [])
    free = [e for e in free if e.steps > 0]
    if not free:
        raise ValueError("nothing to solve a noise multiplier for")
    if not fixed and len(free) == 1:
        return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                          sample_rate=free[0].sample_rate, steps=free[0].steps,
                                          accountant=accountant, epsilon_tolerance=epsilon_tolerance))

    def eps(sigma: float) -> float:
        return epsilon_of(fixed + [replace(e, noise_multiplier=sigma) for e in free], delta, accountant)

    if fixed and epsilon_of(fixed, delta, accountant) >= target_epsilon:
        raise ValueError(f"the mechanisms with explicit noise alone exceed privacy.target-epsilon = {target_epsilon}")
    sigma_low, sigma_high, eps_high = 0.0, 10.0, math.inf
    while eps_high > target_epsilon:  # as opacus.accountants.utils.get_noise_multiplier
        sigma_high *= 2
        eps_high = eps(sigma_high)
        if sigma_high > MAX_SIGMA:
            raise ValueError("The privacy budget is too low.")
    while target_epsilon - eps_high > epsilon_tolerance:
        sigma = (sigma_low + sigma_high) / 2
        value = eps(sigma)
        if value < target_epsilon:
            sigma_high, eps_high = sigma, value
        else:
            sigma_low = sigma
    return sigma_high
