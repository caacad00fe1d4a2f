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
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    overrides = dict(s.split("=", 1) for s in args.set)
    overrides.update({"output.dir": str(out.parent), "output.name": out.name})
    run_inprocess(preset(args.preset).with_overrides(overrides))


if __name__ == "__main__":
    main()
