"""Guidance sweep: one trained classifier + diffusion model, many guidance settings.

Trains theta* and the conditional U-Net once (centralized, on the pooled sites, the same
phase operations as every other run), then samples a synthetic set for every combination of

    guidance.scale x guidance.target-class (all / minority) x guidance.form x guidance.guided-fraction

with the same noise, and scores each set by TSTR and TSRTR (ratio 1) on the real test split,
plus its mean influence. Selection of a setting should use ``--select-on validation``: then the
sets are scored on the guidance (validation) split, as the paper tunes the scale (Sec. 4.6).

    python -m simulations.guidance_sweep --out runs/sweep [--preset default] [--set data.data-seed=1]
        [--scales 0,3,10,30,100] [--targets all,1] [--forms paper] [--fractions 1.0] [--select-on test]

Writes ``sweep.csv``, ``sweep.md`` and ``sweep.png`` into ``--out`` (written at the end,
atomically; rows are printed as they come).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from tardiff_common.data.loading import load_sites_for
from tardiff_common.data.normalize import make_normalizer
from tardiff_common.diffusion.ema import EMA
from tardiff_common.influence.gradient_sum import guidance_gradient_sum
from tardiff_common.influence.guidance import GuidanceConfig
from tardiff_common.metrics.utility import score_training_set
from tardiff_common.pipeline.centralized import pool_splits
from tardiff_common.pipeline.config import preset
from tardiff_common.pipeline.phases import (
    classifier_round,
    diffusion_round,
    local_histogram,
    local_moments,
    mean_influence,
    new_classifier,
    new_unet,
    normalize_splits,
    positive_fraction,
    prepare_splits,
    resolve_device,
    synthesize,
)
from tardiff_common.report.run_folder import atomic_run_folder
from tardiff_common.training.classifier import positive_class_weight

FIELDS = ["scale", "target", "form", "fraction", "influence", "tstr_auroc", "tstr_auprc", "tstr_f1",
          "tsrtr_auroc", "tsrtr_auprc", "tsrtr_f1", "tstr_auprc_ci"]


def parse_list(text: str, cast=float) -> list:
    return [cast(t) for t in text.split(",") if t.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--scales", default="0,3,10,30,100")
    parser.add_argument("--targets", default="all,1", help="'all' and/or a class (1 = minority)")
    parser.add_argument("--forms", default="paper")
    parser.add_argument("--fractions", default="1.0")
    parser.add_argument("--select-on", choices=("test", "validation"), default="validation")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = preset(args.preset).with_overrides(dict(s.split("=", 1) for s in args.set))
    device = resolve_device(config.device)

    splits = [prepare_splits(s, config) for s in load_sites_for(config.data)]
    pooled = pool_splits(splits)
    moments = sum((local_moments(s) for s in splits[1:]), local_moments(splits[0]))
    hist = sum((local_histogram(s, moments) for s in splits[1:]), local_histogram(splits[0], moments))
    data = normalize_splits(pooled, make_normalizer(config.data.normalizer, moments, hist))

    classifier = new_classifier(config, data.in_channels, device)
    pw = positive_class_weight(data.train_y, config.classifier_train.class_weighting)
    for r in range(1, config.federation.classifier_rounds + 1):
        classifier_round(classifier, data, config, server_round=r, site_index=0, pos_weight=pw)
    unet = new_unet(config, data.in_channels, device)
    ema = EMA(unet, config.diffusion_train.ema_decay)
    for r in tqdm(range(1, config.federation.diffusion_rounds + 1), desc="diffusion rounds"):
        diffusion_round(unet, ema, data, config, server_round=r, site_index=0)

    if args.select_on == "validation":
        target = {"eval": (data.guidance_x, data.guidance_y)}
        threshold_split = (data.train_x, data.train_y)  # thresholds never come from the scored split
    else:
        target = {"eval": (data.test_x, data.test_y)}
        threshold_split = (data.guidance_x, data.guidance_y)
    directions = {}
    rows = []
    grid = list(itertools.product(parse_list(args.scales), args.targets.split(","), args.forms.split(","),
                                  parse_list(args.fractions)))
    for scale, tgt, form, fraction in tqdm(grid, desc="guidance settings"):
        target_class = None if tgt == "all" else int(tgt)
        if tgt not in directions:
            directions[tgt] = guidance_gradient_sum(classifier, data.guidance_x, data.guidance_y,
                                                    target_class=target_class).direction()
        gcfg = GuidanceConfig(scale=scale, form=form, target_class=target_class, guided_fraction=fraction,
                              method="central_difference")
        cfg = replace(config, guidance=gcfg)
        x, y = synthesize(ema.shadow, classifier, directions[tgt], num_samples=len(data.train_y),
                          positive_fraction=positive_fraction(config, data.train_y), length=data.length,
                          config=cfg, site_index=0, guided=scale != 0)
        tstr = score_training_set((x, y), threshold_split, target, config.evaluation, device=str(device))["eval"]
        mixed = (np.concatenate([data.train_x, x]), np.concatenate([data.train_y, y]))
        tsrtr = score_training_set(mixed, threshold_split, target, config.evaluation, device=str(device),
                                   tag=7)["eval"]
        row = {"scale": scale, "target": tgt, "form": form, "fraction": fraction,
               "influence": mean_influence(classifier, directions["all"], x, y),
               "tstr_auroc": tstr["auroc"], "tstr_auprc": tstr["auprc"], "tstr_f1": tstr["minority_f1"],
               "tsrtr_auroc": tsrtr["auroc"], "tsrtr_auprc": tsrtr["auprc"], "tsrtr_f1": tsrtr["minority_f1"],
               "tstr_auprc_ci": tstr["ci95"]["auprc"]}
        rows.append(row)
        tqdm.write(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))

    with atomic_run_folder(args.out) as folder:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        (folder / "sweep.csv").write_text(buffer.getvalue())
        lines = [f"# Guidance sweep (scored on the {args.select_on} split)", "",
                 "| scale | target | form | guided fraction | mean influence | TSTR AUROC | TSTR AUPRC | TSTR F1 | "
                 "TSRTR AUROC | TSRTR AUPRC | TSRTR F1 |", "|" + "---|" * 11]
        for r in rows:
            lines.append(f"| {r['scale']:g} | {r['target']} | {r['form']} | {r['fraction']:g} | {r['influence']:.3f} | "
                         f"{r['tstr_auroc']:.3f} | {r['tstr_auprc']:.3f} | {r['tstr_f1']:.3f} | "
                         f"{r['tsrtr_auroc']:.3f} | {r['tsrtr_auprc']:.3f} | {r['tsrtr_f1']:.3f} |")
        (folder / "sweep.md").write_text("\n".join(lines) + "\n")
        _plot(rows, folder / "sweep.png")
    print(f"wrote {Path(args.out) / 'sweep.md'}")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for key, ax in zip(("influence", "tstr_auprc", "tsrtr_auprc"), axes):
        for tgt in sorted({r["target"] for r in rows}):
            sel = sorted((r for r in rows if r["target"] == tgt and r["fraction"] == rows[0]["fraction"]
                          and r["form"] == rows[0]["form"]), key=lambda r: r["scale"])
            ax.plot([max(r["scale"], 0.3) for r in sel], [r[key] for r in sel], marker="o",
                    label=f"guidance set: {'all' if tgt == 'all' else f'class {tgt}'}")
        ax.set_xscale("log")
        ax.set_xlabel("guidance scale s (0 plotted at 0.3)")
        ax.set_title(key)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
