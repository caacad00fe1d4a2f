"""Does guidance pay off? Paired evidence over pipeline seeds, selection on the tuning split.

For every pipeline seed s (``seed``, ``data.split-seed`` and ``generation.seed`` derived from s,
so the split, the models and the samples all change with s):

1. the centralized pipeline on the pooled sites (``tardiff centralized``)  -> <out>/seed<s>/centralized/
2. with ``--federated``, the federated workflow in-process, one node per site -> <out>/seed<s>/federated/

Each run chooses its guidance setting on its tuning split (``guidance.scale = "auto"``: the
candidates of ``guidance.candidates`` and unguided), then generates "unguided", a second
unguided draw "unguided_2" (the null row) and "tardiff" (the chosen setting) from the same
trained models, and scores all of them on the test split with the same evaluation seeds.
Per pipeline seed the study takes the paired difference of the run's means (TarDiff -
unguided, the null unguided_2 - unguided, TarDiff - real), and reports mean ± 95 % t-CI over
seeds. It also reports the selected settings, the tuning table of every candidate (mean
influence, tuning AUPRC) averaged over seeds and the fidelity (Context-FID, discriminative
score) of the reported sets.

    python -m simulations.guidance_study --out runs/gs-embedded --seeds 0,1,2,3,4 [--federated]
        [--source eicu_yaib --path ../shared/data/eicu_demo] [--set key=value ...] [--threads 1]

Writes ``results.csv`` (seed x run x set x metric), ``results.md`` and ``forms.png`` into
``--out``; finished seeds are skipped when run again.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from tardiff_common.data.loading import load_sites_for
from tardiff_common.metrics.summary import mean_ci
from tardiff_common.pipeline.centralized import run_centralized
from tardiff_common.pipeline.config import RunConfig
from tardiff_common.report.run_folder import write_bytes_atomic

from .study_cli import add_config_args, config_from_args

METRICS = ("auroc", "auprc", "minority_f1")
SETS = ("real", "unguided", "unguided_2", "tardiff")
PAIRS = (("tardiff - unguided", "tardiff", "unguided"), ("null: unguided_2 - unguided", "unguided_2", "unguided"),
         ("tardiff - real", "tardiff", "real"), ("unguided - real", "unguided", "real"))


def seed_config(base: RunConfig, seed: int) -> RunConfig:
    return base.with_overrides({"seed": seed, "data.split-seed": seed, "generation.seed": 1234 + seed})


def run_seed(base: RunConfig, seed: int, out: Path, federated: bool, log) -> dict[str, dict]:
    """{"centralized": metrics, "federated": metrics} of one pipeline seed (cached on disk)."""
    config = seed_config(base, seed)
    folder = out / f"seed{seed}"
    results = {}
    central = folder / "centralized"
    if not (central / "metrics.json").exists():
        t0 = time.time()
        run_centralized(config, load_sites_for(config.data), central, progress=False, log=lambda *_: None)
        log(f"seed {seed}: centralized in {time.time() - t0:.0f} s")
    results["centralized"] = json.loads((central / "metrics.json").read_text())
    if federated:
        fed = folder / "federated"
        if not (fed / "metrics.json").exists():
            from .run_inprocess import run_inprocess

            t0 = time.time()
            run_inprocess(config.with_overrides({"output.dir": str(folder), "output.name": "federated",
                                                 "output.baseline": "../centralized"}), log=lambda *_: None)
            log(f"seed {seed}: federated in {time.time() - t0:.0f} s")
        results["federated"] = json.loads((fed / "metrics.json").read_text())
    return results


def rows_of(seed: int, run: str, metrics: dict) -> list[dict]:
    """One row per (view, protocol, set, metric): view "main" (centralized pooled test split /
    federated site-weighted) and, federated, "hist-pooled" (histogram-pooled over sites)."""
    views = {"main": (metrics["tstr"], metrics["tsrtr"])}
    if metrics.get("federated") and metrics.get("histogram_pooled"):  # one site: the pooled test split again
        views["hist-pooled"] = (metrics["histogram_pooled"]["tstr"], metrics["histogram_pooled"]["tsrtr"])
    rows = []
    for view, (tstr, tsrtr) in views.items():
        for name, summary in tstr.items():
            for m in METRICS:
                if m in summary:
                    rows.append(dict(seed=seed, run=run, view=view, protocol="tstr", set=name, metric=m,
                                     value=summary[m]))
        for name, by_ratio in tsrtr.items():
            for ratio, summary in by_ratio.items():
                for m in METRICS:
                    if m in summary:
                        rows.append(dict(seed=seed, run=run, view=view, protocol=f"tsrtr x{ratio}", set=name,
                                         metric=m, value=summary[m]))
    for name, scores in (metrics.get("fidelity") or {}).items():
        for key in ("context_fid", "discriminative"):
            if key in scores:
                rows.append(dict(seed=seed, run=run, view="fidelity", protocol="-", set=name, metric=key,
                                 value=scores[key]))
    for name, value in (metrics.get("influence") or {}).items():
        rows.append(dict(seed=seed, run=run, view="influence", protocol="-", set=name, metric="mean_influence",
                         value=value))
    return rows


def _fmt(values: list[float]) -> str:
    mean, half = mean_ci(values)
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:+.3f} ± {half:.3f}" if np.isfinite(half) else f"{mean:+.3f}"


def _fmt_abs(values: list[float]) -> str:
    mean, half = mean_ci(values)
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.3f} ± {half:.3f}" if np.isfinite(half) else f"{mean:.3f}"


def _value(rows: list[dict], **key) -> dict[int, float]:
    return {r["seed"]: float(r["value"]) for r in rows if all(r[k] == v for k, v in key.items())}


def paired_table(rows: list[dict], run: str, view: str, protocols: list[str]) -> list[str]:
    """Markdown: per protocol and pair, mean ± CI over seeds of the per-seed difference."""
    lines = ["| protocol | difference | AUROC | AUPRC | minority F1 | seeds |", "|---|---|---|---|---|---|"]
    for protocol in protocols:
        for label, a, b in PAIRS:
            cells, n = [], 0
            for m in METRICS:
                base_protocol = "tstr" if b == "real" else protocol
                va = _value(rows, run=run, view=view, protocol=protocol, set=a, metric=m)
                vb = _value(rows, run=run, view=view, protocol=base_protocol, set=b, metric=m)
                diffs = [va[s] - vb[s] for s in sorted(set(va) & set(vb))]
                n = max(n, len(diffs))
                cells.append(_fmt(diffs))
            if n:
                lines.append(f"| {protocol} | {label} | " + " | ".join(cells) + f" | {n} |")
    return lines


def absolute_table(rows: list[dict], run: str, view: str, protocols: list[str]) -> list[str]:
    lines = ["| protocol | training data | AUROC | AUPRC | minority F1 |", "|---|---|---|---|---|"]
    for protocol in protocols:
        for name in SETS:
            p = "tstr" if name == "real" else protocol
            if name == "real" and protocol != protocols[0]:
                continue
            cells = [_fmt_abs(list(_value(rows, run=run, view=view, protocol=p, set=name, metric=m).values()))
                     for m in METRICS]
            if any(c != "n/a" for c in cells):
                lines.append(f"| {p} | {name} | " + " | ".join(cells) + " |")
    return lines


def selection_summary(metrics_by_seed: dict[int, dict], run: str) -> tuple[list[str], dict[str, dict]]:
    """Markdown lines (the choice per seed, the candidate table averaged over seeds) and the table."""
    chosen, table = {}, {}
    for seed, by_run in sorted(metrics_by_seed.items()):
        selection = (by_run.get(run) or {}).get("selection") or {}
        chosen[seed] = (selection.get("chosen") or {}).get("label", "?")
        for label, row in (selection.get("candidates") or {}).items():
            for key in ("influence", "context_fid", "tsrtr_auprc", "tsrtr_auroc"):  # scored: the select-on mode
                table.setdefault(label, {}).setdefault(key, []).append(row.get(key, float("nan")))
    lines = ["Chosen on the tuning split, per seed: " + ", ".join(f"seed {s}: `{c}`" for s, c in chosen.items()), ""]
    if table:
        lines += ["| candidate | times chosen | mean influence | Context-FID | tuning TSRTR AUPRC | tuning TSRTR AUROC |",
                  "|---|---|---|---|---|---|"]
        for label, cols in table.items():
            picks = sum(1 for c in chosen.values() if c == label)
            lines.append(f"| {label} | {picks} | {_fmt_abs(cols['influence'])} | {_fmt_abs(cols['context_fid'])} | "
                         f"{_fmt_abs(cols['tsrtr_auprc'])} | {_fmt_abs(cols['tsrtr_auroc'])} |")
    return lines, table


def plot_forms(table: dict[str, dict], path: Path, title: str) -> None:
    """Tuning TSRTR AUPRC vs mean influence, and vs Context-FID, of every candidate (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, xlabel in ((axes[0], "influence", "mean influence I(x) of the candidate set"),
                            (axes[1], "context_fid", "Context-FID vs training records (log)")):
        for label, cols in table.items():
            x, y = np.nanmean(cols[key]), np.nanmean(cols["tsrtr_auprc"])
            ax.scatter([x], [y], s=30)
            ax.annotate(label, (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("tuning-split TSRTR AUPRC")
    axes[1].set_xscale("log")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def render(rows: list[dict], metrics_by_seed: dict[int, dict], runs: list[str], command: str, out: Path) -> str:
    protocols = sorted({r["protocol"] for r in rows if r["protocol"].startswith("tsrtr")}, key=lambda p: float(p[7:]))
    protocols = ["tstr", *protocols]
    lines = ["# Guidance study", "", f"Command: `{command}`", "",
             f"Pipeline seeds: {sorted(metrics_by_seed)}. Differences are paired per seed (same trained models, same "
             "sampling noise for unguided and tardiff, same evaluation-classifier seeds); mean ± 95 % t-CI over "
             "seeds. The null row compares two independent unguided draws.", ""]
    for run in runs:
        views = ["main"] + (["hist-pooled"] if any(r["view"] == "hist-pooled" and r["run"] == run for r in rows) else [])
        for view in views:
            what = {"main": "pooled test split" if run == "centralized" else "site-weighted over the sites' test splits",
                    "hist-pooled": "all sites' test records pooled from score histograms"}[view]
            lines += [f"## {run}: paired differences ({what})", ""]
            lines += paired_table(rows, run, view, protocols)
            lines += ["", f"### {run}: absolute scores ({what})", ""]
            lines += absolute_table(rows, run, view, protocols)
            lines.append("")
        sel_lines, table = selection_summary(metrics_by_seed, run)
        lines += [f"## {run}: guidance selection", ""] + sel_lines + [""]
        if table:
            plot_forms(table, out / f"forms_{run}.png", f"{run}: candidates on the tuning split (mean over seeds)")
            lines += [f"![candidates](forms_{run}.png)", ""]
        fid = [r for r in rows if r["run"] == run and r["view"] in ("fidelity", "influence")]
        if fid:
            lines += [f"## {run}: fidelity and influence of the reported sets", "",
                      "| set | Context-FID | discriminative | mean influence |", "|---|---|---|---|"]
            for name in ("unguided", "unguided_2", "tardiff", "real_train"):
                cells = [_fmt_abs(list(_value(fid, view=v, set=name, metric=m).values()))
                         for v, m in (("fidelity", "context_fid"), ("fidelity", "discriminative"),
                                      ("influence", "mean_influence"))]
                if any(c != "n/a" for c in cells):
                    lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--federated", action="store_true", help="also run the federated workflow in-process")
    parser.add_argument("--render-only", action="store_true",
                        help="run nothing: tabulate the seeds whose runs are all finished")
    add_config_args(parser)
    args = parser.parse_args()
    base = config_from_args(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    metrics_by_seed, rows = {}, []
    runs = ["centralized"] + (["federated"] if args.federated else [])
    for seed in seeds:
        if args.render_only and not all((out / f"seed{seed}" / run / "metrics.json").exists() for run in runs):
            print(f"seed {seed}: not finished, left out", flush=True)
            continue
        metrics_by_seed[seed] = run_seed(base, seed, out, args.federated, log=lambda m: print(m, flush=True))
        for run, metrics in metrics_by_seed[seed].items():
            rows += rows_of(seed, run, metrics)
    command = "python -m simulations.guidance_study " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["seed", "run", "view", "protocol", "set", "metric", "value"])
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(out / "results.csv", buf.getvalue().encode())
    write_bytes_atomic(out / "results.md", render(rows, metrics_by_seed, runs, command, out).encode())
    print(f"[study] {out / 'results.md'}")


if __name__ == "__main__":
    main()
