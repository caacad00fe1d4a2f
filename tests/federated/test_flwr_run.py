"""One real `flwr run .` simulation (SuperLink + Ray, 3 SuperNodes) on a tiny config.

The first goes through scripts/flwr_simulation.sh, which starts its own SuperLink in a throwaway
FLWR_HOME and stops it on exit; the test then checks that nothing it started is still alive. The
second types `flwr run .` as a Flower user would (see its docstring).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

TINY = (
    'data.size-scale=0.12 data.length=16 classifier.kind="gru" classifier.hidden=8 classifier.num-layers=1 '
    'unet.dim=8 unet.dim-mults="1,2" unet.attention-levels="1" unet.heads=2 unet.head-dim=4 unet.groups=4 '
    "diffusion.num-steps=20 sampling.num-inference-steps=4 federation.classifier-rounds=1 "
    'federation.diffusion-rounds=1 evaluation.seeds="0" evaluation.epochs=1 evaluation.tsrtr-ratios="1.0"'
)


def test_flwr_run_simulation_completes(tmp_path):
    # every process the script starts inherits this variable, so the test looks at its own processes
    # only (not at other Flower runs on the machine)
    marker = f"TARDIFF_TEST_RUN={tmp_path}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "TARDIFF_TEST_RUN": str(tmp_path)}
    overrides = f'{TINY} output.dir="{tmp_path}" output.name="smoke"'
    start = time.time()
    proc = subprocess.run(
        ["bash", "scripts/flwr_simulation.sh", "--supernodes", "3", "--run-config", overrides],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "finished:completed" in proc.stdout
    metrics = json.loads((tmp_path / "smoke" / "metrics.json").read_text())
    assert metrics["federated"] is True and len(metrics["sites"]) == 3
    assert time.time() - start < 600
    deadline = time.time() + 20  # processes exit asynchronously after the script's stop
    while _processes_with(marker) and time.time() < deadline:
        time.sleep(0.5)
    left = _processes_with(marker)
    _stop_all(marker)
    assert not left, "the simulation left Flower processes running"


# ----------------------------------------------------------------------------- plain `flwr run .`


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_with(marker: str) -> set[int]:
    """Live (non-zombie) processes whose environment holds ``marker`` (this test's FLWR_HOME)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if marker.encode() not in Path(f"/proc/{entry}/environ").read_bytes():
                continue
            if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except OSError:
            continue
        found.add(int(entry))
    return found


def _stop_all(marker: str) -> set[int]:
    """SIGTERM, then SIGKILL, every process started with this FLWR_HOME; returns what outlived both."""
    import signal

    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        for pid in _processes_with(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait_s
        while _processes_with(marker) and time.time() < deadline:
            time.sleep(0.3)
    return _processes_with(marker)


def test_plain_flwr_run_as_a_user_types_it(tmp_path):
    """`flwr run .` from the repository root with the venv's flwr, the way the README says: Flower's
    own local SuperLink (started by the CLI), runtime dependency installation left ON (the env has no
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION), a fresh FLWR_HOME. The run completes, writes its
    report, and Flower's `uv sync` installed nothing (pyproject's [tool.uv] exclude-dependencies):
    the app ran on the venv's packages."""
    # a short FLWR_HOME: the simulation's unix sockets live under it, and a socket path may not
    # exceed ~107 bytes (pytest's tmp_path can be longer than that allows)
    home = Path(tempfile.mkdtemp(prefix="fh"))
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "FLWR_HOME")}
    env.update(PATH=f"{bin_dir}:{os.environ.get('PATH', '')}", FLWR_HOME=str(home),
               FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", RAY_USAGE_STATS_ENABLED="0",
               # the managed SuperLink's ports (Flower's defaults 39091/39093 may be taken by another run)
               FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(_free_port()), FLWR_LOCAL_CONTROL_API_PORT=str(_free_port()))
    flwr = str(bin_dir / "flwr")

    def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([flwr, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)

    try:
        # once per FLWR_HOME: one simulated SuperNode per hospital (Flower's default is 2)
        setup = cli("federation", "simulation-config", "--num-supernodes", "3")
        assert setup.returncode == 0, setup.stdout + setup.stderr
        out = tmp_path / "runs"
        run = cli("run", ".", "--run-config", f'{TINY} output.dir="{out}" output.name="plain"')
        assert run.returncode == 0, run.stdout + run.stderr
        run_id = int(run.stdout.split("Successfully started run ")[1].split()[0])

        def status() -> str:
            ls = cli("ls", "--run-id", str(run_id), "--format", "json")
            return json.loads(ls.stdout)["runs"][0]["status"] if ls.returncode == 0 else ""

        deadline = time.time() + 540
        while not status().startswith("finished") and time.time() < deadline:
            time.sleep(3)
        shown = cli("log", str(run_id), "--show")
        logs = shown.stdout + shown.stderr
        assert status() == "finished:completed", logs[-4000:]
        assert (out / "plain" / "report.md").is_file()
        metrics = json.loads((out / "plain" / "metrics.json").read_text())
        assert metrics["federated"] is True and len(metrics["sites"]) == 3
        # runtime dependency installation ran (it is on) and had nothing to install
        assert "No additional application dependencies needed installation." in logs, logs[:4000]
        assert "Runtime dependency installation is disabled" not in logs
    finally:
        left = _stop_all(f"FLWR_HOME={home}")
        shutil.rmtree(home, ignore_errors=True)
    assert not left, f"processes of the run still alive: {sorted(left)}"
