"""Automatic choice of the guidance setting on the tuning split (``guidance.scale = "auto"``).

The paper tunes its guidance scale on an Evaluation-Val split kept apart from the
Guidance-Val split that defines G; this module is that protocol, written so that a site
computes its part and the server pools the parts:

    site k, for every tuning row c (the candidates in guidance.candidates, s = 0 first, and the null row):
        P_c  = synthesize(c)                      a pilot of guidance.fid-pilot records, one shared noise
                                                  (a draw of its own, used for nothing else)
        F_c  = Context-FID(P_c, train_k)          (not under DP; no pilot then)
    site k, for every row c that is *scored* (the Context-FID gate, ``scored_rows``):
        a guided c is scored iff F_c <= max_fid_ratio x F_unguided at this site (no gate when
        max_fid_ratio = 0, under DP, when F_unguided is undefined, or when the F_c were measured on
        fewer records than the Context-FID embedding has dimensions, ``fid_is_reliable``); unguided and the null row
        are scored iff some guided row is -- else the choice is s = 0 whatever they score;
        D_c  = synthesize(c)                      tuning_ratio x n_train records, one shared noise
        for every evaluation seed r (the same seeds, hence initial weights, for every c):
            f_{c,r} = evaluation classifier (guidance.tuning-seeds) trained on  train_k + D_c   ("tsrtr")  or  D_c ("tstr"),
                      in the mode the choice is made on (``guidance.select-on``; "tstr" under DP,
                      where nothing released is trained on the raw training split, ``scored_modes``),
                      stopped early on the guidance split's loss (evaluation.patience)
                      (with any DP mechanism on: a fixed number of epochs, no Context-FID)
            H_{c,r} = histogram of f_{c,r}(x) over the tuning split by label     [2, bins]
    server:  H_{c,r} = sum_k H^k_{c,r} over the sites that scored c;   AUPRC_c = mean_r AUPRC(H_{c,r})
             noise   = |AUPRC_null - AUPRC_unguided|     (a second unguided draw, "null", scored alike)
                       (with DP-noised counts at least ``dp_noise_floor``: what the DP noise alone moves it)
             choice  = among the guided candidates scored at every site and with pooled
                       Context-FID_c <= max_fid_ratio x unguided's,
                       the best AUPRC_c if it beats unguided by more than noise + tie_tolerance,
                       else unguided (s = 0)

The gate spends the sampling and the classifier fits (the bulk of this phase's cost) only where
they can change the choice: a candidate already off the data manifold at a site is not chosen,
so it is neither sampled in full nor scored there, and where no guided candidate passes, only
the pilots are drawn. (Without a pilot -- ``fid-pilot = 0``, a pilot no smaller than the tuning
set, or DP, where there is no gate -- F_c is measured on D_c itself.)

The null draw measures, on this very tuning split, how much two samples of the *same* generator
differ; a guided candidate has to beat unguided by more than that, so a guidance that cannot
help (or a tuning split too small to tell) falls back to s = 0 instead of to the luckiest of
several candidates (the winner's curse of taking a maximum over noisy scores).

Only counts of predicted scores leave a site (``metrics.histogram_auc``): no record, and no
per-record score. The test split is never read here.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..influence.guidance import Candidate
from ..metrics.context_fid import ContextFIDConfig, context_fid
from ..metrics.histogram_auc import SCORE_BINS, score_histogram
from ..metrics.pooling import pooled_summary
from ..metrics.utility import fit_evaluation_classifier
from ..training.classifier import predict_proba
from .config import RunConfig
from .phases import NormalizedSplits, SamplingModels, influence_of, positive_fraction, synthesize

__all__ = [
    "TUNING_DRAW",
    "NULL_LABEL",
    "tuning_rows",
    "score_candidates_at_site",
    "pool_candidate_scores",
    "choose_candidate",
    "select_guidance",
    "fixed_selection",
    "selection_from_scores",
    "selection_record",
    "resolve_guidance",
    "DP_SELECT_MODES",
    "scored_modes",
    "scored_rows",
    "fid_is_reliable",
    "select_mode",
]

TUNING_DRAW = 7  # the candidates' noise: a draw of its own, never the reported sets' noise
PILOT_DRAW = 9  # the Context-FID pilots' noise (the null row's pilot: PILOT_DRAW + 1)
NULL_LABEL = "null (2nd unguided draw)"
SELECT_MODES = ("tsrtr", "tstr")
DP_SELECT_MODES = ("tstr",)  # under DP: only classifiers trained on synthetic (DP-output) records


def scored_modes(config: RunConfig) -> tuple[str, ...]:
    """The modes a site scores: the one the choice is made on (``select_mode``), so no classifier
    is fitted for a column the rule never reads; with any DP mechanism on (``privacy.any_dp``,
    the switch of ``privacy.dp_scores``) that is TSTR -- a "tsrtr" classifier trains on the raw
    training split without DP-SGD, so its released counts would depend on training records without
    bound."""
    return (select_mode(config),)


def select_mode(config: RunConfig) -> str:
    """The mode the choice is made on: ``guidance.select-on``, or "tstr" under DP (``scored_modes``)."""
    return "tstr" if config.privacy.any_dp else config.guidance.select_on


def score_candidates_at_site(models: SamplingModels, data: NormalizedSplits, config: RunConfig, *, site_index: int,
                             progress: bool = False) -> dict[str, dict]:
    """{row label: {"form", "scale", "influence", "context_fid", "<mode>": [[2, bins] per seed]}}
    for this site's tuning split (metrics only: counts of predicted scores by label); a row the
    Context-FID gate leaves unscored (``scored_rows``) has no "<mode>" entry. "influence" and
    "context_fid" are measured on the row's pilot (``guidance.fid-pilot`` records, on pilot noise
    that every candidate shares with unguided's pilot, the null row on a pilot draw of its own),
    or on the row's tuning set itself when the pilot would be as large (or is 0). The pilots are
    draws of their own: a scored row's tuning set, hence its score, is the one it would be without
    the gate."""
    g = config.guidance
    dp = config.privacy.any_dp  # TSTR only, no Context-FID against the training records (``scored_modes``)
    unet, classifier, direction = models.unet, models.classifier, models.direction
    num = max(2, int(round(g.tuning_ratio * len(data.train_y))))
    pilot = 0 if dp or not g.fid_pilot or g.fid_pilot >= num else g.fid_pilot  # under DP no gate, so no pilot
    device = str(next(classifier.parameters()).device)
    stop_on = (data.guidance_x, data.guidance_y) if len(data.guidance_y) and not dp else None

    def draw_row(candidate: Candidate, n: int, draw: int) -> tuple[np.ndarray, np.ndarray]:
        return synthesize(unet, classifier, direction, num_samples=n,
                          positive_fraction=positive_fraction(config, data.train_y), length=data.length,
                          config=config, site_index=site_index, guidance=g.with_candidate(candidate),
                          draw=draw, progress=progress)

    rows = tuning_rows(config)
    tuning_sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out: dict[str, dict] = {}
    for label, candidate, draw in rows:
        if pilot:  # a small draw of its own that only gates; the tuning sets are drawn as without it
            x, y = draw_row(candidate, pilot, PILOT_DRAW + draw - TUNING_DRAW)
        else:
            x, y = tuning_sets[label] = draw_row(candidate, num, draw)
        out[label] = {"form": candidate.form, "scale": candidate.scale,
                      "influence": float(influence_of(classifier, direction, x, y).mean()),
                      "context_fid": float("nan") if dp else _context_fid(data.train_x, x)}
    fid_records = pilot or num  # what each row's Context-FID was measured on
    scored = scored_rows(out, g.max_fid_ratio, reliable=fid_is_reliable(len(data.train_y), fid_records))
    for label, candidate, draw in rows:
        if label not in scored:
            continue
        x, y = tuning_sets[label] if label in tuning_sets else draw_row(candidate, num, draw)
        for mode in scored_modes(config):
            train = (x, y) if mode == "tstr" else (np.concatenate([data.train_x, x]), np.concatenate([data.train_y, y]))
            out[label][mode] = []
            for seed in g.tuning_seeds:
                # early stopping (evaluation.patience) on the guidance split: real, held out, never the tuning split
                model = fit_evaluation_classifier(train, config.evaluation, seed, validation=stop_on, device=device)
                p = predict_proba(model, data.tuning_x)
                out[label][mode].append(score_histogram(data.tuning_y, p, SCORE_BINS).tolist())
    return out


def scored_rows(rows: dict[str, dict], max_fid_ratio: float, *, reliable: bool = True) -> list[str]:
    """The labels of the tuning rows a site fits classifiers for, in row order (the Context-FID
    gate): a guided row (scale > 0) iff its Context-FID is at most ``max_fid_ratio`` x the
    unguided row's (every guided row when ``max_fid_ratio`` is 0, when unguided's Context-FID is
    not finite, e.g. NaN under DP, or when the site's Context-FIDs are not ``reliable``: measured
    on fewer records than the embedding has dimensions, ``fid_is_reliable``); the unguided and null
    rows iff at least one guided row is scored."""
    unguided = next(row for label, row in rows.items() if label != NULL_LABEL and row["scale"] == 0)
    limit = max_fid_ratio * unguided.get("context_fid", np.nan)
    gated = reliable and max_fid_ratio > 0 and np.isfinite(limit)
    guided = [label for label, row in rows.items()
              if row["scale"] > 0 and (not gated or row.get("context_fid", np.nan) <= limit)]
    if not guided:
        return []
    return [label for label, row in rows.items() if row["scale"] == 0 or label in guided]


def fid_is_reliable(real_records: int, synthetic_records: int) -> bool:
    """Whether a site's Context-FIDs are estimated well enough to gate on: on at least as many
    records as the embedding has dimensions (2 x ``ContextFIDConfig.num_kernels``, 128), below which
    the covariances are singular and the distance is mostly small-sample bias. A site below it
    scores every candidate and leaves the fidelity constraint to the pooled rule
    (``choose_candidate``), as before the gate."""
    return min(real_records, synthetic_records) >= 2 * ContextFIDConfig().num_kernels


def _context_fid(real_x: np.ndarray, synthetic_x: np.ndarray) -> float:
    """Context-FID of a candidate set against the site's training records (NaN if too few)."""
    try:
        return float(context_fid(real_x, synthetic_x, seed=0)["context_fid"])
    except ValueError:
        return float("nan")


