"""Phase 4b, one way for both runs: ``evaluate_site`` scores one data holder's synthetic sets
against its own splits, ``pool_site_metrics`` / ``pool_membership`` pool the sites' results.

The federated ClientApp calls ``evaluate_site`` on a hospital's data; the centralized run calls
it on the pooled data as the one site "pooled". Both then pool with the same functions, so
their metrics.json share one schema (tested):

* ``RESULT_KEYS``: the sections both write — TSTR / TSRTR summaries (site-weighted), theta*'s
  scores, mean influence, fidelity and membership risk per synthetic set, paired differences,
  histogram-pooled AUROC / AUPRC, the guidance selection, per-site results, data, timing, privacy,
  the gradient-boosting benchmark beside the real-only rows (``baselines``: {"gbm": {test name:
  summary}, "note"}; the test names are the run's own: "pooled" and each hospital centrally,
  "site_weighted" and each site federated, "external" in both);
* ``OPTIONAL_KEYS``: sections both write when configured, with one schema: ``external`` (the
  external cohort, ``pipeline.external``; a path in the centralized config, a site's node config
  in the federated run);
* ``CENTRALIZED_ONLY``: the pooled-trained evaluation classifiers scored on each hospital's test
  split (``site_weighted``, ``per_site_test``: what the federated report compares against) and the
  device;
* ``FEDERATED_ONLY``: the deployment's own records (participation, resumes, communication) and
  the comparison with a centralized baseline.

A site's metrics (``evaluate_site``): "tstr" {set: summary}, "tsrtr" {set: {ratio: summary}}
(summaries carry per-run score histograms, flattened, for pooling), "global_classifier"
(theta*'s scores on the test split at the F1 threshold of the tuning split), "fidelity" {set:
scores} (``metrics.fidelity`` without membership), "test_size", "influence" (mean I(x) per
set), "synthetic-records", "membership" {set: DCR attack scores} (members = the site's training
records, non-members = its test records).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from torch import nn

from ..metrics.classification import binary_scores, f1_threshold
from ..metrics.fidelity import FIDELITY_METRICS, FidelityConfig, fidelity_scores
from ..metrics.histogram_auc import SCORE_BINS
from ..metrics.membership import membership_inference
from ..metrics.paired import paired_tables
from ..metrics.pooling import pooled_summary
from ..metrics.summary import finite_weighted_mean, weighted_summary
from ..metrics.utility import evaluate_utility
from ..training.classifier import predict_proba
from .config import RunConfig, derive_seed
from .phase_list import SEED_IDS
from .phases import NormalizedSplits

__all__ = [
    "RESULT_KEYS",
    "OPTIONAL_KEYS",
    "CENTRALIZED_ONLY",
    "FEDERATED_ONLY",
    "fidelity_config",
    "fidelity_of_sets",
    "membership_of_sets",
    "evaluate_site",
    "pool_site_metrics",
    "pool_membership",
]

RESULT_KEYS = frozenset({
    "federated", "tstr", "tsrtr", "global_classifier", "influence", "fidelity", "paired", "histogram_pooled",
    "membership", "selection", "sites", "guidance_records", "data", "timing", "timing_cpu", "privacy",
    "privacy_settings",
    "baselines",
})
OPTIONAL_KEYS = frozenset({"external"})
CENTRALIZED_ONLY = frozenset({"site_weighted", "per_site_test", "device"})
FEDERATED_ONLY = frozenset({"comparison", "participation", "participation_rounds", "resumes", "communication"})

Split = tuple[np.ndarray, np.ndarray]


def fidelity_config(config: RunConfig) -> FidelityConfig | None:
    """``evaluation.fidelity``: "default" -> ``FidelityConfig()``, "tiny" -> ``.tiny()``, "off" -> None."""
    if config.evaluation.fidelity == "off":
        return None
    return FidelityConfig.tiny() if config.evaluation.fidelity == "tiny" else FidelityConfig()


def fidelity_of_sets(
    synthetic: dict[str, Split],
    data: NormalizedSplits,
    config: RunConfig,
    *,
    membership: bool = False,
) -> dict[str, dict[str, float]]:
    """{set: fidelity scores} (discriminative, predictive MAE, Context-FID and, if asked, the
    membership attack of ``metrics.fidelity``) of each synthetic set against this site's real
    records; {} when ``evaluation.fidelity = "off"``. A set that is the same object as an earlier
    one (s = 0 chosen: "tardiff" is "unguided") reuses its scores."""
    base = fidelity_config(config)
    if base is None:
        return {}
    fid_config = replace(base, metrics=tuple(m for m in FIDELITY_METRICS if membership or m != "membership"))
    seed = derive_seed(config.seed, SEED_IDS["evaluation"])
    out: dict[str, dict[str, float]] = {}
    for name, pair in synthetic.items():
        same = next((k for k, other in synthetic.items() if other is pair and k in out), None)
        out[name] = dict(out[same]) if same else fidelity_scores(data.train_x, data.test_x, pair[0], seed=seed,
                                                                   config=fid_config)
    return out


def membership_of_sets(synthetic: dict[str, Split], data: NormalizedSplits, config: RunConfig, *,
                       site_index: int) -> dict[str, dict[str, float]]:
    """Distance-to-closest-synthetic-record attack per synthetic set at one site: members = its
    training records (the generator's training data), non-members = its test records;
    {"mia_auc": NaN} for a set when either side has fewer than 2 records."""
    out = {}
    for name, (x, _) in synthetic.items():
        try:
            out[name] = membership_inference(data.train_x, data.test_x, x,
                                             seed=derive_seed(config.seed, SEED_IDS["membership"], site_index))
        except ValueError:  # fewer than 2 members or non-members
            out[name] = {"mia_auc": float("nan")}
    return out


def _summaries(utility: dict):
    """Every test summary of an ``evaluate_utility`` result."""
    for by_test in utility["tstr"].values():
        yield from by_test.values()
    for by_ratio in utility["tsrtr"].values():
        for by_test in by_ratio.values():
            yield from by_test.values()


def _for_test(utility: dict, test: str) -> dict:
    """{"tstr": {set: summary}, "tsrtr": {set: {ratio: summary}}} on one test split."""
    return {"tstr": {m: by_test[test] for m, by_test in utility["tstr"].items()},
            "tsrtr": {m: {r: by_test[test] for r, by_test in rs.items()} for m, rs in utility["tsrtr"].items()}}


def evaluate_site(
    classifier: nn.Module,
    synthetic: dict[str, Split],
    data: NormalizedSplits,
    config: RunConfig,
    *,
    site_index: int,
    influence: dict[str, float],
    other_tests: dict[str, Split] | None = None,
) -> dict:
    """Phase 4b at one site (see the module docstring for the keys): TSTR / TSRTR against the
    site's own test split (F1 threshold on its tuning split), theta*'s scores, fidelity,
    membership. With any DP mechanism on (``privacy.any_dp``): TSTR of the synthetic sets only
    (no "real" row, "tsrtr" {}), fidelity and membership {} -- no evaluation classifier or metric
    reads the raw training split (``privacy.dp_scores``). ``other_tests`` {name: (x, y)}: further test splits the same evaluation
    classifiers are scored on, returned under "other_tests" {name: {"tstr", "tsrtr"}} (the
    centralized run's per-hospital test splits)."""
    if other_tests and "site" in other_tests:
        raise ValueError("evaluate_site: 'site' names the site's own test split; rename that other test split")
    device = str(next(classifier.parameters()).device)
    dp = config.privacy.any_dp  # the switch of privacy.dp_scores: nothing here reads the training split
    tests = {"site": (data.test_x, data.test_y), **(other_tests or {})}
    utility = evaluate_utility(
        None if dp else (data.train_x, data.train_y), (data.tuning_x, data.tuning_y), tests, synthetic,
        config.evaluation, device=device, histogram_bins=SCORE_BINS,
    )
    threshold = f1_threshold(data.tuning_y, predict_proba(classifier, data.tuning_x))
    for summary in _summaries(utility):  # flat counts travel in a MetricRecord
        summary["histograms"] = np.asarray(summary["histograms"], dtype=np.int64).reshape(-1).tolist()
    out = {
        **_for_test(utility, "site"),
        "global_classifier": binary_scores(data.test_y, predict_proba(classifier, data.test_x), threshold),
        "fidelity": {} if dp else fidelity_of_sets(synthetic, data, config),
        "test_size": int(len(data.test_y)),
        "influence": dict(influence),
        "synthetic-records": int(sum(len(y) for _, y in synthetic.values())),
        "membership": {} if dp else membership_of_sets(synthetic, data, config, site_index=site_index),
    }
    if other_tests:
        out["other_tests"] = {name: _for_test(utility, name) for name in other_tests}
    return out


def pool_site_metrics(site_metrics: dict[str, dict]) -> dict:
    """Site-weighted (by test size) TSTR / TSRTR summaries and their paired differences, theta*'s
    scores, mean influence and fidelity scores (sites where a score is undefined are left out of
    its average: ``finite_weighted_mean``), and the histogram-pooled AUROC / AUPRC
    (``metrics.pooling``) with their paired differences."""
    names = sorted(site_metrics)
    weights = [float(site_metrics[n]["test_size"]) for n in names]
    first = site_metrics[names[0]]
    tstr = {m: weighted_summary([site_metrics[n]["tstr"][m] for n in names], weights) for m in first["tstr"]}
    tsrtr = {
        m: {r: weighted_summary([site_metrics[n]["tsrtr"][m][r] for n in names], weights) for r in ratios}
        for m, ratios in first.get("tsrtr", {}).items()  # none under DP
    }
    global_scores = {key: finite_weighted_mean([site_metrics[n]["global_classifier"][key] for n in names], weights)
                     for key in first["global_classifier"]}
    influence = {
        k: float(np.average([site_metrics[n]["influence"][k] for n in names], weights=weights))
        for k in first["influence"]
    }
    fidelity = {
        set_name: {key: finite_weighted_mean([site_metrics[n].get("fidelity", {}).get(set_name, {}).get(key, np.nan)
                                              for n in names], weights) for key in keys}
        for set_name, keys in first.get("fidelity", {}).items()
    }
    pooled_tstr = {m: pooled_summary([site_metrics[n]["tstr"][m] for n in names], SCORE_BINS) for m in first["tstr"]}
    pooled_tsrtr = {
        m: {r: pooled_summary([site_metrics[n]["tsrtr"][m][r] for n in names], SCORE_BINS) for r in ratios}
        for m, ratios in first.get("tsrtr", {}).items()  # none under DP
    }
    return {"tstr": tstr, "tsrtr": tsrtr, "global_classifier": global_scores, "influence": influence,
            "fidelity": fidelity, "paired": paired_tables(tstr, tsrtr),
            "histogram_pooled": {"tstr": pooled_tstr, "tsrtr": pooled_tsrtr,
                                 "paired": paired_tables(pooled_tstr, pooled_tsrtr)}}


def pool_membership(site_metrics: dict[str, dict]) -> dict[str, dict]:
    """{set: {"mia_auc": test-size-weighted mean over the sites with a finite AUC, "sites": n}}."""
    pooled: dict[str, dict] = {}
    names = [n for n in sorted(site_metrics) if isinstance(site_metrics[n].get("membership"), dict)]
    for name in sorted({k for n in names for k in site_metrics[n]["membership"]}):
        aucs = [site_metrics[site]["membership"].get(name, {}).get("mia_auc") for site in names]
        weights = [float(site_metrics[site].get("test_size", 1)) for site in names]
        pooled[name] = {"mia_auc": finite_weighted_mean(aucs, weights),
                        "sites": sum(1 for a in aucs if a is not None and np.isfinite(a))}
    return pooled
