"""Paper-style results on a multi-site data source: TarDiff federated and centralized vs
unguided diffusion vs real-only, with guidance variants, over several pipeline seeds.

For every pipeline seed s (``seed``, ``generation.seed`` and ``data.split-seed`` all derived
from s, so the data split, the models and the samples change with s):

1. the centralized pipeline on the pooled sites          -> <out>/seed<s>/centralized/
2. the federated workflow in-process (one node per site)  -> <out>/seed<s>/federated/
3. guidance variants reusing the centralized models      (minority-only guidance, the public
   code's form, other scales), scored like the main run on the pooled test split.

Then it writes ``results.csv`` (one row per seed x method x protocol), ``results.md`` (mean
± 95 % CI over seeds, the TSTR table, the TSRTR ratio curve, fidelity and membership risk) and
``tsrtr.png`` into ``<out>``. Finished seeds are skipped when the study is run again.

    python -m simulations.real_data_study --source eicu_yaib --path ../shared/data/eicu_demo \
        --out runs/study-eicu [--seeds 0,1,2] [--set key=value ...] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tardiff_common.data.loading import load_sites_for
from tardiff_common.data.normalize import normalizer_from_state
from tardiff_common.influence.gradient_sum import GradientSum, guidance_gradient_sum
from tardiff_common.influence.guidance import GuidanceConfig
from tardiff_common.metrics.summary import mean_ci
from tardiff_common.metrics.utility import score_training_set
from tardiff_common.pipeline.centralized import pool_splits, run_centralized
from tardiff_common.pipeline.config import RunConfig, preset
from tardiff_common.pipeline.phases import (
    new_classifier,
    new_unet,
    normalize_splits,
    positive_fraction,
    prepare_splits,
    resolve_device,
    synthesize,
)
from tardiff_common.report.run_folder import write_bytes_atomic

from .run_inprocess import run_inprocess

METRICS = ("auroc", "auprc", "minority_f1")
VARIANTS = {
    "tardiff minority-only": dict(target_class=1),
    "tardiff s=10": dict(scale=10.0),
    "tardiff s=30": dict(scale=30.0),
    "tardiff s=300": dict(scale=300.0),
    "tardiff code form": dict(scale=1e-5, form="code", method="batch_normalized"),
}


def seed_config(base: RunConfig, seed: int) -> RunConfig:
    return replace(base, seed=seed, data=replace(base.data, split_seed=seed),
                   generation=replace(base.generation, seed=1234 + seed))


def rows_from_metrics(seed: int, run: str, metrics: dict, *, weighted: bool) -> list[dict]:
    """Flatten one run's metrics.json into rows: seed, run, protocol, method, ratio, metric values."""
    rows = []
    tstr = metrics["site_weighted"]["tstr"] if weighted and "site_weighted" in metrics else metrics["tstr"]
    for method, s in tstr.items():
        rows.append({"seed": seed, "run": run, "protocol": "tstr", "method": method, "ratio": "",
                     **{m: s[m] for m in METRICS}})
    for method, by_ratio in metrics.get("tsrtr", {}).items():
        for ratio, s in by_ratio.items():
            rows.append({"seed": seed, "run": run, "protocol": "tsrtr", "method": method, "ratio": ratio,
                         **{m: s[m] for m in METRICS}})
    for name, value in (metrics.get("fidelity") or {}).items():
        for key, v in (value.items() if isinstance(value, dict) else []):
            if isinstance(v, (int, float)):
                rows.append({"seed": seed, "run": run, "protocol": "fidelity", "method": name, "ratio": key,
                             "auroc": v, "auprc": "", "minority_f1": ""})
    for name, value in (metrics.get("membership") or {}).items():  # federated: pooled over the sites
        if isinstance(value, dict) and isinstance(value.get("mia_auc"), (int, float)):
            rows.append({"seed": seed, "run": run, "protocol": "fidelity", "method": name, "ratio": "mia_auc",
                         "auroc": value["mia_auc"], "auprc": "", "minority_f1": ""})
    return rows