def tuning_rows(config: RunConfig) -> list[tuple[str, Candidate, int]]:
    """(label, candidate, sampling draw) of every tuning row, in wire order: the candidates
    (unguided first) on the tuning draw, then the null row, a second unguided draw."""
    rows = [(c.label, c, TUNING_DRAW) for c in config.guidance.candidate_list()]
    return rows + [(NULL_LABEL, Candidate("paper", 0.0), TUNING_DRAW + 1)]


def pool_candidate_scores(site_scores: list[dict[str, dict]]) -> dict[str, dict]:
    """Sum the histograms per candidate, mode and seed over the sites that scored it; {label:
    {"form", "scale", "influence" and "context_fid" (means over sites), "sites_scored", and, where
    some site scored it, "<mode>_auprc", "<mode>_auroc" (means over seeds), "<mode>_auprc_runs"
    (per seed)}}; a row no site scored has NaN scores."""
    if not site_scores:
        raise ValueError("no site scored the guidance candidates")
    labels = list(site_scores[0])
    pooled: dict[str, dict] = {}
    for label in labels:
        rows = [s[label] for s in site_scores]
        fids = [r.get("context_fid", np.nan) for r in rows]
        out = {"form": rows[0]["form"], "scale": float(rows[0]["scale"]),
               "influence": float(np.mean([r["influence"] for r in rows])),
               "context_fid": float(np.nanmean(fids)) if np.isfinite(fids).any() else float("nan"),
               "sites_scored": sum(1 for r in rows if any(m in r for m in SELECT_MODES))}
        for mode in SELECT_MODES:
            scored = [r for r in rows if mode in r]
            if not scored:
                continue
            summary = pooled_summary([{"histograms": r[mode]} for r in scored], SCORE_BINS)
            out[f"{mode}_auprc_runs"] = summary["values"]["auprc"]
            out[f"{mode}_auprc"] = summary["auprc"]
            out[f"{mode}_auroc"] = summary["auroc"]
        pooled[label] = out
    return pooled


