"""The federated TarDiff workflow: the phases in order, timed, checkpointed, reported.

    0 normalization  federated moments + histogram -> normalizer
    1 classifier     FedAvg / FedProx of f_theta        (classifier-rounds)
    2 influence      G = sum_k G_k, g = G / ||G||
    3 diffusion      FedAvg / FedProx of eps_phi (+EMA)  (diffusion-rounds)
    3b selection     guidance candidates scored on the sites' tuning splits (guidance.scale = "auto")
    4 generation     local sampling + evaluation, metrics back

Resume (``output.resume = true``, docs/DEPLOY.md): the run in ``<output.dir>/<output.name>``
continues from its last checkpoint. Finished phases are skipped, an interrupted classifier or
diffusion phase restarts at the round after the last checkpointed one from the saved global
weights, and participation, timing, the audit and the DP dispatch log carry on. The sites are
identified again by name (a fresh stats query, phase "resume"; node ids change between Flower
runs) and must report the same record counts as before. Everything the server computes is
deterministic given the replies (replies are aggregated in site-name order; the sites seed
every step from the run seed, round and site), so an interrupted and resumed run ends with the
same models and metrics as an uninterrupted one. A run that already finished (its
``metrics.json`` exists) is refused with ``RunFinishedError``; a folder without a checkpoint
starts from the beginning.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, RecordDict
from flwr.serverapp import Grid

from tardiff_common import protocol as P
from tardiff_common.pipeline.config import RunConfig
from tardiff_common.pipeline.phase_list import WORKFLOW
from tardiff_common.report.run_folder import write_json_atomic

from .phases.classifier import run_classifier_phase
from .phases.diffusion import run_diffusion_phase
from .phases.generation import run_generation_phase
from .phases.influence import run_influence_phase
from .phases.normalization import check_unique_names, run_normalization, site_info
from .phases.selection import run_selection_phase
from .privacy import load_dispatched
from .report import write_federated_report
from .run import ServerRun

__all__ = ["PHASES", "run_federated", "new_run_dir", "RunFinishedError", "failure_record"]

RUNNERS: dict[str, Callable[[ServerRun], None]] = {
    "normalization": run_normalization,
    "classifier": run_classifier_phase,
    "influence": run_influence_phase,
    "diffusion": run_diffusion_phase,
    "selection": run_selection_phase,
    "generation": run_generation_phase,
}
PHASES: list[tuple[str, Callable[[ServerRun], None]]] = [(name, RUNNERS[name]) for name in WORKFLOW]  # in order


class RunFinishedError(ValueError):
    """``output.resume`` named a run that already finished: there is nothing to continue."""


def new_run_dir(config: RunConfig) -> tuple[str, Path]:
    """(run name, folder); refuses a folder that already holds a federated run's metrics."""
    name = config.output.name or time.strftime("federated-%Y%m%d-%H%M%S")
    run_dir = Path(config.output.dir) / name
    if (run_dir / "metrics.json").exists() or (run_dir / "checkpoint").exists():
        raise ValueError(f"run folder {str(run_dir)!r} already holds a federated run; choose another output.name "
                         "or continue it with output.resume=true")
    run_dir.mkdir(parents=True, exist_ok=True)
    return name, run_dir


def _open_run(grid: Grid, config: RunConfig, log: Callable[[str], None]) -> ServerRun:
    if not config.output.resume:
        name, run_dir = new_run_dir(config)
        return ServerRun(grid=grid, config=config, run_dir=run_dir, run_name=name, log=log)
    if not config.output.name:
        raise ValueError("output.resume = true needs the output.name of the run to continue")
    name, run_dir = config.output.name, Path(config.output.dir) / config.output.name
    if (run_dir / "metrics.json").exists():
        raise RunFinishedError(
            f"output.resume: the run in {str(run_dir)!r} already finished (its metrics.json and report.md exist); "
            "nothing to continue. Choose another output.name to run again.")
    if not (run_dir / "checkpoint" / "state.npz").is_file():
        log(f"[run] {name}: output.resume = true but {run_dir} holds no checkpoint; starting from the beginning")
        run_dir.mkdir(parents=True, exist_ok=True)
        return ServerRun(grid=grid, config=config, run_dir=run_dir, run_name=name, log=log)
    run = ServerRun.resume(grid, config, run_dir, name, log=log)
    failure = run_dir / "checkpoint" / "failure.json"
    stopped_with = None
    if failure.is_file():  # keep it, under a numbered name
        stopped_with = json.loads(failure.read_text()).get("error")
        failure.rename(run_dir / "checkpoint" / f"failure-{len(run.resumes) + 1}.json")
    prior = run.resumed_from or {}
    run.resumes.append({"phase": prior.get("phase"), "round": prior.get("round"),
                        "completed": list(prior.get("completed", [])), "stopped_with": stopped_with,
                        "at": time.strftime("%Y-%m-%d %H:%M:%S")})
    load_dispatched(run)
    log(f"[run] {name}: resuming after {prior.get('phase')} round {prior.get('round')} "
        f"(finished phases: {', '.join(run.completed) or 'none'})")
    return run