def guidance_variants(config: RunConfig, run_dir: Path, sites, seed: int) -> list[dict]:
    """Re-sample with other guidance settings from the centralized run's models; TSTR + TSRTR x1."""
    device = resolve_device(config.device)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    normalizer = normalizer_from_state(ckpt["normalizer"])
    data = normalize_splits(pool_splits([prepare_splits(s, config) for s in sites]), normalizer)
    classifier = new_classifier(config, data.in_channels, device)
    classifier.load_state_dict(ckpt["classifier"])
    unet = new_unet(config, data.in_channels, device)
    unet.load_state_dict(ckpt["unet_ema"])
    g_all = GradientSum(ckpt["guidance_sum"], ckpt["guidance_count"]).direction()
    tests = {"pooled": (data.test_x, data.test_y)}
    validation = (data.guidance_x, data.guidance_y)
    rows = []
    for name, changes in VARIANTS.items():
        gcfg = replace(config.guidance, **changes)
        g = g_all if gcfg.target_class is None else guidance_gradient_sum(
            classifier, data.guidance_x, data.guidance_y, target_class=gcfg.target_class).direction()
        x, y = synthesize(unet, classifier, g, num_samples=len(data.train_y),
                          positive_fraction=positive_fraction(config, data.train_y), length=data.length,
                          config=replace(config, guidance=GuidanceConfig(**{**gcfg.to_dict()})), site_index=0,
                          guided=True)
        tstr = score_training_set((x, y), validation, tests, config.evaluation, device=str(device), tag=1)["pooled"]
        mixed = (np.concatenate([data.train_x, x]), np.concatenate([data.train_y, y]))
        tsrtr = score_training_set(mixed, validation, tests, config.evaluation, device=str(device), tag=200)["pooled"]
        rows.append({"seed": seed, "run": "centralized", "protocol": "tstr", "method": name, "ratio": "",
                     **{m: tstr[m] for m in METRICS}})
        rows.append({"seed": seed, "run": "centralized", "protocol": "tsrtr", "method": name, "ratio": "1",
                     **{m: tsrtr[m] for m in METRICS}})
    return rows


FIELDS = ["seed", "run", "protocol", "method", "ratio", *METRICS]
FIDELITY_COLUMNS = ("context_fid", "discriminative", "predictive_mae", "mia_auc", "dcr_ratio")


def summarize(rows: list[dict]) -> dict[tuple, dict[str, tuple[float, float]]]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["run"], r["protocol"], r["method"], str(r["ratio"])), []).append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {m: mean_ci([float(r[m]) for r in rs if r[m] not in ("", None)]) for m in METRICS}
        out[key]["n"] = len(rs)
    return out


def fmt(pair: tuple[float, float]) -> str:
    mean, half = pair
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3f}" if not np.isfinite(half) else f"{mean:.3f} ± {half:.3f}"


