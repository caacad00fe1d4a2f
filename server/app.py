"""The coordinator's Flower ServerApp: reads the typed run config and runs the workflow."""

from __future__ import annotations

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from tardiff_common.pipeline.config import RunConfig

from .workflow import run_federated

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig().with_overrides(dict(context.run_config))
    if config.threads:
        torch.set_num_threads(config.threads)
    run_federated(grid, config, log=lambda line: print(line, flush=True))