def choose_candidate(pooled: dict[str, dict], select_on: str = "tsrtr", tie_tolerance: float = 0.0,
                     max_fid_ratio: float = 0.0, dp_floor: float = 0.0, sites: int | None = None) -> Candidate:
    """The guided candidate with the best pooled tuning AUPRC if it beats unguided by more than
    the noise floor |null - unguided| (when the table has a null row) plus ``tie_tolerance``;
    else unguided. Only candidates whose Context-FID is at most ``max_fid_ratio`` x unguided's
    are eligible (0 = no constraint): a set far off the data manifold is not chosen on a lucky
    tuning score; with ``sites`` (the number of sites that replied) only candidates every site
    scored are (``scored_rows``: a site that gated a candidate out found it off the manifold
    there). Among guided candidates a tie goes to the smaller scale; NaNs (and unscored rows)
    never win. With DP-noised counts the noise floor is at least ``dp_floor`` (``dp_noise_floor``)."""
    key = f"{select_on}_auprc"
    unguided = next(r for label, r in pooled.items() if label != NULL_LABEL and r["scale"] == 0)
    null = pooled.get(NULL_LABEL)
    noise = abs(null[key] - unguided[key]) if null is not None and np.isfinite(null.get(key, np.nan)) else 0.0
    noise = max(noise, dp_floor)
    fid_limit = max_fid_ratio * unguided.get("context_fid", np.nan)

    def eligible(r: dict) -> bool:
        if not np.isfinite(r.get(key, np.nan)) or (sites is not None and r.get("sites_scored", sites) < sites):
            return False
        return not (max_fid_ratio > 0 and np.isfinite(fid_limit) and not r.get("context_fid", np.inf) <= fid_limit)

    guided = sorted((r for label, r in pooled.items() if label != NULL_LABEL and r["scale"] > 0 and eligible(r)),
                    key=lambda r: (-r[key], r["scale"]))
    if guided and (not np.isfinite(unguided.get(key, np.nan)) or guided[0][key] > unguided[key] + noise + tie_tolerance):
        return Candidate(guided[0]["form"], float(guided[0]["scale"]))
    return Candidate(unguided["form"], 0.0)


