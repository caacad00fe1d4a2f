"""Privacy / utility study: epsilon vs TSTR utility and membership-inference risk.

A sweep over

* epsilon (per site, delta = 1e-5, RDP accountant) in ``--epsilons`` (default inf, 8, 4, 2, 1, 0.5),
* the DP mode: ``sum`` = DP on the guidance gradient sum only; ``all`` = DP on the gradient
  sum and DP-SGD for the classifier and the diffusion model (one common noise multiplier per
  site, solved so that the site's epsilon composed over the whole run is the target),
* the number of sites ``--sites`` (embedded generator, first k default hospitals), and
* ``--seeds`` run seeds (model initialization, training order, sampling; the data are fixed),

each point one federated TarDiff run, in-process (``simulations.local_grid.LocalGrid`` +
``server.workflow.run_federated``; no Ray). epsilon = inf is the non-DP run; it is run once per
(sites, seed) and is the right end of both modes' curves.

Outputs in ``--out``: ``results.csv`` (one row per run; the sweep resumes by skipping every
(mode, epsilon, sites, seed) already in it), ``table.md`` (mean ± std over seeds),
``privacy_utility.png`` (epsilon vs TSTR AUPRC, minority F1 and MIA AUC of the TarDiff set)
and the run folders under ``runs/``.

Reduced config ("study", documented here so the default sweep fits ~30 CPU minutes on 2
cores): the ``default`` preset (embedded generator, full size) with 24 time steps, CNN
classifier (hidden 16, 2 layers, 2 rounds x 2 epochs), U-Net dim 16 (mults 1,2, attention at
level 1, 2 heads x 8), T = 50 and 10 DDIM steps, 2 diffusion rounds x 2 epochs, evaluation CNN
hidden 16, 8 epochs, one evaluation seed, TSRTR ratio 1.0, guidance scale 10. DP randomness is reproducible
(``privacy.reproducible-noise``) so rows can be re-run exactly; never do that in deployment.

Under DP the phase-4 metrics are released from noised score counts (``privacy.dp_scores``): the
TSTR AUROC / AUPRC in the table are those, minority F1 and the MIA AUC are withheld (n/a), and
``pooled_tstr_*`` are the histogram-pooled figures of the noised counts.

    python -m simulations.privacy_utility --out runs/privacy_utility                      # full sweep
    python -m simulations.privacy_utility --out runs/pu_small --epsilons inf,4,1 --sites 2  # smaller
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from tardiff_common.pipeline.config import RunConfig
from tardiff_common.pipeline.overrides import parse_sets

__all__ = ["study_config", "run_point", "run_sweep", "summarize", "main"]

MODES = {"sum": "DP on the gradient sum only", "all": "DP on the gradient sum + DP-SGD of both models"}
FIELDS = ["mode", "epsilon", "sites", "seed", "tstr_auprc", "tstr_auroc", "tstr_minority_f1",
          "pooled_tstr_auprc", "pooled_tstr_auroc",
          "unguided_auprc", "unguided_minority_f1", "real_auprc", "mia_auc", "mia_auc_unguided",
          "epsilon_reported_max", "epsilon_evaluation_max", "sigma_sum_mean", "sigma_sgd_mean", "seconds"]

STUDY = {
    "data.length": 24, "data.size-scale": 1.0,
    "classifier.kind": "cnn", "classifier.hidden": 16, "classifier.num-layers": 2,
    "classifier-train.epochs": 2,
    "unet.dim": 16, "unet.dim-mults": "1,2", "unet.attention-levels": "1", "unet.heads": 2, "unet.head-dim": 8,
    "unet.groups": 4,
    "diffusion.num-steps": 50, "sampling.num-inference-steps": 10,
    "diffusion-train.epochs": 2,
    "guidance.scale": 10.0,
    "evaluation.hidden": 16, "evaluation.num-layers": 2, "evaluation.epochs": 8, "evaluation.seeds": "0",
    "evaluation.tsrtr-ratios": "1.0",
    "federation.classifier-rounds": 2, "federation.diffusion-rounds": 2,
    "federation.wait-for-sites-s": 5.0, "output.baseline": "",
    "privacy.reproducible-noise": True, "privacy.delta": 1e-5, "privacy.accountant": "rdp",
}


def study_config(mode: str, epsilon: float, sites: int, seed: int, *, out_dir: Path, extra: dict | None = None) -> dict:
    """The flat run config of one sweep point (``mode`` is ignored for epsilon = inf)."""
    flat = {**STUDY, "seed": seed, "data.num-hospitals": sites, "federation.num-sites": sites,
            "output.dir": str(out_dir / "runs"), "output.name": point_name(mode, epsilon, sites, seed)}
    if math.isfinite(epsilon):
        flat.update({"privacy.gradient-sum-dp": True, "privacy.target-epsilon": epsilon})
        if mode == "all":
            flat.update({"privacy.dp-sgd-classifier": True, "privacy.dp-sgd-diffusion": True})
    flat.update(extra or {})
    return flat


def point_name(mode: str, epsilon: float, sites: int, seed: int) -> str:
    return f"{mode if math.isfinite(epsilon) else 'none'}-eps{epsilon:g}-k{sites}-s{seed}"


def run_point(flat: dict) -> dict:
    """One federated run in-process; the metrics of its report."""
    from client.app import app as client_app
    from server.workflow import run_federated
    from simulations.local_grid import LocalGrid

    config = RunConfig().with_overrides(flat)
    run_dir = Path(config.output.dir) / config.output.name
    if run_dir.exists():  # a point interrupted earlier: its row is not in the CSV, start it afresh
        shutil.rmtree(run_dir)
    grid = LocalGrid(client_app, config.federation.num_sites, flat)
    return run_federated(grid, config, log=lambda *_: None)


def row_of(mode: str, epsilon: float, sites: int, seed: int, metrics: dict, seconds: float) -> dict:
    tstr = metrics["tstr"]
    totals = [r["epsilon"] for r in metrics.get("privacy", []) if r["phase"] == "total"]
    sigmas = {ph: [r["sigma"] for r in metrics.get("privacy", []) if r["phase"] == ph]
              for ph in ("influence", "classifier")}
    membership = metrics.get("membership", {})
    pooled = metrics.get("histogram_pooled", {}).get("tstr", {}).get("tardiff", {})
    evaluation = [r["epsilon"] for r in metrics.get("privacy", []) if r["phase"] == "evaluation" and r.get("dp")]
    return {
        "mode": mode, "epsilon": epsilon, "sites": sites, "seed": seed,
        "tstr_auprc": tstr["tardiff"]["auprc"], "tstr_auroc": tstr["tardiff"]["auroc"],
        "tstr_minority_f1": tstr["tardiff"]["minority_f1"],
        "unguided_auprc": tstr["unguided"]["auprc"], "unguided_minority_f1": tstr["unguided"]["minority_f1"],
        "real_auprc": tstr.get("real", {}).get("auprc", float("nan")),  # withheld under DP
        "pooled_tstr_auprc": pooled.get("auprc", float("nan")), "pooled_tstr_auroc": pooled.get("auroc", float("nan")),
        "epsilon_evaluation_max": max(evaluation) if evaluation else math.inf,
        "mia_auc": membership.get("tardiff", {}).get("mia_auc", float("nan")),
        "mia_auc_unguided": membership.get("unguided", {}).get("mia_auc", float("nan")),
        "epsilon_reported_max": max((math.inf if t is None else t) for t in totals) if totals else math.inf,
        "sigma_sum_mean": float(np.mean(sigmas["influence"])) if sigmas["influence"] else 0.0,
        "sigma_sgd_mean": float(np.mean(sigmas["classifier"])) if sigmas["classifier"] else 0.0,
        "seconds": round(seconds, 1),
    }


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: (v if k == "mode" else float(v)) for k, v in row.items()} for row in csv.DictReader(fh)]


def append_row(path: Path, row: dict) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def jobs(epsilons, modes, sites, seeds) -> list[tuple[str, float, int, int]]:
    """Every sweep point; epsilon = inf once per (sites, seed), as mode "none"."""
    out = []
    for seed in seeds:
        for k in sites:
            for eps in epsilons:
                for mode in (["none"] if not math.isfinite(eps) else modes):
                    out.append((mode, eps, k, seed))
    return out


def run_sweep(out_dir: Path, epsilons, modes, sites, seeds, *, extra: dict | None = None) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "results.csv"
    done = {(r["mode"], float(r["epsilon"]), int(r["sites"]), int(r["seed"])) for r in read_rows(csv_path)}
    todo = [j for j in jobs(epsilons, modes, sites, seeds) if j not in done]
    start = time.time()
    for mode, eps, k, seed in tqdm(todo, desc="privacy/utility sweep", unit="run"):
        t0 = time.time()
        metrics = run_point(study_config(mode, eps, k, seed, out_dir=out_dir, extra=extra))
        append_row(csv_path, row_of(mode, eps, k, seed, metrics, time.time() - t0))
    rows = read_rows(csv_path)
    summarize(rows, out_dir, modes=modes, elapsed=time.time() - start, skipped=len(done))
    return rows


def _stats(values) -> str:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size == 0:
        return "n/a"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v.mean():.3f}"


def summarize(rows: list[dict], out_dir: Path, *, modes=("sum", "all"), elapsed: float | None = None,
              skipped: int = 0) -> str:
    """table.md (mean ± std over seeds) and privacy_utility.png from the CSV rows."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["mode"], r["epsilon"], int(r["sites"])), []).append(r)
    order = sorted(groups, key=lambda g: (g[2], g[0] != "none", g[0], -g[1]))
    lines = ["# Privacy / utility study", "",
             "Per-site epsilon (delta = 1e-5, Opacus RDP accountant, composed over the whole run); `none` = no DP "
             "(epsilon = inf). `sum` = " + MODES["sum"] + "; `all` = " + MODES["all"] + ". TSTR of the TarDiff "
             "(guided) synthetic set, site-weighted; MIA = distance-to-closest-synthetic-record attack AUC at each "
             "site (train vs test records), site-weighted; 0.5 = no leak; n/a = withheld (under DP the phase-4 "
             "metrics are computed from noised score counts: F1 and MIA are withheld). Pooled = AUPRC of the "
             "test-score histograms pooled over sites. Mean ± std over seeds.", "",
             "| sites | mode | epsilon | seeds | TSTR AUPRC | pooled TSTR AUPRC | TSTR AUROC | minority F1 | MIA AUC | "
             "unguided AUPRC | real AUPRC | max reported eps | sigma (sum / SGD) | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in order:
        g = groups[key]
        eps_rep = max(r["epsilon_reported_max"] for r in g)
        lines.append(
            f"| {key[2]} | {key[0]} | {key[1]:g} | {len(g)} | {_stats([r['tstr_auprc'] for r in g])} | "
            f"{_stats([r.get('pooled_tstr_auprc', float('nan')) for r in g])} | {_stats([r['tstr_auroc'] for r in g])} | {_stats([r['tstr_minority_f1'] for r in g])} | "
            f"{_stats([r['mia_auc'] for r in g])} | {_stats([r['unguided_auprc'] for r in g])} | "
            f"{_stats([r['real_auprc'] for r in g])} | {'inf' if not np.isfinite(eps_rep) else f'{eps_rep:.3g}'} | "
            f"{np.mean([r['sigma_sum_mean'] for r in g]):.3g} / {np.mean([r['sigma_sgd_mean'] for r in g]):.3g} | "
            f"{np.mean([r['seconds'] for r in g]):.0f} |")
    if elapsed is not None:
        lines += ["", f"{len(rows)} runs in results.csv; this invocation ran {len(rows) - skipped} of them in "
                      f"{elapsed / 60:.1f} min ({skipped} resumed from the CSV)."]
    text = "\n".join(lines) + "\n"
    (out_dir / "table.md").write_text(text)
    _plot(groups, out_dir / "privacy_utility.png", modes)
    return text


def _plot(groups: dict, path: Path, modes) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = sorted({e for (_, e, _) in groups if np.isfinite(e)})
    inf_x = (max(finite) * 2.5) if finite else 1.0
    panels = [("tstr_auprc", "TSTR AUPRC (TarDiff set)"), ("tstr_minority_f1", "minority F1 (TSTR)"),
              ("mia_auc", "membership-inference AUC")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (metric, title) in zip(axes, panels):
        for k in sorted({s for (_, _, s) in groups}):
            for m, style in zip(modes, ("-o", "--s")):
                pts = [(e, groups[(m, e, k)]) for e in finite if (m, e, k) in groups]
                if ("none", math.inf, k) in groups:
                    pts.append((inf_x, groups[("none", math.inf, k)]))
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                vals = [[r[metric] for r in g] for _, g in pts]
                means = [np.nanmean(v) for v in vals]
                errs = [np.nanstd(v, ddof=1) if len(v) > 1 else 0.0 for v in vals]
                ax.errorbar(xs, means, yerr=errs, fmt=style, capsize=3, label=f"{k} sites, {m}")
        ax.set_xscale("log")
        ticks = finite + [inf_x]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{e:g}" for e in finite] + ["inf"])
        ax.minorticks_off()
        ax.set_xlabel("epsilon per site")
        ax.set_title(title)
        if metric == "mia_auc":
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/privacy_utility", help="output folder (resumes from its results.csv)")
    parser.add_argument("--epsilons", default="inf,8,4,2,1,0.5")
    parser.add_argument("--modes", default="sum,all")
    parser.add_argument("--sites", default="2,3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run-config key for every point (e.g. federation.diffusion-rounds=2)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import flwr.supercore.logger  # noqa: F401  (sets the "flwr" logger to DEBUG on import; quiet it after)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    extra = parse_sets(args.set)
    modes = [m for m in args.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        parser.error(f"unknown mode(s) {bad}; choose from {list(MODES)}")
    out = Path(args.out)
    run_sweep(out, _floats(args.epsilons), modes, [int(s) for s in args.sites.split(",")],
              [int(s) for s in args.seeds.split(",")], extra=extra)
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
