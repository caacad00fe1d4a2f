"""Cost of the federated run as the number of sites K grows over the same total records.

For each K in ``--sites`` (default 3, 10, 30, 100) the embedded generator draws K hospitals
whose sizes are rescaled (``data.size-scale``, solved here) so that all K together hold
``--records`` records, and the federated workflow runs on them in one process
(``simulations.local_grid.LocalGrid``: the ServerApp and ClientApp code of ``flwr run .``,
without SuperLink or Ray, every message delivered in turn) with the ``tiny`` preset unless told
otherwise. Each K runs in a fresh subprocess, so memory figures do not carry over. Printed:

* wall seconds per server phase (``ServerRun.timer``; in-process the sites run one after the
  other, so this is the *total* compute of server and sites), and the *critical path*: per
  round, the server's own time plus the slowest site's handler (what a deployment whose sites
  run in parallel would wait for);
* peak memory: the process's peak RSS while the ServerApp ran outside any site handler
  ("server", which includes the interpreter, torch and every site's loaded data in this
  single-process setting), and the largest RSS increase during one site's handler above the RSS
  at its start ("site": one hospital's working set), sampled every 2 ms from /proc;
* bytes per site per round, both ways: the server's message to a site and the site's reply
  (``count_bytes`` of every record), averaged over the sites and rounds of each message type
  (the K check leaves out the normalizer record: its PIT knots span the occupied bins of a
  4096-bin grid, so its size follows the data's value range, not K);

then checks the targets (K = 100 completes; wall(K_max) <= 3 x wall(K_min); bytes per site per
round independent of K, within 1 %) and writes ``scaling.json`` and ``scaling.png`` (cost vs K)
into ``--out``.

    python benchmarks/site_scaling.py [--sites 3,10,30,100] [--records 4000] [--preset tiny] [--set k=v ...]
    python benchmarks/site_scaling.py --eicu ../shared/data/eicu_demo [--min-site-records 10] [--small-sites pool]

``--eicu`` runs the eICU demo's YAIB extract with hospitals (not regions) as sites, the natural
many-small-sites case: hospitals with fewer than ``--min-site-records`` records
(``data.min-site-records``) are dropped or pooled into one site "other" (``--small-sites``,
``data.small-sites``; the loader warns and names them), the others are the sites.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the ServerApp / ClientApp packages live at the repository root
    sys.path.insert(0, str(REPO))
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# ----------------------------------------------------------------------------- data size


def size_scale_for(num_sites: int, records: int, *, seed: int = 0) -> float:
    """The ``data.size-scale`` at which K generated hospitals hold ``records`` records in all
    (bisection; every site keeps the generator's floor of 20 records)."""
    from tardiff_common.data.synthetic import SyntheticICUConfig

    def total(scale: float) -> int:
        profiles = SyntheticICUConfig(num_hospitals=num_sites, seed=seed, size_scale=scale).resolved_profiles()
        return sum(p.num_records for p in profiles)

    if total(1e-9) > records:
        raise ValueError(f"{num_sites} sites need at least {total(1e-9)} records (20 each); --records is {records}")
    lo, hi = 1e-9, 1.0
    while total(hi) < records:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < records else (lo, mid)
    return hi


# ----------------------------------------------------------------------------- metering


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class RssSampler(threading.Thread):
    """Samples the process RSS every ``interval`` s into the peak of the current owner
    ("server", or a site handler whose increase over its starting RSS is tracked)."""

    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.interval = interval
        self.server_peak = rss_bytes()
        self.site_start: int | None = None
        self.site_peak = 0
        self.site_increase = 0
        self._halt = threading.Event()

    def enter_site(self) -> None:
        self.site_start = self.site_peak = rss_bytes()

    def leave_site(self) -> None:
        self.sample()
        self.site_increase = max(self.site_increase, self.site_peak - (self.site_start or 0))
        self.site_start = None

    def sample(self) -> None:
        rss = rss_bytes()
        if self.site_start is None:
            self.server_peak = max(self.server_peak, rss)
        else:
            self.site_peak = max(self.site_peak, rss)

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()


def content_bytes(content) -> int:
    """Bytes of every record of a message's ``RecordDict`` (Flower's ``count_bytes``)."""
    return sum(record.count_bytes() for record in content.values())


def metered_grid_class():
    from simulations.local_grid import LocalGrid
    from tardiff_common import protocol as P

    class MeteredGrid(LocalGrid):
        """``LocalGrid`` that times each site's handler and counts the bytes both ways."""

        def __init__(self, *args, sampler: RssSampler, **kwargs):
            super().__init__(*args, **kwargs)
            self.sampler = sampler
            self.traffic: list[dict] = []  # one row per delivered message

        def _deliver(self, msg):
            down = content_bytes(msg.content)
            normalizer = msg.content[P.NORMALIZER].count_bytes() if P.NORMALIZER in msg.content else 0
            self.sampler.enter_site()
            start = time.perf_counter()
            try:
                reply = super()._deliver(msg)
            finally:
                seconds = time.perf_counter() - start
                self.sampler.leave_site()
            up = 0 if reply.has_error() else content_bytes(reply.content)
            self.traffic.append({"type": msg.metadata.message_type, "group": msg.metadata.group_id,
                                 "node": msg.metadata.dst_node_id, "down": down, "up": up, "seconds": seconds,
                                 "normalizer": normalizer})
            return reply

    return MeteredGrid


# ----------------------------------------------------------------------------- one K


def run_one(num_sites: int, records: int, preset_name: str, sets: dict[str, str], out_dir: Path) -> dict:
    """The federated run at K = ``num_sites`` (0: the sites of ``sets``' data source, e.g. eICU
    hospitals); the measurements as a dict."""
    import torch

    from client.app import app as client_app
    from server.workflow import run_federated
    from tardiff_common.data.loading import load_sites_for
    from tardiff_common.pipeline.config import RunConfig, preset

    torch.set_num_threads(1)
    flat = {**preset(preset_name).to_flat(), **sets, "threads": 1, "output.dir": str(out_dir)}
    scale = 0.0
    if num_sites:
        scale = size_scale_for(num_sites, records)
        flat.update({"data.num-hospitals": num_sites, "data.size-scale": scale})
    else:
        loaded = load_sites_for(RunConfig().with_overrides(flat).data)
        num_sites, records = len(loaded), sum(s.num_records for s in loaded)
    flat.update({"federation.num-sites": num_sites, "output.name": f"k{num_sites}"})
    config = RunConfig().with_overrides(flat)
    sampler = RssSampler()
    sampler.start()
    grid = metered_grid_class()(client_app, num_sites, config.to_flat(), sampler=sampler)
    start = time.perf_counter()
    metrics = run_federated(grid, config, log=lambda *_: None)
    wall = time.perf_counter() - start
    sampler.stop()

    by_type: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    rounds: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in grid.traffic:
        by_type[row["type"]]["down"].append(row["down"])
        by_type[row["type"]]["up"].append(row["up"])
        by_type[row["type"]]["normalizer"].append(row["normalizer"])
        rounds[(row["type"], row["group"])].append(row["seconds"])
    site_seconds = sum(row["seconds"] for row in grid.traffic)
    slowest = sum(max(s) for s in rounds.values())
    phases = {k: v for k, v in metrics["timing"].items() if k != "total"}
    site_records = [s["records"] for s in metrics.get("data", {}).get("sites", [])] or [records // num_sites]
    return {
        "sites": num_sites, "records": records, "size_scale": scale, "wall_s": wall,
        "records_per_site": [min(site_records), max(site_records)],
        "phase_s": phases,
        "server_own_s": wall - site_seconds,
        "critical_path_s": wall - site_seconds + slowest,
        "server_peak_rss_mb": sampler.server_peak / 2**20,
        "site_peak_increase_mb": sampler.site_increase / 2**20,
        "bytes_per_site_round": {t: {k: sum(v[k]) / len(v[k]) for k in ("down", "up", "normalizer")}
                                 for t, v in sorted(by_type.items())},
        "messages": len(grid.traffic),
    }


# ----------------------------------------------------------------------------- report


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["sites"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(ks, [r["wall_s"] for r in results], "o-", label="in-process wall (all sites in turn)")
    axes[0].plot(ks, [r["critical_path_s"] for r in results], "s--", label="critical path (sites in parallel)")
    axes[0].plot(ks, [3 * results[0]["wall_s"]] * len(ks), ":", color="grey", label=f"3 x wall(K={ks[0]})")
    axes[0].set(xscale="log", xlabel="sites K", ylabel="seconds", title="wall time")
    axes[0].legend(fontsize=7)
    for phase in results[0]["phase_s"]:
        axes[1].plot(ks, [r["phase_s"].get(phase, 0.0) for r in results], "o-", label=phase)
    axes[1].set(xscale="log", yscale="log", xlabel="sites K", ylabel="seconds", title="per phase")
    axes[1].legend(fontsize=7)
    axes[2].plot(ks, [r["server_peak_rss_mb"] for r in results], "o-", label="server process peak RSS")
    axes[2].plot(ks, [r["site_peak_increase_mb"] for r in results], "s--", label="one site's peak RSS increase")
    axes[2].set(xscale="log", xlabel="sites K", ylabel="MiB", title="memory")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"federated run, {results[0]['records']} records split over K sites")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(results: list[dict]) -> list[str]:
    """Print the tables; return the targets that failed."""
    ks = [r["sites"] for r in results]
    phases = list(results[0]["phase_s"])
    print(f"{'K':>4} {'rec/site':>9} {'wall s':>7} {'crit s':>7} {'srv MiB':>8} {'site MiB':>8}  "
          + " ".join(f"{p[:10]:>10}" for p in phases))
    for r in results:
        lo, hi = r["records_per_site"]
        print(f"{r['sites']:>4} {f'{lo}-{hi}':>9} {r['wall_s']:7.1f} {r['critical_path_s']:7.1f} "
              f"{r['server_peak_rss_mb']:8.0f} {r['site_peak_increase_mb']:8.1f}  "
              + " ".join(f"{r['phase_s'].get(p, 0.0):10.2f}" for p in phases))
    print("\nbytes per site per round (server -> site / site -> server), by message type; the K check leaves out\n"
          "the normalizer record, whose size follows the data's value range (bounded by its 4096-bin grid):")
    types = sorted({t for r in results for t in r["bytes_per_site_round"]})
    print(f"{'message':>22} " + " ".join(f"{f'K={k}':>21}" for k in ks))
    failed = []
    for t in types:
        cells, downs, ups = [], [], []
        for r in results:
            b = r["bytes_per_site_round"].get(t)
            cells.append(f"{b['down']:>10.0f}/{b['up']:<10.0f}" if b else f"{'-':>21}")
            if b:  # the PIT normalizer's knots span the occupied bins of its 4096-bin grid: data, not K
                downs.append(b["down"] - b.get("normalizer", 0.0))
                ups.append(b["up"])
        print(f"{t:>22} " + " ".join(cells))
        for what, values in (("down", downs), ("up", ups)):
            if values and max(values) > 1.01 * min(values) + 64:
                failed.append(f"{t} {what} bytes per site grow with K: {min(values):.0f} -> {max(values):.0f}")
    ratio = results[-1]["wall_s"] / results[0]["wall_s"]
    print(f"\nwall(K={ks[-1]}) / wall(K={ks[0]}) = {ratio:.2f} (target <= 3); critical path ratio "
          f"{results[-1]['critical_path_s'] / results[0]['critical_path_s']:.2f}")
    if ratio > 3:
        failed.append(f"wall(K={ks[-1]}) = {ratio:.2f} x wall(K={ks[0]}) > 3")
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="3,10,30,100")
    parser.add_argument("--records", type=int, default=4000, help="total records over all sites")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/site_scaling")
    parser.add_argument("--eicu", metavar="PATH", help="instead: the eICU YAIB extract in PATH with hospitals as "
                        "sites; hospitals below --min-site-records are dropped or pooled (--small-sites)")
    parser.add_argument("--min-site-records", type=int, default=10)
    parser.add_argument("--small-sites", choices=("drop", "pool"), default="drop",
                        help="hospitals below --min-site-records: drop them, or pool them into one site 'other'")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one K, print JSON
    args = parser.parse_args()
    sets = dict(s.split("=", 1) for s in args.set)
    if args.eicu:
        sets.update({"data.source": "eicu_yaib", "data.path": str(Path(args.eicu).resolve()),
                     "data.site-by": "hospital", "data.min-site-records": str(args.min_site_records),
                     "data.small-sites": args.small_sites})
        with tempfile.TemporaryDirectory() as tmp:
            r = run_one(0, 0, args.preset, sets, Path(tmp))
        lo, hi = r["records_per_site"]
        fate = "dropped" if args.small_sites == "drop" else "pooled into site 'other'"
        print(f"eICU demo, hospitals as sites (>= {args.min_site_records} records; smaller ones {fate}): "
              f"{r['sites']} sites, {r['records']} records, {lo}-{hi} per site")
        print(f"wall {r['wall_s']:.1f} s, critical path {r['critical_path_s']:.1f} s, server peak RSS "
              f"{r['server_peak_rss_mb']:.0f} MiB, one site's peak RSS increase {r['site_peak_increase_mb']:.1f} MiB")
        print("per phase: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["phase_s"].items()))
        print("bytes per site per round (down/up): " + ", ".join(
            f"{t} {b['down']:.0f}/{b['up']:.0f}" for t, b in r["bytes_per_site_round"].items()))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        r["small_sites"], r["min_site_records"] = args.small_sites, args.min_site_records
        (Path(args.out) / f"eicu_hospitals_{args.small_sites}.json").write_text(json.dumps(r, indent=2) + "\n")
        return
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_one(args.one, args.records, args.preset, sets, Path(tmp))))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "OMP_NUM_THREADS": "1"}
    results = []
    for k in (int(s) for s in args.sites.split(",")):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(k), "--records", str(args.records),
               "--preset", args.preset] + [a for s in args.set for a in ("--set", s)]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"K = {k} failed:\n{proc.stderr[-4000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"K = {k}: {results[-1]['wall_s']:.1f} s", flush=True)
    (out / "scaling.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / "scaling.png")
    failed = report(results)
    print(f"\nwrote {out / 'scaling.json'} and {out / 'scaling.png'}")
    if failed:
        print("targets missed:\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
