"""Does influence predict worth? A datamodel-style ground truth for per-sample usefulness scores.

TarDiff steers sampling toward records with high first-order influence I(x) = <grad L(x; theta*), g>
at the trained classifier theta*. Whether that is the right target is an empirical question:
does a synthetic record's score predict what it is worth to a classifier trained *from scratch*
on real + synthetic data? This study measures it without guidance, on an unguided pool.

1. Pipeline (``pipeline.fit.train_models`` on the pooled sites, as ``run_centralized`` does):
   splits, normalizer, ``federation.classifier-rounds`` classifier rounds keeping a copy theta_r
   after each (the checkpoints) and G_r on the guidance split at each (theta_R = theta*,
   G = G_R), then the diffusion model with its EMA.
2. Pool: ``--pool-ratio`` x n_train unguided samples (EMA model, balanced labels).
3. Scores of every pool record (``tardiff_common.influence.scores``): final influence,
   trajectory influence (TracIn over the checkpoints), typicality (denoising error of the
   diffusion model), typical influence (z(I) + z(typicality)), "minus_loss" (-L(x; theta*), an
   extra baseline: "easy records") and "random" (a seeded N(0, 1) control). The sign of a score
   is its claim: higher = more useful; "minus influence" is the same row with the sign of rho flipped.
4. Ground truth: ``--subsets`` random subsets of the pool, each ``--subset-ratio`` x n_train
   records with the pool's label mix (stratified draw). For each subset the evaluation classifier
   (``fit_evaluation_classifier``, the *same* seed for every subset: common random numbers) is
   trained on real train + subset and scored on the TUNING split: mean BCE loss, AUPRC, AUROC
   (and, as a diagnostic, the mean BCE loss on the guidance split, the split G is a sum over).
   Worth = -loss (primary), AUPRC (secondary). The test split is never touched.
5. For each score, Spearman rho over subsets between the subset's mean score and its worth, with a
   95 % percentile-bootstrap CI (1000 resamples of the subsets, seeded; ties by average ranks).
6. Noise floor: ``--noise-subsets`` subsets are re-trained ``--noise-repeats`` times (a) with other
   evaluation seeds ("seed") and (b) with the common seed but the training records permuted
   ("order": same data and initial weights, other batches). The pooled within-subset SD of worth is
   compared with the SD across subsets (at the common seed). reliability = 1 - var_within / var_across
   estimates the share of the across-subset variance that belongs to the subsets at all;
   sqrt(reliability) is roughly the largest |rho| any score could reach against this ground truth.
   Common random numbers remove the seed noise from the comparison of subsets, not the order
   noise, so "order" is the floor that applies and "seed" an upper bound.

    python -m simulations.influence_worth --out runs/worth-<name> [--source synthetic|eicu_yaib|physionet2012]
        [--path ...] [--preset default] [--set k=v ...] [--subsets 40] [--pool-ratio 2.0] [--subset-ratio 0.5]
        [--seed 0] [--threads 1]

``--seed`` is the study's own randomness (subset draws, random control, typicality noise); the
pipeline's seeds come from the config (``--set seed=1``). At the default preset on the embedded data
one evaluation fit takes ~3-5 s on one (shared) CPU core, the whole study a few minutes.

Writes ``results.json`` (everything, incl. per-subset values and per-record scores),
``results.md`` and ``worth.png`` into ``--out``; an existing ``results.json`` is never overwritten.
"""

from __future__ import annotations

import argparse
import copy
import io
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from tardiff_common.data.loading import load_sites_for
from tardiff_common.influence.gradient_sum import GradientSum
from tardiff_common.influence.scores import final_influence, trajectory_influence, typical_influence, typicality
from tardiff_common.metrics.classification import binary_scores
from tardiff_common.metrics.utility import fit_evaluation_classifier
from tardiff_common.models.classifier import per_example_loss
from tardiff_common.pipeline.centralized import pooled_data
from tardiff_common.pipeline.config import RunConfig, derive_seed
from tardiff_common.pipeline.fit import train_models
from tardiff_common.pipeline.phases import guidance_sum, new_schedule, resolve_device, synthesize
from tardiff_common.pipeline.timing import PhaseTimer
from tardiff_common.report.run_folder import write_bytes_atomic, write_json_atomic
from tardiff_common.training.classifier import predict_proba

