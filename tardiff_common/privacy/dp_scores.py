"""DP release of the score-count histograms of phases 3b (selection) and 4 (evaluation).

Without DP a site answers phase 3b with, per guidance candidate, mode and tuning seed, the
counts of predicted tuning-split scores by label ([2, 200] each), and phase 4 with its
evaluation metrics plus the same counts on its test split. With any DP mechanism on
(``privacy.any_dp``) each of the two replies is **one Gaussian mechanism** on the counts, one
ledger entry (sigma, q = 1, 1 step, clip = sqrt(K)), and everything else computed on records is
post-processed from the noised counts or withheld.

**Sensitivity.** Let the release hold K histograms H_1..H_K, each over the *scored split* S
(the tuning split in phase 3b, the test split in phase 4): H_j[y_i, bin(f_j(x_i))] counts
record i once. The classifiers f_j depend on no real record: under DP they are trained on
synthetic records only (TSTR: sets sampled from the released models, post-processing) for a
fixed ``evaluation.epochs``, with no early stopping on a real split (``dp_evaluation_config``).
No classifier trained on the raw training split ("real", TSRTR) is scored under DP
(``pipeline.selection.scored_modes``, ``pipeline.evaluation.evaluate_site``; the release
functions refuse such histograms). Adding or removing one record of S changes exactly one cell
of every H_j by 1 and a record outside S changes none, so the stacked release moves by

    ||Delta||_2 = sqrt(K)          (L1: K; coarse grouping of bins below does not change it)

and H~ = H + N(0, sigma^2 K I) is the Gaussian mechanism with noise multiplier sigma: the
Opacus history entry (sigma, 1.0, 1) (``score_entry``). K = candidates (incl. the null row)
x tuning seeds (TSTR only) in phase 3b; K = every (synthetic set, evaluation seed, test split)
TSTR histogram in phase 4 (``count_histograms``).

**Post-processing** (free): before the noise, the 200 fine bins are grouped into
``DP_SCORE_BINS`` coarse bins of ``GROUP`` fine bins (the grid is public, so a record still
counts once per histogram); the noised coarse counts are rounded, clipped at 0 and put in the
middle fine bin of their group, so the wire shape [2, 200] and the server's pooling are
unchanged and the pooled AUROC / AUPRC are those of the coarse histograms. Per-run AUROC /
AUPRC of a site are recomputed from its own noised histograms; the minority-class F1 (needs the
per-record threshold), theta*'s test scores, the fidelity metrics (computed against the training
records), the membership attack (per-record distances), the real training split's mean influence
and every "real" / TSRTR row (trained on raw training records without DP-SGD; not computed) are
withheld (NaN / absent). So the training records enter these two releases only through the
released (DP) models, and the reported epsilon is the whole run's. See docs/PRIVACY.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..metrics.histogram_auc import SCORE_BINS, auprc_from_histogram, auroc_from_histogram
from ..metrics.summary import summarize_runs
from .accounting import Entry
from .randomness import dp_generator

__all__ = [
    "DP_SCORE_BINS",
    "GROUP",
    "SELECTION_RELEASE",
    "EVALUATION_RELEASE",
    "ScoreRelease",
    "site_score_release",
    "score_entry",
    "noise_histograms",
    "count_histograms",
    "selection_histograms",
    "evaluation_histograms",
    "release_candidate_scores",
    "release_site_metrics",
    "dp_evaluation_config",
    "auprc_noise_std",
    "WITHHELD",
]

DP_SCORE_BINS = 20
GROUP = SCORE_BINS // DP_SCORE_BINS  # fine bins per coarse bin
SELECTION_RELEASE, EVALUATION_RELEASE = 3, 4  # noise-generator ids (phase-0 statistics use 1, 2)
WITHHELD = ("minority_f1", "global_classifier", "fidelity", "membership", "context_fid", "real", "tsrtr",
            "real_train")


@dataclass(frozen=True)
class ScoreRelease:
    """The noise of one release: multiplier sigma and the site's generator."""

    noise_multiplier: float
    generator: torch.Generator


