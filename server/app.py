"""The coordinator's Flower ServerApp: reads the typed run config and runs the workflow."""

from __future__ import annotations

import logging

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from tardiff_common.pipeline.config import RunConfig

from .workflow import run_federated

app = ServerApp()

# Flower's logger has its own console handler; Opacus' import calls logging.basicConfig, which gives
# the root logger a second one, so every Flower line would be printed twice.
logging.getLogger("flwr").propagate = False


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig().with_overrides(dict(context.run_config))
    if config.threads:
        torch.set_num_threads(config.threads)
    run_federated(grid, config, log=lambda line: print(line, flush=True))