def reconnect_sites(run: ServerRun) -> None:
    """Resume: learn which node serves which site (node ids change between Flower runs) with a
    stats query, and check every site still holds the records it had (same counts and layout)."""
    nodes = run.wait_for_nodes()
    replies = run.query("resume", P.STATS, RecordDict({P.CONFIG: ConfigRecord({})}), node_ids=nodes,
                        server_round=len(run.resumes))
    infos = [site_info(reply) for reply in replies]
    check_unique_names(infos)
    for info in infos:
        before = run.registered.get(info.name)
        if before is None:
            run.log(f"[resume] node {info.node_id} serves site {info.name!r}, which was not part of this run; "
                    "it is left out")
            continue
        if (before.counts, before.channels, before.length) != (info.counts, info.channels, info.length):
            raise ValueError(
                f"output.resume: site {info.name!r} now reports counts {info.counts}, channels {info.channels} x "
                f"{info.length}; the checkpointed run had {before.counts}, {before.channels} x {before.length}. "
                "Its data changed, so the run cannot be continued; start a new run.")
        run.register_site(info)
    if not run.sites:
        raise ValueError("output.resume: none of the connected nodes serves a site of this run")
    missing = sorted(set(run.registered) - {s.name for s in run.sites.values()})
    run.log(f"[resume] sites {sorted(s.name for s in run.sites.values())} reconnected"
            + (f"; missing: {missing}" if missing else ""))


def failure_record(err: BaseException) -> dict:
    """What ``checkpoint/failure.json`` says about ``err``: a signal or stop reads as such."""
    record = {"error": repr(err), "traceback": traceback.format_exc()[-4000:]}
    if isinstance(err, SystemExit):
        record.update(kind="stopped", exit_code=err.code, error=(
            f"the ServerApp was stopped (SystemExit({err.code!r})): Flower ends it this way on SIGINT / SIGTERM / "
            "SIGQUIT (flwr stop, a SuperLink shutdown, Ctrl-C, systemctl stop) or after it lost its SuperLink. "
            "The last checkpoint is kept; continue with output.resume=true."))
    elif isinstance(err, KeyboardInterrupt):
        record.update(kind="interrupted", error="the ServerApp was interrupted (KeyboardInterrupt / SIGINT). The last "
                      "checkpoint is kept; continue with output.resume=true.")
    else:
        record["kind"] = "error"
    return record


def run_federated(grid: Grid, config: RunConfig, *, log: Callable[[str], None] = print) -> dict:
    """Run all phases against the sites behind ``grid``; returns the metrics written to the report."""
    run = _open_run(grid, config, log)
    log(f"[run] {run.run_name}: output in {run.run_dir}")
    try:
        if run.resumed_from is not None and "normalization" in run.completed:
            reconnect_sites(run)
        for phase, fn in PHASES:
            if phase in run.completed:
                continue
            log(f"[{phase}] started")
            started = time.monotonic()
            with run.timer(phase):
                fn(run)
            run.complete(phase)
            log(f"[{phase}] finished in {time.monotonic() - started:.1f} s")
        metrics = write_federated_report(run)
    except BaseException as err:
        write_json_atomic(run.run_dir / "checkpoint" / "failure.json", failure_record(err))
        raise
    log(f"[report] {run.run_dir / 'report.md'}")
    return metrics