from .study_cli import add_config_args, config_from_args

__all__ = ["run_study", "spearman_with_ci", "stratified_subsets", "main"]

SCORES = ("final_influence", "trajectory_influence", "typicality", "typical_influence", "minus_loss", "random")
WORTHS = {"neg_loss": "-loss (tuning)", "auprc": "AUPRC (tuning)", "auroc": "AUROC (tuning)",
          "neg_guidance_loss": "-loss (guidance split)"}
TYPICALITY_FRACTIONS = (0.05, 0.25, 0.5)  # noise levels t / T of the typicality score
TYPICALITY_DRAWS = 2
BOOTSTRAP = 1000


# ----------------------------------------------------------------------------- statistics


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denom = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(axis=-1) / np.where(denom > 0, denom, 1.0), np.nan)


def spearman_with_ci(score: np.ndarray, worth: np.ndarray, *, seed: int, resamples: int = BOOTSTRAP,
                     level: float = 0.95) -> dict[str, float]:
    """Spearman rho of (score, worth) over subsets, its two-sided p-value (scipy, t approximation)
    and a percentile-bootstrap CI: ``resamples`` draws of the subsets with replacement (ranks
    recomputed per draw, ties averaged); resamples where either side is constant are dropped.
    ``fisher_lo`` / ``fisher_hi``: the Fisher-z interval (variance 1.06 / (n - 3)) as a cross-check;
    with many tied worths (``distinct_worth`` small) the percentile interval can miss rho itself."""
    score = np.asarray(score, dtype=np.float64)
    worth = np.asarray(worth, dtype=np.float64)
    keep = np.isfinite(score) & np.isfinite(worth)
    score, worth = score[keep], worth[keep]
    n = int(score.size)
    out = {"rho": float("nan"), "p": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": n,
           "fisher_lo": float("nan"), "fisher_hi": float("nan"), "distinct_worth": int(np.unique(worth).size)}
    if n < 3 or np.ptp(score) == 0 or np.ptp(worth) == 0:
        return out
    res = stats.spearmanr(score, worth)
    out["rho"], out["p"] = float(res.statistic), float(res.pvalue)
    if n > 3:  # Fisher z with the Fieller-Hartley-Pearson variance 1.06 / (n - 3), a cross-check
        z, half = np.arctanh(np.clip(out["rho"], -0.999999, 0.999999)), stats.norm.ppf((1 + level) / 2)
        out["fisher_lo"], out["fisher_hi"] = (float(np.tanh(z + sgn * half * np.sqrt(1.06 / (n - 3))))
                                              for sgn in (-1, 1))
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    boot = _row_pearson(stats.rankdata(score[idx], axis=1), stats.rankdata(worth[idx], axis=1))
    boot = boot[np.isfinite(boot)]
    if boot.size:
        out["lo"], out["hi"] = (float(v) for v in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
    return out


def null_rho_band(members: np.ndarray, pool_size: int, worth: np.ndarray, *, seed: int, draws: int = 1000,
                  level: float = 0.95) -> dict[str, float]:
    """The rho a score with *no* information reaches by chance on these subsets: ``draws`` random
    N(0, 1) scores of the pool records, their subset means, Spearman vs ``worth``; the ``level``
    quantile of |rho| (a permutation-style null band; the "random" row is one such draw)."""
    worth = np.asarray(worth, dtype=np.float64)
    if not np.all(np.isfinite(worth)) or np.ptp(worth) == 0:
        return {"abs_rho": float("nan"), "draws": draws}
    membership = np.zeros((len(members), pool_size))
    np.put_along_axis(membership, members, 1.0 / members.shape[1], axis=1)
    means = np.random.default_rng(seed).standard_normal((draws, pool_size)) @ membership.T  # [draws, S]
    rho = _row_pearson(stats.rankdata(means, axis=1), stats.rankdata(worth)[None, :])
    return {"abs_rho": float(np.quantile(np.abs(rho), level)), "draws": draws}


def stratified_subsets(y: np.ndarray, size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` subsets of ``size`` indices into y (without replacement within a subset), each with
    round(size * mean(y)) positives: [count, size] int64, sorted within rows."""
    y = np.asarray(y)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n_pos = int(round(size * len(pos) / len(y)))
    if not 0 < size <= len(y) or n_pos > len(pos) or size - n_pos > len(neg):
        raise ValueError(f"cannot draw subsets of {size} records with {n_pos} positives from a pool of "
                         f"{len(y)} ({len(pos)} positive)")
    rows = [np.sort(np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, size - n_pos,
                                                                                     replace=False)]))
            for _ in range(count)]
    return np.stack(rows).astype(np.int64)


# ----------------------------------------------------------------------------- ground truth


@torch.no_grad()
def _mean_loss(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    device = next(model.parameters()).device
    model.eval()
    losses = [per_example_loss(model(torch.as_tensor(x[s : s + 512], device=device)),
                               torch.as_tensor(y[s : s + 512], device=device)).double().cpu()
              for s in range(0, len(y), 512)]
    return float(torch.cat(losses).mean())


def worth_of(train: tuple[np.ndarray, np.ndarray], data, config: RunConfig, seed: int, device: str) -> dict:
    """Fit the evaluation classifier on ``train`` with ``seed``; its worth on the tuning split
    (and the guidance-split loss as a diagnostic). Never looks at the test split."""
    t0 = time.perf_counter()
    model = fit_evaluation_classifier(train, config.evaluation, seed, device=device)
    seconds = time.perf_counter() - t0
    scores = binary_scores(data.tuning_y, predict_proba(model, data.tuning_x), 0.5)
    loss = _mean_loss(model, data.tuning_x, data.tuning_y)
    guidance_loss = _mean_loss(model, data.guidance_x, data.guidance_y)
    return {"loss": loss, "neg_loss": -loss, "auprc": scores["auprc"], "auroc": scores["auroc"],
            "guidance_loss": guidance_loss, "neg_guidance_loss": -guidance_loss, "fit_seconds": seconds}


# ----------------------------------------------------------------------------- the study


def run_study(config: RunConfig, *, subsets: int = 40, pool_ratio: float = 2.0, subset_ratio: float = 0.5,
              seed: int = 0, noise_subsets: int = 2, noise_repeats: int = 3, log=print) -> dict:
    """Train once, score an unguided pool, measure the worth of random subsets; returns the results dict."""
    if subsets < 3:
        raise ValueError(f"--subsets must be >= 3 for a rank correlation, got {subsets}")
    if pool_ratio <= 0 or not 0 < subset_ratio <= pool_ratio:
        raise ValueError(f"need pool_ratio > 0 and 0 < subset_ratio <= pool_ratio, got {pool_ratio}, {subset_ratio}")
    timing: dict[str, float] = {}
    device = resolve_device(config.device)
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timing[name] = now - clock
        clock = now

    # 1. pipeline ------------------------------------------------------------------------------
    sites = load_sites_for(config.data)
    _, _, normalizer, data = pooled_data(config, sites)
    n_train = len(data.train_y)
    log(f"[data] {len(sites)} site(s): {n_train} train / {len(data.guidance_y)} guidance / "
        f"{len(data.tuning_y)} tuning records ({int(data.tuning_y.sum())} positive), "
        f"{data.in_channels} channels x {data.length} steps")
    lap("data")

    checkpoints: list[torch.nn.Module] = []
    sums: list[GradientSum] = []

    def keep_round(r: int, classifier: torch.nn.Module) -> None:
        checkpoints.append(copy.deepcopy(classifier).eval())
        sums.append(guidance_sum(classifier, data, config))
        log(f"[classifier] round {r}: ||G_r|| / n = {float(sums[-1].total.norm()) / sums[-1].count:.4g}")

    timer = PhaseTimer()
    trained = train_models(config, data, normalizer, device=device, log=log, timer=timer,
                           after_classifier_round=keep_round)
    classifier, direction, generator = trained.classifier, trained.direction, trained.generator
    timing.update(timer.as_dict())
    timing.pop("total", None)
    clock = time.perf_counter()

    # 2. pool ------------------------------------------------------------------------------------
    n_pool = max(4, int(round(pool_ratio * n_train)))
    pool_x, pool_y = synthesize(generator, classifier, direction, num_samples=n_pool, positive_fraction=0.5,
                                length=data.length, config=config, site_index=0, guidance=None)
    log(f"[pool] {n_pool} unguided records ({int(pool_y.sum())} positive)")
    lap("sampling")

    # 3. scores ----------------------------------------------------------------------------------
    schedule = new_schedule(config)
    steps = sorted({min(schedule.num_steps - 1, int(round(f * schedule.num_steps))) for f in TYPICALITY_FRACTIONS})
    final = final_influence(classifier, direction, pool_x, pool_y)
    typ = typicality(generator, schedule, pool_x, pool_y, timesteps=steps, seed=derive_seed(seed, 1),
                     draws=TYPICALITY_DRAWS)
    with torch.no_grad():
        first = next(classifier.parameters())
        theta_loss = per_example_loss(classifier(torch.as_tensor(pool_x, device=first.device)),
                                      torch.as_tensor(pool_y, device=first.device)).double().cpu().numpy()
    per_round = trajectory_influence(checkpoints, sums, pool_x, pool_y, per_checkpoint=True)
    scores = {
        "final_influence": final,
        "trajectory_influence": per_round.sum(axis=0),
        "typicality": typ,
        "typical_influence": typical_influence(final, typ),
        "minus_loss": -theta_loss,
        "random": np.random.default_rng(derive_seed(seed, 2)).standard_normal(n_pool),
    }
    log("[scores] " + ", ".join(f"{k} mean {v.mean():.4g} sd {v.std():.3g}" for k, v in scores.items()))
    lap("scores")

    # 4. ground truth ----------------------------------------------------------------------------
    subset_size = max(2, int(round(subset_ratio * n_train)))
    members = stratified_subsets(pool_y, subset_size, subsets, np.random.default_rng(derive_seed(seed, 3)))
    eval_seed = int(config.evaluation.seeds[0])
    real = (data.train_x, data.train_y)

    def train_on(idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if idx is None:
            return real
        return np.concatenate([real[0], pool_x[idx]]), np.concatenate([real[1], pool_y[idx]])

    real_only = worth_of(real, data, config, eval_seed, str(device))
    log(f"[worth] real only: loss {real_only['loss']:.4f} AUPRC {real_only['auprc']:.3f} "
        f"({real_only['fit_seconds']:.1f} s per fit)")
    per_subset = []
    for s in range(subsets):
        w = worth_of(train_on(members[s]), data, config, eval_seed, str(device))
        w["mean_score"] = {k: float(v[members[s]].mean()) for k, v in scores.items()}
        per_subset.append(w)
        log(f"[worth] subset {s + 1}/{subsets}: loss {w['loss']:.4f} AUPRC {w['auprc']:.3f} "
            f"AUROC {w['auroc']:.3f} mean I {w['mean_score']['final_influence']:.4g} ({w['fit_seconds']:.1f} s)")
    lap("ground_truth")

    # 5b. extremes: the selection question, head on ------------------------------------------------
    # For each score, the subset of the same size and label mix made of the highest-scoring pool
    # records per class vs the lowest-scoring ones vs a random subset, each fitted with the same
    # ``extreme_seeds`` evaluation seeds; worth differences are paired by seed.
    extreme_seeds = [int(s) for s in config.evaluation.seeds]
    per_class = {c: int((pool_y[members[0]] == c).sum()) for c in (0, 1)}

    def extreme_subset(score: np.ndarray, top: bool) -> np.ndarray:
        picks = []
        for c, k in per_class.items():
            idx = np.flatnonzero(pool_y == c)
            order = idx[np.argsort(-score[idx] if top else score[idx], kind="stable")]
            picks.append(order[:k])
        return np.sort(np.concatenate(picks))

    extremes = {}
    random_runs = [worth_of(train_on(members[0]), data, config, es, str(device)) for es in extreme_seeds]
    for name in ("final_influence", "trajectory_influence", "typical_influence"):
        top = [worth_of(train_on(extreme_subset(scores[name], True)), data, config, es, str(device))
               for es in extreme_seeds]
        bottom = [worth_of(train_on(extreme_subset(scores[name], False)), data, config, es, str(device))
                  for es in extreme_seeds]
        extremes[name] = {k: {"top": [r[k] for r in top], "bottom": [r[k] for r in bottom],
                              "random": [r[k] for r in random_runs]} for k in ("neg_loss", "auprc", "auroc")}
        log(f"[extremes] {name}: tuning AUPRC top {np.mean(extremes[name]['auprc']['top']):.3f} / random "
            f"{np.mean(extremes[name]['auprc']['random']):.3f} / bottom {np.mean(extremes[name]['auprc']['bottom']):.3f}")
    lap("extremes")

    # 6. noise floor -------------------------------------------------------------------------------
    # "seed": the same subset with other evaluation seeds (other initial weights and batch order).
    # "order": the same subset and seed, the training records permuted: identical data and initial
    # weights, different batches. Common random numbers remove the seed noise from the comparison of
    # subsets but not the order noise (a different subset also changes what shares a batch), so
    # "order" is the floor that applies to the correlations; "seed" is an upper bound.
    repeat_seeds = [eval_seed + 1 + k for k in range(noise_repeats)]
    noise_runs = []
    for s in range(min(noise_subsets, subsets)):
        runs = [worth_of(train_on(members[s]), data, config, rs, str(device)) for rs in repeat_seeds]
        x_s, y_s = train_on(members[s])
        order_runs = []
        for k in range(noise_repeats):
            perm = np.random.default_rng(derive_seed(seed, 5, s, k)).permutation(len(y_s))
            order_runs.append(worth_of((x_s[perm], y_s[perm]), data, config, eval_seed, str(device)))
        noise_runs.append({"subset": s, "seeds": repeat_seeds, "runs": runs, "order_runs": order_runs,
                           "common_seed_run": per_subset[s]})
        log(f"[noise] subset {s + 1}: loss {per_subset[s]['loss']:.4f} at seed {eval_seed}; other seeds "
            f"{[round(r['loss'], 4) for r in runs]}; permuted order {[round(r['loss'], 4) for r in order_runs]}")
    lap("noise_floor")

    # 5. correlations ------------------------------------------------------------------------------
    worth = {k: np.array([w[k] for w in per_subset]) for k in WORTHS}
    correlations = {
        name: {k: spearman_with_ci(np.array([w["mean_score"][name] for w in per_subset]), worth[k],
                                   seed=derive_seed(seed, 4, i, j))
               for j, k in enumerate(WORTHS)}
        for i, name in enumerate(SCORES)
    }
    null_band = {k: null_rho_band(members, n_pool, worth[k], seed=derive_seed(seed, 6)) for k in WORTHS}
    noise_floor = {
        kind: {k: _noise_floor(worth[k], [[r[k] for r in n[runs]] + extra(n, k) for n in noise_runs]) for k in WORTHS}
        for kind, runs, extra in (("seed", "runs", lambda n, k: []),
                                  ("order", "order_runs", lambda n, k: [n["common_seed_run"][k]]))
    }
    fit_seconds = [w["fit_seconds"] for w in per_subset] + [real_only["fit_seconds"]] + \
        [r["fit_seconds"] for n in noise_runs for r in n["runs"] + n["order_runs"]]
    pool_corr = {a: {b: float(stats.spearmanr(scores[a], scores[b]).statistic) for b in SCORES} for a in SCORES}
    log("[result] Spearman vs -loss: " + ", ".join(f"{k} {v['neg_loss']['rho']:+.2f}" for k, v in correlations.items()))
    return {
        "config": config.to_flat(),
        "study": {"subsets": subsets, "pool_ratio": pool_ratio, "subset_ratio": subset_ratio, "seed": seed,
                  "noise_subsets": noise_subsets, "noise_repeats": noise_repeats, "eval_seed": eval_seed,
                  "typicality_timesteps": steps, "typicality_draws": TYPICALITY_DRAWS, "bootstrap": BOOTSTRAP,
                  "ci": "95 % percentile bootstrap over subsets"},
        "sizes": {"train": n_train, "train_positive": int(data.train_y.sum()), "guidance": len(data.guidance_y),
                  "guidance_records_in_G": trained.gradient_sum.count, "tuning": len(data.tuning_y),
                  "tuning_positive": int(data.tuning_y.sum()), "pool": n_pool, "pool_positive": int(pool_y.sum()),
                  "subset": subset_size, "subset_positive": int(pool_y[members[0]].sum()),
                  "classifier_checkpoints": len(checkpoints)},
        "timing_s": timing,
        "fit_seconds": {"mean": float(np.mean(fit_seconds)), "median": float(np.median(fit_seconds)),
                        "min": float(np.min(fit_seconds)), "max": float(np.max(fit_seconds)), "count": len(fit_seconds)},
        "real_only": real_only,
        "correlations": correlations,
        "extremes": extremes,
        "extreme_seeds": extreme_seeds,
        "null_band": null_band,
        "noise_floor": noise_floor,
        "noise_runs": noise_runs,
        "per_subset": per_subset,
        "subset_members": members,
        "pool_score_spearman": pool_corr,
        "trajectory_round_weights": [float(s.total.norm()) / s.count for s in sums],
        "pool_scores": {"y": pool_y, **scores, "trajectory_per_round": per_round},
    }


def _noise_floor(across: np.ndarray, within_groups: list[list[float]]) -> dict[str, float]:
    """SD across subsets (common seed) vs pooled SD within a subset over evaluation seeds."""
    across_sd = float(np.std(across, ddof=1)) if len(across) > 1 else float("nan")
    groups = [np.asarray(g, dtype=np.float64) for g in within_groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in groups)
    within_sd = float(np.sqrt(sum(((g - g.mean()) ** 2).sum() for g in groups) / dof)) if dof else float("nan")
    reliability = 1.0 - within_sd**2 / across_sd**2 if across_sd > 0 else float("nan")
    return {"across_sd": across_sd, "within_sd": within_sd, "within_dof": dof, "ratio": within_sd / across_sd
            if across_sd > 0 else float("nan"), "reliability": reliability,
            "max_rho": float(np.sqrt(max(reliability, 0.0))) if np.isfinite(reliability) else float("nan")}


# ----------------------------------------------------------------------------- report


def _cell(c: dict) -> str:
    if not np.isfinite(c["rho"]):
        return "n/a"
    ci = f" [{c['lo']:+.2f}, {c['hi']:+.2f}]" if np.isfinite(c["lo"]) else ""
    return f"{c['rho']:+.2f}{ci}"


def _mean_ci_text(values) -> str:
    from tardiff_common.metrics.summary import mean_ci

    mean, half = mean_ci(list(values))
    return f"{mean:+.4f} ± {half:.4f}" if np.isfinite(half) else f"{mean:+.4f}"


def render(results: dict, command: str) -> str:
    sz, st, fs = results["sizes"], results["study"], results["fit_seconds"]
    lines = ["# Does influence predict worth?", "", f"Command: `{command}`", "",
             f"Pool: {sz['pool']} unguided records ({sz['pool_positive']} positive). {st['subsets']} random subsets "
             f"of {sz['subset']} records ({sz['subset_positive']} positive) each added to the {sz['train']} real "
             f"training records; evaluation classifier seed {st['eval_seed']} for every subset (common random "
             f"numbers); worth measured on the tuning split ({sz['tuning']} records, {sz['tuning_positive']} "
             "positive). The test split is not used.", "",
             f"Spearman rho over subsets of the subset's mean score vs its worth; {st['ci']} "
             f"({st['bootstrap']} resamples, seeded). A score that predicts worth has rho > 0; `random` is the "
             "control (expect ~0); a negative rho means the *minus* score would predict worth. Chance level: "
             f"95 % of {results['null_band']['neg_loss']['draws']} random scores reach |rho| <= "
             f"{results['null_band']['neg_loss']['abs_rho']:.2f} vs -loss and "
             f"{results['null_band']['auprc']['abs_rho']:.2f} vs AUPRC.", "",
             "| score | Spearman vs -loss [95 % CI] | Spearman vs AUPRC [95 % CI] |", "|---|---|---|"]
    for name, by_worth in results["correlations"].items():
        lines.append(f"| {name} | {_cell(by_worth['neg_loss'])} | {_cell(by_worth['auprc'])} |")
    tied = [f"{WORTHS[k]} takes {c['distinct_worth']} distinct values over {c['n']} subsets"
            for k, c in results["correlations"]["random"].items() if c["distinct_worth"] < 0.8 * c["n"]]
    if tied:
        lines += ["", "Ties: " + "; ".join(tied) + ". With many ties the rank correlation is coarse and the "
                  "percentile interval can even exclude rho (see `fisher_lo` / `fisher_hi` in results.json)."]
    lines += ["", "Diagnostics: the same against AUROC (tuning) and against -loss on the guidance split (the split "
              "G sums over, i.e. the quantity influence approximates).", "",
              "| score | Spearman vs AUROC | Spearman vs -guidance loss |", "|---|---|---|"]
    for name, by_worth in results["correlations"].items():
        lines.append(f"| {name} | {_cell(by_worth['auroc'])} | {_cell(by_worth['neg_guidance_loss'])} |")
    if results.get("extremes"):
        lines += ["", "## Top vs bottom vs random subset by score", "",
                  f"Same size and label mix as the random subsets: the highest-scoring pool records per class (top), "
                  f"the lowest-scoring (bottom) and random subset 1, each added to the real training split and fitted "
                  f"with evaluation seeds {results['extreme_seeds']}; mean ± 95 % CI over seeds of the paired "
                  "differences (tuning split).", "",
                  "| score | AUPRC top | AUPRC random | AUPRC bottom | top - random AUPRC | top - random -loss |",
                  "|---|---|---|---|---|---|"]
        for name, by_worth in results["extremes"].items():
            a = by_worth["auprc"]
            d_auprc = np.subtract(a["top"], a["random"])
            d_loss = np.subtract(by_worth["neg_loss"]["top"], by_worth["neg_loss"]["random"])
            lines.append(f"| {name} | {np.mean(a['top']):.3f} | {np.mean(a['random']):.3f} | {np.mean(a['bottom']):.3f} | "
                         f"{_mean_ci_text(d_auprc)} | {_mean_ci_text(d_loss)} |")
    seeds = results["noise_runs"][0]["seeds"] if results["noise_runs"] else []
    lines += ["", "## Noise floor", "",
              f"{len(results['noise_runs'])} subset(s) re-trained (a) with the other evaluation seeds {seeds} "
              f"(`seed`: new initial weights and batch order) and (b) {st['noise_repeats']} times with the common "
              "seed but the training records permuted (`order`: same data and initial weights, other batches; "
              "the common-seed fit is included). within SD = pooled SD over the re-fits of one subset; across SD = "
              "SD over subsets at the common seed; reliability = 1 - within² / across²; max |rho| ≈ "
              "sqrt(reliability). Common random numbers take the seed noise out of the comparison of subsets but "
              "not the order noise, so `order` is the floor that applies to the correlations and `seed` bounds it "
              "from above.", "",
              "| worth | noise | across-subset SD | within-subset SD (dof) | within / across | reliability | "
              "max abs rho |", "|---|---|---|---|---|---|---|"]
    noise_limited = {"seed": [], "order": []}
    for k, label in WORTHS.items():
        for kind in ("order", "seed"):
            nf = results["noise_floor"][kind][k]
            rel = f"{nf['reliability']:.2f}" if nf["reliability"] >= 0 else "< 0"
            lines.append(f"| {label} | {kind} | {nf['across_sd']:.4g} | {nf['within_sd']:.4g} ({nf['within_dof']}) | "
                         f"{nf['ratio']:.2f} | {rel} | {nf['max_rho']:.2f} |")
            if not (np.isfinite(nf["ratio"]) and nf["ratio"] < 0.7):
                noise_limited[kind].append(label)
    lines.append("")
    if noise_limited["order"]:
        lines.append("**The ground truth is noise-limited** for " + ", ".join(noise_limited["order"]) + ": "
                     "re-training the same subset in another order moves worth about as much as changing the subset "
                     "(within / across >= 0.7), so no score can correlate strongly with it there, and a near-zero rho "
                     "is no evidence against a score.")
    else:
        lines.append("Order noise is well below the across-subset spread for every worth: the ground truth resolves "
                     "subsets.")
    if noise_limited["seed"]:
        lines.append("")
        lines.append("Seed noise is comparable to the across-subset spread for " + ", ".join(noise_limited["seed"]) +
                     ": without common random numbers these comparisons would be noise-limited.")
    ro = results["real_only"]
    mean_loss = float(np.mean([w["loss"] for w in results["per_subset"]]))
    mean_auprc = float(np.mean([w["auprc"] for w in results["per_subset"]]))
    lines += ["", "## Context", "",
              f"- Real training data only (same seed): tuning loss {ro['loss']:.4f}, AUPRC {ro['auprc']:.3f}; "
              f"mean over subsets (real + synthetic): loss {mean_loss:.4f}, AUPRC {mean_auprc:.3f}.",
              f"- Classifier checkpoints: {sz['classifier_checkpoints']}; ||G_r|| / n_r per round "
              f"(the trajectory weights): {', '.join(f'{v:.3g}' for v in results['trajectory_round_weights'])}.",
              f"- Typicality: timesteps {st['typicality_timesteps']}, {st['typicality_draws']} noise draws each.",
              f"- Evaluation fit: {fs['mean']:.2f} s mean ({fs['min']:.2f}-{fs['max']:.2f} s, {fs['count']} fits).",
              "- Timing (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["timing_s"].items()) + ".", "",
              "Spearman between scores over the pool records:", "",
              "| | " + " | ".join(SCORES) + " |", "|---" * (len(SCORES) + 1) + "|"]
    for a in SCORES:
        lines.append(f"| {a} | " + " | ".join(f"{results['pool_score_spearman'][a][b]:+.2f}" for b in SCORES) + " |")
    lines += ["", "![worth](worth.png)", ""]
    return "\n".join(lines) + "\n"


def plot_worth(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = results["per_subset"]
    fig, axes = plt.subplots(2, 2, figsize=(9, 7))
    for col, name in enumerate(("final_influence", "trajectory_influence")):
        x = np.array([w["mean_score"][name] for w in per])
        for row, (key, label) in enumerate((("neg_loss", "worth = -BCE loss (tuning)"), ("auprc", "AUPRC (tuning)"))):
            ax = axes[row, col]
            ax.scatter(x, [w[key] for w in per], s=16)
            c = results["correlations"][name][key]
            ax.set_title(f"{name}: rho {_cell(c)}", fontsize=9)
            ax.set_xlabel(f"subset mean {name}")
            ax.set_ylabel(label)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def write_outputs(results: dict, out: Path, command: str) -> None:
    results = {"command": command, **results}
    plot_worth(results, out / "worth.png")
    write_bytes_atomic(out / "results.md", render(results, command).encode())
    write_json_atomic(out / "results.json", results)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    add_config_args(parser)
    parser.add_argument("--subsets", type=int, default=40)
    parser.add_argument("--pool-ratio", type=float, default=2.0)
    parser.add_argument("--subset-ratio", type=float, default=0.5)
    parser.add_argument("--noise-subsets", type=int, default=2)
    parser.add_argument("--noise-repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="the study's randomness (subsets, random score, noise)")
    args = parser.parse_args(argv)
    config = config_from_args(args)
    out = Path(args.out)
    if (out / "results.json").exists():
        raise SystemExit(f"{out / 'results.json'} exists; choose another --out (nothing was overwritten)")
    command = "python -m simulations.influence_worth " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    t0 = time.perf_counter()
    results = run_study(config, subsets=args.subsets, pool_ratio=args.pool_ratio, subset_ratio=args.subset_ratio,
                        seed=args.seed, noise_subsets=args.noise_subsets, noise_repeats=args.noise_repeats,
                        log=lambda m: print(m, flush=True))
    results["timing_s"]["total"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(results, out, command)
    print(f"[study] {out / 'results.md'}", flush=True)
    return results


if __name__ == "__main__":
    main()
