"""Run the federated workflow in one process (no SuperLink, no Ray) on any data source.

The ServerApp workflow and the ClientApp handlers are the same code ``flwr run .`` executes;
only the transport differs (``simulations.local_grid.LocalGrid`` delivers each message
directly, one site after the other). Handy for studies and debugging:

    python -m simulations.run_inprocess --out runs/p12-fed --set data.source=physionet2012 \
        --set data.path=../shared/data/physionet2012 [--preset default] [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from client.app import app as client_app
from server.workflow import run_federated
from tardiff_common.data.loading import load_sites_for
from tardiff_common.pipeline.config import RunConfig, preset
from tardiff_common.pipeline.overrides import parse_sets, threads_arg

from .local_grid import LocalGrid

__all__ = ["run_inprocess"]


def run_inprocess(config: RunConfig, *, log=print) -> dict:
    """Federated run of ``config`` with one in-process node per site of ``config.data``."""
    num_sites = len(load_sites_for(config.data))
    flat = {**config.to_flat(), "federation.num-sites": num_sites}
    grid = LocalGrid(client_app, num_sites, flat)
    return run_federated(grid, RunConfig().with_overrides(flat), log=log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="run folder to create")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=threads_arg, default=None, help="torch CPU threads (default: the config's)")
    args = parser.parse_args()
    out = Path(args.out)
    overrides = parse_sets(args.set)
    overrides.update({"output.dir": str(out.parent), "output.name": out.name})
    if args.threads is not None:
        overrides["threads"] = args.threads
    config = preset(args.preset).with_overrides(overrides)
    torch.set_num_threads(config.threads)
    run_inprocess(config)


if __name__ == "__main__":
    main()