def resolve_guidance(config: RunConfig, candidate: Candidate) -> RunConfig:
    """``config`` with the chosen (form, scale) in place of "auto"."""
    return replace(config, guidance=config.guidance.with_candidate(candidate))


def select_guidance(models: SamplingModels, sites: list[NormalizedSplits], config: RunConfig, *,
                    progress: bool = False) -> dict:
    """The guidance setting to generate with: ``config.guidance`` itself when its scale is a
    number ("fixed"), else the candidate chosen on the pooled tuning splits of ``sites`` ("auto").
    Returns {"mode", "chosen": Candidate, "select_on", "table": pooled scores, "summary": text}."""
    if not config.guidance.auto:
        return fixed_selection(config)
    scores = [score_candidates_at_site(models, data, config, site_index=i, progress=progress)
              for i, data in enumerate(sites)]
    return selection_from_scores(scores, config)


def fixed_selection(config: RunConfig) -> dict:
    """The ``select_guidance`` result of a numeric ``guidance.scale``: that setting, no table."""
    g = config.guidance
    chosen = Candidate(g.form, float(g.scale))
    return {"mode": "fixed", "chosen": chosen, "select_on": g.select_on, "table": {},
            "summary": f"guidance fixed at {chosen.label} (no selection)"}


DP_FLOOR_Z = 2.0  # the DP floor in standard deviations of a difference of two noised AUPRCs


