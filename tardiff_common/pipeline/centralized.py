"""Centralized TarDiff on pooled data: the reference the federated run is compared against.

``fit(config, sites)`` pools the sites' splits, fits the normalizer on their summed phase-0
statistics (moments, then a histogram) and trains the models (``fit.train_models``: the same
phase operations and round schedule as a Flower site), so a one-site federation reproduces it
exactly. ``run_centralized`` then selects the guidance, samples, and evaluates the pooled data
as the one site "pooled" with the federated run's ``evaluation.evaluate_site`` and pooling
(the same metrics.json schema, ``evaluation.RESULT_KEYS``), plus the pooled-trained evaluation
classifiers on each hospital's test split (``site_weighted``, ``per_site_test``).

Output (a run folder that appears whole or not at all): ``metrics.json``, ``report.md``,
``config.json``, ``profiles.png``, ``examples.png``, ``tstr.png``, ``synthetic.npz`` (the
synthetic sets in original units) and ``checkpoint.npz`` (``checkpoint.TrainedTarDiff``: models,
normalizer, G; the format of the federated server's ``checkpoint/state.npz``).

Privacy (``privacy.*``, docs/PRIVACY.md): the pooled data holder runs the federated site's
mechanisms -- noised phase-0 statistics, DP-SGD of the classifier and the U-Net, the DP
gradient-sum release, the noised score counts of the selection and the evaluation
(``privacy.dp_scores``; the gradient-boosting baseline, computed on records, is withheld) -- under one ledger policy (``privacy.ledger_policy.SiteLedger`` for site
"pooled": one plan solved for the pooled training size, one Opacus accountant), checked against
``privacy.max-epsilon`` before every step; ``metrics.json["privacy"]`` has the federated run's
row shape. ``SUPPORTED_PRIVACY`` lists what it honours; anything else (secure aggregation) is
refused before work starts (``validation.refuse_unsupported``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..checkpoint import TrainedTarDiff
from ..data.contract import SiteData, SiteSplits, concat_sites
from ..data.normalize import Normalizer, make_normalizer
from ..metrics.pooling import strip_histograms
from ..metrics.summary import weighted_summary
from ..privacy.report import privacy_rows_of, privacy_settings
from ..report.markdown import render_report
from ..report.plots import plot_class_profiles, plot_examples, plot_metric_bars
from ..report.run_folder import atomic_run_folder, to_jsonable
from .benchmark import BENCHMARK_NOTE, gbm_benchmark
from .config import RunConfig
from .evaluation import evaluate_site, pool_membership, pool_site_metrics
from .external import EXTERNAL, external_section, load_external, transform_external
from .fit import train_models
from .phases import (
    NormalizedSplits,
    SamplingModels,
    generate_synthetic_sets,
    impute_after_phase0,
    local_histogram,
    local_moments,
    normalize_splits,
    prepare_splits,
    resolve_device,
)
from .selection import (
    resolve_guidance,
    score_candidates_at_site,
    select_guidance,
    selection_from_scores,
    selection_record,
)
from .timing import PhaseTimer
from .validation import refuse_unsupported

if TYPE_CHECKING:
    from ..privacy.ledger_policy import SiteLedger

__all__ = ["fit", "run_centralized", "pool_splits", "pooled_data", "SUPPORTED_PRIVACY", "POOLED"]

SUPPORTED_PRIVACY = ("gradient_sum_dp", "dp_sgd_classifier", "dp_sgd_diffusion")
POOLED = "pooled"  # the data holder's name in the privacy ledger and rows


def pool_splits(splits: list[SiteSplits]) -> SiteSplits:
    return SiteSplits(
        train=concat_sites([s.train for s in splits], "pooled"),
        guidance=concat_sites([s.guidance for s in splits], "pooled"),
        tuning=concat_sites([s.tuning for s in splits], "pooled"),
        test=concat_sites([s.test for s in splits], "pooled"),
    )


def pooled_data(config: RunConfig, sites: list[SiteData], *, privacy: SiteLedger | None = None,
                ) -> tuple[list[SiteSplits], SiteSplits, Normalizer, NormalizedSplits]:
    """(per-site splits, pooled splits, normalizer, pooled splits on the model scale): each site
    split, its training moments and histogram summed as in phase 0, the normalizer fitted on them.
    With a ``privacy`` ledger that has DP on, the pooled data holder releases both statistics
    noised instead (``privacy.dp_statistics``), each recorded in the ledger. Under DP the
    never-observed channels are imputed only now, from the normalizer (``phases.impute_after_phase0``),
    so the returned splits carry no training-record median."""
    splits = [prepare_splits(site, config) for site in sites]
    pooled = pool_splits(splits)
    if len(np.unique(pooled.train.y)) < 2:
        raise ValueError("the pooled training split has only one class; TarDiff needs both")
    if privacy is not None and privacy.enabled:
        moments, histogram = _dp_statistics(config, pooled, privacy)
    else:
        moments = sum((local_moments(s) for s in splits[1:]), local_moments(splits[0]))
        histogram = sum((local_histogram(s, moments) for s in splits[1:]), local_histogram(splits[0], moments))
    normalizer = make_normalizer(config.data.normalizer, moments, histogram)
    if config.privacy.any_dp:  # never-observed channels: filled from the phase-0 release (data/impute.py)
        splits = [impute_after_phase0(s, config, normalizer) for s in splits]
        pooled = pool_splits(splits)
    return splits, pooled, normalizer, normalize_splits(pooled, normalizer)


def _dp_statistics(config: RunConfig, pooled: SiteSplits, privacy: SiteLedger):
    """Phase 0 under DP on the pooled training split: noised moments, then the noised histogram
    on the grid they fix (releases 1 and 2 of the plan's "normalization" entry)."""
    from ..data.normalize import histogram_edges_from_moments
    from ..privacy.dp_statistics import dp_histogram, dp_moments, statistics_generator

    train, p = pooled.train, config.privacy
    planned = privacy.planned("normalization", "normalization moments")
    moments = dp_moments(train.x, train.mask, noise_multiplier=planned.noise_multiplier,
                         generator=statistics_generator(p.reproducible_noise, config.seed, 0, 1)).value
    privacy.record([planned], "normalization")
    planned = privacy.planned("normalization", "normalization histogram")
    histogram = dp_histogram(train.x, train.mask, histogram_edges_from_moments(moments),
                             noise_multiplier=planned.noise_multiplier,
                             generator=statistics_generator(p.reproducible_noise, config.seed, 0, 2)).value
    privacy.record([planned], "normalization")
    return moments, histogram


def fit(config: RunConfig, sites: list[SiteData], *, ledger: SiteLedger | None = None, progress: bool = False,
        log=print) -> TrainedTarDiff:
    """Phases 0-3 on the pooled sites: the normalizer, theta*, G and the U-Net + EMA (DP steps,
    if ``ledger`` plans any, recorded in it)."""
    _, _, normalizer, data = pooled_data(config, sites, privacy=ledger)
    return train_models(config, data, normalizer, device=resolve_device(config.device), ledger=ledger,
                        progress=progress, log=log)


def _select(models: SamplingModels, data, config: RunConfig, ledger, *, progress: bool) -> dict:
    """``select_guidance`` on the pooled data; under DP the tuning counts are one noised release
    (``privacy.dp_scores``) recorded in ``ledger``, as at a federated site."""
    planned = ledger.planned("selection", "selection") if ledger is not None and config.guidance.auto else None
    if planned is None:
        return select_guidance(models, [data], config, progress=progress)
    from ..privacy.dp_scores import (
        SELECTION_RELEASE,
        dp_evaluation_config,
        release_candidate_scores,
        score_entry,
        site_score_release,
    )

    scores = score_candidates_at_site(models, data, dp_evaluation_config(config), site_index=0, progress=progress)
    release = site_score_release(config, planned.noise_multiplier, 0, SELECTION_RELEASE)
    scores, k = release_candidate_scores(scores, release)
    ledger.record([score_entry("selection", planned.noise_multiplier, k)], "selection")
    return selection_from_scores([scores], config, dp_variance=planned.noise_multiplier ** 2 * k)


def _evaluate(classifier, synthetic, data, config: RunConfig, ledger, *, influence, other_tests) -> dict:
    """``evaluate_site`` on the pooled data; under DP only what ``dp_scores.release_site_metrics``
    releases (one noised release of every test split's counts, recorded in ``ledger``)."""
    planned = ledger.planned("evaluation", "evaluation") if ledger is not None else None
    if planned is None:
        return evaluate_site(classifier, synthetic, data, config, site_index=0, influence=influence,
                             other_tests=other_tests)
    from ..privacy.dp_scores import (
        EVALUATION_RELEASE,
        dp_evaluation_config,
        release_site_metrics,
        score_entry,
        site_score_release,
    )

    site = evaluate_site(classifier, synthetic, data, dp_evaluation_config(config), site_index=0,
                         influence=influence, other_tests=other_tests)
    site, k = release_site_metrics(site, site_score_release(config, planned.noise_multiplier, 0, EVALUATION_RELEASE))
    ledger.record([score_entry("evaluation", planned.noise_multiplier, k)], "evaluation")
    return site


def run_centralized(
    config: RunConfig,
    sites: list[SiteData],
    out_dir: str | Path,
    *,
    progress: bool = True,
    log=print,
) -> dict:
    """Train, guide, sample and evaluate on the pooled sites; write the run folder; return metrics."""
    timer = PhaseTimer()
    device = resolve_device(config.device)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ValueError(f"run folder {str(out_dir)!r} already exists; choose another --out (nothing was overwritten)")

    refuse_unsupported(config, "centralized")
    with timer("data"):
        external = load_external(config, sites)  # a bad evaluation.external-path fails here, before training
        ledger = None
        if config.privacy.any_dp:
            from ..privacy.ledger_policy import SiteLedger

            train_size = sum(len(prepare_splits(site, config).train.y) for site in sites)
            ledger = SiteLedger(config, POOLED, train_size)
            ledger.plan()  # an unreachable target fails here, before any training
        splits, pooled, normalizer, data = pooled_data(config, sites, privacy=ledger)
        per_site = [normalize_splits(s, normalizer) for s in splits]
        if external is not None:  # imputed and normalized with training statistics only
            external, external_x = transform_external(external, pooled.train, normalizer,
                                                          dp=config.privacy.any_dp)
    log(f"[data] {len(sites)} site(s), {len(data.train_y)} train / {len(data.guidance_y)} guidance / "
        f"{len(data.tuning_y)} tuning / {len(data.test_y)} test records, {data.in_channels} channels x "
        f"{data.length} steps")

    trained = train_models(config, data, normalizer, device=device, ledger=ledger, progress=progress, log=log,
                           timer=timer)
    classifier, direction = trained.classifier, trained.direction
    models = SamplingModels(trained.generator, classifier, direction)

    requested = config
    with timer("selection"):
        selection = _select(models, data, config, ledger, progress=progress)
        config = resolve_guidance(config, selection["chosen"])
    log(f"[selection] {selection['summary']}")

    with timer("generation"):
        synthetic, influence = generate_synthetic_sets(models, data, config, site_index=0, progress=progress)
    log(f"[generation] {len(synthetic['tardiff'][1])} records per set; mean influence " +
        ", ".join(f"{k} {v:.4g}" for k, v in influence.items()))

    with timer("evaluation"):
        tests = {s.name: (s.test_x, s.test_y) for s in per_site}
        if external is not None:
            tests[EXTERNAL] = (external_x, external.y)
        site = _evaluate(classifier, synthetic, data, config, ledger, influence=influence, other_tests=tests)
        by_test = strip_histograms(site.pop("other_tests"))
        gbm = {} if ledger is not None else gbm_benchmark(  # records' summary statistics: withheld under DP
            pooled, {"pooled": pooled.test, **{s.name: s.test for s in splits},
                     **({EXTERNAL: external} if external is not None else {})}, config.evaluation.seeds)
    site_metrics = {POOLED: site}
    weights = [len(s.test_y) for s in per_site]
    metrics = {
        "federated": False,
        **pool_site_metrics(site_metrics),
        "site_weighted": {
            "tstr": {m: weighted_summary([by_test[s.name]["tstr"][m] for s in per_site], weights)
                     for m in site["tstr"]},
            "tsrtr": {m: {r: weighted_summary([by_test[s.name]["tsrtr"][m][r] for s in per_site], weights)
                          for r in rs} for m, rs in site["tsrtr"].items()},
        },
        "per_site_test": {s.name: {"tstr": by_test[s.name]["tstr"]} for s in per_site},
        "baselines": {"gbm": gbm, "note": BENCHMARK_NOTE},
        **({"external": external_section(external, by_test[EXTERNAL]["tstr"], by_test[EXTERNAL]["tsrtr"],
                                         gbm[EXTERNAL])} if external is not None else {}),
        "selection": selection_record(selection),
        "sites": strip_histograms(site_metrics),
        "guidance_records": trained.gradient_sum.count,
        "data": {"source": config.data.source, "sites": [s.summary() for s in sites]},
        "timing": timer.as_dict(),
        "timing_cpu": timer.cpu_dict(),
        "device": str(device),
        "privacy": privacy_rows_of(POOLED, ledger.summary() if ledger else {}, config.privacy, lambda _: True),
        "privacy_settings": privacy_settings(config.privacy, []),
        "membership": pool_membership(site_metrics),
    }

    with atomic_run_folder(out_dir) as staging:
        sets_units = {"real": (pooled.test.x, pooled.test.y)}
        sets_units.update({k: (normalizer.inverse_transform(x), y) for k, (x, y) in synthetic.items()})
        channels = pooled.train.channels
        plot_class_profiles(sets_units, channels, staging / "profiles.png")
        plot_examples(sets_units, channels, staging / "examples.png")
        plot_metric_bars(metrics["tstr"], staging / "tstr.png")
        np.savez_compressed(
            staging / "synthetic.npz",
            **{f"{k}_x": v[0] for k, v in sets_units.items() if k != "real"},
            **{f"{k}_y": v[1] for k, v in sets_units.items() if k != "real"},
        )
        trained.save(staging / "checkpoint.npz")
        (staging / "config.json").write_text(json.dumps(to_jsonable(requested.to_flat()), indent=2) + "\n")
        (staging / "metrics.json").write_text(json.dumps(to_jsonable(metrics), indent=2) + "\n")
        report = render_report(metrics, title="TarDiff run report (centralized)",
                               figures=["tstr.png", "profiles.png", "examples.png"])
        (staging / "report.md").write_text(report)
    log(f"[report] {out_dir}/report.md")
    return metrics
