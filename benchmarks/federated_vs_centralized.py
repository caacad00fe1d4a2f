"""Wall time of the federated simulation vs the centralized run, and bytes sent per site.

Runs, in one go on this machine and with the same data and config:

1. ``tardiff centralized`` (pooled data, ``--threads`` CPU threads), timed;
2. ``scripts/flwr_simulation.sh`` (a real ``flwr run .``: SuperLink + Ray, one ClientApp per
   hospital with one CPU and one torch thread each), timed end to end, Flower start-up included;

then prints the ratio (target <= 1.3), the per-phase seconds of both, and from the federated
run's message audit the bytes each site sent per round by message type, next to what the
parameters alone weigh (nothing record-shaped may appear).

    python benchmarks/federated_vs_centralized.py [--preset default] [--set key=value ...] [--out runs/bench]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from tardiff_common.pipeline.overrides import parse_sets, toml_value

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    args = parser.parse_args()
    out = REPO / args.out
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    sets = sum((["--set", s] for s in args.set), [])
    t_central = run([sys.executable, "-m", "tardiff_common.cli", "centralized", "--preset", args.preset,
                     "--out", str(out / "centralized"), "--threads", str(args.threads), "--quiet", *sets], env)
    flat = {"output.dir": str(out.parent), "output.name": out.name, **parse_sets(args.set)}
    overrides = " ".join(f"{k}={toml_value(v)}" for k, v in flat.items())
    if args.preset != "default":
        sys.exit("the federated side reads pyproject's config (the default preset); use --set to change it")
    t_fed = run(["bash", "scripts/flwr_simulation.sh", "--supernodes", "3", "--run-config", overrides], env)

    central = json.loads((out / "centralized" / "metrics.json").read_text())
    fed = json.loads((out / "metrics.json").read_text())
    print(f"\ncentralized: {t_central:7.1f} s   federated (flwr run, 3 SuperNodes): {t_fed:7.1f} s   "
          f"ratio {t_fed / t_central:.2f} (target <= 1.3)")
    print("\nseconds per phase   centralized   federated (server view)")
    for phase in ("data", "normalization", "classifier", "influence", "diffusion", "generation", "evaluation", "total"):
        c = central["timing"].get(phase)
        f = fed["timing"].get(phase)
        print(f"  {phase:14s} {'' if c is None else f'{c:10.1f}'} {'' if f is None else f'{f:14.1f}':>16s}")

    per_round: dict[str, dict[str, float]] = defaultdict(dict)
    for site, rows in fed["communication"]["per_site"].items():
        for mtype, row in rows.items():
            per_round[mtype][site] = row["bytes"] / max(row["messages"], 1)
    print("\nbytes sent by each site per message (= per round) by message type")
    sites = sorted(fed["communication"]["per_site"])
    print("  " + f"{'message type':20s}" + "".join(f"{s:>16s}" for s in sites))
    for mtype, by_site in sorted(per_round.items()):
        print("  " + f"{mtype:20s}" + "".join(f"{by_site.get(s, 0):16,.0f}" for s in sites))
    import numpy as np

    with np.load(out / "centralized" / "checkpoint.npz") as ckpt:  # checkpoint.TrainedTarDiff's format
        clf = sum(ckpt[k].nbytes for k in ckpt.files if k.startswith("classifier/"))
        unet = sum(ckpt[k].nbytes for k in ckpt.files if k.startswith("unet/model."))
        params = sum(ckpt[k].size for k in ckpt.files if k.startswith("classifier/"))
    print(f"\nparameters alone: classifier {clf:,} B; U-Net + EMA {2 * unet:,} B; "
          f"gradient sum G_k {8 * params:,} B (float64) + one count")
    print(f"\naudit: {fed['communication']['replies']} replies, {fed['communication']['arrays_checked']} arrays "
          f"checked, record-shaped: {len(fed['communication']['violations'])}")


if __name__ == "__main__":
    main()
