"""In-process federation fixtures: the real ServerApp workflow and ClientApp handlers over a
``LocalGrid`` (no SuperLink, no Ray)."""

from __future__ import annotations

import pytest

from client.app import app as client_app
from server.workflow import run_federated
from simulations.local_grid import LocalGrid
from tardiff_common.pipeline.config import RunConfig, preset


def tiny_flat(tmp_path, **overrides) -> dict:
    flat = {**preset("tiny").to_flat(), "output.dir": str(tmp_path), "output.name": "run",
            "federation.num-sites": 3, "federation.wait-for-sites-s": 5.0}
    flat.update(overrides)
    return flat


def run_local(flat: dict, num_nodes: int = 3, grid_class: type[LocalGrid] = LocalGrid, **grid_kwargs):
    """Run the whole federated workflow in-process; returns (metrics, grid, run config)."""
    grid = grid_class(client_app, num_nodes, flat, **grid_kwargs)
    config = RunConfig().with_overrides(flat)
    metrics = run_federated(grid, config, log=lambda *_: None)
    return metrics, grid, config


@pytest.fixture
def tiny_run_config(tmp_path):
    return tiny_flat(tmp_path)