def render(summary: dict, header: str, command: str) -> str:
    lines = [f"# {header}", "", f"Reproduce: `{command}`", "",
             "Mean ± 95 % CI over pipeline seeds (each seed: new split, models and samples; each value is "
             "itself the mean over 3 downstream-classifier seeds). Centralized: pooled test split. "
             "Federated: site-weighted over the sites' own test splits, each site's `real` trained on its "
             "own records only.", "", "## TSTR (train on synthetic, test on real)", "",
             "| run | training data | AUROC | AUPRC | minority F1 | seeds |", "|---|---|---|---|---|---|"]
    for (run, proto, method, _), v in sorted(summary.items()):
        if proto == "tstr":
            lines.append(f"| {run} | {method} | {fmt(v['auroc'])} | {fmt(v['auprc'])} | "
                         f"{fmt(v['minority_f1'])} | {v['n']} |")
    lines += ["", "## TSRTR (real + synthetic at ratio x real size)", "",
              "| run | synthetic | ratio | AUROC | AUPRC | minority F1 |", "|---|---|---|---|---|---|"]
    for (run, proto, method, ratio), v in sorted(summary.items()):
        if proto == "tsrtr":
            lines.append(f"| {run} | {method} | {ratio} | {fmt(v['auroc'])} | {fmt(v['auprc'])} | "
                         f"{fmt(v['minority_f1'])} |")
    fid = {(k[0], k[2]): {} for k in summary if k[1] == "fidelity"}
    for (run, proto, method, key), v in summary.items():
        if proto == "fidelity":
            fid[(run, method)][key] = v["auroc"]  # fidelity rows carry their value in the first metric column
    if fid:
        lines += ["", "## Fidelity and privacy (synthetic vs the real training records)", "",
                  "Context-FID (random-conv encoder; lower = closer), discriminative score |acc - 0.5| (0 = "
                  "indistinguishable), predictive MAE (train on synthetic, next step on real), membership "
                  "inference AUC of the distance-to-closest-synthetic attack (0.5 = no leak) and DCR ratio "
                  "(members / non-members median distance; < 1 = closer to training records). Federated runs "
                  "are scored at each site against its own records and averaged by test size.", "",
                  "| run | synthetic set | " + " | ".join(FIDELITY_COLUMNS) + " |",
                  "|---|---|" + "---|" * len(FIDELITY_COLUMNS)]
        for (run, method), values in sorted(fid.items()):
            lines.append(f"| {run} | {method} | " + " | ".join(
                fmt(values[c]) if c in values else "-" for c in FIDELITY_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot_tsrtr(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, metric in zip(axes, ("auprc", "minority_f1")):
        for run, proto, method in sorted({k[:3] for k in summary if k[1] == "tsrtr"}):
            pts = sorted((float(k[3]), v[metric]) for k, v in summary.items()
                         if k[:3] == (run, proto, method) and k[3])
            if len(pts) < 2:
                continue
            xs = [p[0] for p in pts]
            ys = np.array([p[1][0] for p in pts])
            err = np.array([0 if not np.isfinite(p[1][1]) else p[1][1] for p in pts])
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"{run}: real + {method}")
        real = [v[metric][0] for k, v in summary.items() if k[1] == "tstr" and k[2] == "real" and k[0] == "centralized"]
        if real:
            ax.axhline(real[0], color="k", ls="--", lw=1, label="centralized: real only")
        ax.set_xlabel("synthetic / real ratio")
        ax.set_title(f"TSRTR {metric}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--path", default="")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--skip-federated", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {"data.source": args.source, "data.path": args.path,
                 **dict(s.split("=", 1) for s in args.set)}
    base = preset(args.preset).with_overrides(overrides)
    if args.threads:
        base = replace(base, threads=args.threads)
    sites = load_sites_for(base.data)
    print(f"{args.source}: {len(sites)} sites: " + ", ".join(f"{s.name} ({s.num_records})" for s in sites))
    timing = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        seed_dir = out / f"seed{seed}"
        done = seed_dir / "rows.json"
        if done.exists():
            print(f"seed {seed}: done earlier, skipped")
            continue
        config = seed_config(base, seed)
        start = time.perf_counter()
        central_dir = seed_dir / "centralized"
        if not (central_dir / "metrics.json").exists():
            run_centralized(config, sites, central_dir, progress=False)
        rows = rows_from_metrics(seed, "centralized", json.loads((central_dir / "metrics.json").read_text()),
                                 weighted=False)
        rows += guidance_variants(config, central_dir, sites, seed)
        if not args.skip_federated:
            fed_cfg = config.with_overrides({"output.dir": str(seed_dir), "output.name": "federated",
                                             "output.baseline": "../centralized"})
            fed_metrics = run_inprocess(fed_cfg)
            rows += rows_from_metrics(seed, "federated", fed_metrics, weighted=False)
        write_bytes_atomic(done, json.dumps(rows).encode())
        timing[seed] = time.perf_counter() - start
        print(f"seed {seed}: {timing[seed]:.0f} s")

    rows = [r for d in sorted(out.glob("seed*/rows.json")) for r in json.loads(d.read_text())]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(out / "results.csv", buffer.getvalue().encode())
    summary = summarize(rows)
    command = "python -m simulations.real_data_study " + " ".join(
        [f"--source {args.source}", f"--path {args.path}" if args.path else "", f"--out {args.out}",
         f"--seeds {args.seeds}"] + [f"--set {s}" for s in args.set]).replace("  ", " ")
    write_bytes_atomic(out / "results.md", render(summary, f"TarDiff on {args.source}", command).encode())
    plot_tsrtr(summary, out / "tsrtr.png")
    print(f"wrote {out / 'results.md'}")


if __name__ == "__main__":
    main()
