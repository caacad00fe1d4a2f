"""The federated TarDiff workflow: the phases in order, timed, checkpointed, reported.

    0 normalization  federated moments + histogram -> normalizer
    1 classifier     FedAvg / FedProx of f_theta        (classifier-rounds)
    2 influence      G = sum_k G_k, g = G / ||G||
    3 diffusion      FedAvg / FedProx of eps_phi (+EMA)  (diffusion-rounds)
    4 generation     local sampling + evaluation, metrics back
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path

from flwr.serverapp import Grid

from tardiff_common.pipeline.config import RunConfig
from tardiff_common.report.run_folder import write_json_atomic

from .phases.classifier import run_classifier_phase
from .phases.diffusion import run_diffusion_phase
from .phases.generation import run_generation_phase
from .phases.influence import run_influence_phase
from .phases.normalization import run_normalization
from .report import write_federated_report
from .run import ServerRun

__all__ = ["PHASES", "run_federated", "new_run_dir"]

PHASES: list[tuple[str, Callable[[ServerRun], None]]] = [
    ("normalization", run_normalization),
    ("classifier", run_classifier_phase),
    ("influence", run_influence_phase),
    ("diffusion", run_diffusion_phase),
    ("generation", run_generation_phase),
]


def new_run_dir(config: RunConfig) -> tuple[str, Path]:
    """(run name, folder); refuses a folder that already holds a federated run's metrics."""
    name = config.output.name or time.strftime("federated-%Y%m%d-%H%M%S")
    run_dir = Path(config.output.dir) / name
    if (run_dir / "metrics.json").exists() or (run_dir / "checkpoint").exists():
        raise ValueError(f"run folder {str(run_dir)!r} already holds a federated run; choose another output.name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return name, run_dir


def run_federated(grid: Grid, config: RunConfig, *, log: Callable[[str], None] = print) -> dict:
    """Run all phases against the sites behind ``grid``; returns the metrics written to the report."""
    name, run_dir = new_run_dir(config)
    run = ServerRun(grid=grid, config=config, run_dir=run_dir, run_name=name, log=log)
    log(f"[run] {name}: output in {run_dir}")
    try:
        for phase, fn in PHASES:
            with run.timer(phase):
                fn(run)
        metrics = write_federated_report(run)
    except BaseException as err:
        write_json_atomic(run_dir / "checkpoint" / "failure.json",
                          {"error": repr(err), "traceback": traceback.format_exc()[-4000:]})
        raise
    log(f"[report] {run_dir / 'report.md'}")
    return metrics
