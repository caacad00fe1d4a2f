"""Did a speed change keep the results? Two run folders of the same config, side by side.

For a run folder "before" and one "after" (each a federated run with its ``centralized/``
baseline beside it, or a centralized run alone) this prints

* per phase, wall and CPU seconds before and after and their ratio (``timing``, ``timing_cpu``);
* every TSTR / TSRTR summary (AUROC, AUPRC, minority F1) of every synthetic set and the real
  row: the mean before +- its 95 % CI over evaluation seeds, the mean after, and whether the
  after mean lies inside the before CI ("same" when equal to 1e-9);
* the guidance setting each run chose;

and exits 1 when a summary left its CI or the chosen setting changed, so a change meant to be
"faster, same results" is checked by what it reports, not by assertion:

    python benchmarks/compare_runs.py runs/before runs/after
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

METRICS = ("auroc", "auprc", "minority_f1")


def load(folder: Path) -> dict[str, dict]:
    """{"federated" | "centralized": metrics.json} for the run folders present."""
    out = {}
    for name, path in (("federated", folder / "metrics.json"), ("centralized", folder / "centralized" / "metrics.json")):
        if path.is_file():
            metrics = json.loads(path.read_text())
            out["centralized" if name == "federated" and "federated" not in metrics else name] = metrics
    if not out:
        raise SystemExit(f"{folder}: no metrics.json (nor centralized/metrics.json) in it")
    return out


def summaries(metrics: dict):
    """(row name, summary) for every TSTR and TSRTR summary of a metrics.json."""
    for name, summary in (metrics.get("tstr") or {}).items():
        yield f"TSTR {name}", summary
    for name, by_ratio in (metrics.get("tsrtr") or {}).items():
        for ratio, summary in by_ratio.items():
            yield f"TSRTR x{ratio} {name}", summary


def compare(before: dict, after: dict) -> tuple[list[str], int]:
    """Markdown lines and the number of summaries outside the before CI."""
    lines = ["| phase | wall before | wall after | ratio | CPU before | CPU after | ratio |", "|---|---|---|---|---|---|---|"]
    for phase, wall in before.get("timing", {}).items():
        cpu_b = before.get("timing_cpu", {}).get(phase, math.nan)
        wall_a = after.get("timing", {}).get(phase, math.nan)
        cpu_a = after.get("timing_cpu", {}).get(phase, math.nan)
        lines.append(f"| {phase} | {wall:.1f} | {wall_a:.1f} | {wall_a / wall if wall else math.nan:.2f} | "
                     f"{cpu_b:.1f} | {cpu_a:.1f} | {cpu_a / cpu_b if cpu_b else math.nan:.2f} |")
    lines += ["", "| summary | metric | before (mean +- 95 % CI) | after | verdict |", "|---|---|---|---|---|"]
    after_rows = dict(summaries(after))
    outside = 0
    for name, summary in summaries(before):
        other = after_rows.get(name)
        for metric in METRICS:
            b, ci = summary[metric], summary["ci95"][metric]
            if other is None:
                lines.append(f"| {name} | {metric} | {b:.3f} +- {ci:.3f} | missing | missing |")
                outside += 1
                continue
            a = other[metric]
            verdict = "same" if abs(a - b) <= 1e-9 else ("inside" if abs(a - b) <= ci else "OUTSIDE")
            outside += verdict == "OUTSIDE"
            lines.append(f"| {name} | {metric} | {b:.3f} +- {ci:.3f} | {a:.3f} | {verdict} |")
    return lines, outside


def chosen(metrics: dict) -> str:
    return str(((metrics.get("selection") or {}).get("chosen") or {}).get("label"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    before, after = load(args.before), load(args.after)
    failed = 0
    for run in before:
        if run not in after:
            print(f"{run}: missing in {args.after}")
            failed += 1
            continue
        lines, outside = compare(before[run], after[run])
        picks = (chosen(before[run]), chosen(after[run]))
        print(f"\n## {run}: chose {picks[0]} before, {picks[1]} after; {outside} summaries outside the before CI\n")
        print("\n".join(lines))
        failed += outside + (picks[0] != picks[1])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