def site_score_release(config, noise_multiplier: float, site_index: int, release: int) -> ScoreRelease:
    """The noise of release ``release`` (``SELECTION_RELEASE`` / ``EVALUATION_RELEASE``) at site
    ``site_index`` (0 for the centralized run's one data holder), seeded as ``privacy.reproducible-noise`` says."""
    generator = dp_generator(config.privacy.reproducible_noise, config.seed, 0, site_index, release)
    return ScoreRelease(float(noise_multiplier), generator)


def score_entry(phase: str, noise_multiplier: float, num_histograms: int) -> Entry:
    """The ledger entry of a release of ``num_histograms`` (K) histograms: (sigma, 1, 1), clip sqrt(K)."""
    return Entry(phase, float(noise_multiplier), 1.0, 1, math.sqrt(max(int(num_histograms), 1)))


def noise_histograms(histograms: np.ndarray, release: ScoreRelease) -> np.ndarray:
    """[K, 2, SCORE_BINS] counts -> noised counts, same shape, int64 (see module doc): grouped into
    ``DP_SCORE_BINS`` coarse bins, + N(0, sigma^2 K), rounded, clipped at 0, each coarse count in
    the middle fine bin of its group."""
    h = np.asarray(histograms, dtype=np.float64)
    if h.ndim != 3 or h.shape[1:] != (2, SCORE_BINS):
        raise ValueError(f"expected score histograms [K, 2, {SCORE_BINS}], got {h.shape}")
    k = h.shape[0]
    coarse = h.reshape(k, 2, DP_SCORE_BINS, GROUP).sum(axis=3)
    noise = torch.randn(coarse.size, generator=release.generator, dtype=torch.float64).numpy().reshape(coarse.shape)
    noisy = np.clip(np.rint(coarse + release.noise_multiplier * math.sqrt(max(k, 1)) * noise), 0, None)
    out = np.zeros(h.shape, dtype=np.int64)
    out[:, :, GROUP // 2::GROUP] = noisy.astype(np.int64)
    return out


# ----------------------------------------------------------------------------- phase 3b


def selection_histograms(config) -> int:
    """K of the phase-3b release: tuning rows (candidates + null row) x TSTR x tuning seeds."""
    from ..pipeline.selection import DP_SELECT_MODES, tuning_rows

    return len(tuning_rows(config)) * len(DP_SELECT_MODES) * len(config.guidance.tuning_seeds)


def release_candidate_scores(scores: dict[str, dict], release: ScoreRelease) -> tuple[dict[str, dict], int]:
    """``score_candidates_at_site``'s result (scored under DP: TSTR only) with every tuning
    histogram noised jointly (one release of K histograms) and Context-FID withheld (NaN); returns
    (scores, K). Refuses a TSRTR histogram (its classifier trained on the raw training split)."""
    if any("tsrtr" in row for row in scores.values()):
        raise ValueError("DP selection release: TSRTR histograms depend on the raw training split; "
                         "score TSTR only under DP (pipeline.selection.scored_modes)")
    keys = [(label, "tstr") for label in scores]
    stacks = [np.asarray(scores[label][mode], dtype=np.int64).reshape(-1, 2, SCORE_BINS) for label, mode in keys]
    counts = [len(s) for s in stacks]
    noised = noise_histograms(np.concatenate(stacks), release)
    out = {label: {**row, "context_fid": float("nan")} for label, row in scores.items()}
    start = 0
    for (label, mode), n in zip(keys, counts, strict=True):
        out[label][mode] = noised[start:start + n].tolist()
        start += n
    return out, int(sum(counts))


# ----------------------------------------------------------------------------- phase 4


def evaluation_histograms(config, synthetic_sets: int = 3, test_splits: int = 1) -> int:
    """K of the phase-4 release: per test split and evaluation seed, TSTR of every synthetic set
    (no "real" or TSRTR row under DP)."""
    return test_splits * len(config.evaluation.seeds) * synthetic_sets


def _summaries(metrics: dict) -> Iterator[dict]:
    """Every summary carrying "histograms" in ``evaluate_site``'s result (other test splits too)."""
    blocks = [metrics] + list(metrics.get("other_tests", {}).values())
    for block in blocks:
        yield from block.get("tstr", {}).values()
        for by_ratio in block.get("tsrtr", {}).values():
            yield from by_ratio.values()


def count_histograms(metrics: dict) -> int:
    """K of an ``evaluate_site`` result: the number of [2, bins] histograms it carries."""
    return sum(np.asarray(s["histograms"]).size // (2 * SCORE_BINS) for s in _summaries(metrics))


def release_site_metrics(metrics: dict, release: ScoreRelease) -> tuple[dict, int]:
    """``evaluate_site``'s result as released under DP: all its score histograms noised jointly
    (one release of K histograms), each summary's per-run AUROC / AUPRC recomputed from its
    noised histograms (minority F1 NaN), theta*'s scores NaN, fidelity and membership withheld
    ({}); test size, synthetic-record count and the synthetic sets' mean influence (functions of
    public sizes, the released models and the synthetic sets) kept. Returns (metrics, K). Refuses
    a "real" or TSRTR summary (``evaluate_site`` computes none under DP) and drops the real
    training split's mean influence."""
    blocks = [metrics] + list(metrics.get("other_tests", {}).values())
    if any("real" in b.get("tstr", {}) or any(b.get("tsrtr", {}).values()) for b in blocks):
        raise ValueError("DP evaluation release: 'real' / TSRTR rows depend on the raw training split; "
                         "evaluate TSTR only under DP (pipeline.evaluation.evaluate_site)")
    summaries = list(_summaries(metrics))
    stacks = [np.asarray(s["histograms"], dtype=np.int64).reshape(-1, 2, SCORE_BINS) for s in summaries]
    noised = noise_histograms(np.concatenate(stacks), release)
    start = 0
    for summary, stack in zip(summaries, stacks, strict=True):
        runs = noised[start:start + len(stack)]
        start += len(stack)
        rows = [{"auroc": auroc_from_histogram(h), "auprc": auprc_from_histogram(h), "minority_f1": float("nan")}
                for h in runs]
        summary.clear()
        summary.update(summarize_runs(rows))
        summary["histograms"] = runs.reshape(-1).tolist()
    out = dict(metrics)
    out["global_classifier"] = {key: float("nan") for key in metrics.get("global_classifier", {})}
    out["fidelity"] = {}
    out["membership"] = {}
    out["influence"] = {k: v for k, v in metrics.get("influence", {}).items() if k != "real_train"}
    return out, len(noised)


def dp_evaluation_config(config):
    """The run config the evaluation classifiers use under DP: no early stopping on a real split
    (``evaluation.patience = 0``: a fixed ``evaluation.epochs``), so the released counts depend on
    real records only through the scored split (the classifiers train on synthetic sets only)."""
    return replace(config, evaluation=replace(config.evaluation, patience=0))


def auprc_noise_std(histogram: np.ndarray, variance: float, *, draws: int = 64, seed: int = 0) -> float:
    """How much the DP noise alone moves an AUPRC computed from pooled released counts: the std of
    the AUPRC of ``histogram`` ([2, SCORE_BINS], pooled over sites) with N(0, ``variance``) added to
    each coarse cell (rounded, clipped at 0) over ``draws`` draws. ``variance`` = sum over sites of
    sigma_k^2 K_k (the pooled noise per coarse cell, public: each site reports sigma_k and
    clip_k = sqrt(K_k)). A parametric bootstrap on released counts only: post-processing."""
    h = np.asarray(histogram, dtype=np.float64).reshape(2, DP_SCORE_BINS, GROUP).sum(axis=2)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        noisy = np.clip(np.rint(h + math.sqrt(variance) * rng.standard_normal(h.shape)), 0, None)
        values.append(auprc_from_histogram(noisy))
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    return float(values.std()) if values.size > 1 else float("inf")