def dp_noise_floor(site_scores: list[dict[str, dict]], select_on: str, variance: float) -> float:
    """The least gap a guided candidate must beat unguided by when the counts are DP-noised
    (pooled noise ``variance`` per coarse cell, ``privacy.dp_scores``): DP_FLOOR_Z x sqrt(2) x the
    std of the seed-mean AUPRC that the noise alone causes (``dp_scores.auprc_noise_std`` of
    unguided's pooled histograms, / sqrt(seeds)). The null row's gap also holds the DP noise, but
    as a single draw it is often small; without this floor noise picks a guided candidate about
    half the time when none is better (tested)."""
    from ..privacy.dp_scores import auprc_noise_std

    label = next(label for label, row in site_scores[0].items() if label != NULL_LABEL and row["scale"] == 0)
    runs = sum(np.asarray(s[label][select_on], dtype=np.float64) for s in site_scores)
    stds = [auprc_noise_std(h, variance, seed=i) for i, h in enumerate(runs)]
    return DP_FLOOR_Z * float(np.sqrt(2.0) * np.mean(stds) / np.sqrt(len(stds)))


def selection_from_scores(site_scores: list[dict[str, dict]], config: RunConfig, *, dp_variance: float = 0.0) -> dict:
    """Pool the sites' candidate scores and choose (see ``select_guidance``); ``dp_variance``: the
    pooled DP noise variance per coarse cell of noised counts (0: not noised)."""
    g = config.guidance
    select_on = select_mode(config)
    table = pool_candidate_scores(site_scores)
    floor = dp_noise_floor(site_scores, select_on, dp_variance) if dp_variance > 0 else 0.0
    chosen = choose_candidate(table, select_on, g.tie_tolerance, g.max_fid_ratio, dp_floor=floor,
                              sites=len(site_scores))
    key = f"{select_on}_auprc"
    if not any(np.isfinite(row.get(key, np.nan)) for row in table.values()):
        ranking = (f"no guided candidate within {g.max_fid_ratio:g} x unguided's Context-FID at every site, "
                   "so none was scored")
    else:
        def cell(label: str, row: dict) -> str:
            if not np.isfinite(row.get(key, np.nan)):
                return f"{label} not scored (Context-FID {row.get('context_fid', np.nan):.1f})"
            partial = row["sites_scored"] < len(site_scores)
            return f"{label} {row[key]:.3f}" + (f" (scored at {row['sites_scored']} of {len(site_scores)} sites: "
                                                "not eligible)" if partial else "")

        ranking = ", ".join(cell(label, row) for label, row in table.items())
    out = {"mode": "auto", "chosen": chosen, "select_on": select_on, "table": table,
           "summary": f"chose {chosen.label} by pooled tuning {select_on.upper()} AUPRC beyond the null draw's "
                      f"noise{f' (at least the DP noise floor {floor:.3f})' if floor else ''} ({ranking})"}
    if dp_variance > 0:
        out["dp_noise_floor"] = floor
    return out


def selection_record(selection: dict) -> dict:
    """The JSON form of a ``select_guidance`` result, for metrics.json and the report."""
    chosen: Candidate = selection["chosen"]
    return {"mode": selection["mode"], "select_on": selection["select_on"],
            "chosen": {"form": chosen.form, "scale": chosen.scale, "label": chosen.label},
            "candidates": selection["table"],
            **({"dp_noise_floor": selection["dp_noise_floor"]} if "dp_noise_floor" in selection else {})}
