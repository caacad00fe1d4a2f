"""The *Privacy* rows of a run's metrics.json, one shape for the federated and the centralized run.

Per data holder (a site, or "pooled" in the centralized run) one row per DP phase
(``phase_list.DP_PHASES``) and a ``total`` row:

* a phase it released under DP: {"dp": True, "epsilon" of that phase alone, "sigma", "clip",
  "steps", "sample_rate"} from its ledger summary;
* a phase without DP: {"dp": False, "released", "epsilon": None (= inf) if it released in that
  phase, 0.0 if it released nothing there (an excluded site), "sigma": 0.0};
* ``total``: the composition of all its DP releases (Opacus accountant over the whole ledger),
  ``covers`` naming the phases it covers ("nothing" when none).

Every row also carries "site", "phase", "delta" and "accountant". An epsilon of None stands for
infinity (JSON has none); a non-finite epsilon from the ledger becomes None as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..pipeline.phase_list import DP_PHASES
from .config import PrivacyConfig

__all__ = ["WITHHELD_UNDER_DP", "privacy_rows_of", "privacy_settings", "finite_epsilon"]

WITHHELD_UNDER_DP = ("minority F1", "theta*'s test scores", "fidelity metrics", "membership-inference AUC",
                     "candidates' Context-FID", "gradient-boosting baselines",
                     "real-only and TSRTR rows (and the tuning TSRTR scores; trained on raw training records "
                     "without DP-SGD)", "the real training split's mean influence")


def finite_epsilon(value) -> float | None:
    """epsilon as a float; None stands for infinity (no noise) in JSON and renders as "inf"."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def privacy_rows_of(site: str, report: dict, privacy: PrivacyConfig, released: Callable[[str], bool]) -> list[dict]:
    """The rows of one data holder from its ledger ``report`` ({"epsilon", <phase>: {...}}, see
    ``accounting.PrivacyLedger.summary``); ``released(phase)``: did it release in a phase it ran without DP."""
    p = privacy
    rows, covered = [], []
    for phase in DP_PHASES:
        r = report.get(phase)
        if isinstance(r, dict):
            covered.append(phase)
            rows.append({"site": site, "phase": phase, "dp": True, "epsilon": finite_epsilon(r.get("epsilon")),
                         "delta": p.delta, "sigma": r.get("sigma"), "clip": r.get("clip"),
                         "steps": r.get("steps"), "sample_rate": r.get("sample_rate"), "accountant": p.accountant})
        else:
            was = released(phase)
            rows.append({"site": site, "phase": phase, "dp": False, "released": was,
                         "epsilon": None if was else 0.0, "delta": p.delta, "sigma": 0.0, "clip": "-",
                         "steps": None, "sample_rate": None, "accountant": p.accountant})
    rows.append({"site": site, "phase": "total", "dp": bool(covered),
                 "epsilon": finite_epsilon(report.get("epsilon")) if covered else None, "delta": p.delta,
                 "sigma": "-", "clip": "-", "steps": sum(int(report[k].get("steps", 0)) for k in covered),
                 "sample_rate": "-", "accountant": p.accountant, "covers": "+".join(covered) or "nothing"})
    return rows


def privacy_settings(privacy: PrivacyConfig, excluded_sites: list[str]) -> dict:
    """metrics.json's "privacy_settings": the switches, accountant, delta and budgets of the run."""
    p = privacy
    out = {"gradient_sum_dp": p.gradient_sum_dp, "dp_sgd_classifier": p.dp_sgd_classifier,
           "dp_sgd_diffusion": p.dp_sgd_diffusion, "dp_statistics": p.any_dp, "dp_score_counts": p.any_dp,
           "withheld_under_dp": list(WITHHELD_UNDER_DP) if p.any_dp else [], "accountant": p.accountant,
           "delta": p.delta, "target_epsilon": p.target_epsilon, "max_epsilon": p.max_epsilon,
           "on_budget_exceeded": p.on_budget_exceeded, "secure_aggregation": p.secure_aggregation,
           "excluded_sites": list(excluded_sites)}
    if p.secure_aggregation:
        out.update(secagg_num_shares=p.secagg_num_shares,
                   secagg_reconstruction_threshold=p.secagg_reconstruction_threshold,
                   secagg_clipping_range=p.secagg_clipping_range,
                   secagg_quantization_range=p.secagg_quantization_range)
    return out
