"""External-validation tables from finished runs (issue 13): the "external" section of every
``metrics.json`` under the given folders, runs pooled per group.

    python -m simulations.external_table --group "set-b=runs/ext-p12/seed*/centralized" \\
        [--group "held-out Midwest=runs/ext-eicu-Midwest/seed*/centralized" ...]

Per group, every evaluation run of every pipeline run (folder) is one paired observation: the
runs' "values" are concatenated in the same order for every training set, so the TarDiff -
unguided, null and TarDiff - real differences stay paired (same trained generator, same
evaluation seed). Prints a markdown table: real-only (evaluation classifier and gradient
boosting), unguided, TarDiff (TSTR and TSRTR at the largest ratio), paired differences, the
settings chosen on each run's tuning split, and the cohort size.
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from tardiff_common.metrics.paired import paired_difference
from tardiff_common.metrics.summary import summarize_runs

__all__ = ["pool_runs", "group_rows", "main"]

METRICS = ("auroc", "auprc", "minority_f1")


def pool_runs(summaries: list[dict]) -> dict:
    """One summary over the concatenated runs of ``summaries`` (same metrics, any run counts)."""
    runs = []
    for s in summaries:
        n = len(next(iter(s["values"].values())))
        runs += [{m: s["values"][m][r] for m in s["values"]} for r in range(n)]
    return summarize_runs(runs)


def _cell(s: dict, metric: str) -> str:
    ci = s["ci95"][metric]
    return f"{s[metric]:+.3f} ± {ci:.3f}" if s.get("signed") else f"{s[metric]:.3f} ± {ci:.3f}"


def group_rows(label: str, metrics: list[dict]) -> tuple[list[str], dict]:
    """Markdown rows of one group and its pooled summaries."""
    ext = [m["external"] for m in metrics]
    rows: dict[str, dict] = {}
    rows["real-only: gradient boosting"] = pool_runs([e["baselines"]["gbm"] for e in ext])
    for name in ("real", "unguided", "unguided_2", "tardiff"):
        rows[f"TSTR {name}"] = pool_runs([e["tstr"][name] for e in ext])
    ratio = max(ext[0]["tsrtr"]["tardiff"], key=float)
    for name in ("unguided", "tardiff"):
        rows[f"TSRTR real + {name} x{float(ratio):g}"] = pool_runs([e["tsrtr"][name][ratio] for e in ext])
    diffs = {
        "TSTR tardiff - unguided": paired_difference(rows["TSTR tardiff"], rows["TSTR unguided"]),
        "TSTR null: unguided_2 - unguided": paired_difference(rows["TSTR unguided_2"], rows["TSTR unguided"]),
        "TSTR tardiff - real": paired_difference(rows["TSTR tardiff"], rows["TSTR real"]),
        f"TSRTR x{float(ratio):g} tardiff - unguided": paired_difference(
            rows[f"TSRTR real + tardiff x{float(ratio):g}"], rows[f"TSRTR real + unguided x{float(ratio):g}"]),
        f"TSRTR x{float(ratio):g} tardiff - real": paired_difference(
            rows[f"TSRTR real + tardiff x{float(ratio):g}"], rows["TSTR real"]),
    }
    for d in diffs.values():
        d["signed"] = True
    cohort = ext[0]["cohort"]
    chosen = ", ".join(str((m.get("selection") or {}).get("chosen", {}).get("label", "?")) for m in metrics)
    lines = [f"| {label} | {name} | " + " | ".join(_cell(s, k) for k in METRICS) + f" | {s['runs']} |"
             for name, s in {**rows, **diffs}.items()]
    lines.append(f"| {label} | cohort: {cohort['records']} records, {cohort['positives']} positive; "
                 f"chosen on tuning: {chosen} | | | | |")
    return lines, {**rows, **diffs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", action="append", required=True, metavar="LABEL=GLOB",
                        help="a label and a glob of run folders holding metrics.json")
    parser.add_argument("--json", type=Path, default=None, help="also write the pooled summaries here")
    args = parser.parse_args(argv)
    print("| external cohort | row | AUROC | AUPRC | minority F1 | runs |\n|---|---|---|---|---|---|")
    out = {}
    for spec in args.group:
        label, pattern = spec.split("=", 1)
        files = sorted(Path(p) / "metrics.json" for p in glob.glob(pattern))
        metrics = [json.loads(f.read_text()) for f in files if f.is_file()]
        metrics = [m for m in metrics if m.get("external")]
        if not metrics:
            print(f"| {label} | no finished run with an external section under {pattern} | | | | |")
            continue
        lines, pooled = group_rows(label, metrics)
        print("\n".join(lines))
        out[label] = {"runs": len(metrics), **pooled}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
