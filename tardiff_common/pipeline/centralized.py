"""Centralized TarDiff on pooled data: the reference the federated run is compared against.

It runs the same phase operations as a Flower site (``phases``) on the pooled splits, with
the same round schedule (rounds of local epochs, a fresh optimizer each round) and the same
normalization path (moments, then a histogram, summed over sites), so a one-site federation
reproduces it exactly.

Output (a run folder that appears whole or not at all): ``metrics.json``, ``report.md``,
``config.json``, ``profiles.png``, ``examples.png``, ``tstr.png``, ``synthetic.npz`` (the
synthetic sets in original units) and ``checkpoint.pt`` (models, normalizer, G).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..data.contract import SiteData, SiteSplits, concat_sites
from ..data.normalize import Normalizer, make_normalizer
from ..diffusion.ema import EMA
from ..influence.gradient_sum import GradientSum
from ..metrics.paired import paired_tables
from ..metrics.summary import weighted_summary
from ..metrics.utility import evaluate_utility
from ..report.markdown import render_report
from ..report.plots import plot_class_profiles, plot_examples, plot_metric_bars
from ..report.run_folder import atomic_run_folder, to_jsonable
from ..training.classifier import positive_class_weight
from .config import RunConfig
from .phases import (
    NormalizedSplits,
    classifier_round,
    diffusion_round,
    fidelity_of_sets,
    generate_synthetic_sets,
    guidance_sum,
    local_histogram,
    local_moments,
    new_classifier,
    new_unet,
    normalize_splits,
    prepare_splits,
    resolve_device,
)
from .selection import resolve_guidance, select_guidance, selection_record
from .timing import PhaseTimer

__all__ = ["run_centralized", "pool_splits", "pooled_data"]


def pool_splits(splits: list[SiteSplits]) -> SiteSplits:
    return SiteSplits(
        train=concat_sites([s.train for s in splits], "pooled"),
        guidance=concat_sites([s.guidance for s in splits], "pooled"),
        tuning=concat_sites([s.tuning for s in splits], "pooled"),
        test=concat_sites([s.test for s in splits], "pooled"),
    )


def pooled_data(config: RunConfig, sites: list[SiteData]) -> tuple[list[SiteSplits], SiteSplits, Normalizer,
                                                                    NormalizedSplits]:
    """(per-site splits, pooled splits, normalizer, pooled splits on the model scale): each site
    split, its training moments and histogram summed as in phase 0, the normalizer fitted on them."""
    splits = [prepare_splits(site, config) for site in sites]
    pooled = pool_splits(splits)
    if len(np.unique(pooled.train.y)) < 2:
        raise ValueError("the pooled training split has only one class; TarDiff needs both")
    moments = sum((local_moments(s) for s in splits[1:]), local_moments(splits[0]))
    histogram = sum((local_histogram(s, moments) for s in splits[1:]), local_histogram(splits[0], moments))
    normalizer = make_normalizer(config.data.normalizer, moments, histogram)
    return splits, pooled, normalizer, normalize_splits(pooled, normalizer)


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

    with timer("data"):
        splits, pooled, normalizer, data = pooled_data(config, sites)
        per_site = [normalize_splits(s, normalizer) for s in splits]
    log(f"[data] {len(sites)} site(s), {len(data.train_y)} train / {len(data.guidance_y)} guidance / "
        f"{len(data.tuning_y)} tuning / {len(data.test_y)} test records, {data.in_channels} channels x "
        f"{data.length} steps")

    with timer("classifier"):
        classifier = new_classifier(config, data.in_channels, device)
        pos_weight = positive_class_weight(data.train_y, config.classifier_train.class_weighting)
        for r in range(1, config.federation.classifier_rounds + 1):
            stats = classifier_round(classifier, data, config, server_round=r, site_index=0, pos_weight=pos_weight,
                                     progress=progress)
            log(f"[classifier] round {r}/{config.federation.classifier_rounds} loss {stats['loss']:.4f}")

    with timer("influence"):
        G: GradientSum = guidance_sum(classifier, data, config)
        direction = G.direction()
    log(f"[influence] G over {G.count} guidance records, ||G|| = {float(G.total.norm()):.4g}")

    with timer("diffusion"):
        unet = new_unet(config, data.in_channels, device)
        ema = EMA(unet, config.diffusion_train.ema_decay)
        for r in range(1, config.federation.diffusion_rounds + 1):
            stats = diffusion_round(unet, ema, data, config, server_round=r, site_index=0, progress=progress)
            log(f"[diffusion] round {r}/{config.federation.diffusion_rounds} loss {stats['loss']:.4f}")

    requested = config
    with timer("selection"):
        selection = select_guidance(ema.shadow, classifier, direction, [data], config, progress=progress)
        config = resolve_guidance(config, selection["chosen"])
    log(f"[selection] {selection['summary']}")

    with timer("generation"):
        synthetic, influence = generate_synthetic_sets(ema.shadow, classifier, direction, data, config,
                                                       site_index=0, progress=progress)
    log(f"[generation] {len(synthetic['tardiff'][1])} records per set; mean influence " +
        ", ".join(f"{k} {v:.4g}" for k, v in influence.items()))

    with timer("evaluation"):
        fidelity = fidelity_of_sets(synthetic, data, config)
        tests = {"pooled": (data.test_x, data.test_y), **{s.name: (s.test_x, s.test_y) for s in per_site}}
        utility = evaluate_utility(
            (data.train_x, data.train_y), (data.tuning_x, data.tuning_y), tests, synthetic,
            config.evaluation, device=str(device),
        )
    weights = [len(s.test_y) for s in per_site]
    metrics = {
        "federated": False,
        "tstr": {m: by_test["pooled"] for m, by_test in utility["tstr"].items()},
        "tsrtr": {m: {r: by_test["pooled"] for r, by_test in rs.items()} for m, rs in utility["tsrtr"].items()},
        "site_weighted": {
            "tstr": {m: weighted_summary([by_test[s.name] for s in per_site], weights)
                     for m, by_test in utility["tstr"].items()},
            "tsrtr": {m: {r: weighted_summary([by_test[s.name] for s in per_site], weights)
                          for r, by_test in rs.items()} for m, rs in utility["tsrtr"].items()},
        },
        "per_site_test": {
            s.name: {"tstr": {m: by_test[s.name] for m, by_test in utility["tstr"].items()}} for s in per_site
        },
        "paired": paired_tables({m: by_test["pooled"] for m, by_test in utility["tstr"].items()},
                                {m: {r: by_test["pooled"] for r, by_test in rs.items()}
                                 for m, rs in utility["tsrtr"].items()}),
        "selection": selection_record(selection),
        "influence": influence,
        "fidelity": fidelity,
        "guidance_records": G.count,
        "data": {"source": config.data.source, "sites": [s.summary() for s in sites]},
        "timing": timer.as_dict(),
        "device": str(device),
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
        torch.save(
            {
                "version": 1,
                "classifier": classifier.state_dict(),
                "unet": unet.state_dict(),
                "unet_ema": ema.shadow.state_dict(),
                "guidance_sum": G.total,
                "guidance_count": G.count,
                "normalizer": normalizer.state_dict(),
            },
            staging / "checkpoint.pt",
        )
        (staging / "config.json").write_text(json.dumps(to_jsonable(requested.to_flat()), indent=2) + "\n")
        (staging / "metrics.json").write_text(json.dumps(to_jsonable(metrics), indent=2) + "\n")
        report = render_report(metrics, title="TarDiff run report (centralized)",
                               figures=["tstr.png", "profiles.png", "examples.png"])
        (staging / "report.md").write_text(report)
    log(f"[report] {out_dir}/report.md")
    return metrics
