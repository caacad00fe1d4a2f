"""The coordinator's Flower ServerApp: reads the typed run config and runs the workflow."""

from __future__ import annotations

import logging

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from tardiff_common.pipeline.config import RunConfig
from tardiff_common.pipeline.config_errors import ConfigError

from .workflow import run_federated

app = ServerApp()

# Flower's logger has its own console handler; Opacus' import calls logging.basicConfig, which gives
# the root logger a second one, so every Flower line would be printed twice.
logging.getLogger("flwr").propagate = False


class ConfigErrorAsOneLine(logging.Filter):
    """Flower logs an exception that ends the ServerApp with its traceback. A ``ConfigError`` is
    the user's input, not a bug: log its own text (``invalid config: <key>: <why>``) instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ConfigError):
            record.msg, record.args = "ServerApp stopped: %s", (exc,)
            record.exc_info, record.exc_text = None, None
        return True


if not any(isinstance(f, ConfigErrorAsOneLine) for f in logging.getLogger("flwr").filters):
    logging.getLogger("flwr").addFilter(ConfigErrorAsOneLine())


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig().with_overrides(dict(context.run_config))
    if config.threads:
        torch.set_num_threads(config.threads)
    run_federated(grid, config, log=lambda line: print(line, flush=True))
